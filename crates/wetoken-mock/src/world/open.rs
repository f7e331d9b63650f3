//! The open platform (third-party platforms): registered components, the verify tickets the
//! mock pushes them, their component tokens, pre-auth codes, customers' authorizations and the
//! authorizer tokens. `shared/wechat-api.md`'s "Open platform" section is the reference; where it
//! is silent, the mock takes the stricter reading and says so.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use wetoken_msgcrypt::{MsgCrypt, MsgCryptError, random_nonce, sorted_sha1_hex};

use super::{Kind, Params, Reply, Series, World, missing, random_string, rotate};
use crate::push::Prepared;
use crate::{Endpoint, MockComponent, PushError, Pushed};

/// How long a verify ticket is accepted after it was pushed (WeChat: 12 hours).
const TICKET_LIFETIME_MS: u64 = 12 * 3_600_000;
/// A pre-auth code's lifetime, in seconds (WeChat: 1800).
const PRE_AUTH_EXPIRES_IN: u64 = 1800;
/// An authorization code's lifetime (WeChat documents none; the mock's choice: one hour).
const CODE_LIFETIME_MS: u64 = 3_600_000;
/// The permission sets `api_query_auth` reports (official accounts' message, user and menu
/// management); a fixed list, for shape only.
const FUNC_SCOPES: [u32; 3] = [1, 2, 15];

/// One registered third-party platform.
struct Component {
    secret: String,
    token: String,
    aes_key: String,
    push_url: Option<String>,
    /// The newest verify ticket and when it was pushed (mock ms): the only one accepted.
    ticket: Option<(String, u64)>,
    /// When the timer pushes the next verify ticket (mock ms).
    next_push: u64,
}

/// A customer's account that authorized a component.
struct Authorizer {
    component: String,
    refresh_token: String,
    /// False once `unauthorized` was pushed: its refresh token gets 61023.
    authorized: bool,
    /// A mini program (else an official account): what `api_get_authorizer_info` tells.
    mini_program: bool,
}

/// What an authorization does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Authorizing {
    /// A customer authorizes (again, perhaps): `authorized`. The account is a mini program or an
    /// official account.
    New { mini_program: bool },
    /// A customer changes an authorization: `updateauthorized`; the account stays what it was.
    Update,
}

/// The open platform's state.
#[derive(Default)]
pub(super) struct Open {
    /// component appid → the platform.
    components: HashMap<String, Component>,
    /// component appid → its component tokens.
    component_tokens: HashMap<String, Series>,
    /// authorizer appid → the authorization.
    authorizers: HashMap<String, Authorizer>,
    /// authorizer appid → its authorizer tokens.
    authorizer_tokens: HashMap<String, Series>,
    /// pre-auth code → (component appid, valid until).
    pre_auth: HashMap<String, (String, u64)>,
    /// authorization code → (component appid, authorizer appid, valid until); used once.
    codes: HashMap<String, (String, String, u64)>,
}

/// The body of `api_component_token`. A field of the wrong JSON type makes it malformed.
#[derive(Debug, Deserialize)]
pub(crate) struct ComponentRequest {
    component_appid: Option<String>,
    component_appsecret: Option<String>,
    component_verify_ticket: Option<String>,
}

/// The body of the calls made with a `component_access_token`.
#[derive(Debug, Deserialize)]
pub(crate) struct OpenBody {
    component_appid: Option<String>,
    authorization_code: Option<String>,
    authorizer_appid: Option<String>,
    authorizer_refresh_token: Option<String>,
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// `<Name><![CDATA[value]]></Name>`: every value the mock puts there is its own (ids, codes,
/// tickets of the token alphabet), so none holds `]]>`.
fn cdata(name: &str, value: &str) -> String {
    format!("<{name}><![CDATA[{value}]]></{name}>")
}

impl World {
    fn interval_ms(&self) -> Option<u64> {
        self.config
            .verify_ticket_interval
            .map(|every| every.as_millis() as u64)
    }

    /// Registers a component, or replaces its settings (its tickets, tokens and authorizers
    /// stay). Refuses a token, key or appid that WXBizMsgCrypt would refuse.
    pub fn add_component(&mut self, component: MockComponent) -> Result<(), MsgCryptError> {
        MsgCrypt::new(&component.token, &component.aes_key, &component.appid)?;
        let next_push = self.now().saturating_add(self.interval_ms().unwrap_or(0));
        let entry = self
            .open
            .components
            .entry(component.appid)
            .or_insert_with(|| Component {
                secret: String::new(),
                token: String::new(),
                aes_key: String::new(),
                push_url: None,
                ticket: None,
                next_push,
            });
        entry.secret = component.secret;
        entry.token = component.token;
        entry.aes_key = component.aes_key;
        entry.push_url = component.push_url;
        entry.next_push = next_push;
        if entry.push_url.is_some() {
            self.timer_wake.notify_one();
        }
        Ok(())
    }

