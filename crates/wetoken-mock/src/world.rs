//! WeChat's semantics without HTTP: which apps exist, which tokens are valid until when, what
//! each call answers. Times are Unix milliseconds on the mock clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Endpoint, Fault, MockConfig};

mod open;

pub(crate) use open::{Authorizing, ComponentRequest, OpenBody};

/// Parsed query parameters; the first of repeated names wins.
pub(crate) type Params = HashMap<String, String>;

/// The answer to a call: a success body, or a WeChat error body.
pub(crate) type Reply = Result<Value, Value>;

const DAY_MS: u64 = 86_400_000;
/// The mock month `clear_quota`'s allowance is counted over, in mock days.
const DAYS_PER_MONTH: u64 = 30;
/// `clear_quota` calls honoured per app and mock month (WeChat: 10 a month).
const CLEARS_PER_MONTH: u32 = 10;
const FORCES_PER_DAY: usize = 20;
const FORCE_SPACING_MS: u64 = 30_000;
const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

const INVALID_TOKEN: &str = "invalid credential, access_token is invalid or not latest";

/// What kind of token a grant is; each API accepts only some kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// From `/cgi-bin/token`.
    Classic,
    /// From `/cgi-bin/stable_token`.
    Stable,
    /// From WeCom's `/cgi-bin/gettoken`.
    Work,
    /// A `component_access_token`, from `api_component_token`: good for the component APIs only.
    Component,
    /// An `authorizer_access_token`, from `api_query_auth` or `api_authorizer_token`: an
    /// official account's token, held by a third-party platform.
    Authorizer,
}

/// The tokens an official account's APIs (tickets, quotas, templates) accept.
const OFFICIAL: &[Kind] = &[Kind::Classic, Kind::Stable, Kind::Authorizer];
/// The tokens the APIs every kind of account has (token checks, menus) accept.
const ANY_ACCESS_TOKEN: &[Kind] = &[Kind::Classic, Kind::Stable, Kind::Authorizer, Kind::Work];

/// A token WeChat still knows. A token that is not in the table gets 40001.
struct Grant {
    /// The appid, or the corpid for WeCom.
    owner: String,
    kind: Kind,
    valid_until: u64,
}

/// The tokens of one issuer (an app's classic tokens, its stable tokens, or one WeCom app's).
#[derive(Default)]
struct Series {
    current: Option<String>,
    previous: Option<String>,
}

#[derive(Default)]
struct StableApp {
    series: Series,
    /// When forced refreshes were honoured, oldest first, within the last day.
    forces: VecDeque<u64>,
}

/// The body of `POST /cgi-bin/stable_token`. A field of the wrong JSON type makes it malformed.
#[derive(Debug, Deserialize)]
pub(crate) struct StableRequest {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    force_refresh: Option<bool>,
}

/// The mock clock: real time (monotonic since the start) plus every advance.
struct Clock {
    start_unix: Duration,
    started: Instant,
    offset: Duration,
}

impl Clock {
    fn new() -> Self {
        Self {
            start_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            started: Instant::now(),
            offset: Duration::ZERO,
        }
    }

    fn now(&self) -> Duration {
        self.start_unix + self.since_start()
    }

    /// Mock time since the start: real time elapsed plus every advance.
    fn since_start(&self) -> Duration {
        self.started.elapsed() + self.offset
    }
}

/// The calls WeChat counts against daily quotas, and the clears of those counts.
#[derive(Default)]
struct Quotas {
    /// The mock day `used` counts.
    day: u64,
    /// (appid or corpid, endpoint) → calls counted on `day`.
    used: HashMap<(String, Endpoint), u64>,
    /// appid → (a mock month, `clear_quota` calls honoured in it).
    clears: HashMap<String, (u64, u32)>,
}

