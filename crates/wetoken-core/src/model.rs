//! The nouns: apps, their ids and secrets, and the credentials fetched for them.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::Error;

/// A validated WeChat appid.
///
/// Every appid that reaches the database or WeChat went through [`AppId::parse`]:
/// 1 to 64 characters of ASCII letters, digits, `_`, `-` and `.`, with no `.` at either end and
/// no `..`. The `.` separates a WeCom app's corpid from its agentid (`ww1234.1000002`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    /// The longest appid accepted; the column is as wide.
    pub const MAX_LEN: usize = wetoken_msgcrypt::MAX_ID_LEN;

    /// Checks `s` against the appid pattern.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let ok = wetoken_msgcrypt::is_valid_id(s);
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::InvalidInput(format!(
                "malformed appid {:?}: expected 1 to {} letters, digits, '_', '-' or inner '.'",
                truncate_for_message(s),
                Self::MAX_LEN
            )))
        }
    }

    /// The appid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Keeps a hostile input from filling an error message.
pub(crate) fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

/// A value that must never reach a log: an app secret, an AES key, a message token.
///
/// Its `Debug` prints `Secret(***)`; the value is read with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The longest app secret accepted.
    pub const MAX_APP_SECRET: usize = 255;
    /// The longest message token or AES key accepted.
    pub const MAX_MESSAGE_KEY: usize = 128;

    /// A secret-like input named `name`: at most `max` characters, none of them control
    /// characters. The error names the field, never the value.
    pub fn checked(name: &str, value: &str, max: usize) -> Result<Self, Error> {
        if value.is_empty() {
            return Err(Error::InvalidInput(format!("{name} must not be empty")));
        }
        if value.chars().count() > max || value.chars().any(char::is_control) {
            return Err(Error::InvalidInput(format!(
                "{name} must be at most {max} printable characters"
            )));
        }
        Ok(Self::new(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The credentials wetoken keeps for each app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The `access_token` (classic, stable, or WeCom's).
    AccessToken,
    /// The `jsapi_ticket`, for the JS-SDK's `wx.config`.
    JsapiTicket,
    /// The `wx_card` api_ticket, for card signatures.
    CardTicket,
}

impl Kind {
    /// Every kind, in the order a refresh needs them (a ticket is fetched with a token).
    pub const ALL: [Kind; 3] = [Kind::AccessToken, Kind::JsapiTicket, Kind::CardTicket];

    /// A short name for logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::AccessToken => "access_token",
            Kind::JsapiTicket => "jsapi_ticket",
            Kind::CardTicket => "wx_card_ticket",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Kind::AccessToken => 0,
            Kind::JsapiTicket => 1,
            Kind::CardTicket => 2,
        }
    }
}

/// What sort of WeChat app an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppKind {
    /// An official account (公众号): access token, jsapi ticket and card ticket.
    Mp,
    /// A mini program (小程序): an access token only.
    Mini,
    /// A WeCom (企业微信) app: its access token from `qyapi.weixin.qq.com` and its jsapi ticket.
    Work,
    /// A third-party platform (第三方平台) of the open platform: its `component_access_token`,
    /// fetched with the newest `component_verify_ticket` WeChat pushed it. Its secret is the
    /// `component_appsecret`; its message token and EncodingAESKey open those pushes.
    Component,
}

impl AppKind {
    /// Every kind.
    pub const ALL: [AppKind; 4] = [
        AppKind::Mp,
        AppKind::Mini,
        AppKind::Work,
        AppKind::Component,
    ];

    /// Parses `mp`, `mini` or `work`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "mp" => Ok(AppKind::Mp),
            "mini" => Ok(AppKind::Mini),
            "work" => Ok(AppKind::Work),
            "component" => Ok(AppKind::Component),
            other => Err(Error::InvalidInput(format!(
                "unknown app kind {:?}: expected mp, mini, work or component",
                truncate_for_message(other)
            ))),
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Mp => "mp",
            AppKind::Mini => "mini",
            AppKind::Work => "work",
            AppKind::Component => "component",
        }
    }

    /// Whether WeChat issues this credential to apps of this kind.
    pub fn has(self, kind: Kind) -> bool {
        match kind {
            Kind::AccessToken => true,
            Kind::JsapiTicket => matches!(self, AppKind::Mp | AppKind::Work),
            Kind::CardTicket => self == AppKind::Mp,
        }
    }
}

