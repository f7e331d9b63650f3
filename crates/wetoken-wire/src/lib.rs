//! The JSON bodies of wetoken's HTTP API.
//!
//! This crate is the contract between `wetoken-server` and its clients.
//! It depends on `serde` and `thiserror` alone, so a service that only pulls tokens links nothing
//! of the server.
//! [`source::TokenSource`], the trait every source of tokens implements (a server by URL, an
//! embedded engine), lives here for the same reason.
//!
//! Every body carries `errcode` and `errmsg`, as WeChat's own API does and as the Go wetoken did.
//! `errcode` 0 is success.
//! Codes in the 90000 range are wetoken's own (see [`code`]); any other non-zero code was passed
//! through from WeChat unchanged.
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

pub mod source;

/// The `errcode` values wetoken itself produces.
///
/// WeChat's codes are passed through as they came, so wetoken's own live in a range WeChat does not
/// use.
pub mod code {
    /// Success.
    pub const OK: i64 = 0;
    /// The request is malformed: a bad appid, a missing parameter, a body that is not JSON.
    pub const BAD_REQUEST: i64 = 90400;
    /// The route needs the admin key (`Authorization: Bearer <key>`), and none or a wrong one
    /// came.
    pub const UNAUTHORIZED: i64 = 90401;
    /// The route is not open to this caller (the admin routes, from outside `admin_networks`
    /// while no admin key is configured).
    pub const FORBIDDEN: i64 = 90403;
    /// No app with that appid is registered.
    pub const UNKNOWN_APP: i64 = 90404;
    /// The route exists but not for this HTTP method.
    pub const METHOD_NOT_ALLOWED: i64 = 90405;
    /// An app with that appid already exists.
    pub const DUPLICATE_APP: i64 = 90409;
    /// A limit would be exceeded: a stable token may be forced 20 times a day, 30 s apart (and
    /// one caller may cause only its share of them); a caller over its passive-refresh rate
    /// (a `Retry-After` header says when to try again).
    pub const LIMITED: i64 = 90429;
    /// The app's daily budget of token fetches is spent for the WeChat day (it ends at midnight
    /// China time), or only the reserve kept for scheduled renewals is left; WeChat was not
    /// called. Served tokens keep working; a passive refresh is refused until the day ends.
    pub const OVER_BUDGET: i64 = 90430;
    /// The request body is larger than the server accepts.
    pub const BODY_TOO_LARGE: i64 = 90413;
    /// No route matches the path.
    pub const NOT_FOUND: i64 = 90444;
    /// Something failed inside wetoken; the server log says what.
    pub const INTERNAL: i64 = 90500;
    /// WeChat could not be reached (or answered with a server error) and no valid credential is held.
    pub const UPSTREAM_UNAVAILABLE: i64 = 90503;
    /// The database could not be reached.
    pub const DATABASE_UNAVAILABLE: i64 = 90504;
    /// The server is not ready: it is starting (opening and migrating its database, when it
    /// answers every route but `/live` with this), or stopping (`/ready`). Another server may
    /// serve.
    pub const NOT_READY: i64 = 90505;
    /// WeChat refused the last attempt with an error that retrying cannot cure; wetoken stopped
    /// calling WeChat for this app until its settings change. `errmsg` carries WeChat's errcode.
    pub const HALTED: i64 = 90502;
    /// No unexpired credential is stored, and the route never fetches one
    /// (`/wx/{appid}/token/query`).
    pub const NOT_STORED: i64 = 90410;
    /// The account withdrew its authorization of its third-party platform (an `unauthorized`
    /// push): nothing is served for it until it authorizes again.
    pub const REVOKED: i64 = 90460;
    /// A third-party platform's component token cannot be fetched: no verify ticket WeChat
    /// still accepts has been pushed to it yet. WeChat was not called; it pushes one every ten
    /// minutes.
    pub const NO_VERIFY_TICKET: i64 = 90461;

    /// The HTTP status an error with `errcode` is answered with when the server gives errors
    /// their own status (`http.credential_errors = "as_status"`, and always on the admin
    /// routes). The server derives its statuses from this table, so a client that reads an
    /// error from an HTTP 200 body can tell the status it stands for. Any code outside
    /// wetoken's own range is WeChat's, passed through: 502.
    pub fn http_status(errcode: i64) -> u16 {
        match errcode {
            OK => 200,
            BAD_REQUEST => 400,
            UNAUTHORIZED => 401,
            FORBIDDEN => 403,
            UNKNOWN_APP | NOT_FOUND | NOT_STORED => 404,
            REVOKED => 410,
            METHOD_NOT_ALLOWED => 405,
            DUPLICATE_APP => 409,
            BODY_TOO_LARGE => 413,
            LIMITED | OVER_BUDGET => 429,
            INTERNAL => 500,
            UPSTREAM_UNAVAILABLE | DATABASE_UNAVAILABLE | NOT_READY | NO_VERIFY_TICKET => 503,
            _ => 502,
        }
    }

