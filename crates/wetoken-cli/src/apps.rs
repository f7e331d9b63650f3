//! `app`, `token` and `ticket`: apps and their credentials, straight from the database.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use wetoken_core::{
    AppFilter, AppId, AppKind, AppStatus, AppUpdate, CredentialRecord, CredentialState, Cursor,
    Engine, GoFields, Kind, NewApp, Secret, Store, SystemClock, TokenMode, WeChat, page_limit,
};
use wetoken_settings::Settings;

use crate::DatabaseArg;

#[derive(Subcommand)]
pub(crate) enum AppAction {
    /// Add an app. Without --secret, the secret is asked for at a terminal (not echoed) or read
    /// from the first line of standard input.
    ///
    /// A third-party platform is `--kind component`: its secret is the component_appsecret, and
    /// --token and --aes-key (its message token and EncodingAESKey) are required. An authorizer
    /// (an official account or mini program that authorized one) is `--component APPID` with
    /// --kind mp or mini: what is read in place of the secret is its authorizer_refresh_token.
    ///
    /// Examples: wetoken-cli app add wx9e02ddcc34513fd4 < secret.txt;
    /// wetoken-cli app add --kind work --corpid ww123 --agentid 1000002;
    /// wetoken-cli app add wx9e02ddcc34513fd4 --token-mode stable;
    /// wetoken-cli app add wxcomponent1 --kind component --token-file token.txt --aes-key-file
    /// aes.txt < secret.txt;
    /// wetoken-cli app add wxauthorizer1 --component wxcomponent1 < refresh_token.txt
    Add(Box<AddArgs>),
    /// List apps, with the state of their token and tickets, a page at a time (100 by default),
    /// after the totals by state.
    ///
    /// Examples: wetoken-cli app list --state halted; wetoken-cli app list --kind mini --prefix
    /// wx5; wetoken-cli app list --all (every page)
    List(ListArgs),
    /// Show one app and the state of its token and tickets.
    Show {
        /// The appid (a WeCom app's is <corpid>.<agentid>).
        appid: String,
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Change an app's secret, message token, AES key, token mode or daily budget. This also
    /// lifts a halt on its credentials; servers pick the change up within a second.
    Update(Box<UpdateArgs>),
    /// Show WeChat's own count of the app's token calls today next to wetoken's; with --clear,
    /// reset both (WeChat allows that 10 times a month).
    ///
    /// Asks WeChat with the token the servers stored, and never fetches one: a new token would
    /// end the one they hand out. So a server must have fetched a token that is still valid.
    ///
    /// Examples: wetoken-cli app quota wx9e02ddcc34513fd4;
    /// wetoken-cli app quota wx9e02ddcc34513fd4 --clear
    Quota(Box<crate::quota::QuotaArgs>),
    /// Remove an app and its stored token and tickets.
    Remove {
        /// The appid (a WeCom app's is <corpid>.<agentid>).
        appid: String,
        #[command(flatten)]
        db: DatabaseArg,
    },
}

#[derive(clap::Args)]
pub(crate) struct AddArgs {
    /// The appid. For a WeCom app, give --corpid and --agentid instead (or the corpid here).
    appid: Option<String>,
    /// What kind of app: mp (official account), mini (mini program), work (WeCom) or
    /// component (a third-party platform of WeChat's open platform).
    #[arg(long, value_enum, default_value_t = KindArg::Mp)]
    kind: KindArg,
    /// Add an authorizer of this third-party platform (a stored app of kind component): its
    /// token is fetched with the platform's, and the secret read is its
    /// authorizer_refresh_token.
    #[arg(long, value_name = "COMPONENT_APPID")]
    component: Option<String>,
    /// Which token endpoint to use: classic (/cgi-bin/token) or stable (/cgi-bin/stable_token).
    #[arg(long, value_enum, default_value_t = ModeArg::Classic)]
    token_mode: ModeArg,
    /// A WeCom app's corp id.
    #[arg(long)]
    corpid: Option<String>,
    /// A WeCom app's agent id.
    #[arg(long)]
    agentid: Option<String>,
    /// The app secret. Prefer the prompt or standard input: a flag shows in the process list.
    #[arg(long)]
    secret: Option<String>,
    /// The message token of the app's server configuration.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// The message AES key of the app's server configuration (a platform's EncodingAESKey).
    #[arg(long, conflicts_with = "aes_key_file")]
    aes_key: Option<String>,
    /// A file whose first line is the message token: kept out of the process list.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// A file whose first line is the message AES key: kept out of the process list.
    #[arg(long, value_name = "PATH")]
    aes_key_file: Option<std::path::PathBuf>,
    /// Upstream calls a day this app may make (default 2000, WeChat's quota).
    #[arg(long)]
    daily_budget: Option<String>,
    /// How often, in seconds, the servers ask WeChat whether this app's token still works, to
    /// catch a fetch made outside wetoken; 0 turns it off, 86400 at most. Unset: the servers'
    /// default.
    #[arg(long, value_name = "SECS")]
    verify_secs: Option<String>,
    #[command(flatten)]
    go: GoArgs,
    #[command(flatten)]
    db: DatabaseArg,
}

/// The Go wetoken's app fields. Each also answers to its Go (camelCase) name.
#[derive(clap::Args)]
pub(crate) struct GoArgs {
    /// The WeChat Pay merchant id.
    #[arg(long)]
    mchid: Option<String>,
    /// The WeChat Pay key: a secret, stored encrypted when a master key is set, never printed.
    #[arg(long, alias = "payKey")]
    pay_key: Option<String>,
    /// The sub-merchant's appid.
    #[arg(long, alias = "subAppid")]
    sub_appid: Option<String>,
    /// The sub-merchant's merchant id.
    #[arg(long, alias = "subMchid")]
    sub_mchid: Option<String>,
    /// The domain authorised for web pages.
    #[arg(long, alias = "wechatHost")]
    wechat_host: Option<String>,
    /// The verification-code template id, for /wx/{appid}/wxcode/send.
    #[arg(long, alias = "wcodeTemplateId")]
    wcode_template_id: Option<String>,
}

impl GoArgs {
    fn fields(&self) -> anyhow::Result<GoFields> {
        let field = |name, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| GoFields::check(name, v))
                .transpose()
        };
        Ok(GoFields {
            mchid: field("mchid", &self.mchid)?,
            sub_appid: field("sub_appid", &self.sub_appid)?,
            sub_mchid: field("sub_mchid", &self.sub_mchid)?,
            wechat_host: field("wechat_host", &self.wechat_host)?,
            wcode_template_id: field("wcode_template_id", &self.wcode_template_id)?,
        })
    }

    fn pay_key(&self) -> anyhow::Result<Option<Secret>> {
        Ok(self
            .pay_key
            .as_deref()
            .map(|v| Secret::checked("pay_key", v, GoFields::MAX))
            .transpose()?)
    }
}