/// How an official account or mini program fetches its access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TokenMode {
    /// `GET /cgi-bin/token`: every fetch issues a new token.
    #[default]
    Classic,
    /// `POST /cgi-bin/stable_token`: the same token while it is valid; forcing a new one is
    /// limited to 20 a day, 30 s apart.
    Stable,
}

impl TokenMode {
    /// Parses `classic` or `stable`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "classic" => Ok(TokenMode::Classic),
            "stable" => Ok(TokenMode::Stable),
            other => Err(Error::InvalidInput(format!(
                "unknown token_mode {:?}: expected classic or stable",
                truncate_for_message(other)
            ))),
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenMode::Classic => "classic",
            TokenMode::Stable => "stable",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A token or ticket with its absolute expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The value WeChat issued.
    pub value: String,
    /// When WeChat stops accepting it.
    pub expires_at: DateTime<Utc>,
}

impl Credential {
    /// Whole seconds of life left at `now` (negative once expired).
    pub fn seconds_left(&self, now: DateTime<Utc>) -> i64 {
        (self.expires_at - now).num_seconds()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value is a bearer credential: keep it out of logs.
        f.debug_struct("Credential")
            .field("value", &format_args!("<{} chars>", self.value.len()))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What listings show of an app: everything but its secrets, which are not decrypted for a
/// listing. So a value that does not decrypt (tampered, or under a key this process lacks) spoils
/// that app's credentials, never the app list, the status page or `/metrics`.
#[derive(Debug, Clone)]
pub struct AppInfo {
    /// Its key: the appid, or `<corpid>.<agentid>` for a WeCom app.
    pub appid: AppId,
    /// What sort of app it is.
    pub kind: AppKind,
    /// How its access token is fetched (official accounts and mini programs).
    pub token_mode: TokenMode,
    /// A WeCom app's corpid and agentid.
    pub work: Option<WorkIds>,
    /// An authorizer's component: the third-party platform whose `component_access_token` and
    /// the stored `authorizer_refresh_token` (its secret) fetch its token.
    pub component: Option<AppId>,
    /// When an authorizer withdrew its authorization: nothing is served or refreshed for it
    /// until it authorizes again.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Upstream calls the operator expects to stay under per day.
    pub daily_budget: i32,
    /// Upstream calls made for it today (WeChat's day, China time), by every replica.
    pub calls_today: i32,
    /// Its out-of-band check interval in seconds, if it has its own (0: off); `None` takes the
    /// server's default.
    pub verify_secs: Option<i32>,
    /// Whether a message-push token is stored.
    pub has_token: bool,
    /// Whether an EncodingAESKey is stored.
    pub has_aes_key: bool,
    /// Whether a WeChat Pay key (`pay_key`) is stored.
    pub has_pay_key: bool,
    /// The Go wetoken's other app fields.
    pub go: GoFields,
    /// When it was added.
    pub create_time: DateTime<Utc>,
    /// When its settings last changed.
    pub update_time: DateTime<Utc>,
}

/// An app as stored, its secrets decrypted: what fetching its credentials needs.
#[derive(Debug, Clone)]
pub struct App {
    /// Everything but the secrets.
    pub info: AppInfo,
    /// Its AppSecret, which fetches access tokens.
    pub secret: Secret,
    /// The message-push token (for verifying WeChat's callbacks), if set.
    pub token: Option<Secret>,
    /// The EncodingAESKey, if set.
    pub aes_key: Option<Secret>,
    /// The WeChat Pay key, if set.
    pub pay_key: Option<Secret>,
}

/// The Go wetoken's app fields besides the secrets: WeChat Pay's merchant ids, the authorised
/// web domain, and the verification-code template. wetoken stores and lists them so that nothing
/// a Go deployment held is lost; only `wcode_template_id` is used (by `/wx/{appid}/wxcode/send`).
/// The pay key is a secret, stored encrypted like the AppSecret: see [`NewApp::pay_key`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoFields {
    /// The WeChat Pay (service provider) merchant id.
    pub mchid: Option<String>,
    /// The sub-merchant's appid.
    pub sub_appid: Option<String>,
    /// The sub-merchant's merchant id.
    pub sub_mchid: Option<String>,
    /// The domain authorised for web pages (OAuth).
    pub wechat_host: Option<String>,
    /// The template id of the verification-code message.
    pub wcode_template_id: Option<String>,
}

impl GoFields {
    /// The most characters each field holds (the Go schema's `VARCHAR(64)`).
    pub const MAX: usize = 64;

