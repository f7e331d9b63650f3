//! Routing: the request path, matched as raw text on its `/`-separated segments (never
//! percent-decoded, so an encoded `/` or `..` cannot reach another route), into a [`Route`];
//! and the credential-route group, which answers errors as `http.credential_errors` says.

use wetoken_core::Kind;

/// The routes, as matched on path segments.
pub(super) enum Route<'a> {
    Status,
    /// `/status/{appid}`: one app's page on the status page.
    StatusApp(&'a str),
    Health,
    Ready,
    Live,
    Metrics,
    App(&'a str),
    Jssdk(&'a str),
    Credential {
        appid: &'a str,
        kind: Kind,
        refresh: bool,
    },
    /// `/wx/{appid}/token/query`: the stored token, never fetched.
    Query(&'a str),
    /// `/wx/{appid}/wxcode/send`: the Go wetoken's verification-code message.
    WxCode(&'a str),
    /// `/component/{component_appid}/event`: WeChat's pushes to a third-party platform
    /// (`http::push`). Public: the push's signature is its only gate.
    ComponentEvent(&'a str),
}

impl<'a> Route<'a> {
    /// The appid in the path of an app's route, as it came (not yet checked).
    pub(super) fn appid(&self) -> Option<&'a str> {
        match self {
            Route::Jssdk(appid) | Route::Query(appid) | Route::WxCode(appid) => Some(appid),
            Route::Credential { appid, .. } => Some(appid),
            Route::ComponentEvent(component) => Some(component),
            _ => None,
        }
    }

    /// The route's name in metrics.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Route::Status => "status",
            Route::StatusApp(_) => "status_app",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Live => "live",
            Route::Metrics => "metrics",
            Route::App(_) => "app",
            Route::Jssdk(_) => "jssdk_config",
            Route::Credential {
                kind: Kind::AccessToken,
                refresh: false,
                ..
            } => "token_get",
            Route::Credential {
                kind: Kind::AccessToken,
                refresh: true,
                ..
            } => "token_refresh",
            Route::Credential { refresh: false, .. } => "ticket_get",
            Route::Credential { refresh: true, .. } => "ticket_refresh",
            Route::Query(_) => "token_query",
            Route::WxCode(_) => "wxcode_send",
            Route::ComponentEvent(_) => "component_event",
        }
    }
}

/// `path` split at each '/' into at most `N` segments (`None` past the last), or `None` when it
/// has more.
fn segments<const N: usize>(path: &str) -> Option<[Option<&str>; N]> {
    let mut parts = [None; N];
    let mut split = path.split('/');
    for part in &mut parts {
        *part = split.next();
    }
    split.next().is_none().then_some(parts)
}

pub(super) fn route(path: &str) -> Option<Route<'_>> {
    if path == "/" {
        return Some(Route::Status);
    }
    let parts = segments::<5>(path.strip_prefix('/')?)?;
    let credential = |appid, kind: &str, op: &str| {
        let kind = match kind {
            "token" => Kind::AccessToken,
            "ticket" => Kind::JsapiTicket,
            _ => return None,
        };
        let refresh = match op {
            "get" => false,
            "refresh" => true,
            _ => return None,
        };
        Some(Route::Credential {
            appid,
            kind,
            refresh,
        })
    };
    match parts {
        [Some("health" | "healthz"), None, ..] => Some(Route::Health),
        [Some("ready" | "readyz"), None, ..] => Some(Route::Ready),
        [Some("live" | "livez"), None, ..] => Some(Route::Live),
        [Some("metrics"), None, ..] => Some(Route::Metrics),
        [Some("status"), Some(appid), None, ..] => Some(Route::StatusApp(appid)),
        [Some("wechat"), Some("app"), Some(action), None, None] => Some(Route::App(action)),
        [
            Some(appid),
            Some("wechat"),
            Some("jssdk"),
            Some("config"),
            None,
        ] => Some(Route::Jssdk(appid)),
        [Some("wx"), Some(appid), Some("token"), Some("query"), None] => Some(Route::Query(appid)),
        [Some("wx"), Some(appid), Some("wxcode"), Some("send"), None] => Some(Route::WxCode(appid)),
        [
            Some("component"),
            Some(component),
            Some("event"),
            None,
            None,
        ] => Some(Route::ComponentEvent(component)),
        [Some("wx"), Some(appid), Some(kind), Some(op), None] => credential(appid, kind, op),
        [Some(appid), Some("wechat"), Some(kind), Some(op), None] => credential(appid, kind, op),
        _ => None,
    }
}

/// Whether `path` is in the credential-route group: `/wx/{appid}/…` and `/{appid}/wechat/…`
/// (the token, ticket, refresh and jssdk routes, and any route added under those prefixes),
/// but not the admin routes' `/wechat/app/…`. The group answers errors as
/// `http.credential_errors` says. Decided from the path alone, before routing, so a route
/// added to the group later needs nothing else to answer alike, and neither does a path in it
/// that no route matches.
pub(super) fn in_credential_group(path: &str) -> bool {
    let Some((first, rest)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    // WeChat's pushes, even to a platform whose appid is `wechat`, answer with their status.
    if first == "component" && rest.split('/').nth(1) == Some("event") {
        return false;
    }
    first == "wx" || rest.split_once('/').map_or(rest, |(second, _)| second) == "wechat"
}

#[cfg(test)]
mod tests {
    use super::*;
    use wetoken_core::{AppId, Kind};

    fn credential_route(path: &str) -> Option<(String, Kind, bool)> {
        match route(path)? {
            Route::Credential {
                appid,
                kind,
                refresh,
            } => Some((appid.to_owned(), kind, refresh)),
            _ => None,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            credential_route("/wx1/wechat/token/get"),
            Some(("wx1".into(), Kind::AccessToken, false))
        );
        assert_eq!(
            credential_route("/wx/wx1/ticket/refresh"),
            Some(("wx1".into(), Kind::JsapiTicket, true))
        );
        assert!(matches!(
            route("/wechat/app/create"),
            Some(Route::App("create"))
        ));
        assert!(matches!(route("/health"), Some(Route::Health)));
        assert!(matches!(route("/"), Some(Route::Status)));
        assert!(matches!(route("/metrics"), Some(Route::Metrics)));
        assert!(matches!(
            route("/status/wx1"),
            Some(Route::StatusApp("wx1"))
        ));
        assert!(route("/status/wx1/x").is_none());
        assert!(matches!(
            route("/component/wxc1/event"),
            Some(Route::ComponentEvent("wxc1"))
        ));
        assert!(route("/component/wxc1/event/x").is_none());
        assert!(route("/component/wxc1").is_none());
        for bad in [
            "",
            "//",
            "/wx1/wechat/token",
            "/wx1/wechat/token/get/",
            "/wx1/wechat/token/get/x",
            "/wx1/wechat/secret/get",
            "/wx1/other/token/get",
            "wx1/wechat/token/get",
        ] {
            assert!(route(bad).is_none(), "{bad:?} should not route");
        }
    }

    #[test]
    fn the_credential_group_is_every_route_under_its_prefixes() {
        for path in [
            "/wx1/wechat/token/get",
            "/wx1/wechat/ticket/refresh",
            "/wx1/wechat/jssdk/config",
            "/wx/wx1/token/get",
            "/wx/wx1/ticket/get",
            // Routes to come inherit the group; so does a path no route matches.
            "/wx/wx1/token/query",
            "/wx/wx1/wxcode/send",
            "/wx1/wechat/no/such",
            "/wechat/wechat/token/get",
        ] {
            assert!(in_credential_group(path), "{path}");
        }
        for path in [
            "/",
            "",
            "/wx",
            "/health",
            "/metrics",
            "/wechat/app/create",
            "/wechat/app/list",
            "/nothing/here",
            // WeChat's pushes answer with their status, whatever the platform's appid.
            "/component/wxc1/event",
            "/component/wechat/event",
        ] {
            assert!(!in_credential_group(path), "{path}");
        }
    }

    proptest::proptest! {
        /// Segments are `str::split`'s, and a path with too many is refused.
        #[test]
        fn segments_split_like_str_split(path in "[a/b.%]{0,12}") {
            let expected: Vec<&str> = path.split('/').collect();
            match segments::<5>(&path) {
                Some(parts) => {
                    let got: Vec<&str> = parts.iter().map_while(|p| *p).collect();
                    proptest::prop_assert_eq!(got, expected);
                }
                None => proptest::prop_assert!(expected.len() > 5, "{path:?}"),
            }
        }
    }

    #[test]
    fn encoded_slashes_stay_in_the_appid() {
        // The path is not decoded, so this is one (malformed) appid, not another route.
        let (appid, _, _) = credential_route("/wx%2Fwechat%2Ftoken/wechat/token/get").unwrap();
        assert!(AppId::parse(&appid).is_err());
    }
}
