//! The WeChat API client: the calls a refresh needs, for apps and for the open platform's
//! components and authorizers.
//!
//! WeChat answers HTTP 200 for errors too; only the body's `errcode` tells.
//! A successful `/cgi-bin/token` carries no `errcode` at all.
//! `errmsg` ends with a request id that changes every call, so nothing here matches on it.
//!
//! What comes back is not trusted further than it must be: redirects are not followed (the
//! request URL carries the app secret), an answer is read up to [`MAX_ANSWER_BYTES`], `errmsg`
//! is cut to [`MAX_ERRMSG_CHARS`] and stripped of control characters before anything stores,
//! logs or returns it, and a credential must be a plausible one.

use std::time::Duration;

use serde::Deserialize;

use crate::model::{AppId, Secret};

/// How to reach WeChat.
#[derive(Debug, Clone)]
pub struct WeChatOptions {
    /// The API root, `https://api.weixin.qq.com` in production.
    pub base_url: String,
    /// Roots to try, in order, when `base_url` cannot be connected to (WeChat's advice is to
    /// switch to another domain, such as `https://api2.weixin.qq.com`). A call is repeated on the
    /// next root only when the connection failed, so it never reached WeChat and no token was
    /// issued twice.
    pub fallback_urls: Vec<String>,
    /// WeCom's API root, `https://qyapi.weixin.qq.com` in production.
    pub work_base_url: String,
    /// The longest a whole call may take.
    pub timeout: Duration,
    /// The longest connecting may take.
    pub connect_timeout: Duration,
}

impl Default for WeChatOptions {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            fallback_urls: vec![DEFAULT_FALLBACK_URL.into()],
            work_base_url: DEFAULT_WORK_BASE_URL.into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl WeChatOptions {
    /// Options for the API roots given. Without `fallback_urls`, a call that cannot connect to
    /// `base_url` falls back to WeChat's disaster-recovery domain when `base_url` is WeChat's own,
    /// and to nothing otherwise (a mock, a proxy).
    pub fn with_base_urls(
        base_url: &str,
        work_base_url: &str,
        fallback_urls: Option<Vec<String>>,
    ) -> Self {
        let defaults = Self::default();
        let fallback_urls = match fallback_urls {
            Some(urls) => urls,
            None if base_url == defaults.base_url => defaults.fallback_urls.clone(),
            None => Vec::new(),
        };
        Self {
            base_url: base_url.to_owned(),
            fallback_urls,
            work_base_url: work_base_url.to_owned(),
            ..defaults
        }
    }
}

/// WeChat's nearest access point.
pub const DEFAULT_BASE_URL: &str = "https://api.weixin.qq.com";
/// WeCom's API root.
pub const DEFAULT_WORK_BASE_URL: &str = "https://qyapi.weixin.qq.com";
/// WeChat's general disaster-recovery domain.
pub const DEFAULT_FALLBACK_URL: &str = "https://api2.weixin.qq.com";

/// A credential as WeChat issued it: the value and its lifetime in seconds.
///
/// Its `Debug` hides the value.
#[derive(Clone)]
pub struct Issued {
    /// The token or ticket.
    pub value: String,
    /// Its lifetime, as `expires_in` said.
    pub expires_in: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("value", &"***")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// What `api_authorizer_token` answers: an authorizer access token, and the refresh token that
/// came with it. Store that refresh token every time: it may be a new one.
#[derive(Debug, Clone)]
pub struct AuthorizerIssued {
    /// The authorizer access token.
    pub token: Issued,
    /// The refresh token as WeChat returned it; `None` when the answer had none (or an empty
    /// one), in which case the one sent stays the one to keep.
    pub refresh_token: Option<Secret>,
}

/// What `api_query_auth` answers for an authorization code: who authorized, their first token
/// and their refresh token.
#[derive(Debug, Clone)]
pub struct Authorization {
    /// The account that authorized the component.
    pub authorizer_appid: AppId,
    /// Its first authorizer access token.
    pub token: Issued,
    /// Its refresh token as WeChat returned it; `None` when there was none (WeChat gives none to
    /// an account without API permissions).
    pub refresh_token: Option<Secret>,
    /// The permission sets granted (`func_info[].funcscope_category.id`).
    pub func_info: Vec<i64>,
}

/// What `api_get_authorizer_info` tells of an authorizer, as far as wetoken needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerInfo {
    /// Whether it is a mini program: WeChat's answer has a `MiniProgramInfo` object for those
    /// alone (`service_type_info.id` is 0 for subscription accounts too, so it cannot tell).
    pub mini_program: bool,
    /// Its name, when WeChat gave a non-empty one.
    pub nick_name: Option<String>,
}

/// Why a call to WeChat did not yield a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// WeChat answered with a non-zero `errcode`.
    #[error("WeChat refused: errcode {errcode}: {errmsg}")]
    Refused {
        /// WeChat's code.
        errcode: i64,
        /// WeChat's message, request id included.
        errmsg: String,
    },
    /// WeChat answered with an HTTP status other than 200 (a redirect among them: never
    /// followed).
    #[error("WeChat answered HTTP {0}{redirect}", redirect = redirect_note(*.0))]
    Status(u16),
    /// WeChat could not be reached, or did not answer in time.
    #[error("WeChat unreachable: {0}")]
    Transport(String),
    /// WeChat's answer was not the JSON it should be.
    #[error("WeChat's answer could not be read: {0}")]
    Malformed(String),
}