    /// The Go wetoken's handlers bound these fields in camelCase: each Go name, with wetoken's.
    pub const GO_NAMES: [(&'static str, &'static str); 7] = [
        ("aesKey", "aes_key"),
        ("payKey", "pay_key"),
        ("subAppid", "sub_appid"),
        ("subMchid", "sub_mchid"),
        ("wechatHost", "wechat_host"),
        ("wcodeTemplateId", "wcode_template_id"),
        ("tokenMode", "token_mode"),
    ];

    /// Each field with its name, in the Go schema's order.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("mchid", self.mchid.as_deref()),
            ("sub_appid", self.sub_appid.as_deref()),
            ("sub_mchid", self.sub_mchid.as_deref()),
            ("wechat_host", self.wechat_host.as_deref()),
            ("wcode_template_id", self.wcode_template_id.as_deref()),
        ]
    }

    /// Checks one field's value: at most [`GoFields::MAX`] characters, no control characters.
    pub fn check(name: &str, value: &str) -> Result<String, Error> {
        if value.chars().count() > Self::MAX || value.chars().any(char::is_control) {
            return Err(Error::InvalidInput(format!(
                "{name} must be at most {} characters, without control characters",
                Self::MAX
            )));
        }
        Ok(value.to_owned())
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }

    /// `other`'s fields where set, else these.
    pub fn overlaid(&self, other: &GoFields) -> GoFields {
        let pick = |new: &Option<String>, old: &Option<String>| new.clone().or_else(|| old.clone());
        GoFields {
            mchid: pick(&other.mchid, &self.mchid),
            sub_appid: pick(&other.sub_appid, &self.sub_appid),
            sub_mchid: pick(&other.sub_mchid, &self.sub_mchid),
            wechat_host: pick(&other.wechat_host, &self.wechat_host),
            wcode_template_id: pick(&other.wcode_template_id, &self.wcode_template_id),
        }
    }
}

/// A WeCom app's identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkIds {
    /// The corp's id.
    pub corpid: String,
    /// The app's agent id within the corp.
    pub agentid: String,
}

impl WorkIds {
    /// Checks both ids (letters, digits, `_`, `-`) and makes the app's key `<corpid>.<agentid>`.
    pub fn key(corpid: &str, agentid: &str) -> Result<(AppId, WorkIds), Error> {
        for (name, value) in [("corpid", corpid), ("agentid", agentid)] {
            if value.is_empty() || value.contains('.') {
                return Err(Error::InvalidInput(format!(
                    "malformed {name} {:?}: expected letters, digits, '_' or '-'",
                    truncate_for_message(value)
                )));
            }
        }
        let key = AppId::parse(&format!("{corpid}.{agentid}"))?;
        Ok((
            key,
            WorkIds {
                corpid: corpid.to_owned(),
                agentid: agentid.to_owned(),
            },
        ))
    }
}

/// What a new app needs.
#[derive(Debug, Clone)]
pub struct NewApp {
    /// Its key: the appid, or `<corpid>.<agentid>` for a WeCom app (see [`WorkIds::key`]).
    pub appid: AppId,
    /// What sort of app it is.
    pub kind: AppKind,
    /// How its access token is fetched.
    pub token_mode: TokenMode,
    /// A WeCom app's corpid and agentid; required for [`AppKind::Work`], refused otherwise.
    pub work: Option<WorkIds>,
    /// For an authorizer (an official account or mini program that authorized a third-party
    /// platform), the component; its `secret` is then the `authorizer_refresh_token`.
    pub component: Option<AppId>,
    /// Upstream calls the operator expects to stay under per day (2000 when `None`).
    pub daily_budget: Option<i32>,
    /// Its AppSecret.
    pub secret: Secret,
    /// The message-push token, if any.
    pub token: Option<Secret>,
    /// The EncodingAESKey, if any.
    pub aes_key: Option<Secret>,
    /// The WeChat Pay key, if any: a secret, stored encrypted when a master key is set.
    pub pay_key: Option<Secret>,
    /// The Go wetoken's other app fields.
    pub go: GoFields,
    /// The out-of-band check interval in seconds (0: off); `None` takes the server's default.
    pub verify_secs: Option<i32>,
}

