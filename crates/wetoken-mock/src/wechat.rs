//! WeChat's semantics, without HTTP: who holds which token, until when, and what each call answers.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{Value, json};

use crate::{Endpoint, Fault, MockConfig};

const DAY_MS: u64 = 86_400_000;
const FORCE_PER_DAY: usize = 20;
const FORCE_SPACING_MS: u64 = 30_000;

struct TokenInfo {
    appid: String,
    valid_until: u64,
    invalidated: bool,
}

#[derive(Default)]
struct Stable {
    token: Option<String>,
    expires_at: u64,
    forces: VecDeque<u64>,
}

/// Everything the mock remembers.
pub(crate) struct World {
    pub config: MockConfig,
    offset: Duration,
    /// appid (or corpid) → its secrets; for official accounts the last one is the valid one.
    apps: HashMap<String, Vec<String>>,
    tokens: HashMap<String, TokenInfo>,
    classic: HashMap<String, String>,
    stable: HashMap<String, Stable>,
    work: HashMap<(String, String), String>,
    tickets: HashMap<(String, String), String>,
    pub calls: HashMap<Endpoint, u64>,
    pub faults: HashMap<Endpoint, VecDeque<Fault>>,
}

/// A WeChat error body, `errmsg` with a request id as the live service writes it.
pub(crate) fn error(errcode: i64, text: &str) -> Value {
    let mut rng = rand::rng();
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as u32;
    json!({
        "errcode": errcode,
        "errmsg": format!("{text} rid: {secs:08x}-{:08x}-{:08x}", rng.random::<u32>(), rng.random::<u32>()),
    })
}

fn new_value(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 147)
    )
}

type Params = HashMap<String, String>;

impl World {
    pub fn new(config: MockConfig) -> Self {
        Self {
            config,
            offset: Duration::ZERO,
            apps: HashMap::new(),
            tokens: HashMap::new(),
            classic: HashMap::new(),
            stable: HashMap::new(),
            work: HashMap::new(),
            tickets: HashMap::new(),
            calls: HashMap::new(),
            faults: HashMap::new(),
        }
    }