/// What a status's message adds when it is a redirect.
fn redirect_note(status: u16) -> &'static str {
    if (300..400).contains(&status) {
        ", a redirect, which is not followed"
    } else {
        ""
    }
}

/// The largest answer read from WeChat. A token answer is about 200 bytes, and the largest answer
/// wetoken reads (a quota, a template message's) is well under a kilobyte.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The most of WeChat's `errmsg` kept, in characters; WeChat's own are under 100.
pub const MAX_ERRMSG_CHARS: usize = 200;

/// The longest credential accepted. WeChat asks integrators to keep 512 characters for an access
/// token; today's are about 140, tickets about 90.
pub const MAX_CREDENTIAL_CHARS: usize = 2048;

/// WeChat codes meaning the access token used was not accepted.
pub const TOKEN_REJECTED: [i64; 3] = [40001, 40014, 42001];

/// WeChat codes that retrying cannot cure: the app's settings (or WeChat's console) must change.
///
/// 40013 invalid appid, 40125 invalid secret, 40164 caller IP not whitelisted, 40243 secret frozen,
/// 50004 the app may not use access tokens, 41002/41004 appid or secret missing; on the open
/// platform, 61004 the caller's IP is not whitelisted for the component and 61023 the refresh
/// token is no longer valid (the account must authorize again).
pub const FATAL: [i64; 9] = [
    40013, 40125, 40164, 40243, 50004, 41002, 41004, 61004, 61023,
];

impl UpstreamError {
    /// Whether retrying cannot help until the app's settings change.
    pub fn is_fatal(&self) -> bool {
        matches!(self, UpstreamError::Refused { errcode, .. } if FATAL.contains(errcode))
    }

    /// Whether WeChat rejected the access token the call carried.
    pub fn is_token_rejected(&self) -> bool {
        matches!(self, UpstreamError::Refused { errcode, .. } if TOKEN_REJECTED.contains(errcode))
    }

    /// Whether WeChat said a quota is spent (45009 daily, 45011 per minute), so retrying soon only
    /// wastes calls.
    pub fn is_quota(&self) -> bool {
        matches!(
            self,
            UpstreamError::Refused {
                errcode: 45009 | 45011,
                ..
            }
        )
    }

    /// WeChat's code, when WeChat answered with one: what the `errcode` column records.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            UpstreamError::Refused { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// WeChat's `errmsg`, tidied (control characters out, cut short), when WeChat answered with
    /// one: what refusal log lines carry next to the `errcode`.
    pub fn errmsg(&self) -> Option<&str> {
        match self {
            UpstreamError::Refused { errmsg, .. } => Some(errmsg),
            _ => None,
        }
    }