impl NewApp {
    /// The key and WeCom ids of a new app of `kind`. A WeCom app (`work`) is keyed
    /// `<corpid>.<agentid>`; its corpid may come as `corpid` or as `appid`. Other kinds take an
    /// appid and neither corpid nor agentid.
    pub fn identify(
        kind: AppKind,
        appid: Option<&str>,
        corpid: Option<&str>,
        agentid: Option<&str>,
    ) -> Result<(AppId, Option<WorkIds>), Error> {
        if kind == AppKind::Work {
            let corpid = corpid
                .or(appid)
                .ok_or_else(|| Error::InvalidInput("corpid is required for a WeCom app".into()))?;
            let agentid = agentid
                .ok_or_else(|| Error::InvalidInput("agentid is required for a WeCom app".into()))?;
            let (key, ids) = WorkIds::key(corpid, agentid)?;
            Ok((key, Some(ids)))
        } else if corpid.is_some() || agentid.is_some() {
            Err(Error::InvalidInput(
                "corpid and agentid are for WeCom apps (kind=work) only".into(),
            ))
        } else {
            let appid = appid.ok_or_else(|| Error::InvalidInput("appid is required".into()))?;
            Ok((AppId::parse(appid)?, None))
        }
    }

    /// An official account in classic mode, with no message token or AES key.
    pub fn mp(appid: AppId, secret: Secret) -> Self {
        Self {
            appid,
            kind: AppKind::Mp,
            token_mode: TokenMode::Classic,
            work: None,
            component: None,
            daily_budget: None,
            secret,
            token: None,
            aes_key: None,
            pay_key: None,
            go: GoFields::default(),
            verify_secs: None,
        }
    }
}

/// A change to an app's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AppUpdate {
    /// A new AppSecret.
    pub secret: Option<Secret>,
    /// A new message-push token.
    pub token: Option<Secret>,
    /// A new EncodingAESKey.
    pub aes_key: Option<Secret>,
    /// A new token mode; it takes effect with the next fetch, on every replica.
    pub token_mode: Option<TokenMode>,
    /// A new daily budget of upstream calls.
    pub daily_budget: Option<i32>,
    /// A new WeChat Pay key.
    pub pay_key: Option<Secret>,
    /// New values of the Go wetoken's other fields; `None` ones are left as they are.
    pub go: GoFields,
    /// A new out-of-band check interval in seconds (0: off).
    pub verify_secs: Option<i32>,
}

impl AppUpdate {
    /// The range a daily budget of upstream calls must be in.
    pub const BUDGETS: std::ops::RangeInclusive<i32> = 1..=1_000_000;

    /// Checks a daily budget given as text.
    pub fn budget(text: &str) -> Result<i32, Error> {
        number_in(text, &Self::BUDGETS).ok_or_else(|| {
            Error::InvalidInput(format!(
                "daily_budget must be a whole number from {} to {}",
                Self::BUDGETS.start(),
                Self::BUDGETS.end()
            ))
        })
    }

    /// The range an app's out-of-band check interval must be in, in seconds: 0 turns the check
    /// off, and a day is the longest. Each check is one call of WeChat's check API, which has a
    /// daily limit of its own (in the thousands), so a short interval spends it.
    pub const VERIFY_SECS: std::ops::RangeInclusive<i32> = 0..=86_400;

    /// Checks an out-of-band check interval (`verify_secs`) given as text.
    pub fn verify_interval(text: &str) -> Result<i32, Error> {
        number_in(text, &Self::VERIFY_SECS).ok_or_else(|| {
            Error::InvalidInput(format!(
                "verify_secs must be a whole number of seconds from {} (no checks) to {} \
                 (a day), not {:?}",
                Self::VERIFY_SECS.start(),
                Self::VERIFY_SECS.end(),
                truncate_for_message(text)
            ))
        })
    }

    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.secret.is_none()
            && self.token.is_none()
            && self.aes_key.is_none()
            && self.token_mode.is_none()
            && self.daily_budget.is_none()
            && self.pay_key.is_none()
            && self.go.is_empty()
            && self.verify_secs.is_none()
    }
}