    /// Whether a client holding several server URLs should ask the next one after this error:
    /// only for a failure of this server itself (90500, 90503, 90504, 90505), which another server may
    /// not share. Every other error is an answer: another replica on the same database would
    /// give the same one (a refusal of WeChat's is recorded there, with its backoff).
    pub fn try_another_server(errcode: i64) -> bool {
        matches!(
            errcode,
            INTERNAL | UPSTREAM_UNAVAILABLE | DATABASE_UNAVAILABLE | NOT_READY
        )
    }
}

/// The body of every error answer: `{"errcode":N,"errmsg":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Non-zero: a [`code`] of wetoken's, or WeChat's own code passed through.
    pub errcode: i64,
    /// What went wrong, for a person.
    pub errmsg: String,
}

/// The answer of the token and ticket routes (`get` and `refresh`).
///
/// Exactly one of `access_token` and `ticket` is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialBody {
    /// 0.
    pub errcode: i64,
    /// `"success"`.
    pub errmsg: String,
    /// The access token, on the token routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// The ticket, on the ticket routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Whole seconds of life the credential has left when the answer was written.
    pub expires_in: i64,
    /// When it expires, as `YYYYMMDDHHMMSS` in the server's local time (as the Go wetoken wrote it).
    pub expires_date: String,
}

impl CredentialBody {
    /// The credential itself, whichever field carries it.
    pub fn value(&self) -> Option<&str> {
        self.access_token.as_deref().or(self.ticket.as_deref())
    }
}

/// An app as the listing routes show it. Secrets are never part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    /// The app's key on every route: its appid, or `<corpid>.<agentid>` for a WeCom app.
    pub appid: String,
    /// `mp` (official account), `mini` (mini program), `work` (WeCom) or `component` (a
    /// third-party platform of WeChat's open platform).
    pub kind: String,
    /// `classic` or `stable`.
    pub token_mode: String,
    /// A WeCom app's corpid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpid: Option<String>,
    /// A WeCom app's agentid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agentid: Option<String>,
    /// An authorizer's third-party platform, whose component token fetches its token; absent
    /// for every other app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_appid: Option<String>,
    /// When an authorizer withdrew its authorization (RFC 3339, UTC): nothing is served for it
    /// until it authorizes again. Absent while it stands, and for every other app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Upstream calls the operator expects to stay under per day.
    pub daily_budget: i32,
    /// Upstream calls made for the app today (China time), by every replica.
    pub calls_today: i32,
    /// How often, in seconds, the servers check the app's token with WeChat to catch a fetch made
    /// outside wetoken: 0 never; absent, the servers' default (and from servers before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_secs: Option<i32>,
    /// Whether a message-push token is stored.
    pub has_token: bool,
    /// Whether an EncodingAESKey is stored.
    pub has_aes_key: bool,
    /// Whether a WeChat Pay key (`pay_key`) is stored; the key itself is never shown.
    #[serde(default)]
    pub has_pay_key: bool,
    /// The Go wetoken's WeChat Pay merchant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mchid: Option<String>,
    /// The sub-merchant's appid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_appid: Option<String>,
    /// The sub-merchant's merchant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_mchid: Option<String>,
    /// The domain authorised for web pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat_host: Option<String>,
    /// The verification-code template (`/wx/{appid}/wxcode/send`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wcode_template_id: Option<String>,
    /// When the app was added (RFC 3339, UTC).
    pub create_time: String,
    /// When its settings last changed (RFC 3339, UTC).
    pub update_time: String,
    /// The access token's state.
    pub access_token: CredentialState,
    /// The jsapi ticket's state.
    pub jsapi_ticket: CredentialState,
    /// The card (`wx_card`) ticket's state.
    pub card_ticket: CredentialState,
}

/// The answer of `/wechat/app/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// 0.
    pub errcode: i64,
    /// `"success"`.
    pub errmsg: String,
    /// The new app's key on every route.
    pub appid: String,
}

/// The answer of `/{appid}/wechat/jssdk/config`: what a page passes to `wx.config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JssdkConfigBody {
    /// 0.
    pub errcode: i64,
    /// `"success"`.
    pub errmsg: String,
    /// The appid (a WeCom app's corpid).
    #[serde(rename = "appId")]
    pub app_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    /// The random string that was signed.
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    /// SHA-1 of the ticket, nonce, timestamp and URL.
    pub signature: String,
}

/// What is known of one credential of an app, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialState {
    /// When the stored value expires (RFC 3339, UTC); absent when none was fetched yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The outcome of the last refresh: `success`, or WeChat's errcode and errmsg.
    pub message: String,
    /// Whether wetoken stopped calling WeChat for it until the app's settings change.
    pub halted: bool,
    /// How many stored values WeChat dropped before their time: replaced by a fetch made outside
    /// wetoken with the app's secret. Absent from servers before it was counted.
    #[serde(default)]
    pub replaced: i32,
}

