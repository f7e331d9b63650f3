//! The open platform (third-party platforms): the component token's fetch (only with a verify
//! ticket), the authorizer token's (with the component token and the stored refresh token),
//! and what the push endpoint hands the engine: verify tickets, authorizations and their
//! withdrawal. Both tokens go through the same slots, lease, scheduler and budget as every
//! other credential; only their fetch differs (`upstream.rs` calls here).

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tracing::{info, warn};

use super::Engine;
use super::upstream::FetchError;
use crate::Error;
use crate::model::{App, AppId, AppKind, AppUpdate, Credential, Kind, NewApp, Secret, TokenMode};
use crate::store::{Dates, RefreshTokens, VerifyTicket};
use crate::wechat::{Issued, UpstreamError};

/// How long WeChat accepts a verify ticket after pushing it.
pub const VERIFY_TICKET_LIFETIME: TimeDelta = TimeDelta::hours(12);

/// The errcode recorded for a component token that could not be fetched for want of a verify
/// ticket (the wire crate's `NO_VERIFY_TICKET`): WeChat was not called.
pub(crate) const NO_VERIFY_TICKET_ERRCODE: i64 = 90461;

/// WeChat's answer to a refresh token it no longer accepts: the account must authorize again.
pub const REFRESH_TOKEN_INVALID: i64 = 61023;

/// What a fetch of an authorizer's token brings besides the token: the refresh token WeChat
/// returned with it, to be stored in the same write.
pub(super) type RefreshToken = Option<Secret>;

impl Engine {
    /// The component token of `app` (a component), with its newest verify ticket; without one
    /// that is less than twelve hours old, [`Error::NoVerifyTicket`] and no call to WeChat.
    pub(super) async fn fetch_component_token(&self, app: &App) -> Result<Issued, FetchError> {
        let component = &app.info.appid;
        let ticket = self
            .inner
            .store
            .verify_ticket(component)
            .await
            .map_err(FetchError::Other)?;
        let now = self.now();
        let ticket = match ticket {
            Some(t) if now - t.received_at < VERIFY_TICKET_LIFETIME => t,
            Some(t) => {
                return Err(FetchError::Waiting(Error::NoVerifyTicket(format!(
                    "the newest component_verify_ticket of {component} was received at {} and \
                     has expired (WeChat accepts one for 12 hours); WeChat pushes a new one \
                     every 10 minutes to the authorization-event URL: check that it reaches \
                     POST /component/{component}/event. WeChat was not called",
                    t.received_at.format("%Y-%m-%d %H:%M:%S UTC")
                ))));
            }
            None => {
                return Err(FetchError::Waiting(Error::NoVerifyTicket(format!(
                    "no component_verify_ticket of {component} has been received yet; WeChat \
                     pushes one every 10 minutes to the authorization-event URL, which must be \
                     POST /component/{component}/event on this server. WeChat was not called"
                ))));
            }
        };
        let call = self
            .inner
            .wechat
            .component_token(component, &app.secret, &ticket.ticket);
        self.upstream("component_token", call)
            .await
            .map_err(FetchError::Upstream)
    }