    /// Whether any component has a push URL: the timer sleeps until one does.
    pub fn has_push_url(&self) -> bool {
        self.open.components.values().any(|c| c.push_url.is_some())
    }

    pub fn verify_ticket(&self, component_appid: &str) -> Option<String> {
        let component = self.open.components.get(component_appid)?;
        component.ticket.as_ref().map(|(ticket, _)| ticket.clone())
    }

    pub fn component_token(&self, component_appid: &str) -> Option<String> {
        self.open
            .component_tokens
            .get(component_appid)?
            .current
            .clone()
    }

    pub fn authorizer_token(&self, authorizer_appid: &str) -> Option<String> {
        self.open
            .authorizer_tokens
            .get(authorizer_appid)?
            .current
            .clone()
    }

    pub fn refresh_token(&self, authorizer_appid: &str) -> Option<String> {
        let authorizer = self.open.authorizers.get(authorizer_appid)?;
        authorizer
            .authorized
            .then(|| authorizer.refresh_token.clone())
    }

    /// Seals `message` for `component_appid`'s push URL, as WeChat sends it.
    fn prepare(
        &self,
        component_appid: &str,
        message: &str,
        pushed: Pushed,
    ) -> Result<Prepared, PushError> {
        let component = self
            .open
            .components
            .get(component_appid)
            .ok_or(PushError::UnknownComponent)?;
        let url = component.push_url.clone().ok_or(PushError::NoPushUrl)?;
        let crypt = MsgCrypt::new(&component.token, &component.aes_key, component_appid)
            .map_err(|e| PushError::Seal(e.to_string()))?;
        let timestamp = (self.now() / 1000) as i64;
        let nonce = random_nonce();
        let sealed = crypt
            .seal(message, timestamp, &nonce)
            .map_err(|e| PushError::Seal(e.to_string()))?;
        let body = format!(
            "<xml>{}{}</xml>",
            cdata("AppId", component_appid),
            cdata("Encrypt", &sealed.encrypt)
        );
        let query = vec![
            (
                "signature".to_owned(),
                sorted_sha1_hex(&[&component.token, &sealed.timestamp, &nonce]),
            ),
            ("timestamp".to_owned(), sealed.timestamp.clone()),
            ("nonce".to_owned(), nonce),
            ("encrypt_type".to_owned(), "aes".to_owned()),
            ("msg_signature".to_owned(), sealed.msg_signature),
        ];
        Ok(Pushed {
            url,
            query,
            body,
            ..pushed
        })
    }

    /// A new verify ticket for `component_appid`, which from now on is the only one
    /// `api_component_token` accepts, sealed for its push URL.
    pub fn push_ticket(&mut self, component_appid: &str) -> Result<Prepared, PushError> {
        let now = self.now();
        let component = self
            .open
            .components
            .get(component_appid)
            .ok_or(PushError::UnknownComponent)?;
        if component.push_url.is_none() {
            return Err(PushError::NoPushUrl);
        }
        let ticket = random_string("ticket@@@", 86);
        let message = format!(
            "<xml>{}<CreateTime>{}</CreateTime>{}{}</xml>",
            cdata("AppId", component_appid),
            now / 1000,
            cdata("InfoType", "component_verify_ticket"),
            cdata("ComponentVerifyTicket", &ticket)
        );
        let pushed = Pushed::new(component_appid, "component_verify_ticket");
        let prepared = self.prepare(
            component_appid,
            &message,
            Pushed {
                ticket: Some(ticket.clone()),
                ..pushed
            },
        )?;
        let next = now.saturating_add(self.interval_ms().unwrap_or(0));
        if let Some(component) = self.open.components.get_mut(component_appid) {
            component.ticket = Some((ticket, now));
            component.next_push = next;
        }
        Ok(prepared)
    }

    /// The verify-ticket pushes the timer owes: every component with a push URL whose next
    /// push is due on the mock clock.
    pub fn due_tickets(&mut self) -> Vec<Prepared> {
        if self.interval_ms().is_none() {
            return Vec::new();
        }
        let now = self.now();
        let due: Vec<String> = self
            .open
            .components
            .iter()
            .filter(|(_, c)| c.push_url.is_some() && c.next_push <= now)
            .map(|(appid, _)| appid.clone())
            .collect();
        due.iter()
            .filter_map(|appid| self.push_ticket(appid).ok())
            .collect()
    }

