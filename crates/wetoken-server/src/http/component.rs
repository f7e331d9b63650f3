//! A third-party platform's routes, `/component/{component_appid}/…` (issue #19):
//!
//! - `token/get`: its component token, as the token route answers (`CredentialBody`), under the
//!   reader policy of a token read (a consumer key for the component, or its secret, or a
//!   trusted address while no key exists), and in the credential group (`http.credential_errors`);
//! - `auth_url`: a link to WeChat's authorization page with a new pre-auth code, under the
//!   reader policy of any other use of an app's credentials (a consumer key for the component):
//!   such a key reads the component token, with which its holder could ask WeChat for a pre-auth
//!   code itself, so the route gives it nothing more, and needs no admin key;
//! - `authorizers`: its authorizers a page at a time, with their authorization and their token's
//!   state, under the admin policy (`dispatch` checks it).
//!
//! The push endpoint, `POST /component/{component_appid}/event`, is another module's.

use http::{Method, StatusCode};
use wetoken_core::{AppFilter, AppId, AppStatus, Cursor, Kind, page_limit};
use wetoken_wire::{AuthUrl, AuthorizerList, AuthorizerView, code};

use super::access::Purpose;
use super::admin::credential_state;
use super::credential::credential_response;
use super::error::{ApiError, ApiResult, json};
use super::params::Params;
use super::route::ComponentRoute;
use super::{Mount, RequestBody, State, admit};

/// The longest `redirect_uri` taken: WeChat sends the account back to it with the
/// authorization code in its query, and the whole link must still fit a browser's address bar.
pub(super) const REDIRECT_URI_MAX: usize = 1024;

/// Answers one of `component`'s routes.
pub(super) async fn component_route<B: RequestBody>(
    state: &State,
    mount: &Mount,
    peer: std::net::IpAddr,
    component: &str,
    which: ComponentRoute,
    parts: &http::request::Parts,
    body: B,
) -> ApiResult {
    let engine = &state.engine;
    match which {
        ComponentRoute::Token => {
            let (component, _) = admit(state, mount, parts, peer, component, Purpose::Read)?;
            let credential = engine.component_token(&component).await?;
            Ok(credential_response(
                Kind::AccessToken,
                &credential,
                engine.now(),
            ))
        }
        ComponentRoute::AuthUrl => {
            let (component, _) = admit(state, mount, parts, peer, component, Purpose::Use)?;
            let params = Params::read(parts, body, &state.http).await?;
            let redirect_uri = redirect_uri(params.optional("redirect_uri"))?;
            let auth_type = auth_type(params.optional("auth_type"))?;
            let (auth_url, expires_at) =
                engine.auth_url(&component, redirect_uri, auth_type).await?;
            Ok(json(
                StatusCode::OK,
                &AuthUrl {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    auth_url,
                    expires_at: expires_at.to_rfc3339(),
                },
            ))
        }
        ComponentRoute::Authorizers => {
            if parts.method != Method::GET && parts.method != Method::HEAD {
                return Err(ApiError::MethodNotAllowed);
            }
            let component = AppId::parse(component)?;
            mount.admit(&component)?;
            let params = Params::read(parts, body, &state.http).await?;
            let given = |name| params.optional(name).filter(|v| !v.is_empty());
            let filter = authorizer_filter(given("state"))?;
            let after = given("after")
                .or_else(|| given("cursor"))
                .map(Cursor::decode)
                .transpose()?;
            let limit = page_limit(given("limit"))?;
            let mut page = engine
                .list_authorizers(&component, &filter, after.as_ref(), limit)
                .await?;
            page.apps.retain(|status| mount.covers(&status.app.appid));
            let now = engine.now();
            Ok(json(
                StatusCode::OK,
                &AuthorizerList {
                    errcode: code::OK,
                    errmsg: "success".into(),
                    component_appid: component.to_string(),
                    authorizers: page.apps.iter().map(|s| authorizer_view(s, now)).collect(),
                    next: page.next.as_ref().map(Cursor::encode),
                },
            ))
        }
    }
}

/// The listing's `state`: `authorized` or `revoked` (the authorization), or one of a token's
/// states (`healthy`, `renewing`, `pending`, `failing`, `out_of_budget`, `halted`).
fn authorizer_filter(state: Option<&str>) -> Result<AppFilter, ApiError> {
    let mut filter = AppFilter::default();
    match state {
        None => {}
        Some("authorized") => filter.revoked = Some(false),
        Some("revoked") => filter.revoked = Some(true),
        Some(other) => {
            filter.state = Some(wetoken_core::CredentialState::parse(other).map_err(|e| {
                ApiError::BadRequest(format!(
                    "{e}; or authorized or revoked, for the authorization"
                ))
            })?);
        }
    }
    Ok(filter)
}