    /// The one-line outcome stored in the `message` column.
    pub fn message(&self) -> String {
        match self {
            UpstreamError::Refused { errcode, errmsg } => format!("{errcode}: {errmsg}"),
            other => other.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    access_token: Option<String>,
    ticket: Option<String>,
    expires_in: Option<u64>,
    msgid: Option<i64>,
    quota: Option<Quota>,
    component_access_token: Option<String>,
    pre_auth_code: Option<String>,
    authorizer_access_token: Option<String>,
    authorizer_refresh_token: Option<String>,
    /// `api_query_auth`'s; read by [`AuthorizationInfo`] only where it is the answer.
    authorization_info: Option<serde_json::Value>,
    /// `api_get_authorizer_info`'s; read by [`AuthorizerInfoAnswer`].
    authorizer_info: Option<serde_json::Value>,
}

/// `api_query_auth`'s `authorization_info`.
#[derive(Deserialize)]
struct AuthorizationInfo {
    authorizer_appid: Option<String>,
    authorizer_access_token: Option<String>,
    expires_in: Option<u64>,
    authorizer_refresh_token: Option<String>,
    #[serde(default)]
    func_info: Vec<FuncInfo>,
}

/// One of `func_info`: `{"funcscope_category":{"id":1}}`.
#[derive(Deserialize)]
struct FuncInfo {
    funcscope_category: FuncScope,
}

#[derive(Deserialize)]
struct FuncScope {
    id: i64,
}

/// `api_get_authorizer_info`'s `authorizer_info`, the fields read.
#[derive(Deserialize)]
struct AuthorizerInfoAnswer {
    nick_name: Option<String>,
    #[serde(rename = "MiniProgramInfo")]
    mini_program_info: Option<serde_json::Value>,
}

/// A refresh token as WeChat returned it; none when absent or empty.
fn returned_refresh_token(value: Option<String>) -> Option<Secret> {
    value.filter(|v| !v.is_empty()).map(Secret::new)
}

/// WeChat's own count of one API's calls today (`/cgi-bin/openapi/quota/get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Quota {
    /// The API's daily limit.
    pub daily_limit: i64,
    /// Calls counted today.
    pub used: i64,
    /// Calls left today.
    pub remain: i64,
}

/// A client for WeChat's token and ticket endpoints.
#[derive(Debug, Clone)]
pub struct WeChat {
    http: reqwest::Client,
    /// The primary root first, then the fallbacks.
    roots: Vec<String>,
    /// WeCom's API root.
    work_roots: Vec<String>,
}

impl WeChat {
    /// A client for the API root and timeouts in `options`.
    pub fn new(options: &WeChatOptions) -> Result<Self, UpstreamError> {
        let http = reqwest::Client::builder()
            // The URL carries the secret (or a token): a redirect would send it to the new host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?;
        let roots = std::iter::once(&options.base_url)
            .chain(&options.fallback_urls)
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        let work_roots = vec![options.work_base_url.trim_end_matches('/').to_owned()];
        Ok(Self {
            http,
            roots,
            work_roots,
        })
    }

    /// `GET /cgi-bin/token`: a new access token for `appid`.
    pub async fn access_token(
        &self,
        appid: &AppId,
        secret: &Secret,
    ) -> Result<Issued, UpstreamError> {
        let query = [
            ("grant_type", "client_credential"),
            ("appid", appid.as_str()),
            ("secret", secret.expose()),
        ];
        let answer = self.get(&self.roots, "/cgi-bin/token", &query).await?;
        issued(answer.access_token, answer.expires_in, "access_token")
    }