    /// A customer authorizes `component_appid` (`update`: changes an authorization): the
    /// authorizer (`authorizer_appid`, or a new appid) is authorized with a refresh token, and a
    /// new authorization code is sealed in an `authorized` or `updateauthorized` push.
    /// `pre_auth_code`, when given, must be a live one of the component, and is used up.
    pub fn authorize(
        &mut self,
        component_appid: &str,
        authorizer_appid: Option<&str>,
        pre_auth_code: Option<&str>,
        authorizing: Authorizing,
    ) -> Result<Prepared, PushError> {
        let update = authorizing == Authorizing::Update;
        let now = self.now();
        if !self.open.components.contains_key(component_appid) {
            return Err(PushError::UnknownComponent);
        }
        let authorizer_appid = match authorizer_appid {
            Some(appid) if wetoken_msgcrypt::is_valid_id(appid) => appid.to_owned(),
            Some(_) => return Err(PushError::BadAuthorizer),
            None => format!("wx{}", random_hex(16)),
        };
        match self.open.authorizers.get(&authorizer_appid) {
            Some(a) if a.component != component_appid => return Err(PushError::BadAuthorizer),
            Some(a) if update && !a.authorized => return Err(PushError::BadAuthorizer),
            None if update => return Err(PushError::BadAuthorizer),
            _ => {}
        }
        let pre_auth_code = match pre_auth_code {
            Some(code) => match self.open.pre_auth.get(code) {
                Some((owner, until)) if owner == component_appid && *until > now => code.to_owned(),
                _ => return Err(PushError::BadPreAuthCode),
            },
            None => random_string("preauthcode@@@", 43),
        };
        let code = random_string("queryauthcode@@@", 86);
        let expires = now.saturating_add(CODE_LIFETIME_MS);
        let info_type = if update {
            "updateauthorized"
        } else {
            "authorized"
        };
        let message = format!(
            "<xml>{}<CreateTime>{}</CreateTime>{}{}{}<AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>{}</xml>",
            cdata("AppId", component_appid),
            now / 1000,
            cdata("InfoType", info_type),
            cdata("AuthorizerAppid", &authorizer_appid),
            cdata("AuthorizationCode", &code),
            expires / 1000,
            cdata("PreAuthCode", &pre_auth_code),
        );
        let pushed = Pushed {
            authorizer_appid: Some(authorizer_appid.clone()),
            authorization_code: Some(code.clone()),
            pre_auth_code: Some(pre_auth_code.clone()),
            ..Pushed::new(component_appid, info_type)
        };
        let prepared = self.prepare(component_appid, &message, pushed)?;
        self.open.pre_auth.remove(&pre_auth_code);
        self.open.codes.insert(
            code,
            (
                component_appid.to_owned(),
                authorizer_appid.clone(),
                expires,
            ),
        );
        let authorizer = self
            .open
            .authorizers
            .entry(authorizer_appid)
            .or_insert_with(|| Authorizer {
                component: component_appid.to_owned(),
                refresh_token: String::new(),
                authorized: false,
                mini_program: false,
            });
        if let Authorizing::New { mini_program } = authorizing {
            authorizer.mini_program = mini_program;
        }
        if !authorizer.authorized {
            authorizer.refresh_token = random_string("refreshtoken@@@", 43);
            authorizer.authorized = true;
        }
        Ok(prepared)
    }