#[derive(clap::Args)]
pub(crate) struct ListArgs {
    /// Only apps with a credential in this state: healthy, renewing, pending, failing,
    /// out_of_budget or halted.
    #[arg(long)]
    state: Option<String>,
    /// Only apps of this kind.
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Only apps whose appid starts with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Start where the previous page said to go on.
    #[arg(long)]
    cursor: Option<String>,
    /// Apps a page, 1 to 1000.
    #[arg(long)]
    limit: Option<String>,
    /// Every page, one after the other, without the totals.
    #[arg(long, conflicts_with = "cursor")]
    all: bool,
    #[command(flatten)]
    db: DatabaseArg,
}

#[derive(clap::Args)]
pub(crate) struct UpdateArgs {
    /// The appid (a WeCom app's is <corpid>.<agentid>).
    appid: String,
    /// A new app secret. Given without a value, it is asked for at a terminal or read from
    /// standard input.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    secret: Option<String>,
    /// A new message token.
    #[arg(long)]
    token: Option<String>,
    /// A new message AES key.
    #[arg(long)]
    aes_key: Option<String>,
    /// A new token mode: classic or stable. It applies from the next refresh on.
    #[arg(long, value_enum)]
    token_mode: Option<ModeArg>,
    /// A new daily budget of upstream calls.
    #[arg(long)]
    daily_budget: Option<String>,
    /// A new interval, in seconds, of the check of the app's token with WeChat (0: off, 86400
    /// at most).
    #[arg(long, value_name = "SECS")]
    verify_secs: Option<String>,
    #[command(flatten)]
    go: GoArgs,
    #[command(flatten)]
    db: DatabaseArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Mp,
    Mini,
    Work,
    Component,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
    Classic,
    Stable,
}