    /// `POST /cgi-bin/stable_token`: the app's stable access token. With `force`, a new one
    /// (WeChat allows 20 a day, 30 s apart; the caller keeps count).
    pub async fn stable_token(
        &self,
        appid: &AppId,
        secret: &Secret,
        force: bool,
    ) -> Result<Issued, UpstreamError> {
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": appid.as_str(),
            "secret": secret.expose(),
            "force_refresh": force,
        });
        let answer = self
            .send(&self.roots, |root| {
                self.http
                    .post(format!("{root}/cgi-bin/stable_token"))
                    .json(&body)
            })
            .await?;
        issued(answer.access_token, answer.expires_in, "access_token")
    }

    /// `GET /cgi-bin/ticket/getticket`: a new ticket of `ticket_type` (`jsapi` or `wx_card`),
    /// fetched with `token`.
    pub async fn ticket(&self, token: &str, ticket_type: &str) -> Result<Issued, UpstreamError> {
        let query = [("access_token", token), ("type", ticket_type)];
        let answer = self
            .get(&self.roots, "/cgi-bin/ticket/getticket", &query)
            .await?;
        issued(answer.ticket, answer.expires_in, "ticket")
    }

    /// WeCom's `GET /cgi-bin/gettoken`: the access token of one app of a corp. WeCom hands out
    /// the same token while it is valid.
    pub async fn work_token(&self, corpid: &str, secret: &Secret) -> Result<Issued, UpstreamError> {
        let query = [("corpid", corpid), ("corpsecret", secret.expose())];
        let answer = self
            .get(&self.work_roots, "/cgi-bin/gettoken", &query)
            .await?;
        issued(answer.access_token, answer.expires_in, "access_token")
    }

    /// WeCom's `GET /cgi-bin/get_jsapi_ticket`: the corp's jsapi ticket, fetched with `token`.
    pub async fn work_jsapi_ticket(&self, token: &str) -> Result<Issued, UpstreamError> {
        let query = [("access_token", token)];
        let answer = self
            .get(&self.work_roots, "/cgi-bin/get_jsapi_ticket", &query)
            .await?;
        issued(answer.ticket, answer.expires_in, "ticket")
    }

    /// `POST /cgi-bin/message/template/send`: sends a template message (`message` is WeChat's
    /// JSON body: `touser`, `template_id`, `data`, …) with `token`. Returns WeChat's `msgid`.
    pub async fn send_template(
        &self,
        token: &str,
        message: &serde_json::Value,
    ) -> Result<i64, UpstreamError> {
        let answer = self
            .send(&self.roots, |root| {
                self.http
                    .post(format!("{root}/cgi-bin/message/template/send"))
                    .query(&[("access_token", token)])
                    .json(message)
            })
            .await?;
        Ok(answer.msgid.unwrap_or_default())
    }

    /// Asks WeChat whether `token` still works, spending none of the token quota:
    /// `GET /cgi-bin/get_api_domain_ip`, or for a WeCom token (`work`) WeCom's
    /// `GET /cgi-bin/getcallbackip`. `Ok` means WeChat accepted it; a rejection is
    /// [`UpstreamError::Refused`] with 40001, 40014 or 42001
    /// ([`UpstreamError::is_token_rejected`]).
    pub async fn check_token(&self, token: &str, work: bool) -> Result<(), UpstreamError> {
        let (roots, path) = if work {
            (&self.work_roots, "/cgi-bin/getcallbackip")
        } else {
            (&self.roots, "/cgi-bin/get_api_domain_ip")
        };
        let query = [("access_token", token)];
        self.get(roots, path, &query).await.map(drop)
    }

    /// `POST /cgi-bin/openapi/quota/get`: WeChat's count of `cgi_path`'s calls today (for
    /// `/cgi-bin/token`, the token quota), asked with the app's `token`.
    pub async fn quota(&self, token: &str, cgi_path: &str) -> Result<Quota, UpstreamError> {
        let body = serde_json::json!({ "cgi_path": cgi_path });
        let answer = self
            .send(&self.roots, |root| {
                self.http
                    .post(format!("{root}/cgi-bin/openapi/quota/get"))
                    .query(&[("access_token", token)])
                    .json(&body)
            })
            .await?;
        answer
            .quota
            .ok_or_else(|| UpstreamError::Malformed("no quota in the answer".into()))
    }

    /// `POST /cgi-bin/clear_quota`: resets the app's API call counts for today. WeChat allows
    /// it 10 times a month (then `48006`).
    pub async fn clear_quota(&self, token: &str, appid: &AppId) -> Result<(), UpstreamError> {
        let body = serde_json::json!({ "appid": appid.as_str() });
        self.send(&self.roots, |root| {
            self.http
                .post(format!("{root}/cgi-bin/clear_quota"))
                .query(&[("access_token", token)])
                .json(&body)
        })
        .await
        .map(drop)
    }

    /// `POST /cgi-bin/component/api_component_token`: a new component access token for the
    /// third-party platform `component_appid`, with its secret and the newest verify ticket
    /// WeChat pushed (61005: the ticket expired; 61006: it is not the newest, or not one).
    pub async fn component_token(
        &self,
        component_appid: &AppId,
        secret: &Secret,
        verify_ticket: &str,
    ) -> Result<Issued, UpstreamError> {
        let body = serde_json::json!({
            "component_appid": component_appid.as_str(),
            "component_appsecret": secret.expose(),
            "component_verify_ticket": verify_ticket,
        });
        let answer = self
            .component_call("api_component_token", None, &body)
            .await?;
        issued(
            answer.component_access_token,
            answer.expires_in,
            "component_access_token",
        )
    }

    /// `POST /cgi-bin/component/api_create_preauthcode`: a pre-auth code (30 minutes) for the
    /// authorization page a customer is sent to.
    pub async fn pre_auth_code(
        &self,
        component_token: &str,
        component_appid: &AppId,
    ) -> Result<Issued, UpstreamError> {
        let body = serde_json::json!({ "component_appid": component_appid.as_str() });
        let answer = self
            .component_call("api_create_preauthcode", Some(component_token), &body)
            .await?;
        issued(answer.pre_auth_code, answer.expires_in, "pre_auth_code")
    }

    /// `POST /cgi-bin/component/api_query_auth`: exchanges the authorization code an
    /// `authorized` push carried for the authorizer's appid, token and refresh token.
    pub async fn query_auth(
        &self,
        component_token: &str,
        component_appid: &AppId,
        authorization_code: &str,
    ) -> Result<Authorization, UpstreamError> {
        let body = serde_json::json!({
            "component_appid": component_appid.as_str(),
            "authorization_code": authorization_code,
        });
        let answer = self
            .component_call("api_query_auth", Some(component_token), &body)
            .await?;
        let info: AuthorizationInfo = part(answer.authorization_info, "authorization_info")?;
        let authorizer_appid = info
            .authorizer_appid
            .as_deref()
            .and_then(|appid| AppId::parse(appid).ok())
            .ok_or_else(|| {
                UpstreamError::Malformed(
                    "no valid authorizer_appid in the authorization_info".into(),
                )
            })?;
        let token = issued(
            info.authorizer_access_token,
            info.expires_in,
            "authorizer_access_token",
        )?;
        Ok(Authorization {
            authorizer_appid,
            token,
            refresh_token: returned_refresh_token(info.authorizer_refresh_token),
            func_info: info
                .func_info
                .iter()
                .map(|f| f.funcscope_category.id)
                .collect(),
        })
    }

    /// `POST /cgi-bin/component/api_authorizer_token`: a new access token for
    /// `authorizer_appid` with its refresh token (61023: the refresh token is no longer valid;
    /// the customer must authorize again).
    pub async fn authorizer_token(
        &self,
        component_token: &str,
        component_appid: &AppId,
        authorizer_appid: &AppId,
        refresh_token: &Secret,
    ) -> Result<AuthorizerIssued, UpstreamError> {
        let body = serde_json::json!({
            "component_appid": component_appid.as_str(),
            "authorizer_appid": authorizer_appid.as_str(),
            "authorizer_refresh_token": refresh_token.expose(),
        });
        let answer = self
            .component_call("api_authorizer_token", Some(component_token), &body)
            .await?;
        let token = issued(
            answer.authorizer_access_token,
            answer.expires_in,
            "authorizer_access_token",
        )?;
        Ok(AuthorizerIssued {
            token,
            refresh_token: returned_refresh_token(answer.authorizer_refresh_token),
        })
    }

    /// `POST /cgi-bin/component/api_get_authorizer_info`: whether `authorizer_appid` is a mini
    /// program, and its name (61003: it has not authorized this component).
    pub async fn authorizer_info(
        &self,
        component_token: &str,
        component_appid: &AppId,
        authorizer_appid: &AppId,
    ) -> Result<AuthorizerInfo, UpstreamError> {
        let body = serde_json::json!({
            "component_appid": component_appid.as_str(),
            "authorizer_appid": authorizer_appid.as_str(),
        });
        let answer = self
            .component_call("api_get_authorizer_info", Some(component_token), &body)
            .await?;
        let info: AuthorizerInfoAnswer = part(answer.authorizer_info, "authorizer_info")?;
        Ok(AuthorizerInfo {
            mini_program: info.mini_program_info.is_some(),
            nick_name: info
                .nick_name
                // Shown on pages and in logs: tidied as an errmsg is.
                .map(|name| tidy_errmsg(&name))
                .filter(|name| !name.is_empty()),
        })
    }

    /// POSTs `body` to `/cgi-bin/component/{api}`, with `?component_access_token=` when
    /// `component_token` is given.
    async fn component_call(
        &self,
        api: &str,
        component_token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Answer, UpstreamError> {
        self.send(&self.roots, |root| {
            let request = self.http.post(format!("{root}/cgi-bin/component/{api}"));
            match component_token {
                Some(token) => request.query(&[("component_access_token", token)]),
                None => request,
            }
            .json(body)
        })
        .await
    }

    /// GETs `path` with `query`.
    async fn get(
        &self,
        roots: &[String],
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer, UpstreamError> {
        self.send(roots, |root| {
            self.http.get(format!("{root}{path}")).query(query)
        })
        .await
    }

    /// Sends the request `build` makes for a root to the first of `roots` that can be connected
    /// to, and reads WeChat's answer.
    async fn send(
        &self,
        roots: &[String],
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Answer, UpstreamError> {
        let mut response = None;
        for (i, root) in roots.iter().enumerate() {
            match build(root).send().await {
                Ok(r) => {
                    response = Some(r);
                    break;
                }
                Err(e) if e.is_connect() && i + 1 < roots.len() => {
                    tracing::warn!(%root, "cannot connect to WeChat; trying the next domain");
                }
                // `without_url` everywhere: the URL carries the secret or the token.
                Err(e) => return Err(UpstreamError::Transport(e.without_url().to_string())),
            }
        }
        let response = response
            .ok_or_else(|| UpstreamError::Transport("no WeChat API root configured".into()))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(UpstreamError::Status(status.as_u16()));
        }
        let body = read_capped(response).await?;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Malformed(format!("not JSON: {e}")))?;
        if answer.errcode != 0 {
            return Err(UpstreamError::Refused {
                errcode: answer.errcode,
                errmsg: tidy_errmsg(&answer.errmsg),
            });
        }
        Ok(answer)
    }
}