/// Everything the mock remembers.
pub(crate) struct World {
    config: MockConfig,
    clock: Clock,
    /// appid (or corpid) → its secrets, oldest first; the last is the official-account secret.
    apps: HashMap<String, Vec<String>>,
    grants: HashMap<String, Grant>,
    classic: HashMap<String, Series>,
    stable: HashMap<String, StableApp>,
    /// (corpid, corpsecret) → that WeCom app's tokens.
    work: HashMap<(String, String), Series>,
    /// (appid or corpid, ticket type) → the newest ticket.
    tickets: HashMap<(String, String), String>,
    /// Template messages accepted, oldest first.
    pub sent: Vec<Value>,
    /// appid (or corpid) → the `button` list of its last `menu/create`.
    menus: HashMap<String, Value>,
    /// Requests per endpoint, by [`Endpoint::index`].
    pub calls: [u64; Endpoint::ALL.len()],
    /// Queued faults per endpoint, each with how many calls it still applies to.
    faults: [VecDeque<(Fault, u32)>; Endpoint::ALL.len()],
    quotas: Quotas,
    /// The open platform: components, their tickets, authorizers and codes.
    open: open::Open,
    /// Sends the open platform's pushes.
    pub client: reqwest::Client,
    /// Wakes the verify-ticket timer when a component gets a push URL.
    pub timer_wake: std::sync::Arc<tokio::sync::Notify>,
}

fn missing(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn random_string(prefix: &str, len: usize) -> String {
    let mut rng = rand::rng();
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    out.extend((0..len).map(|_| TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())] as char));
    out
}

/// Makes `token` the current one of `series`: the current one becomes the previous and lives at
/// most `cut` more, the previous one is forgotten (so it gets 40001 from now on).
fn rotate(grants: &mut HashMap<String, Grant>, series: &mut Series, token: String, cut: u64) {
    if let Some(oldest) = series.previous.take() {
        grants.remove(&oldest);
    }
    if let Some(old) = series.current.take() {
        if let Some(grant) = grants.get_mut(&old) {
            grant.valid_until = grant.valid_until.min(cut);
        }
        series.previous = Some(old);
    }
    series.current = Some(token);
}

impl World {
    pub fn new(config: MockConfig, client: reqwest::Client) -> Self {
        Self {
            config,
            clock: Clock::new(),
            apps: HashMap::new(),
            grants: HashMap::new(),
            classic: HashMap::new(),
            stable: HashMap::new(),
            work: HashMap::new(),
            tickets: HashMap::new(),
            sent: Vec::new(),
            menus: HashMap::new(),
            calls: [0; Endpoint::ALL.len()],
            faults: std::array::from_fn(|_| VecDeque::new()),
            quotas: Quotas::default(),
            open: open::Open::default(),
            client,
            timer_wake: std::sync::Arc::default(),
        }
    }

    /// The mock day: whole days of mock time since the start.
    fn day(&self) -> u64 {
        self.clock.since_start().as_millis() as u64 / DAY_MS
    }

    fn daily_limit(&self, endpoint: Endpoint) -> u64 {
        match endpoint {
            Endpoint::StableToken => self.config.stable_token_daily_limit,
            _ => self.config.token_daily_limit,
        }
    }

    pub fn quota_used(&self, owner: &str, endpoint: Endpoint) -> u64 {
        if self.quotas.day != self.day() {
            return 0;
        }
        self.quotas
            .used
            .get(&(owner.to_owned(), endpoint))
            .copied()
            .unwrap_or(0)
    }

    pub fn quota_clears(&self, appid: &str) -> u32 {
        let month = self.day() / DAYS_PER_MONTH;
        match self.quotas.clears.get(appid) {
            Some(&(m, clears)) if m == month => clears,
            _ => 0,
        }
    }

    /// Counts one call of a limited `endpoint` for `owner`, or refuses it with 45009 when this
    /// mock day's are spent.
    fn spend(&mut self, owner: &str, endpoint: Endpoint) -> Result<(), Value> {
        let used = self.quota_used(owner, endpoint);
        if used >= self.daily_limit(endpoint) {
            return Err(self.error(45009, "reach max api daily quota limit"));
        }
        let day = self.day();
        if self.quotas.day != day {
            self.quotas.day = day;
            self.quotas.used.clear();
        }
        self.quotas
            .used
            .insert((owner.to_owned(), endpoint), used + 1);
        Ok(())
    }