/// The answer of `/wechat/app/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppList {
    /// 0.
    pub errcode: i64,
    /// `"success"`.
    pub errmsg: String,
    /// The apps, ordered by appid: one page, at most `limit` (100 unless asked otherwise).
    pub apps: Vec<AppView>,
    /// Where the next page starts: pass it back as `cursor`. Absent on the last page (and from
    /// servers that did not page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One authorizer of a third-party platform, as `/component/{appid}/authorizers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerView {
    /// The authorizer's appid: its token is at `/{appid}/wechat/token/get`.
    pub appid: String,
    /// `mp` (official account) or `mini` (mini program).
    pub kind: String,
    /// `authorized`, or `revoked` once the account withdrew its authorization.
    pub authorization: String,
    /// When it withdrew it (RFC 3339, UTC); absent while it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Its access token's state: `healthy`, `renewing`, `pending`, `failing`, `out_of_budget`
    /// or `halted` (the names `state=` filters by); `pending` also when none is stored, as
    /// after a withdrawal.
    pub token_state: String,
    /// Its access token, without the value: expiry, the last refresh's outcome.
    pub access_token: CredentialState,
}

/// The answer of `/component/{appid}/authorizers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerList {
    /// 0.
    pub errcode: i64,
    /// `"success"`.
    pub errmsg: String,
    /// The third-party platform.
    pub component_appid: String,
    /// Its authorizers, ordered by appid: one page, at most `limit` (100 unless asked).
    pub authorizers: Vec<AuthorizerView>,
    /// Where the next page starts: pass it back as `after`. Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The answer of `/component/{appid}/auth_url`: the link that sends an account to WeChat's
/// authorization page for the third-party platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthUrl {
    /// 0.
    pub errcode: i64,
    /// `"success"`.
    pub errmsg: String,
    /// `https://mp.weixin.qq.com/cgi-bin/componentloginpage?component_appid=…&pre_auth_code=…&redirect_uri=…&auth_type=…`.
    pub auth_url: String,
    /// When its pre-auth code expires (RFC 3339, UTC): the link works once, until then.
    pub expires_at: String,
}

/// The answer of `/wechat/app/show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppShow {
    /// 0.
    pub errcode: i64,
    /// `"success"`.
    pub errmsg: String,
    /// The app.
    pub app: AppView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_body_has_no_ticket_field() {
        let body = CredentialBody {
            errcode: 0,
            errmsg: "success".into(),
            access_token: Some("t".into()),
            ticket: None,
            expires_in: 7000,
            expires_date: "20261124120000".into(),
        };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"errcode":0,"errmsg":"success","access_token":"t","expires_in":7000,"expires_date":"20261124120000"}"#
        );
        let back: CredentialBody = serde_json::from_str(&json).unwrap();
        assert_eq!(back.value(), Some("t"));
    }

    #[test]
    fn statuses_follow_the_codes() {
        for (errcode, status) in [
            (code::OK, 200),
            (code::BAD_REQUEST, 400),
            (code::UNAUTHORIZED, 401),
            (code::FORBIDDEN, 403),
            (code::UNKNOWN_APP, 404),
            (code::NOT_FOUND, 404),
            (code::METHOD_NOT_ALLOWED, 405),
            (code::DUPLICATE_APP, 409),
            (code::BODY_TOO_LARGE, 413),
            (code::LIMITED, 429),
            (code::INTERNAL, 500),
            (code::HALTED, 502),
            (code::UPSTREAM_UNAVAILABLE, 503),
            (code::DATABASE_UNAVAILABLE, 503),
            (code::NOT_READY, 503),
            (40013, 502),
            (-1, 502),
        ] {
            assert_eq!(code::http_status(errcode), status, "{errcode}");
            let fails_over = code::try_another_server(errcode);
            assert_eq!(
                fails_over,
                [90500, 90503, 90504, 90505].contains(&errcode),
                "{errcode}"
            );
        }
    }

    #[test]
    fn an_app_view_without_verify_secs_still_parses() {
        // What servers from before `verify_secs` answer.
        let state = r#"{"message":"not fetched yet","halted":false}"#;
        let old = format!(
            r#"{{"appid":"wxa","kind":"mp","token_mode":"classic","daily_budget":2000,"calls_today":0,"has_token":false,"has_aes_key":false,"create_time":"t","update_time":"t","access_token":{state},"jsapi_ticket":{state},"card_ticket":{state}}}"#
        );
        let mut view: AppView = serde_json::from_str(&old).unwrap();
        assert_eq!(view.verify_secs, None);
        assert!(
            !serde_json::to_string(&view)
                .unwrap()
                .contains("verify_secs")
        );
        view.verify_secs = Some(0);
        let json = serde_json::to_string(&view).unwrap();
        assert!(json.contains(r#""verify_secs":0"#), "{json}");
        assert_eq!(serde_json::from_str::<AppView>(&json).unwrap(), view);
    }

    #[test]
    fn go_server_answer_parses() {
        let go = r#"{"errcode":0,"errmsg":"success","ticket":"HoagFK","expires_in":6599,"expires_date":"20180511121655"}"#;
        let body: CredentialBody = serde_json::from_str(go).unwrap();
        assert_eq!(body.value(), Some("HoagFK"));
        assert_eq!(body.expires_in, 6599);
    }
}