    /// A customer withdraws `authorizer_appid`'s authorization of `component_appid`: its
    /// tokens, refresh token and codes stop working at once, and an `unauthorized` push is
    /// sealed.
    pub fn unauthorize(
        &mut self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<Prepared, PushError> {
        match self.open.authorizers.get(authorizer_appid) {
            Some(a) if a.component == component_appid && a.authorized => {}
            _ => return Err(PushError::BadAuthorizer),
        }
        let message = format!(
            "<xml>{}<CreateTime>{}</CreateTime>{}{}</xml>",
            cdata("AppId", component_appid),
            self.now() / 1000,
            cdata("InfoType", "unauthorized"),
            cdata("AuthorizerAppid", authorizer_appid),
        );
        let pushed = Pushed {
            authorizer_appid: Some(authorizer_appid.to_owned()),
            ..Pushed::new(component_appid, "unauthorized")
        };
        let prepared = self.prepare(component_appid, &message, pushed)?;
        if let Some(authorizer) = self.open.authorizers.get_mut(authorizer_appid) {
            authorizer.authorized = false;
        }
        if let Some(series) = self.open.authorizer_tokens.remove(authorizer_appid) {
            for token in [series.current, series.previous].into_iter().flatten() {
                self.grants.remove(&token);
            }
        }
        self.open
            .codes
            .retain(|_, (_, authorizer, _)| authorizer != authorizer_appid);
        Ok(prepared)
    }

    /// `POST /cgi-bin/component/api_component_token`: needs the component's secret and its
    /// newest verify ticket; a new component token every time.
    pub fn component_token_call(&mut self, request: &ComponentRequest) -> Reply {
        let Some(appid) = missing(request.component_appid.as_deref()) else {
            return Err(self.error(41002, "appid missing"));
        };
        let Some(secret) = missing(request.component_appsecret.as_deref()) else {
            return Err(self.error(41004, "appsecret missing"));
        };
        let Some(component) = self.open.components.get(appid) else {
            return Err(self.error(40013, "invalid appid"));
        };
        if component.secret != secret {
            return Err(self.error(40125, "invalid appsecret"));
        }
        let given = request.component_verify_ticket.as_deref();
        match &component.ticket {
            Some((ticket, at)) if Some(ticket.as_str()) == given => {
                if self.now().saturating_sub(*at) >= TICKET_LIFETIME_MS {
                    return Err(self.error(61005, "component ticket is expired"));
                }
            }
            // Missing, unknown, or older than the newest pushed: the stricter reading.
            _ => return Err(self.error(61006, "component ticket is invalid")),
        }
        let appid = appid.to_owned();
        self.spend(&appid, Endpoint::ComponentToken)?;
        let token = self.mint(&appid, Kind::Component);
        let cut = self.now().saturating_add(self.overlap_ms());
        let series = self.open.component_tokens.entry(appid).or_default();
        rotate(&mut self.grants, series, token.clone(), cut);
        Ok(json!({"component_access_token": token, "expires_in": self.config.token_expires_in}))
    }

    /// The component named by a call's `component_access_token` parameter, which must be live
    /// and belong to the body's `component_appid` (another component's appid: 40013, the mock's
    /// choice).
    fn check_component(&self, params: &Params, body: &OpenBody) -> Result<String, Value> {
        let owner = self.check_token_named(params, "component_access_token", &[Kind::Component])?;
        match missing(body.component_appid.as_deref()) {
            None => Err(self.error(41002, "appid missing")),
            Some(named) if named != owner => Err(self.error(40013, "invalid appid")),
            Some(_) => Ok(owner),
        }
    }

    /// `POST /cgi-bin/component/api_create_preauthcode`.
    pub fn create_preauthcode(&mut self, params: &Params, body: &OpenBody) -> Reply {
        let component = self.check_component(params, body)?;
        let code = random_string("preauthcode@@@", 43);
        let until = self
            .now()
            .saturating_add(PRE_AUTH_EXPIRES_IN.saturating_mul(1000));
        self.open.pre_auth.insert(code.clone(), (component, until));
        Ok(json!({"pre_auth_code": code, "expires_in": PRE_AUTH_EXPIRES_IN}))
    }

    /// A new authorizer token for `authorizer_appid`; the previous one lives the overlap more.
    fn mint_authorizer_token(&mut self, authorizer_appid: &str) -> String {
        let token = self.mint(authorizer_appid, Kind::Authorizer);
        let cut = self.now().saturating_add(self.overlap_ms());
        let series = self
            .open
            .authorizer_tokens
            .entry(authorizer_appid.to_owned())
            .or_default();
        rotate(&mut self.grants, series, token.clone(), cut);
        token
    }

    /// `POST /cgi-bin/component/api_query_auth`: exchanges an authorization code, once.
    /// WeChat's spec names no errcode for a bad code; the mock answers 61009 for an unknown,
    /// used or foreign code and 61010 for an expired one.
    pub fn query_auth(&mut self, params: &Params, body: &OpenBody) -> Reply {
        let component = self.check_component(params, body)?;
        let code = missing(body.authorization_code.as_deref()).unwrap_or_default();
        let Some((owner, authorizer_appid, until)) = self.open.codes.remove(code) else {
            return Err(self.error(61009, "code is invalid"));
        };
        if owner != component {
            self.open
                .codes
                .insert(code.to_owned(), (owner, authorizer_appid, until));
            return Err(self.error(61009, "code is invalid"));
        }
        if self.now() >= until {
            return Err(self.error(61010, "code is expired"));
        }
        let Some(refresh_token) = self.refresh_token(&authorizer_appid) else {
            return Err(self.error(61009, "code is invalid"));
        };
        let token = self.mint_authorizer_token(&authorizer_appid);
        let func_info: Vec<Value> = FUNC_SCOPES
            .iter()
            .map(|id| json!({"funcscope_category": {"id": id}}))
            .collect();
        Ok(json!({"authorization_info": {
            "authorizer_appid": authorizer_appid,
            "authorizer_access_token": token,
            "expires_in": self.config.token_expires_in,
            "authorizer_refresh_token": refresh_token,
            "func_info": func_info,
        }}))
    }

    /// `POST /cgi-bin/component/api_authorizer_token`: a new authorizer token with the refresh
    /// token, which comes back (a new one when [`crate::MockConfig::rotate_refresh_tokens`]).
    /// An unknown, foreign, withdrawn or superseded refresh token gets 61023.
    pub fn authorizer_token_call(&mut self, params: &Params, body: &OpenBody) -> Reply {
        let component = self.check_component(params, body)?;
        let Some(authorizer_appid) = missing(body.authorizer_appid.as_deref()) else {
            return Err(self.error(41002, "authorizer_appid missing"));
        };
        let given = body.authorizer_refresh_token.as_deref().unwrap_or_default();
        let valid = self
            .open
            .authorizers
            .get(authorizer_appid)
            .is_some_and(|a| a.component == component && a.authorized && a.refresh_token == given);
        if !valid {
            return Err(self.error(61023, "refresh_token is invalid"));
        }
        let authorizer_appid = authorizer_appid.to_owned();
        self.spend(&authorizer_appid, Endpoint::AuthorizerToken)?;
        let token = self.mint_authorizer_token(&authorizer_appid);
        let rotate_refresh = self.config.rotate_refresh_tokens;
        let refresh_token = match self.open.authorizers.get_mut(&authorizer_appid) {
            Some(authorizer) => {
                if rotate_refresh {
                    authorizer.refresh_token = random_string("refreshtoken@@@", 43);
                }
                authorizer.refresh_token.clone()
            }
            None => given.to_owned(),
        };
        Ok(json!({
            "authorizer_access_token": token,
            "expires_in": self.config.token_expires_in,
            "authorizer_refresh_token": refresh_token,
        }))
    }

    /// `POST /cgi-bin/component/api_get_authorizer_info`: the authorizer's name and kind, as
    /// WeChat shapes them (a `MiniProgramInfo` object for a mini program alone). An authorizer
    /// that is unknown, another component's or withdrawn gets 61003.
    pub fn authorizer_info_call(&mut self, params: &Params, body: &OpenBody) -> Reply {
        let component = self.check_component(params, body)?;
        let Some(authorizer_appid) = missing(body.authorizer_appid.as_deref()) else {
            return Err(self.error(41002, "authorizer_appid missing"));
        };
        let Some(authorizer) = self
            .open
            .authorizers
            .get(authorizer_appid)
            .filter(|a| a.component == component && a.authorized)
        else {
            return Err(self.error(61003, "component is not authorized by this account"));
        };
        let func_info: Vec<Value> = FUNC_SCOPES
            .iter()
            .map(|id| json!({"funcscope_category": {"id": id}}))
            .collect();
        let mut info = json!({
            "nick_name": format!("mock {authorizer_appid}"),
            "head_img": "",
            // An official account is a service account (2); a mini program's is 0.
            "service_type_info": {"id": if authorizer.mini_program { 0 } else { 2 }},
            "verify_type_info": {"id": 0},
            "user_name": format!("gh_{}", random_hex(12)),
            "principal_name": "mock",
            "alias": "",
            "qrcode_url": "",
            "business_info": {"open_pay": 0, "open_shake": 0, "open_scan": 0, "open_card": 0,
                              "open_store": 0},
            "account_status": 1,
        });
        if authorizer.mini_program {
            info["signature"] = json!("");
            info["MiniProgramInfo"] = json!({
                "network": {"RequestDomain": [], "WsRequestDomain": [], "UploadDomain": [],
                            "DownloadDomain": [], "UDPDomain": [], "TCPDomain": []},
                "categories": [],
                "visit_status": 0,
            });
        }
        Ok(json!({
            "authorizer_info": info,
            "authorization_info": {
                "authorizer_appid": authorizer_appid,
                "authorizer_refresh_token": authorizer.refresh_token,
                "func_info": func_info,
            },
        }))
    }

    /// How long until the timer's next verify-ticket push is due, at most `cap`.
    pub fn ticket_tick(&self, cap: Duration) -> Duration {
        self.config
            .verify_ticket_interval
            .map_or(cap, |every| every.min(cap))
    }
}