    fn now(&self) -> u64 {
        self.clock.now().as_millis() as u64
    }

    fn lifetime_ms(&self) -> u64 {
        self.config.token_expires_in.saturating_mul(1000)
    }

    fn overlap_ms(&self) -> u64 {
        self.config.overlap.as_millis() as u64
    }

    /// A WeChat error body: `errmsg` ends with a request id whose first group is the Unix time.
    pub fn error(&self, errcode: i64, text: &str) -> Value {
        let mut rng = rand::rng();
        let secs = self.clock.now().as_secs() as u32;
        let (a, b): (u32, u32) = (rng.random(), rng.random());
        json!({
            "errcode": errcode,
            "errmsg": format!("{text} rid: {secs:08x}-{a:08x}-{b:08x}"),
        })
    }

    pub fn advance(&mut self, by: Duration) {
        self.clock.offset += by;
    }

    pub fn add_app(&mut self, appid: &str, secret: &str) {
        let secrets = self.apps.entry(appid.to_owned()).or_default();
        secrets.retain(|s| s != secret);
        secrets.push(secret.to_owned());
    }

    pub fn invalidate(&mut self, token: &str) {
        self.grants.remove(token);
    }

    pub fn current_token(&self, appid: &str) -> Option<String> {
        self.classic.get(appid)?.current.clone()
    }

    pub fn current_ticket(&self, appid: &str, kind: &str) -> Option<String> {
        self.tickets
            .get(&(appid.to_owned(), kind.to_owned()))
            .cloned()
    }