/// An authorizer as the listing shows it.
fn authorizer_view(status: &AppStatus, now: chrono::DateTime<chrono::Utc>) -> AuthorizerView {
    let app = &status.app;
    let record = status.access_token.as_ref();
    let token_state = record.map_or(wetoken_core::CredentialState::Pending, |r| {
        r.state(r.renew_at.is_some_and(|at| at <= now))
    });
    AuthorizerView {
        appid: app.appid.to_string(),
        kind: app.kind.as_str().into(),
        authorization: if app.revoked_at.is_some() {
            "revoked"
        } else {
            "authorized"
        }
        .into(),
        revoked_at: app.revoked_at.map(|at| at.to_rfc3339()),
        token_state: token_state.name().into(),
        access_token: credential_state(record),
    }
}

/// `redirect_uri`: required, an absolute `http` or `https` URL with a host, no user name or
/// fragment, no spaces or control characters, at most [`REDIRECT_URI_MAX`] characters. WeChat
/// checks its domain against the platform's registered one; this only refuses what cannot be
/// a link.
fn redirect_uri(value: Option<&str>) -> Result<&str, ApiError> {
    let bad = |why: &str| {
        ApiError::BadRequest(format!(
            "redirect_uri {why}: give the absolute http(s) URL WeChat sends the account back to \
             after it authorizes (on the domain registered for the platform)"
        ))
    };
    let Some(uri) = value.filter(|v| !v.is_empty()) else {
        return Err(bad("is required"));
    };
    if uri.len() > REDIRECT_URI_MAX {
        return Err(bad(&format!(
            "is {} bytes long, more than {REDIRECT_URI_MAX}",
            uri.len()
        )));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("holds a space or a control character"));
    }
    if uri.contains('#') {
        return Err(bad("has a fragment (#…), which WeChat would drop"));
    }
    let parsed: http::Uri = uri.parse().map_err(|_| bad("is not a URL"))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) {
        return Err(bad("must start with http:// or https://"));
    }
    match parsed.authority() {
        Some(a) if a.as_str().contains('@') => Err(bad("must not carry a user name")),
        Some(a) if !a.host().is_empty() => Ok(uri),
        _ => Err(bad("has no host")),
    }
}

/// `auth_type`: 1 official accounts only, 2 mini programs only, 3 both (the default).
fn auth_type(value: Option<&str>) -> Result<u8, ApiError> {
    match value.filter(|v| !v.is_empty()) {
        None | Some("3") => Ok(3),
        Some("1") => Ok(1),
        Some("2") => Ok(2),
        Some(other) => Err(ApiError::BadRequest(format!(
            "auth_type {:?} is not one of 1 (official accounts), 2 (mini programs) or 3 (both, \
             the default)",
            other.chars().take(16).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_absolute_http_links() {
        for good in [
            "https://example.com/done",
            "http://example.com:8080/done?x=1&y=%20",
            "https://a.example.com",
        ] {
            assert_eq!(redirect_uri(Some(good)).unwrap(), good);
        }
        let long = format!("https://example.com/{}", "a".repeat(REDIRECT_URI_MAX));
        for (bad, why) in [
            (None, "required"),
            (Some(""), "required"),
            (Some("/done"), "http"),
            (Some("example.com/done"), "http"),
            (Some("ftp://example.com/"), "http"),
            (Some("javascript:alert(1)"), ""),
            (Some("https://user@example.com/"), "user name"),
            (Some("https://example.com/a b"), "space"),
            (Some("https://example.com/#x"), "fragment"),
            (Some("https:///path"), ""),
            (Some(long.as_str()), "more than 1024"),
        ] {
            match redirect_uri(bad) {
                Err(ApiError::BadRequest(m)) => {
                    assert!(
                        m.contains(why) && m.contains("redirect_uri"),
                        "{bad:?}: {m}"
                    )
                }
                other => panic!("{bad:?}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn auth_types_are_one_two_or_three() {
        assert_eq!(auth_type(None).unwrap(), 3);
        assert_eq!(auth_type(Some("1")).unwrap(), 1);
        assert_eq!(auth_type(Some("2")).unwrap(), 2);
        for bad in ["0", "4", "both", "-1"] {
            assert!(auth_type(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_state_filter_takes_authorizations_and_token_states() {
        assert_eq!(
            authorizer_filter(Some("revoked")).unwrap().revoked,
            Some(true)
        );
        assert_eq!(
            authorizer_filter(Some("authorized")).unwrap().revoked,
            Some(false)
        );
        assert!(authorizer_filter(Some("halted")).unwrap().state.is_some());
        let Err(ApiError::BadRequest(m)) = authorizer_filter(Some("gone")) else {
            panic!("an unknown state is refused");
        };
        assert!(m.contains("revoked") && m.contains("halted"), "{m}");
    }
}
