//! Managing apps through the engine: adding, changing and deleting them (which drops what this
//! process holds of them), listing them with the state of their credentials, the digests of their
//! secrets for Go SDK callers, and signing `wx.config` for a page.

use rand::distr::SampleString;
use tracing::{debug, info};

use super::Engine;
use crate::Error;
use crate::keys::SecretDigests;
use crate::model::{AppId, AppInfo, AppUpdate, Credential, CredentialRecord, Kind, NewApp, Secret};

/// An app with the state of each of its credentials; what listings show.
#[derive(Debug, Clone)]
pub struct AppStatus {
    /// The app, without its secrets.
    pub app: AppInfo,
    /// Its access token's stored state, if a row exists.
    pub access_token: Option<CredentialRecord>,
    /// Its jsapi ticket's stored state, if a row exists.
    pub jsapi_ticket: Option<CredentialRecord>,
    /// Its card ticket's stored state, if a row exists.
    pub card_ticket: Option<CredentialRecord>,
}

/// What a page's `wx.config` needs, signed with the app's current jsapi ticket.
#[derive(Debug, Clone)]
pub struct JssdkConfig {
    /// The id the page passes as `appId`: the appid, or a WeCom app's corpid.
    pub app_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    /// A random string.
    pub nonce_str: String,
    /// The SHA-1 signature.
    pub signature: String,
}

impl Engine {
    /// Stores a credential obtained elsewhere (`wetoken-cli import`) for `app`, if it has none,
    /// with its renewal dated as the scheduler would date it under this engine's settings (so
    /// that importing 100,000 apps leaves the scheduler nothing to date). Returns whether it
    /// was stored.
    pub async fn import_credential(
        &self,
        app: &NewApp,
        kind: Kind,
        credential: &Credential,
    ) -> Result<bool, Error> {
        let ahead = self
            .inner
            .config
            .renew_ahead(&app.appid, kind, app.token_mode);
        self.inner
            .store
            .import_credential(
                &app.appid,
                kind,
                credential,
                Some(credential.expires_at - ahead),
                self.now(),
            )
            .await
    }

    /// Adds an app.
    pub async fn add_app(&self, app: &NewApp) -> Result<(), Error> {
        self.inner.store.insert_app(app, self.now()).await?;
        self.remember_secret(&app.appid, Some(&app.secret));
        info!(appid = %app.appid, "app added");
        Ok(())
    }

    /// Whether `presented` is `appid`'s app secret, as the Go SDK presents it, from digests held
    /// in memory: no database query, constant time in the secrets' content. Holds only after
    /// [`Engine::reload_app_secrets`] has run (and for apps this engine added or updated since);
    /// an app another process added or changed is seen from the next reload on.
    pub fn is_app_secret(&self, appid: &str, presented: &str) -> bool {
        self.inner
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matches(appid, presented)
    }

    /// Reads every app's secret from the database and keeps its SHA-256 for
    /// [`Engine::is_app_secret`], in place of what was held; returns how many apps it holds
    /// secrets of. A secret that does not decrypt is left out: that app's tokens cannot be
    /// fetched either, and the fetch says why.
    pub async fn reload_app_secrets(&self) -> Result<usize, Error> {
        let read_at = self.secret_digests().generation();
        let mut readable = Vec::new();
        for (appid, secret) in self.inner.store.app_secrets().await? {
            match secret {
                Ok(secret) => readable.push((appid, secret)),
                Err(e) => debug!(%appid, error = %e.chain(), "app secret left out of the digests"),
            }
        }
        if !self.secret_digests().install(read_at, &readable) {
            debug!("an app changed during the reload of app secrets; the next one reads it");
        }
        Ok(readable.len())
    }

    pub(super) fn secret_digests(&self) -> std::sync::RwLockWriteGuard<'_, SecretDigests> {
        self.inner
            .secrets
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn remember_secret(&self, appid: &AppId, secret: Option<&Secret>) {
        self.secret_digests().set(appid.as_str(), secret);
    }

    /// Changes an app's settings and lifts any halt or backoff on its credentials.
    pub async fn update_app(&self, appid: &AppId, update: &AppUpdate) -> Result<(), Error> {
        if update.is_empty() {
            return Err(Error::InvalidInput(
                "nothing to update: give secret, token, aes_key, token_mode, daily_budget, verify_secs, or a Go field (mchid, pay_key, sub_appid, sub_mchid, wechat_host, wcode_template_id)".into(),
            ));
        }
        self.inner
            .store
            .update_app(appid, update, self.now())
            .await?;
        self.forget(appid);
        if let Some(secret) = &update.secret {
            self.remember_secret(appid, Some(secret));
        }
        if let Some(secs) = update.verify_secs {
            // The slow check follows the new interval from now (or stops).
            let next = self.inner.config.verify_interval(Some(secs));
            let next = next.map(|interval| self.now() + interval);
            self.inner.store.schedule_check(appid, next).await?;
        }
        info!(%appid, "app updated");
        Ok(())
    }

    /// Removes an app and its credentials.
    pub async fn delete_app(&self, appid: &AppId) -> Result<(), Error> {
        let existed = self.inner.store.delete_app(appid).await?;
        self.forget(appid);
        self.remember_secret(appid, None);
        if !existed {
            return Err(Error::UnknownApp(appid.clone()));
        }
        info!(%appid, "app deleted");
        Ok(())
    }

    /// One app and the state of its credentials.
    pub async fn app_status(&self, appid: &AppId) -> Result<AppStatus, Error> {
        let app = self.store().known_app_info(appid).await?;
        self.status_of(app).await
    }

    /// Every app and the state of its credentials.
    pub async fn app_statuses(&self) -> Result<Vec<AppStatus>, Error> {
        let mut out = Vec::new();
        for app in self.inner.store.apps().await? {
            out.push(self.status_of(app).await?);
        }
        Ok(out)
    }

    pub(super) async fn status_of(&self, app: AppInfo) -> Result<AppStatus, Error> {
        let store = &self.inner.store;
        Ok(AppStatus {
            access_token: store.credential(&app.appid, Kind::AccessToken).await?,
            jsapi_ticket: store.credential(&app.appid, Kind::JsapiTicket).await?,
            card_ticket: store.credential(&app.appid, Kind::CardTicket).await?,
            app,
        })
    }

    /// Signs `wx.config` for the page at `url` (http or https; a `#` fragment is dropped).
    pub async fn jssdk_config(&self, appid: &AppId, url: &str) -> Result<JssdkConfig, Error> {
        let url = crate::sign::signable_url(url);
        let scheme_end = url.find("://").unwrap_or(0);
        let scheme = url[..scheme_end].to_ascii_lowercase();
        let host = url[scheme_end..].trim_start_matches("://");
        if !(scheme == "http" || scheme == "https")
            || host.is_empty()
            || host.starts_with('/')
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::InvalidInput(
                "url must be the page's full http:// or https:// URL".into(),
            ));
        }
        let ticket = self.get(appid, Kind::JsapiTicket).await?;
        let app = self.store().known_app_info(appid).await?;
        let app_id = app
            .work
            .map_or_else(|| appid.as_str().to_owned(), |w| w.corpid);
        let timestamp = self.now().timestamp();
        let nonce_str = rand::distr::Alphanumeric.sample_string(&mut rand::rng(), 16);
        let signature = crate::sign::jsapi_signature(&ticket.value, &nonce_str, timestamp, url);
        Ok(JssdkConfig {
            app_id,
            timestamp,
            nonce_str,
            signature,
        })
    }
}