/// Reads `response`'s body, refusing it once it passes [`MAX_ANSWER_BYTES`] (whatever its
/// `Content-Length` says, which is checked first).
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
    let too_large = || {
        UpstreamError::Malformed(format!(
            "the answer is larger than {MAX_ANSWER_BYTES} bytes; not read"
        ))
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// WeChat's `errmsg` as wetoken keeps it: control characters (line breaks, terminal escapes,
/// bidirectional overrides) dropped, so it cannot forge log lines or garble a terminal, and cut
/// to [`MAX_ERRMSG_CHARS`], so it cannot fill a column, a log or an answer.
fn tidy_errmsg(raw: &str) -> String {
    let mut kept = raw
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c));
    let mut tidy: String = kept.by_ref().take(MAX_ERRMSG_CHARS).collect();
    if kept.next().is_some() {
        tidy.push('…');
    }
    tidy
}

/// Unicode's explicit bidirectional formatting characters, which reorder what a terminal or a
/// page shows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The object `field` of an answer, read as `T`.
fn part<T: serde::de::DeserializeOwned>(
    value: Option<serde_json::Value>,
    field: &str,
) -> Result<T, UpstreamError> {
    let value =
        value.ok_or_else(|| UpstreamError::Malformed(format!("no {field} in the answer")))?;
    serde_json::from_value(value)
        // Not serde's message: it can quote a value of the answer, a token among them.
        .map_err(|_| UpstreamError::Malformed(format!("the {field} is not of WeChat's shape")))
}