    /// Counts a call of `endpoint` and takes the fault it gets, if one is queued.
    pub fn record(&mut self, endpoint: Endpoint) -> Option<Fault> {
        self.calls[endpoint.index()] += 1;
        let queue = &mut self.faults[endpoint.index()];
        let (fault, left) = queue.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            queue.pop_front();
        }
        Some(fault)
    }

    pub fn inject(&mut self, endpoint: Endpoint, fault: Fault, times: u32) {
        if times > 0 {
            self.faults[endpoint.index()].push_back((fault, times));
        }
    }

    pub fn clear_faults(&mut self) {
        self.faults.iter_mut().for_each(VecDeque::clear);
    }

    /// A new token nobody holds yet, valid for the configured lifetime from now.
    fn mint(&mut self, owner: &str, kind: Kind) -> String {
        let (prefix, len) = match kind {
            Kind::Classic | Kind::Stable | Kind::Component | Kind::Authorizer => ("86_", 147),
            Kind::Work => ("", 150),
        };
        let token = loop {
            let candidate = random_string(prefix, len);
            if !self.grants.contains_key(&candidate) {
                break candidate;
            }
        };
        let valid_until = self.now().saturating_add(self.lifetime_ms());
        self.grants.insert(
            token.clone(),
            Grant {
                owner: owner.to_owned(),
                kind,
                valid_until,
            },
        );
        token
    }

    /// How many milliseconds `token` still has, or `None` if WeChat does not know it.
    fn remaining(&self, token: &str) -> Option<u64> {
        let now = self.now();
        self.grants
            .get(token)
            .map(|g| g.valid_until.saturating_sub(now))
    }

    /// The owner of the `access_token` parameter, if it is a live token of one of `kinds`.
    fn check_token(&self, params: &Params, kinds: &[Kind]) -> Result<String, Value> {
        self.check_token_named(params, "access_token", kinds)
    }

    /// The owner of the token in the parameter `name`, if it is a live token of one of `kinds`.
    fn check_token_named(
        &self,
        params: &Params,
        name: &str,
        kinds: &[Kind],
    ) -> Result<String, Value> {
        let Some(token) = missing(params.get(name).map(String::as_str)) else {
            return Err(self.error(41001, &format!("{name} missing")));
        };
        match self.grants.get(token) {
            Some(grant) if kinds.contains(&grant.kind) => {
                if self.now() >= grant.valid_until {
                    Err(self.error(42001, "access_token expired"))
                } else {
                    Ok(grant.owner.clone())
                }
            }
            _ => Err(self.error(40001, INVALID_TOKEN)),
        }
    }

    /// The checks `/cgi-bin/token` and `/cgi-bin/stable_token` share; gives the appid.
    fn check_app(
        &mut self,
        grant_type: Option<&str>,
        appid: Option<&str>,
        secret: Option<&str>,
    ) -> Result<String, Value> {
        if grant_type != Some("client_credential") {
            return Err(self.error(40002, "invalid grant_type"));
        }
        let Some(appid) = missing(appid) else {
            return Err(self.error(41002, "appid missing"));
        };
        let Some(secret) = missing(secret) else {
            return Err(self.error(41004, "appsecret missing"));
        };
        match self.apps.get(appid) {
            None if self.config.auto_register => {
                self.add_app(appid, secret);
                Ok(appid.to_owned())
            }
            None => Err(self.error(40013, "invalid appid")),
            Some(secrets) if secrets.last().map(String::as_str) != Some(secret) => {
                Err(self.error(40125, "invalid appsecret"))
            }
            Some(_) => Ok(appid.to_owned()),
        }
    }

    /// Makes `token` the current classic token of `appid`, valid for `valid_for` more: one
    /// issued before the test began (by a Go wetoken, say).
    pub fn grant(&mut self, appid: &str, token: &str, valid_for: Duration) {
        let valid_until = self.now().saturating_add(valid_for.as_millis() as u64);
        self.grants.insert(
            token.to_owned(),
            Grant {
                owner: appid.to_owned(),
                kind: Kind::Classic,
                valid_until,
            },
        );
        let cut = self.now().saturating_add(self.overlap_ms());
        let series = self.classic.entry(appid.to_owned()).or_default();
        rotate(&mut self.grants, series, token.to_owned(), cut);
    }

    /// `GET /cgi-bin/token`: a new token every time.
    pub fn token(&mut self, params: &Params) -> Reply {
        let get = |name: &str| params.get(name).map(String::as_str);
        let appid = self.check_app(get("grant_type"), get("appid"), get("secret"))?;
        self.spend(&appid, Endpoint::Token)?;
        let token = self.mint(&appid, Kind::Classic);
        let cut = self.now().saturating_add(self.overlap_ms());
        let series = self.classic.entry(appid).or_default();
        rotate(&mut self.grants, series, token.clone(), cut);
        // A success carries no errcode at all.
        Ok(json!({"access_token": token, "expires_in": self.config.token_expires_in}))
    }

    /// `POST /cgi-bin/stable_token`.
    pub fn stable_token(&mut self, request: &StableRequest) -> Reply {
        let appid = self.check_app(
            request.grant_type.as_deref(),
            request.appid.as_deref(),
            request.secret.as_deref(),
        )?;
        self.spend(&appid, Endpoint::StableToken)?;
        let now = self.now();
        let overlap = self.overlap_ms();
        let app = self.stable.entry(appid.clone()).or_default();
        while app
            .forces
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= DAY_MS)
        {
            app.forces.pop_front();
        }
        let forced = request.force_refresh == Some(true)
            && app.forces.len() < FORCES_PER_DAY
            && app
                .forces
                .back()
                .is_none_or(|&t| now.saturating_sub(t) >= FORCE_SPACING_MS);
        if forced {
            app.forces.push_back(now);
        }
        let current = app.series.current.clone();
        // Normal mode renews only an unknown, invalidated, expired or nearly expired token.
        let renew = forced
            || current
                .as_deref()
                .and_then(|t| self.remaining(t))
                .is_none_or(|left| left <= overlap);
        let token = if renew {
            let token = self.mint(&appid, Kind::Stable);
            let series = &mut self.stable.entry(appid).or_default().series;
            rotate(
                &mut self.grants,
                series,
                token.clone(),
                now.saturating_add(overlap),
            );
            token
        } else {
            current.unwrap_or_default()
        };
        // Rounded up: a token minted a millisecond ago still has its whole lifetime.
        let expires_in = self.remaining(&token).unwrap_or(0).div_ceil(1000);
        Ok(json!({"access_token": token, "expires_in": expires_in}))
    }

    /// `GET /cgi-bin/ticket/getticket`: a new ticket every time.
    pub fn ticket(&mut self, params: &Params) -> Reply {
        let appid = self.check_token(params, OFFICIAL)?;
        let kind = params.get("type").map(String::as_str).unwrap_or_default();
        if kind != "jsapi" && kind != "wx_card" {
            return Err(self.error(40097, "invalid args"));
        }
        Ok(self.new_ticket(appid, kind))
    }

    fn new_ticket(&mut self, owner: String, kind: &str) -> Value {
        let ticket = random_string("", 86);
        self.tickets
            .insert((owner, kind.to_owned()), ticket.clone());
        json!({
            "errcode": 0,
            "errmsg": "ok",
            "ticket": ticket,
            "expires_in": self.config.ticket_expires_in,
        })
    }

    /// `GET /cgi-bin/get_api_domain_ip` and `GET /cgi-bin/getcallbackip`: check any token.
    pub fn check_only(&self, params: &Params) -> Reply {
        self.check_token(params, ANY_ACCESS_TOKEN)?;
        Ok(json!({"ip_list": ["127.0.0.1"]}))
    }

    /// `POST /cgi-bin/openapi/quota/get`: the token's app's count today of the call `cgi_path`
    /// names.
    pub fn quota_get(&self, params: &Params, body: &[u8]) -> Reply {
        let appid = self.check_token(params, OFFICIAL)?;
        let path = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|b| b.get("cgi_path")?.as_str().map(str::to_owned));
        let Some(path) = path else {
            return Err(self.error(47001, "data format error"));
        };
        if !path.starts_with('/') {
            return Err(self.error(76003, "invalid cgi_path"));
        }
        if path.contains("/sns/") {
            return Err(self.error(76022, "could not use this cgi_path, no permission"));
        }
        let endpoint = match path.as_str() {
            "/cgi-bin/token" => Endpoint::Token,
            "/cgi-bin/stable_token" => Endpoint::StableToken,
            _ => return Err(self.error(76021, "cgi_path not found, please check")),
        };
        let limit = self.daily_limit(endpoint);
        let used = self.quota_used(&appid, endpoint);
        Ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "quota": {"daily_limit": limit, "used": used, "remain": limit.saturating_sub(used)},
        }))
    }

    /// `POST /cgi-bin/clear_quota`: resets the counts of the token's app, which the body's
    /// `appid` must name; 10 times a mock month.
    pub fn clear_quota(&mut self, params: &Params, body: &[u8]) -> Reply {
        let appid = self.check_token(params, OFFICIAL)?;
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return Err(self.error(47001, "data format error"));
        };
        match missing(body.get("appid").and_then(Value::as_str)) {
            None => return Err(self.error(41002, "appid missing")),
            Some(named) if named != appid => return Err(self.error(40013, "invalid appid")),
            Some(_) => {}
        }
        let clears = self.quota_clears(&appid);
        if clears >= CLEARS_PER_MONTH {
            return Err(self.error(48006, "forbid to clear quota because of reaching the limit"));
        }
        let month = self.day() / DAYS_PER_MONTH;
        self.quotas
            .clears
            .insert(appid.clone(), (month, clears + 1));
        self.quotas.used.retain(|(owner, _), _| *owner != appid);
        Ok(json!({"errcode": 0, "errmsg": "ok"}))
    }

    /// `POST /cgi-bin/menu/create`: checks any token, then that the body is JSON; keeps its
    /// `button` (or `[]`) as the token's app's menu.
    pub fn menu_create(&mut self, params: &Params, body: &[u8]) -> Reply {
        let appid = self.check_token(params, ANY_ACCESS_TOKEN)?;
        let Ok(menu) = serde_json::from_slice::<Value>(body) else {
            return Err(self.error(47001, "data format error"));
        };
        let buttons = menu.get("button").cloned().unwrap_or_else(|| json!([]));
        self.menus.insert(appid, buttons);
        Ok(json!({"errcode": 0, "errmsg": "ok"}))
    }

    /// `GET /cgi-bin/menu/get`: checks any token, then answers the app's menu as WeChat does,
    /// without an `errcode`, or 46003 when none was created.
    pub fn menu_get(&self, params: &Params) -> Reply {
        let appid = self.check_token(params, ANY_ACCESS_TOKEN)?;
        match self.menus.get(&appid) {
            Some(buttons) => Ok(json!({"menu": {"button": buttons}})),
            None => Err(self.error(46003, "menu no exist")),
        }
    }

    /// `POST /cgi-bin/message/template/send`: checks an official account's token, then the
    /// message: `touser` (40003) and `template_id` (40037) must be non-empty strings and `data`
    /// an object. Accepted messages are kept.
    pub fn template_send(&mut self, params: &Params, body: &[u8]) -> Reply {
        self.check_token(params, OFFICIAL)?;
        let Ok(message) = serde_json::from_slice::<Value>(body) else {
            return Err(self.error(47001, "data format error"));
        };
        let text = |field: &str| {
            message
                .get(field)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .is_some()
        };
        if !text("touser") {
            return Err(self.error(40003, "invalid openid"));
        }
        if !text("template_id") {
            return Err(self.error(40037, "invalid template_id"));
        }
        if !message.get("data").is_some_and(Value::is_object) {
            return Err(self.error(47001, "data format error"));
        }
        self.sent.push(message);
        let msgid = 200_000_000 + self.sent.len() as u64;
        Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
    }

    /// WeCom's `GET /cgi-bin/gettoken`: the same token while it is valid.
    pub fn work_token(&mut self, params: &Params) -> Reply {
        let Some(corpid) = missing(params.get("corpid").map(String::as_str)) else {
            return Err(self.error(41002, "corpid missing"));
        };
        let Some(secret) = missing(params.get("corpsecret").map(String::as_str)) else {
            return Err(self.error(41004, "corpsecret missing"));
        };
        match self.apps.get(corpid) {
            None if self.config.auto_register => self.add_app(corpid, secret),
            None => return Err(self.error(40013, "invalid corpid")),
            Some(secrets) if !secrets.iter().any(|s| s == secret) => {
                return Err(self.error(40001, "invalid credential, corpsecret is invalid"));
            }
            Some(_) => {}
        }
        self.spend(corpid, Endpoint::WorkToken)?;
        let key = (corpid.to_owned(), secret.to_owned());
        let current = self.work.get(&key).and_then(|s| s.current.clone());
        let live = current.filter(|t| self.remaining(t).is_some_and(|left| left > 0));
        let token = match live {
            Some(token) => token,
            None => {
                let token = self.mint(corpid, Kind::Work);
                let cut = self.now().saturating_add(self.overlap_ms());
                let series = self.work.entry(key).or_default();
                rotate(&mut self.grants, series, token.clone(), cut);
                token
            }
        };
        // Rounded up, as for a stable token: a token just minted has its whole lifetime left,
        // though a millisecond has passed.
        let expires_in = self.remaining(&token).unwrap_or(0).div_ceil(1000);
        Ok(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in}))
    }

    /// WeCom's `GET /cgi-bin/get_jsapi_ticket`: a new ticket every time, for a WeCom token.
    pub fn work_ticket(&mut self, params: &Params) -> Reply {
        let corpid = self.check_token(params, &[Kind::Work])?;
        Ok(self.new_ticket(corpid, "jsapi"))
    }
}