    /// The mock clock, in Unix milliseconds.
    fn now(&self) -> u64 {
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + self.offset)
            .as_millis() as u64
    }

    pub fn advance(&mut self, by: Duration) {
        self.offset += by;
    }

    pub fn add_app(&mut self, appid: &str, secret: &str) {
        let secrets = self.apps.entry(appid.to_owned()).or_default();
        secrets.retain(|s| s != secret);
        secrets.push(secret.to_owned());
    }

    pub fn invalidate(&mut self, token: &str) {
        if let Some(info) = self.tokens.get_mut(token) {
            info.invalidated = true;
        }
    }

    pub fn current_token(&self, appid: &str) -> Option<String> {
        self.classic.get(appid).cloned()
    }

    pub fn current_ticket(&self, appid: &str, kind: &str) -> Option<String> {
        self.tickets
            .get(&(appid.to_owned(), kind.to_owned()))
            .cloned()
    }

    fn lifetime_ms(&self) -> u64 {
        self.config.token_expires_in * 1000
    }

    fn overlap_ms(&self) -> u64 {
        self.config.overlap.as_millis() as u64
    }

    fn issue(&mut self, appid: &str, prefix: &str) -> String {
        let token = new_value(prefix);
        let valid_until = self.now() + self.lifetime_ms();
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                appid: appid.to_owned(),
                valid_until,
                invalidated: false,
            },
        );
        token
    }

    /// Cuts `token`'s life to at most the overlap from now.
    fn retire(&mut self, token: &str) {
        let cut = self.now() + self.overlap_ms();
        if let Some(info) = self.tokens.get_mut(token) {
            info.valid_until = info.valid_until.min(cut);
        }
    }

    fn remaining_secs(&self, token: &str) -> u64 {
        let now = self.now();
        self.tokens
            .get(token)
            .map_or(0, |t| t.valid_until.saturating_sub(now) / 1000)
    }

    /// The appid a token belongs to, or WeChat's error for it.
    fn check_token(&self, params: &Params) -> Result<String, Value> {
        let Some(token) = params.get("access_token").filter(|t| !t.is_empty()) else {
            return Err(error(41001, "access_token missing"));
        };
        match self.tokens.get(token) {
            None => Err(error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            )),
            Some(info) if info.invalidated => Err(error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            )),
            Some(info) if self.now() >= info.valid_until => {
                Err(error(42001, "access_token expired"))
            }
            Some(info) => Ok(info.appid.clone()),
        }
    }

    /// appid and secret checks shared by the classic and stable token calls.
    fn check_app(&mut self, params: &Params) -> Result<String, Value> {
        if params.get("grant_type").map(String::as_str) != Some("client_credential") {
            return Err(error(40002, "invalid grant_type"));
        }
        let Some(appid) = params.get("appid").filter(|s| !s.is_empty()) else {
            return Err(error(41002, "appid missing"));
        };
        let Some(secret) = params.get("secret").filter(|s| !s.is_empty()) else {
            return Err(error(41004, "appsecret missing"));
        };
        match self.apps.get(appid) {
            None if self.config.auto_register => {
                let (appid, secret) = (appid.clone(), secret.clone());
                self.add_app(&appid, &secret);
                Ok(appid)
            }
            None => Err(error(40013, "invalid appid")),
            Some(secrets) if secrets.last() != Some(secret) => {
                Err(error(40125, "invalid appsecret"))
            }
            Some(_) => Ok(appid.clone()),
        }
    }

    pub fn answer(&mut self, endpoint: Endpoint, params: &Params) -> Value {
        let result = match endpoint {
            Endpoint::Token => self.token(params),
            Endpoint::StableToken => self.stable_token(params),
            Endpoint::Ticket => self.ticket(params),
            Endpoint::CheckToken => self
                .check_token(params)
                .map(|_| json!({"ip_list": ["127.0.0.1"]})),
            Endpoint::MenuCreate => self
                .check_token(params)
                .map(|_| json!({"errcode": 0, "errmsg": "ok"})),
            Endpoint::WorkToken => self.work_token(params),
            Endpoint::WorkTicket => self.work_ticket(params),
        };
        result.unwrap_or_else(|e| e)
    }

    fn token(&mut self, params: &Params) -> Result<Value, Value> {
        let appid = self.check_app(params)?;
        let token = self.issue(&appid, "86_");
        if let Some(old) = self.classic.insert(appid, token.clone()) {
            self.retire(&old);
        }
        // A success carries no errcode at all.
        Ok(json!({"access_token": token, "expires_in": self.config.token_expires_in}))
    }

    fn stable_token(&mut self, params: &Params) -> Result<Value, Value> {
        let appid = self.check_app(params)?;
        let force = params.get("force_refresh").map(String::as_str) == Some("true");
        let now = self.now();
        let overlap = self.overlap_ms();
        let state = self.stable.entry(appid.clone()).or_default();
        state.forces.retain(|t| now.saturating_sub(*t) < DAY_MS);
        let current_ok = state.token.is_some() && now + overlap < state.expires_at;
        let may_force = state.forces.len() < FORCE_PER_DAY
            && state
                .forces
                .back()
                .is_none_or(|t| now.saturating_sub(*t) >= FORCE_SPACING_MS);
        let renew = !current_ok || (force && may_force);
        if renew {
            if force && current_ok {
                state.forces.push_back(now);
            }
            let old = state.token.take();
            let token = self.issue(&appid, "86_S");
            let expires_at = now + self.lifetime_ms();
            let state = self.stable.entry(appid.clone()).or_default();
            state.token = Some(token);
            state.expires_at = expires_at;
            if let Some(old) = old {
                self.retire(&old);
            }
        }
        let state = &self.stable[&appid];
        let token = state.token.clone().unwrap_or_default();
        let expires_in = state.expires_at.saturating_sub(now) / 1000;
        Ok(json!({"access_token": token, "expires_in": expires_in}))
    }

    fn ticket(&mut self, params: &Params) -> Result<Value, Value> {
        let appid = self.check_token(params)?;
        let kind = params.get("type").map(String::as_str).unwrap_or_default();
        if kind != "jsapi" && kind != "wx_card" {
            return Err(error(40097, "invalid args"));
        }
        let ticket = new_value("HoagFKDcsGMVCIY2vOjf9");
        self.tickets
            .insert((appid, kind.to_owned()), ticket.clone());
        Ok(
            json!({"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": self.config.ticket_expires_in}),
        )
    }

    fn work_token(&mut self, params: &Params) -> Result<Value, Value> {
        let Some(corpid) = params.get("corpid").filter(|s| !s.is_empty()) else {
            return Err(error(41002, "corpid missing"));
        };
        let Some(secret) = params.get("corpsecret").filter(|s| !s.is_empty()) else {
            return Err(error(41004, "corpsecret missing"));
        };
        match self.apps.get(corpid) {
            None => return Err(error(40013, "invalid corpid")),
            Some(secrets) if !secrets.contains(secret) => {
                return Err(error(40001, "invalid credential"));
            }
            Some(_) => {}
        }
        let key = (corpid.clone(), secret.clone());
        let now = self.now();
        let reuse = self
            .work
            .get(&key)
            .filter(|t| {
                self.tokens
                    .get(*t)
                    .is_some_and(|i| !i.invalidated && now < i.valid_until)
            })
            .cloned();
        let token = match reuse {
            Some(token) => token,
            None => {
                let token = self.issue(corpid, "ww_");
                self.work.insert(key, token.clone());
                token
            }
        };
        let expires_in = self.remaining_secs(&token);
        Ok(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in}))
    }

    fn work_ticket(&mut self, params: &Params) -> Result<Value, Value> {
        let corpid = self.check_token(params)?;
        let ticket = new_value("ww_ticket_");
        self.tickets
            .insert((corpid, "jsapi".into()), ticket.clone());
        Ok(
            json!({"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": self.config.ticket_expires_in}),
        )
    }
}