    /// The token of `app`, an authorizer of `component`, with the component token (refreshed
    /// once if WeChat rejects it) and the stored refresh token.
    pub(super) async fn fetch_authorizer_token(
        &self,
        app: &App,
        component: &AppId,
    ) -> Result<(Issued, RefreshToken), FetchError> {
        let wechat = &self.inner.wechat;
        let appid = &app.info.appid;
        let call = |token: Arc<Credential>| async move {
            let call = wechat.authorizer_token(&token.value, component, appid, &app.secret);
            self.upstream("authorizer_token", call).await
        };
        let token = self
            .get(component, Kind::AccessToken)
            .await
            .map_err(dependency)?;
        let answer = match call(token.clone()).await {
            Err(e) if e.is_token_rejected() => {
                warn!(
                    errcode = e.errcode(),
                    %component,
                    "WeChat rejected the component token an authorizer's refresh used; \
                     refreshing it once"
                );
                let token = self
                    .replace_rejected(component, Kind::AccessToken, &token.value)
                    .await
                    .map_err(dependency)?;
                call(token).await
            }
            other => other,
        };
        match answer {
            Ok(issued) => Ok((issued.token, issued.refresh_token)),
            Err(UpstreamError::Refused { errcode, .. }) if errcode == REFRESH_TOKEN_INVALID => {
                // An authorization again since our read replaced the refresh token: not a halt.
                let stored = self
                    .inner
                    .store
                    .app(appid)
                    .await
                    .map_err(FetchError::Other)?;
                if stored.is_some_and(|now| now.secret.expose() != app.secret.expose()) {
                    return Err(FetchError::Other(Error::Unavailable(format!(
                        "{appid} authorized again while its token was being refreshed; try again"
                    ))));
                }
                Err(FetchError::Upstream(UpstreamError::Refused {
                    errcode,
                    errmsg: format!(
                        "the authorizer_refresh_token of {appid} is no longer valid: the account \
                         must authorize the third-party platform {component} again (send it \
                         through the authorization page); until then nothing is fetched for it"
                    ),
                }))
            }
            Err(e) => Err(FetchError::Upstream(e)),
        }
    }

    /// Stores a verify ticket pushed to `component`, unless a newer one is stored. When one is
    /// stored, a component token waiting for it may be fetched again at once.
    pub async fn accept_verify_ticket(
        &self,
        component: &AppId,
        ticket: &str,
        create_time: i64,
    ) -> Result<bool, Error> {
        let now = self.now();
        let store = &self.inner.store;
        let stored = store
            .save_verify_ticket(component, ticket, create_time, now)
            .await?;
        if stored {
            store
                .lift_wait(component, Kind::AccessToken, NO_VERIFY_TICKET_ERRCODE, now)
                .await?;
        }
        Ok(stored)
    }