fn issued(
    value: Option<String>,
    expires_in: Option<u64>,
    field: &str,
) -> Result<Issued, UpstreamError> {
    match (value, expires_in) {
        (Some(value), Some(expires_in)) if !value.is_empty() && expires_in > 0 => {
            // Served as is in answers and headers of our own: printable ASCII only, bounded.
            if value.len() > MAX_CREDENTIAL_CHARS || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(UpstreamError::Malformed(format!(
                    "the {field} in the answer is not {MAX_CREDENTIAL_CHARS} or fewer printable ASCII characters"
                )));
            }
            Ok(Issued { value, expires_in })
        }
        _ => Err(UpstreamError::Malformed(format!(
            "no {field} with a positive expires_in in the answer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let refused = |errcode| UpstreamError::Refused {
            errcode,
            errmsg: "x rid: 6aac005a-01bfdbee-79769285".into(),
        };
        assert!(refused(40125).is_fatal());
        assert!(refused(40164).is_fatal());
        assert!(!refused(-1).is_fatal());
        assert!(!refused(45009).is_fatal());
        assert!(refused(45009).is_quota());
        assert!(refused(42001).is_token_rejected());
        assert!(!UpstreamError::Status(500).is_fatal());
        assert_eq!(
            refused(40013).message(),
            "40013: x rid: 6aac005a-01bfdbee-79769285"
        );
        assert!(
            UpstreamError::Status(302)
                .to_string()
                .contains("not followed")
        );
        assert_eq!(
            UpstreamError::Status(500).to_string(),
            "WeChat answered HTTP 500"
        );
    }

    #[test]
    fn errmsg_is_cut_and_stripped_of_control_characters() {
        assert_eq!(
            tidy_errmsg("invalid appid rid: 1-2-3"),
            "invalid appid rid: 1-2-3"
        );
        assert_eq!(
            tidy_errmsg("bad\n2026-01-01 INFO forged line\r\u{1b}[31mred\u{202e}txt.exe\u{7f}"),
            "bad2026-01-01 INFO forged line[31mredtxt.exe"
        );
        let long = "界".repeat(10_000);
        let tidy = tidy_errmsg(&long);
        assert_eq!(tidy.chars().count(), MAX_ERRMSG_CHARS + 1);
        assert!(tidy.ends_with('…'));
        assert_eq!(
            tidy_errmsg(&"x".repeat(MAX_ERRMSG_CHARS)).chars().count(),
            MAX_ERRMSG_CHARS
        );
    }

    #[test]
    fn a_credential_must_be_plausible() {
        assert!(issued(Some("ACCESS_token-1.x".into()), Some(7200), "access_token").is_ok());
        for bad in ["tok en", "tok\nen", "tok\u{1b}en", "界"] {
            assert!(
                issued(Some(bad.into()), Some(7200), "access_token").is_err(),
                "{bad:?}"
            );
        }
        let long = "a".repeat(MAX_CREDENTIAL_CHARS + 1);
        assert!(issued(Some(long), Some(7200), "access_token").is_err());
        assert!(issued(Some("a".repeat(MAX_CREDENTIAL_CHARS)), Some(7200), "ticket").is_ok());
    }
}