impl From<KindArg> for AppKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Mp => AppKind::Mp,
            KindArg::Mini => AppKind::Mini,
            KindArg::Work => AppKind::Work,
            KindArg::Component => AppKind::Component,
        }
    }
}

impl From<ModeArg> for TokenMode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Classic => TokenMode::Classic,
            ModeArg::Stable => TokenMode::Stable,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum CredentialAction {
    /// Print the credential on standard output (its expiry goes to standard error).
    Get(GetArgs),
}

#[derive(Subcommand)]
pub(crate) enum TicketAction {
    /// Print the ticket on standard output (its expiry goes to standard error).
    Get {
        #[command(flatten)]
        args: GetArgs,
        /// Which ticket: jsapi, or wx_card (official accounts only).
        #[arg(long = "type", value_enum, default_value_t = TicketType::Jsapi)]
        kind: TicketType,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TicketType {
    Jsapi,
    #[value(name = "wx_card")]
    WxCard,
}

#[derive(clap::Args)]
pub(crate) struct GetArgs {
    /// The appid (a WeCom app's is <corpid>.<agentid>).
    appid: String,
    #[command(flatten)]
    wechat: WeChatArgs,
    #[command(flatten)]
    db: DatabaseArg,
}

/// Where WeChat is, over the servers' `wechat_base_url` and `wechat_work_base_url` settings
/// (whose `wechat_fallback_urls` and `wechat_timeout_secs` apply too).
#[derive(clap::Args)]
pub(crate) struct WeChatArgs {
    /// WeChat's API root: where `token get` and `ticket get` fetch a credential the database
    /// lacks, and `app quota` reads and clears the counts. Default: the wechat_base_url setting
    /// (wetoken.toml, WETOKEN_WECHAT_BASE_URL), else https://api.weixin.qq.com.
    #[arg(long)]
    wechat_base_url: Option<String>,
    /// WeCom's API root, for apps of kind work. Default: the wechat_work_base_url setting, else
    /// https://qyapi.weixin.qq.com.
    #[arg(long)]
    wechat_work_base_url: Option<String>,
}

impl WeChatArgs {
    /// These flags as settings layered over the file and the environment.
    pub(crate) fn flags(&self) -> [(&'static str, Option<String>); 2] {
        [
            ("wechat_base_url", self.wechat_base_url.clone()),
            ("wechat_work_base_url", self.wechat_work_base_url.clone()),
        ]
    }
}

/// An engine over `store` as the servers' settings configure one, for commands that manage apps
/// or read credentials. WeChat is only called when a credential must be fetched, at the
/// settings' `wechat_base_url` and then its `wechat_fallback_urls`.
pub(crate) fn engine(store: Store, settings: &Settings) -> anyhow::Result<Engine> {
    let wechat = WeChat::new(&settings.wechat()).context("setting up the WeChat client")?;
    Engine::new(
        store,
        wechat,
        Arc::new(SystemClock),
        settings.refresh.clone(),
    )
    .context("setting up the engine")
}

/// The settings and the installed database of a command that works through an engine.
async fn open_engine(db: &DatabaseArg) -> anyhow::Result<Engine> {
    let settings = db.settings()?;
    engine(db.installed(&settings).await?, &settings)
}

/// The secret given, or asked for: at a terminal without echo, else the first line of stdin.
fn secret(given: Option<String>, what: &str) -> anyhow::Result<Secret> {
    secret_of(given, what, "secret", Secret::MAX_APP_SECRET)
}

/// [`secret`] for a value named `name` of at most `max` characters.
fn secret_of(given: Option<String>, what: &str, name: &str, max: usize) -> anyhow::Result<Secret> {
    let value = match given.filter(|s| !s.is_empty()) {
        Some(value) => value,
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("{what}: ")).context("reading the secret")?
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the secret from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if value.is_empty() {
        bail!(
            "no {name} given: pass --secret, type it at the prompt, or pipe it to standard input"
        );
    }
    Ok(Secret::checked(name, &value, max)?)
}

/// The longest authorizer_refresh_token accepted, as the admin route takes it.
pub(crate) const MAX_REFRESH_TOKEN: usize = 512;

/// A third-party platform's message token and EncodingAESKey, checked before anything is asked
/// or written: both are required, and WeChat's pushes must open with them.
fn check_message_keys(
    appid: &AppId,
    token: Option<&Secret>,
    aes_key: Option<&Secret>,
) -> anyhow::Result<()> {
    let (Some(token), Some(aes_key)) = (token, aes_key) else {
        bail!(
            "a third-party platform (--kind component) needs --token and --aes-key: the message \
             token and EncodingAESKey of its authorization event URL, which WeChat's pushes are \
             opened with"
        );
    };
    wetoken_core::MsgCrypt::new(token.expose(), aes_key.expose(), appid.as_str())
        .map_err(|e| anyhow::anyhow!("--token/--aes-key of third-party platform {appid}: {e}"))?;
    Ok(())
}

/// Checks that `component` is a stored third-party platform, which an authorizer must name.
pub(crate) async fn check_component(store: &Store, component: &AppId) -> anyhow::Result<()> {
    match store.app_info(component).await? {
        Some(app) if app.kind == AppKind::Component => Ok(()),
        Some(app) => bail!(
            "{component} is a {} app, not a third-party platform: --component names an app \
             added with --kind component",
            app.kind.as_str()
        ),
        None => bail!(
            "no third-party platform {component} is stored: add it first with `wetoken-cli app \
             add {component} --kind component --token … --aes-key …`"
        ),
    }
}

fn parse_verify_secs(text: Option<&str>) -> anyhow::Result<Option<i32>> {
    Ok(text.map(AppUpdate::verify_interval).transpose()?)
}

/// An app's out-of-band check interval as listings show it: `600s`, `off`, or `default` (the
/// servers' setting).
fn shown_interval(secs: Option<i32>) -> String {
    match secs {
        None => "default".into(),
        Some(0) => "off".into(),
        Some(secs) => format!("{secs}s"),
    }
}

/// The value given, or the first line of the file named.
fn given_or_file(
    given: Option<String>,
    file: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<String>> {
    let Some(file) = file else {
        return Ok(given);
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(Some(
        text.lines().next().unwrap_or_default().trim().to_owned(),
    ))
}

fn message_key(name: &str, value: Option<String>) -> anyhow::Result<Option<Secret>> {
    Ok(value
        .map(|v| Secret::checked(name, &v, Secret::MAX_MESSAGE_KEY))
        .transpose()?)
}

pub(crate) async fn app(action: AppAction) -> anyhow::Result<()> {
    match action {
        AppAction::Add(args) => {
            let kind = AppKind::from(args.kind);
            let component = args
                .component
                .as_deref()
                .map(AppId::parse)
                .transpose()
                .context("--component")?;
            if component.is_some() {
                if !matches!(kind, AppKind::Mp | AppKind::Mini) {
                    bail!(
                        "an authorizer (--component) is an official account or a mini program: \
                         --kind mp or mini, not {}",
                        kind.as_str()
                    );
                }
                if matches!(args.token_mode, ModeArg::Stable) {
                    bail!(
                        "an authorizer's token comes from its third-party platform: \
                         --token-mode stable does not apply"
                    );
                }
            }
            let (appid, work) = NewApp::identify(
                kind,
                args.appid.as_deref(),
                args.corpid.as_deref(),
                args.agentid.as_deref(),
            )?;
            let daily_budget = args
                .daily_budget
                .as_deref()
                .map(AppUpdate::budget)
                .transpose()?;
            let verify_secs = parse_verify_secs(args.verify_secs.as_deref())?;
            let token = message_key("token", given_or_file(args.token, args.token_file)?)?;
            let aes_key = message_key("aes_key", given_or_file(args.aes_key, args.aes_key_file)?)?;
            if kind == AppKind::Component {
                check_message_keys(&appid, token.as_ref(), aes_key.as_ref())?;
            }
            let settings = args.db.settings()?;
            let store = args.db.installed(&settings).await?;
            // Stored secrets encrypted but no master key here: refuse rather than store this one
            // in plain text (with a key, plain rows are encrypted, as a server does at start).
            store.prepare_secrets().await?;
            let secret = match &component {
                // Ask for the refresh token only once its platform is known to be stored.
                Some(component) => {
                    check_component(&store, component).await?;
                    secret_of(
                        args.secret,
                        &format!("authorizer_refresh_token of {appid}"),
                        "authorizer_refresh_token",
                        MAX_REFRESH_TOKEN,
                    )?
                }
                None => secret(args.secret, &format!("secret of {appid}"))?,
            };
            let app = NewApp {
                appid,
                component,
                kind,
                token_mode: args.token_mode.into(),
                work,
                daily_budget,
                secret,
                token,
                aes_key,
                pay_key: args.go.pay_key()?,
                go: args.go.fields()?,
                verify_secs,
            };
            engine(store, &settings)?.add_app(&app).await?;
            match &app.component {
                Some(component) => println!(
                    "added {} ({}, authorizer of {component}): its token is fetched when first \
                     needed",
                    app.appid,
                    kind.as_str(),
                ),
                None => println!(
                    "added {} ({}, {})",
                    app.appid,
                    kind.as_str(),
                    app.token_mode.as_str()
                ),
            }
        }
        AppAction::List(args) => list(args).await?,
        AppAction::Show { appid, db } => {
            let appid = AppId::parse(&appid)?;
            let engine = open_engine(&db).await?;
            let status = engine.app_status(&appid).await?;
            print!("{}", show(&status, engine.now()));
        }
        AppAction::Update(args) => {
            let appid = AppId::parse(&args.appid)?;
            let update = AppUpdate {
                secret: None,
                token: message_key("token", args.token)?,
                aes_key: message_key("aes_key", args.aes_key)?,
                token_mode: args.token_mode.map(TokenMode::from),
                daily_budget: args
                    .daily_budget
                    .as_deref()
                    .map(AppUpdate::budget)
                    .transpose()?,
                pay_key: args.go.pay_key()?,
                go: args.go.fields()?,
                verify_secs: parse_verify_secs(args.verify_secs.as_deref())?,
            };
            let settings = args.db.settings()?;
            let store = args.db.installed(&settings).await?;
            store.prepare_secrets().await?;
            let engine = engine(store, &settings)?;
            // Ask for a new secret only once the app is known to exist.
            engine.app_status(&appid).await?;
            let update = AppUpdate {
                secret: args
                    .secret
                    .map(|given| secret(Some(given), &format!("new secret of {appid}")))
                    .transpose()?,
                ..update
            };
            if update.is_empty() {
                bail!(
                    "nothing to update: give --secret, --token, --aes-key, --token-mode, --daily-budget, --verify-secs, or a Go field (--mchid, --pay-key, --sub-appid, --sub-mchid, --wechat-host, --wcode-template-id)"
                );
            }
            engine.update_app(&appid, &update).await?;
            println!("updated {appid}");
        }
        AppAction::Quota(args) => crate::quota::run(*args).await?,
        AppAction::Remove { appid, db } => {
            let appid = AppId::parse(&appid)?;
            let engine = open_engine(&db).await?;
            engine.delete_app(&appid).await?;
            println!("removed {appid} and its stored token and tickets");
        }
    }
    Ok(())
}

/// `app list`: the totals by state, then a page of apps (or, with `--all`, every page).
async fn list(args: ListArgs) -> anyhow::Result<()> {
    let filter = AppFilter {
        state: args
            .state
            .as_deref()
            .map(CredentialState::parse)
            .transpose()?,
        kind: args.kind.map(AppKind::from),
        prefix: args.prefix.as_deref().map(AppFilter::prefix).transpose()?,
        ..AppFilter::default()
    };
    let mut after = args.cursor.as_deref().map(Cursor::decode).transpose()?;
    let limit = page_limit(args.limit.as_deref())?;
    let engine = open_engine(&args.db).await?;
    let now = engine.now();
    if !args.all {
        let totals = engine.state_totals().await?;
        let shown: Vec<String> = CredentialState::ALL
            .iter()
            .rev()
            .map(|s| format!("{} {}", totals.total(*s), s.name()))
            .collect();
        println!("credentials: {}", shown.join(", "));
    }
    let mut header = true;
    loop {
        let page = engine.list_apps(&filter, after.as_ref(), limit).await?;
        if header {
            if page.apps.is_empty() {
                if filter == AppFilter::default() && after.is_none() {
                    println!("no apps yet: add one with `wetoken-cli app add APPID`");
                } else {
                    println!("no apps match");
                }
                return Ok(());
            }
            println!(
                "{:<40} {:<9} {:<8} {:<16} {:<16} {:>11} {:>7}  COMPONENT",
                "APPID", "KIND", "MODE", "TOKEN", "TICKET", "CALLS TODAY", "VERIFY"
            );
            header = false;
        }
        for status in &page.apps {
            let app = &status.app;
            let ticket = if app.kind.has(Kind::JsapiTicket) {
                state(status.jsapi_ticket.as_ref(), now)
            } else {
                "-".into()
            };
            // A withdrawn authorization leaves no credential rows: say why, not "not fetched".
            let (token, ticket) = match app.revoked_at {
                Some(_) => ("revoked".into(), "revoked".into()),
                None => (state(status.access_token.as_ref(), now), ticket),
            };
            // A platform's token and an authorizer's come from the open platform's own calls,
            // which have no classic or stable mode.
            let mode = if app.kind == AppKind::Component || app.component.is_some() {
                "-"
            } else {
                app.token_mode.as_str()
            };
            println!(
                "{:<40} {:<9} {:<8} {:<16} {:<16} {:>11} {:>7}  {}",
                app.appid.as_str(),
                app.kind.as_str(),
                mode,
                token,
                ticket,
                format!("{}/{}", app.calls_today, app.daily_budget),
                shown_interval(app.verify_secs),
                app.component.as_ref().map_or("-", AppId::as_str),
            );
        }
        match page.next {
            Some(next) if args.all => after = Some(next),
            Some(next) => {
                let mut again = String::from("wetoken-cli app list");
                if let Some(state) = filter.state {
                    again += &format!(" --state {}", state.name());
                }
                if let Some(kind) = filter.kind {
                    again += &format!(" --kind {}", kind.as_str());
                }
                if let Some(prefix) = &filter.prefix {
                    again += &format!(" --prefix {prefix}");
                }
                if let Some(limit) = &args.limit {
                    again += &format!(" --limit {limit}");
                }
                println!("more: {again} --cursor {}", next.encode());
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// A credential's state in a few characters: time left, or why there is none.
/// The words are the listings' state names, but for a value in hand, which shows its time left.
fn state(record: Option<&CredentialRecord>, now: DateTime<Utc>) -> String {
    let Some(r) = record else {
        return "not fetched yet".into();
    };
    match (r.state(false), &r.credential) {
        (CredentialState::Pending, _) => "not fetched yet".into(),
        (CredentialState::Healthy, Some(c)) if c.expires_at > now => {
            let left = (c.expires_at - now).num_seconds();
            format!("{}m{:02}s left", left / 60, left % 60)
        }
        (CredentialState::Healthy, _) => "expired".into(),
        (state, _) => state.name().replace('_', " "),
    }
}

/// `app show`: every field but the secrets, whose presence alone is shown.
fn show(status: &AppStatus, now: DateTime<Utc>) -> String {
    let app = &status.app;
    let mut out = format!(
        "appid:        {}\nkind:         {}\ntoken mode:   {}\n",
        app.appid,
        app.kind.as_str(),
        app.token_mode.as_str()
    );
    if let Some(work) = &app.work {
        out += &format!(
            "corpid:       {}\nagentid:      {}\n",
            work.corpid, work.agentid
        );
    }
    if let Some(component) = &app.component {
        out += &format!("component:    {component} (an authorizer of this third-party platform)\n");
        if let Some(at) = app.revoked_at {
            out += &format!(
                "revoked:      {} (it withdrew its authorization: nothing is served for it until \
                 it authorizes again)\n",
                at.to_rfc3339()
            );
        }
    }
    let set = |present: bool| if present { "set" } else { "not set" };
    // What stands in the secret column: the refresh token of an authorizer.
    let secret = match (app.kind, &app.component) {
        (_, Some(_)) => "refresh token",
        (AppKind::Component, None) => "appsecret",
        _ => "secret",
    };
    out += &format!(
        "{:<13} set (never shown)\nmsg token:    {}\naes key:      {}\nfetches today: {} of {}\nverify every: {}\ncreated:      {}\nupdated:      {}\n",
        format!("{secret}:"),
        set(app.has_token),
        set(app.has_aes_key),
        app.calls_today,
        app.daily_budget,
        shown_interval(app.verify_secs),
        app.create_time.to_rfc3339(),
        app.update_time.to_rfc3339(),
    );
    out += &format!("pay key:      {}\n", set(app.has_pay_key));
    for (name, value) in app.go.fields() {
        if let Some(value) = value {
            out += &format!("{:<13} {value}\n", format!("{name}:"));
        }
    }
    for (kind, record) in [
        (Kind::AccessToken, &status.access_token),
        (Kind::JsapiTicket, &status.jsapi_ticket),
        (Kind::CardTicket, &status.card_ticket),
    ] {
        if !app.kind.has(kind) {
            continue;
        }
        out += &format!(
            "{}:\n  state:      {}\n",
            kind.name(),
            state(record.as_ref(), now)
        );
        if let Some(r) = record {
            if let Some(c) = &r.credential {
                out += &format!("  expires at: {}\n", c.expires_at.to_rfc3339());
            }
            out += &format!("  last:       {}\n", r.message);
            if let Some(at) = r.refresh_time {
                out += &format!("  refreshed:  {}\n", at.to_rfc3339());
            }
            if let Some(check) = r.check {
                let answer = if check.accepted() {
                    "accepted".to_owned()
                } else {
                    format!("rejected ({})", check.errcode)
                };
                out += &format!(
                    "  checked:    {} by WeChat at {}\n",
                    answer,
                    check.at.to_rfc3339()
                );
            }
            if r.replaced > 0 {
                out += &format!(
                    "  replaced:   {} times outside wetoken (a leaked secret?)\n",
                    r.replaced
                );
            }
        }
    }
    out
}

async fn get(args: GetArgs, kind: Kind) -> anyhow::Result<()> {
    let appid = AppId::parse(&args.appid)?;
    let settings = args.db.settings_with(args.wechat.flags())?;
    let engine = engine(args.db.installed(&settings).await?, &settings)?;
    let credential = engine.get(&appid, kind).await?;
    println!("{}", credential.value);
    eprintln!(
        "{} of {appid}, expires at {} ({} s left)",
        kind.name(),
        credential.expires_at.to_rfc3339(),
        credential.seconds_left(engine.now())
    );
    Ok(())
}

pub(crate) async fn token(action: CredentialAction) -> anyhow::Result<()> {
    match action {
        CredentialAction::Get(args) => get(args, Kind::AccessToken).await,
    }
}

pub(crate) async fn ticket(action: TicketAction) -> anyhow::Result<()> {
    match action {
        TicketAction::Get { args, kind } => {
            let kind = match kind {
                TicketType::Jsapi => Kind::JsapiTicket,
                TicketType::WxCard => Kind::CardTicket,
            };
            get(args, kind).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wetoken_core::Credential;

    #[test]
    fn a_credential_never_fetched_is_not_failing() {
        let now = Utc::now();
        let record = |credential: Option<Credential>, failures, errcode, halted| CredentialRecord {
            credential,
            message: String::new(),
            errcode,
            halted,
            refresh_time: None,
            version: 0,
            failures,
            retry_at: None,
            leased: false,
            check: None,
            replaced: 0,
            renew_at: None,
        };
        let live = || {
            Some(Credential {
                value: "t".into(),
                expires_at: now + chrono::Duration::seconds(125),
            })
        };
        for (r, want) in [
            (record(None, 0, None, false), "not fetched yet"),
            (record(None, 2, Some(40013), false), "failing"),
            (record(live(), 1, Some(-1), false), "failing"),
            (record(None, 1, Some(90430), false), "out of budget"),
            (record(live(), 0, Some(40013), true), "halted"),
            (record(live(), 0, Some(0), false), "2m05s left"),
        ] {
            assert_eq!(state(Some(&r), now), want, "{r:?}");
        }
        assert_eq!(state(None, now), "not fetched yet");
    }
}
