//! `app quota`: WeChat's own count of an app's token calls today (`/cgi-bin/openapi/quota/get`)
//! next to wetoken's, and `--clear` (`/cgi-bin/clear_quota`, 10 a month), which resets both.
//!
//! Both WeChat calls need the app's access token. The one the servers stored is used and a new
//! one is never fetched: on the classic endpoint a fetch would end the token every service is
//! using, which is the harm a quota check is meant to avoid.

use std::io::{IsTerminal, Write};

use anyhow::{Context, anyhow, bail};
use wetoken_core::wechat::Quota;
use wetoken_core::{AppId, AppInfo, AppKind, Error, Kind, TokenMode, UpstreamError, WeChat};

use crate::DatabaseArg;
use crate::apps::{WeChatArgs, engine};

/// How many times a month WeChat lets an account clear its counts.
const CLEARS_PER_MONTH: u32 = 10;

#[derive(clap::Args)]
pub(crate) struct QuotaArgs {
    /// The appid of an official account or mini program (WeCom has no quota API).
    appid: String,
    /// Then reset WeChat's counts of every API of the app for today (clear_quota), and wetoken's
    /// count with them, so the servers' daily budget lets the app fetch again. WeChat allows 10
    /// clears a month. At a terminal, asks for the appid to confirm.
    #[arg(long)]
    clear: bool,
    /// With --clear: do not ask. Required when standard input is not a terminal.
    #[arg(long, requires = "clear")]
    yes: bool,
    #[command(flatten)]
    wechat: WeChatArgs,
    #[command(flatten)]
    db: DatabaseArg,
}

pub(crate) async fn run(args: QuotaArgs) -> anyhow::Result<()> {
    let appid = AppId::parse(&args.appid)?;
    let ask = args.clear && !args.yes;
    if ask && !std::io::stdin().is_terminal() {
        bail!(
            "--clear spends one of the {CLEARS_PER_MONTH} clears WeChat allows a month, and \
             standard input is not a terminal to confirm it at: add --yes"
        );
    }
    let settings = args.db.settings_with(args.wechat.flags())?;
    let store = args.db.installed(&settings).await?;
    let info = store.known_app_info(&appid).await?;
    if info.kind == AppKind::Work {
        bail!(
            "{appid} is a WeCom app: WeCom has no API to read or clear call counts \
             (`app quota` is for official accounts and mini programs)"
        );
    }
    if info.kind == AppKind::Component || info.component.is_some() {
        bail!(
            "{appid} is {} of the open platform: its token comes from \
             /cgi-bin/component/*, whose count this command does not read \
             (`app quota` is for apps with their own secret)",
            if info.kind == AppKind::Component {
                "a third-party platform"
            } else {
                "an authorizer"
            }
        );
    }
    let cgi_path = match info.token_mode {
        TokenMode::Classic => "/cgi-bin/token",
        TokenMode::Stable => "/cgi-bin/stable_token",
    };
    let engine = engine(store, &settings)?;
    let token = match engine.stored(&appid, Kind::AccessToken).await {
        Ok(token) => token,
        Err(Error::NotStored { .. }) => bail!(
            "no valid access token of {appid} is stored, and `app quota` never fetches one (a new \
             token would end the one the servers hand out): start a wetoken server for it, or \
             wait until one has renewed the token, then try again"
        ),
        Err(e) => return Err(e.into()),
    };
    let wechat = WeChat::new(&settings.wechat()).context("setting up the WeChat client")?;
    let quota = wechat
        .quota(&token.value, cgi_path)
        .await
        .map_err(|e| refused(e, "reading WeChat's count"))?;
    print!("{}", counts(&info, cgi_path, &quota));
    if !args.clear {
        return Ok(());
    }

    if ask {
        confirm(&appid)?;
    }
    wechat
        .clear_quota(&token.value, &appid)
        .await
        .map_err(|e| refused(e, "clearing WeChat's counts"))?;
    engine
        .store()
        .reset_calls_today(&appid)
        .await
        .context("WeChat's counts were cleared, but wetoken's count could not be reset")?;
    println!(
        "cleared: WeChat's counts of {appid} for today, and wetoken's (one of the \
         {CLEARS_PER_MONTH} clears WeChat allows a month)"
    );
    let quota = wechat
        .quota(&token.value, cgi_path)
        .await
        .map_err(|e| refused(e, "reading WeChat's count again"))?;
    let info = engine.store().known_app_info(&appid).await?;
    print!("{}", counts(&info, cgi_path, &quota));
    Ok(())
}

/// WeChat's count and wetoken's, one line each.
fn counts(info: &AppInfo, cgi_path: &str, quota: &Quota) -> String {
    format!(
        "{} {cgi_path} today:\n  WeChat:  {} used of {}, {} left\n  wetoken: {} token fetches of a daily budget of {}\n",
        info.appid,
        quota.used,
        quota.daily_limit,
        quota.remain,
        info.calls_today,
        info.daily_budget,
    )
}

/// At a terminal: the operator types the appid, or nothing is cleared.
fn confirm(appid: &AppId) -> anyhow::Result<()> {
    eprint!(
        "This spends one of the {CLEARS_PER_MONTH} clears WeChat allows {appid} a month, and \
         resets its counts of every API for today.\nType the appid to go on: "
    );
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    let typed = line.trim();
    if typed != appid.as_str() {
        bail!("not confirmed ({typed:?} is not {appid}): nothing was cleared");
    }
    Ok(())
}

/// WeChat's refusal, with what it means for the operator where that is known.
fn refused(error: UpstreamError, doing: &str) -> anyhow::Error {
    let hint = match error.errcode() {
        Some(48006) => {
            "the clears WeChat allows this month are spent: nothing was cleared, wetoken's count \
             included"
        }
        Some(_) if error.is_token_rejected() => {
            "WeChat no longer accepts the stored token (replaced or expired): try again once a \
             server has renewed it"
        }
        _ => return anyhow!("{doing}: {error}"),
    };
    anyhow!("{doing}: {hint} ({error})")
}