/// `text` as a whole number within `range`, if it is one.
fn number_in(text: &str, range: &std::ops::RangeInclusive<i32>) -> Option<i32> {
    text.parse::<i32>().ok().filter(|n| range.contains(n))
}

/// What the database holds for one credential of one app.
#[derive(Debug, Clone)]
pub struct CredentialRecord {
    /// The stored value, if one was ever fetched.
    pub credential: Option<Credential>,
    /// The outcome of the last refresh: `success`, or WeChat's errcode and errmsg.
    pub message: String,
    /// WeChat's code for that outcome: 0 for a success, `None` when no WeChat answer is behind it
    /// (WeChat unreachable, a row not fetched yet, or written before wetoken kept the code).
    pub errcode: Option<i64>,
    /// Whether refreshing stopped on an error retrying cannot cure.
    pub halted: bool,
    /// When the last refresh was attempted.
    pub refresh_time: Option<DateTime<Utc>>,
    /// How many values were ever stored: the fencing token of the next write.
    pub version: i64,
    /// Failed refreshes in a row since the last success.
    pub failures: i32,
    /// No replica calls WeChat for this credential before this instant (the shared backoff).
    pub retry_at: Option<DateTime<Utc>>,
    /// When the scheduler renews the stored value, if wetoken dated it (a value imported or
    /// adopted may have no date: it is renewed at once).
    pub renew_at: Option<DateTime<Utc>>,
    /// Whether a replica holds the refresh lease and it has not lapsed (on the database's clock).
    pub leased: bool,
    /// WeChat's last word on the stored value, if it was asked and the value has not changed
    /// since.
    pub check: Option<TokenCheck>,
    /// How many values were found dead before their time: replaced by a fetch made outside
    /// wetoken.
    pub replaced: i32,
}

/// What WeChat said when asked whether a stored value still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCheck {
    /// When it was asked.
    pub at: DateTime<Utc>,
    /// Its answer: 0 when the value worked, else WeChat's errcode (40001, 40014, 42001 when it
    /// was rejected).
    pub errcode: i64,
}

impl TokenCheck {
    /// Whether WeChat accepted the value.
    pub fn accepted(&self) -> bool {
        self.errcode == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appid_pattern() {
        assert!(AppId::parse("wx9e02ddcc34513fd4").is_ok());
        assert!(AppId::parse("a_b-C9").is_ok());
        assert!(AppId::parse("ww1234.1000002").is_ok());
        for bad in [
            "",
            "wx/../x",
            "wx 1",
            "wx%20",
            "wx\u{e9}",
            &"a".repeat(65),
            ".",
            "..",
            ".wx",
            "wx.",
            "a..b",
        ] {
            assert!(AppId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(AppId::parse(&"a".repeat(64)).is_ok());
    }

    proptest::proptest! {
        /// The one-pass check agrees with the pattern as written in words.
        #[test]
        fn appid_check_matches_its_definition(s in "[a-zA-Z0-9._/ \u{e9}-]{0,70}") {
            let expected = !s.is_empty()
                && s.len() <= AppId::MAX_LEN
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                && !s.starts_with('.')
                && !s.ends_with('.')
                && !s.contains("..");
            proptest::prop_assert_eq!(AppId::parse(&s).is_ok(), expected);
        }
    }

    #[test]
    fn verify_intervals_are_0_to_a_day() {
        assert_eq!(AppUpdate::verify_interval("0").unwrap(), 0);
        assert_eq!(AppUpdate::verify_interval("600").unwrap(), 600);
        assert_eq!(AppUpdate::verify_interval("86400").unwrap(), 86_400);
        for bad in ["-1", "86401", "", "10m", "1.5", "99999999999"] {
            let error = AppUpdate::verify_interval(bad).unwrap_err().to_string();
            assert!(error.contains("verify_secs must be"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn secrets_and_credentials_stay_out_of_debug() {
        let s = Secret::new("6acb2b999177524beba3d97d54df2de5");
        assert!(!format!("{s:?}").contains("6acb"));
        let c = Credential {
            value: "86_secretvalue".into(),
            expires_at: Utc::now(),
        };
        assert!(!format!("{c:?}").contains("secretvalue"));
    }
}
