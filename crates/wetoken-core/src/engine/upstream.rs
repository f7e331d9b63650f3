//! The calls to WeChat: which endpoint fetches which credential for which kind of app, the token a
//! ticket needs (refreshed once if WeChat rejects it), and the accounting of every call (the
//! upstream concurrency bound, metrics, the app's count of calls today).

use std::future::Future;
use std::sync::Arc;

use tracing::warn;

use super::Engine;
use super::open::RefreshToken;
use crate::Error;
use crate::model::{App, AppKind, Credential, Kind, TokenMode};
use crate::wechat::{Issued, UpstreamError};

/// A failed fetch: either WeChat refused this credential's own call, or something it depends on
/// (the token a ticket needs) failed and has been dealt with already.
pub(super) enum FetchError {
    Upstream(UpstreamError),
    Other(Error),
    /// Nothing to fetch with yet (a component without a verify ticket, or an authorizer whose
    /// component has none): recorded with a backoff like a refusal, without a call to WeChat.
    Waiting(Error),
}

/// Every `endpoint` label of `wetoken_upstream_calls_total` and `wetoken_upstream_seconds`: the
/// server creates each series at 0 when it starts, so that `increase()` sees the first call.
pub const UPSTREAM_ENDPOINTS: [&str; 12] = [
    "token",
    "stable_token",
    "work_token",
    "ticket",
    "work_ticket",
    "get_api_domain_ip",
    "getcallbackip",
    "component_token",
    "authorizer_token",
    "query_auth",
    "pre_auth_code",
    "authorizer_info",
];

impl Engine {
    /// Awaits one WeChat call and accounts for it: the upstream concurrency bound, the calls
    /// counter and the latency histogram. (Token fetches are counted against the app's budget
    /// before they are made: see `claim_budget`.)
    pub(super) async fn upstream<T>(
        &self,
        endpoint: &'static str,
        call: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let _permit = self.inner.upstream.acquire().await;
        let started = std::time::Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(UpstreamError::Refused { errcode, .. }) => errcode.to_string(),
            Err(UpstreamError::Status(status)) => format!("http_{status}"),
            Err(UpstreamError::Transport(_)) => "unreachable".to_owned(),
            Err(UpstreamError::Malformed(_)) => "malformed".to_owned(),
        };
        // No appid label: a series per app would make a scrape at 100,000 apps megabytes, and
        // outlive a deleted app. Which app fails is in the log and in the per-app gauges.
        debug_assert!(UPSTREAM_ENDPOINTS.contains(&endpoint), "{endpoint}");
        metrics::counter!(
            "wetoken_upstream_calls_total",
            "endpoint" => endpoint,
            "result" => outcome,
        )
        .increment(1);
        metrics::histogram!("wetoken_upstream_seconds", "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// One upstream fetch of `kind` for `app`; `force` forces a new stable token.
    ///
    /// A ticket needs a token: if WeChat rejects the one held, the token is refreshed once (as a
    /// passive refresh, so concurrent rejections share it) and the ticket call tried once more.
    ///
    /// An authorizer's token comes with the refresh token WeChat returned, to be stored with it.
    pub(super) async fn fetch(
        &self,
        app: &App,
        kind: Kind,
        force: bool,
    ) -> Result<(Issued, RefreshToken), FetchError> {
        if kind == Kind::AccessToken {
            if app.info.kind == AppKind::Component {
                return Ok((self.fetch_component_token(app).await?, None));
            }
            if let Some(component) = &app.info.component {
                return self.fetch_authorizer_token(app, component).await;
            }
        }
        self.fetch_own(app, kind, force)
            .await
            .map(|issued| (issued, None))
    }

    /// [`Engine::fetch`] for an app with its own secret, and every ticket.
    async fn fetch_own(&self, app: &App, kind: Kind, force: bool) -> Result<Issued, FetchError> {
        let wechat = &self.inner.wechat;
        if kind == Kind::AccessToken {
            let issued = match (app.info.kind, app.info.token_mode, &app.info.work) {
                (AppKind::Work, _, Some(work)) => {
                    let call = wechat.work_token(&work.corpid, &app.secret);
                    self.upstream("work_token", call).await
                }
                (AppKind::Work, _, None) => {
                    return Err(FetchError::Other(Error::AppConfig {
                        appid: app.info.appid.to_string(),
                        problem: "a WeCom app (kind work) needs a corpid, and none is stored"
                            .into(),
                    }));
                }
                (AppKind::Component, _, _) => {
                    unreachable!("a component's token is fetched by fetch_component_token")
                }
                (_, TokenMode::Stable, _) => {
                    let call = wechat.stable_token(&app.info.appid, &app.secret, force);
                    self.upstream("stable_token", call).await
                }
                (_, TokenMode::Classic, _) => {
                    let call = wechat.access_token(&app.info.appid, &app.secret);
                    self.upstream("token", call).await
                }
            };
            return issued.map_err(FetchError::Upstream);
        }
        let ticket = |token: Arc<Credential>| async move {
            match (app.info.kind, kind) {
                (AppKind::Work, _) => {
                    let call = wechat.work_jsapi_ticket(&token.value);
                    self.upstream("work_ticket", call).await
                }
                (_, Kind::CardTicket) => {
                    let call = wechat.ticket(&token.value, "wx_card");
                    self.upstream("ticket", call).await
                }
                _ => {
                    let call = wechat.ticket(&token.value, "jsapi");
                    self.upstream("ticket", call).await
                }
            }
        };
        let token = self
            .get(&app.info.appid, Kind::AccessToken)
            .await
            .map_err(FetchError::Other)?;
        match ticket(token.clone()).await {
            Err(e) if e.is_token_rejected() => {
                warn!(
                    errcode = e.errcode(),
                    errmsg = e.errmsg(),
                    "WeChat rejected the token a ticket fetch used; refreshing it once"
                );
                let token = self
                    .replace_rejected(&app.info.appid, Kind::AccessToken, &token.value)
                    .await
                    .map_err(FetchError::Other)?;
                ticket(token).await.map_err(FetchError::Upstream)
            }
            other => other.map_err(FetchError::Upstream),
        }
    }
}