    /// Notes a push to `component` by its `msg_signature`: `false` when any replica accepted the
    /// same signature within the last `window` (a replay). Older signatures are forgotten: a
    /// push older than the window must be refused by its timestamp.
    pub async fn first_push(
        &self,
        component: &AppId,
        signature: &str,
        window: std::time::Duration,
    ) -> Result<bool, Error> {
        let now = self.now().timestamp_millis();
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 4);
        self.inner
            .store
            .note_push(component, signature, now, now.saturating_sub(2 * window))
            .await
    }

    /// Forgets a push noted by [`Engine::first_push`] whose handling failed for a cause a retry
    /// may cure, so that WeChat's retry (the same request) is handled, not refused as a replay.
    pub async fn forget_push(&self, component: &AppId, signature: &str) -> Result<(), Error> {
        self.inner.store.forget_push(component, signature).await
    }

    /// The verify ticket stored for `component`, if any.
    pub async fn verify_ticket(&self, component: &AppId) -> Result<Option<VerifyTicket>, Error> {
        self.inner.store.verify_ticket(component).await
    }

    /// A component's app, which must be one.
    pub async fn component(&self, component: &AppId) -> Result<App, Error> {
        match self.inner.store.app(component).await? {
            Some(app) if app.info.kind == AppKind::Component => Ok(app),
            Some(app) => Err(not_a_component(component, app.info.kind)),
            None => Err(Error::UnknownApp(component.clone())),
        }
    }

    /// The component token of `component`, which must be a third-party platform: what
    /// `GET /component/{appid}/token/get` serves. One read of the app's row (its kind, no
    /// secret decrypted), then the same path as every token (cache, lease, one fetch per
    /// lifetime).
    pub async fn component_token(&self, component: &AppId) -> Result<Arc<Credential>, Error> {
        let info = self.inner.store.known_app_info(component).await?;
        if info.kind != AppKind::Component {
            return Err(not_a_component(component, info.kind));
        }
        self.get(component, Kind::AccessToken).await
    }

    /// A page of `component`'s authorizers after `after`, revoked ones included unless `filter`
    /// says otherwise, with their credentials' state: [`Engine::list_apps`] limited to the
    /// component, one range of the `(component_appid, appid)` index (`store::listing`).
    pub async fn list_authorizers(
        &self,
        component: &AppId,
        filter: &crate::AppFilter,
        after: Option<&crate::Cursor>,
        limit: u64,
    ) -> Result<crate::AppPage, Error> {
        self.component(component).await?;
        let filter = crate::AppFilter {
            component: Some(component.clone()),
            worst_first: false,
            ..filter.clone()
        };
        self.list_apps(&filter, after, limit).await
    }

    /// An `authorized` or `updateauthorized` push: exchanges `code` through `api_query_auth` at
    /// once, then stores the authorizer (added, or its refresh token replaced and a withdrawal
    /// lifted), its token and its refresh token. Returns the authorizer's appid.
    pub async fn authorized(&self, component: &AppId, code: &str) -> Result<AppId, Error> {
        let wechat = &self.inner.wechat;
        let mut token = self.get(component, Kind::AccessToken).await?;
        let started = self.now();
        let mut answer = self
            .upstream(
                "query_auth",
                wechat.query_auth(&token.value, component, code),
            )
            .await;
        if let Err(e) = &answer
            && e.is_token_rejected()
        {
            // WeChat retired the component token: replaced once (shared with every other
            // caller that saw it rejected), and the exchange tried again.
            token = self
                .replace_rejected(component, Kind::AccessToken, &token.value)
                .await?;
            answer = self
                .upstream(
                    "query_auth",
                    wechat.query_auth(&token.value, component, code),
                )
                .await;
        }
        let authorization = answer.map_err(|e| upstream_error(&e))?;
        let appid = authorization.authorizer_appid.clone();
        let Some(refresh_token) = authorization.refresh_token.clone() else {
            return Err(Error::Refused {
                errcode: -1,
                errmsg: format!(
                    "api_query_auth gave {appid} no authorizer_refresh_token (WeChat gives one \
                     only to accounts with API permissions); nothing was stored"
                ),
            });
        };
        let existing = self.inner.store.app(&appid).await?;
        match existing {
            None => {
                let call = wechat.authorizer_info(&token.value, component, &appid);
                let kind = match self.upstream("authorizer_info", call).await {
                    Ok(info) if info.mini_program => AppKind::Mini,
                    Ok(_) => AppKind::Mp,
                    Err(e) => {
                        warn!(%appid, error = %e, "could not ask WeChat what kind of account authorized; taking it for an official account");
                        AppKind::Mp
                    }
                };
                let app = NewApp {
                    kind,
                    component: Some(component.clone()),
                    ..NewApp::mp(appid.clone(), refresh_token.clone())
                };
                self.add_app(&app).await?;
            }
            Some(app) if app.info.component.as_ref() == Some(component) => {
                // A withdrawal pushed while this exchange ran is the newer word.
                let reinstated = self
                    .inner
                    .store
                    .reinstate_authorizer(&appid, app.info.kind, started, self.now())
                    .await?;
                if !reinstated {
                    return Err(Error::InvalidInput(format!(
                        "{appid} withdrew its authorization of {component} while this \
                         authorization was being exchanged; the withdrawal stands"
                    )));
                }
                let update = AppUpdate {
                    secret: Some(refresh_token.clone()),
                    ..AppUpdate::default()
                };
                self.update_app(&appid, &update).await?;
            }
            Some(app) => {
                return Err(Error::InvalidInput(format!(
                    "{appid} authorized {component}, but it is stored already as {}; wetoken \
                     keeps one entry per appid and changed nothing: remove it first to serve \
                     it through {component}",
                    match &app.info.component {
                        Some(other) => format!("an authorizer of {other}"),
                        None => format!("an app of its own (kind {})", app.info.kind.as_str()),
                    }
                )));
            }
        }
        self.forget(&appid);
        let credential = Credential {
            value: authorization.token.value.clone(),
            expires_at: started + TimeDelta::seconds(authorization.token.expires_in as i64),
        };
        self.store_issued(&appid, &credential, &refresh_token)
            .await?;
        info!(%appid, %component, "account authorized the third-party platform");
        Ok(appid)
    }

    /// An `unauthorized` push: `authorizer` withdrew its authorization of `component`.
    /// Returns whether it was one of its authorizers.
    pub async fn unauthorized(&self, component: &AppId, authorizer: &AppId) -> Result<bool, Error> {
        let revoked = self
            .inner
            .store
            .revoke_authorizer(component, authorizer, self.now())
            .await?;
        self.forget(authorizer);
        if revoked {
            info!(%authorizer, %component, "account withdrew its authorization; nothing is served for it any more");
        }
        Ok(revoked)
    }

    /// The onboarding page's link for `component`: WeChat's authorization page with a new
    /// pre-auth code and `redirect_uri`; `auth_type` 1 official accounts, 2 mini programs, 3 both.
    pub async fn auth_url(
        &self,
        component: &AppId,
        redirect_uri: &str,
        auth_type: u8,
    ) -> Result<(String, DateTime<Utc>), Error> {
        self.component(component).await?;
        let token = self.get(component, Kind::AccessToken).await?;
        let started = self.now();
        let call = self.inner.wechat.pre_auth_code(&token.value, component);
        let code = self
            .upstream("pre_auth_code", call)
            .await
            .map_err(|e| upstream_error(&e))?;
        let url = reqwest::Url::parse_with_params(
            "https://mp.weixin.qq.com/cgi-bin/componentloginpage",
            [
                ("component_appid", component.as_str()),
                ("pre_auth_code", code.value.as_str()),
                ("redirect_uri", redirect_uri),
                ("auth_type", &auth_type.to_string()),
            ],
        )
        .map_err(|e| Error::InvalidInput(format!("cannot build the authorization URL: {e}")))?;
        Ok((
            url.to_string(),
            started + TimeDelta::seconds(code.expires_in as i64),
        ))
    }

    /// Stores a token WeChat issued outside a refresh (`api_query_auth`) with its refresh
    /// token, under the credential's lease and fenced like a refresh. If another holder has the
    /// lease, it is refreshing with the same refresh token: its value will do.
    async fn store_issued(
        &self,
        appid: &AppId,
        credential: &Credential,
        refresh_token: &Secret,
    ) -> Result<(), Error> {
        let store = &self.inner.store;
        let kind = Kind::AccessToken;
        let owner = self.lease_owner();
        let ttl = std::time::Duration::from_millis(self.inner.config.lease_ms);
        let now = self.now();
        if !store.try_lease(appid, kind, &owner, ttl, now).await? {
            return Ok(());
        }
        let version = store
            .credential(appid, kind)
            .await?
            .map_or(0, |r| r.version);
        let ahead = self
            .inner
            .config
            .renew_ahead(appid, kind, TokenMode::Classic);
        let dates = Dates {
            renew_at: Some(credential.expires_at - ahead),
            check_due: None,
        };
        let saved = store
            .save_credential(
                appid,
                kind,
                credential,
                (&owner, version),
                now,
                dates,
                Some(RefreshTokens {
                    used: refresh_token,
                    returned: refresh_token,
                }),
            )
            .await;
        if !matches!(saved, Ok(Some(_))) {
            let _ = store.release_lease(appid, kind, &owner).await;
        }
        saved.map(|_| ())
    }
}

/// What asking a platform's question of another app answers.
fn not_a_component(appid: &AppId, kind: AppKind) -> Error {
    Error::InvalidInput(format!(
        "{appid} is a {} app, not a third-party platform (kind component)",
        kind.as_str()
    ))
}

/// A failure of what an authorizer's refresh depends on (its component's token): a missing
/// verify ticket is waited out like the component's own.
fn dependency(e: Error) -> FetchError {
    match e {
        Error::NoVerifyTicket(_) => FetchError::Waiting(e),
        other => FetchError::Other(other),
    }
}

/// A WeChat refusal of a call made on a push's or a page's behalf, as the engine reports it.
fn upstream_error(e: &UpstreamError) -> Error {
    match e {
        UpstreamError::Refused { errcode, errmsg } => Error::Refused {
            errcode: *errcode,
            errmsg: errmsg.clone(),
        },
        other => Error::Unavailable(other.to_string()),
    }
}
