//! The admin handlers, `/wechat/app/{create,list,show,update,delete,refresh}`: they add, show,
//! change and remove apps and force refreshes, and render an app's state as the wire's
//! [`AppView`]. `dispatch` has checked the admin policy before they run.

use http::{Method, StatusCode};
use tracing::warn;
use wetoken_core::{
    AppId, AppKind, AppStatus, AppUpdate, CredentialRecord, GoFields, Kind, NewApp, Secret,
    TokenMode,
};
use wetoken_wire::{AppList, AppShow, AppView, Created, CredentialState, code};

use super::credential::credential_response;
use super::error::{ApiError, ApiResult, json, success};
use super::params::Params;
use super::{Mount, RequestBody, State};

/// An admin route. A mount limited to some apps acts on those alone: it lists only them,
/// answers the others as unknown apps, and creates none outside them.
pub(super) async fn app_route<B: RequestBody>(
    state: &State,
    mount: &Mount,
    action: &str,
    parts: &http::request::Parts,
    body: B,
) -> ApiResult {
    let method = &parts.method;
    let allowed = match action {
        // The Go clients create apps with GET and a query string.
        "create" => method == Method::GET || method == Method::POST,
        "list" | "show" => method == Method::GET,
        "update" | "delete" | "refresh" => method == Method::POST,
        _ => return Err(ApiError::NotFound),
    };
    if !allowed {
        return Err(ApiError::MethodNotAllowed);
    }
    let params = Params::read(parts, body, &state.http).await?;
    if action == "create" && method == Method::GET && params.optional("secret").is_some() {
        // Never the secret itself: the Go clients' way still works, but should end.
        warn!(
            appid = params.optional("appid").unwrap_or_default(),
            "deprecated: an app was created with its secret in a GET query string; POST it in the body"
        );
    }
    let engine = &state.engine;
    match action {
        "create" => {
            let kind = AppKind::parse(params.optional("kind").unwrap_or("mp"))?;
            let (appid, work) = NewApp::identify(
                kind,
                params.optional("appid"),
                params.optional("corpid"),
                params.optional("agentid"),
            )?;
            if !mount.covers(&appid) {
                return Err(ApiError::Forbidden(
                    "this mount of wetoken serves only its own apps; it creates no other".into(),
                ));
            }
            // An authorizer of a third-party platform is added with its component and its
            // `authorizer_refresh_token`, which stands where an app's secret would.
            let component = params
                .optional("component_appid")
                .map(AppId::parse)
                .transpose()?;
            let secret = match component {
                Some(_) => params.secret("refresh_token", 512)?.ok_or_else(|| {
                    ApiError::BadRequest(
                        "refresh_token (the authorizer_refresh_token) is required for an \
                         authorizer"
                            .into(),
                    )
                })?,
                None => params
                    .secret("secret", 255)?
                    .ok_or_else(|| ApiError::BadRequest("secret is required".into()))?,
            };
            let app = NewApp {
                appid,
                kind,
                token_mode: params
                    .optional("token_mode")
                    .map(TokenMode::parse)
                    .transpose()?
                    .unwrap_or_default(),
                work,
                component,
                secret,
                token: params.secret("token", Secret::MAX_MESSAGE_KEY)?,
                aes_key: params.secret("aes_key", Secret::MAX_MESSAGE_KEY)?,
                daily_budget: params.budget()?,
                pay_key: params.secret("pay_key", GoFields::MAX)?,
                go: params.go_fields()?,
                verify_secs: params.verify_secs()?,
            };
            engine.add_app(&app).await?;
            Ok(json(
                StatusCode::OK,
                &Created {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    appid: app.appid.to_string(),
                },
            ))
        }
        "list" => {
            let listing = params.listing()?;
            let mut page = engine
                .list_apps(&listing.filter, listing.after.as_ref(), listing.limit)
                .await?;
            // A mount limited to some apps shows those alone: a page may come out shorter.
            page.apps.retain(|status| mount.covers(&status.app.appid));
            Ok(json(
                StatusCode::OK,
                &AppList {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    apps: page.apps.iter().map(app_view).collect(),
                    next: page.next.as_ref().map(wetoken_core::Cursor::encode),
                },
            ))
        }
        "show" => {
            let appid = AppId::parse(params.required("appid")?)?;
            mount.admit(&appid)?;
            let status = engine.app_status(&appid).await?;
            Ok(json(
                StatusCode::OK,
                &AppShow {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    app: app_view(&status),
                },
            ))
        }
        "update" => {
            let appid = AppId::parse(params.required("appid")?)?;
            mount.admit(&appid)?;
            // An authorizer's refresh token stands where an app's secret would, as at create.
            let secret = match (
                params.secret("secret", Secret::MAX_APP_SECRET)?,
                params.secret("refresh_token", 512)?,
            ) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::BadRequest(
                        "give secret or refresh_token (an authorizer's), not both".into(),
                    ));
                }
                (secret, refresh_token) => secret.or(refresh_token),
            };
            let update = AppUpdate {
                secret,
                token: params.secret("token", Secret::MAX_MESSAGE_KEY)?,
                aes_key: params.secret("aes_key", Secret::MAX_MESSAGE_KEY)?,
                token_mode: params
                    .optional("token_mode")
                    .map(TokenMode::parse)
                    .transpose()?,
                daily_budget: params.budget()?,
                pay_key: params.secret("pay_key", GoFields::MAX)?,
                go: params.go_fields()?,
                verify_secs: params.verify_secs()?,
            };
            engine.update_app(&appid, &update).await?;
            Ok(success())
        }
        "delete" => {
            let appid = AppId::parse(params.required("appid")?)?;
            mount.admit(&appid)?;
            engine.delete_app(&appid).await?;
            Ok(success())
        }
        "refresh" => {
            let (kind, credential) = force_refresh(engine, mount, &params).await?;
            Ok(credential_response(kind, &credential, engine.now()))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// An operator's forced refresh of `appid`'s `kind` (`token`, `ticket` or `wx_card`), as
/// `/wechat/app/refresh` and the status page's button ask for it: the caller has passed the
/// admin check; the engine's quota guard (the budget less its reserve, WeChat's limits on
/// forced stable tokens) decides whether WeChat is called.
pub(super) async fn force_refresh(
    engine: &wetoken_core::Engine,
    mount: &Mount,
    params: &Params,
) -> Result<(Kind, std::sync::Arc<wetoken_core::Credential>), ApiError> {
    let appid = AppId::parse(params.required("appid")?)?;
    mount.admit(&appid)?;
    let kind = refresh_kind(params.optional("kind"))?;
    let credential = engine.force_refresh(&appid, kind).await?;
    Ok((kind, credential))
}

/// The credential a forced refresh names: `token` (the default), `ticket` (or `jsapi`) or
/// `wx_card`.
pub(super) fn refresh_kind(name: Option<&str>) -> Result<Kind, ApiError> {
    match name.unwrap_or("token") {
        "token" => Ok(Kind::AccessToken),
        "ticket" | "jsapi" => Ok(Kind::JsapiTicket),
        "wx_card" => Ok(Kind::CardTicket),
        other => Err(ApiError::BadRequest(format!(
            "unknown kind {other:?}: expected token, ticket or wx_card"
        ))),
    }
}

fn app_view(status: &AppStatus) -> AppView {
    let app = &status.app;
    AppView {
        appid: app.appid.to_string(),
        kind: app.kind.as_str().into(),
        token_mode: app.token_mode.as_str().into(),
        corpid: app.work.as_ref().map(|w| w.corpid.clone()),
        agentid: app.work.as_ref().map(|w| w.agentid.clone()),
        component_appid: app.component.as_ref().map(ToString::to_string),
        revoked_at: app.revoked_at.map(|at| at.to_rfc3339()),
        daily_budget: app.daily_budget,
        calls_today: app.calls_today,
        verify_secs: app.verify_secs,
        has_token: app.has_token,
        has_aes_key: app.has_aes_key,
        has_pay_key: app.has_pay_key,
        mchid: app.go.mchid.clone(),
        sub_appid: app.go.sub_appid.clone(),
        sub_mchid: app.go.sub_mchid.clone(),
        wechat_host: app.go.wechat_host.clone(),
        wcode_template_id: app.go.wcode_template_id.clone(),
        create_time: app.create_time.to_rfc3339(),
        update_time: app.update_time.to_rfc3339(),
        access_token: credential_state(status.access_token.as_ref()),
        jsapi_ticket: credential_state(status.jsapi_ticket.as_ref()),
        card_ticket: credential_state(status.card_ticket.as_ref()),
    }
}

pub(super) fn credential_state(record: Option<&CredentialRecord>) -> CredentialState {
    match record {
        None => CredentialState {
            expires_at: None,
            message: "not fetched yet".into(),
            halted: false,
            replaced: 0,
        },
        Some(r) => CredentialState {
            expires_at: r.credential.as_ref().map(|c| c.expires_at.to_rfc3339()),
            message: r.message.clone(),
            halted: r.halted,
            replaced: r.replaced,
        },
    }
}
