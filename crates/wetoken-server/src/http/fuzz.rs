//! The fuzz entry point: [`fuzz_request`], the body of the `route` fuzz target in `fuzz/`
//! (through `wetoken_server::fuzz`), which property tests here also run. It drives a request's
//! bytes through everything before the engine and asserts the invariants that must hold.

use chrono::Utc;
use wetoken_core::keys::Access;
use wetoken_core::{AppId, KeyTable};

use super::error::error_response;
use super::params::Params;
use super::route::{Route, in_credential_group, route};

/// The body of the `route` fuzz target (`fuzz/`), also run by a property test.
///
/// `data` is a flags byte, a request target (`/path?query`), a newline, then a body. It goes
/// through what a request goes through before the engine: the URI parse, route matching, the
/// consumer-key check, appid validation, parameter parsing and the error mapping. It panics only
/// when an invariant breaks:
/// - a matched appid or action is one raw path segment, and a valid appid is the text it was
///   parsed from;
/// - the route of a path does not depend on anything but the path;
/// - a consumer key passes only for the one key, its one appid, and never for a refresh it
///   forbids.
pub(crate) fn fuzz_request(data: &[u8]) {
    const KEY: &str = "wtk_fuzz";
    const SCOPE: &str = "wxfuzz";
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (target, body) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let path = uri.path();
    let routed = route(path);
    let segment = |s: &str| {
        assert!(!s.contains('/'), "{s:?} from {path:?}");
        assert!(path.contains(s));
    };
    let table = KeyTable::new([wetoken_core::ConsumerKey {
        id: "kfuzz".into(),
        name: "fuzz".into(),
        appids: [SCOPE.to_owned()].into(),
        allow_refresh: flags & 2 == 0,
        refresh_limit: None,
        networks: vec![],
        create_time: Utc::now(),
        revoke_time: None,
        hash: wetoken_core::keys::KeyHash::of(KEY),
    }]);
    let presented = std::str::from_utf8(body).ok().map(str::trim);
    // Every credential route answers errors as the group does; no admin route does.
    match &routed {
        Some(Route::Credential { .. } | Route::Jssdk(_)) => {
            assert!(in_credential_group(path), "{path:?}");
        }
        Some(_) => assert!(!in_credential_group(path), "{path:?}"),
        None => {}
    }
    match &routed {
        Some(Route::Credential { appid, refresh, .. }) => {
            segment(appid);
            let access = Access {
                appid,
                refresh: *refresh,
                peer: std::net::IpAddr::from([127, 0, 0, 1]),
            };
            if table.check(presented, access).is_ok() {
                assert_eq!((presented, *appid), (Some(KEY), SCOPE));
                assert!(!refresh || flags & 2 == 0);
            }
            if let Ok(id) = AppId::parse(appid) {
                assert_eq!(id.as_str(), *appid);
            }
        }
        Some(Route::Jssdk(appid)) => {
            segment(appid);
            if let Ok(id) = AppId::parse(appid) {
                assert_eq!(id.as_str(), *appid);
            }
        }
        Some(Route::App(action)) => segment(action),
        _ => {}
    }
    match Params::parse(uri.query(), body, flags & 1 == 1) {
        Ok(params) => {
            for name in [
                "appid",
                "secret",
                "kind",
                "token_mode",
                "type",
                "url",
                "agentid",
            ] {
                if let Some(v) = params.optional(name) {
                    assert!(!v.is_empty());
                }
                if let Err(e) = params.secret(name, 255) {
                    let _ = error_response(&e);
                }
                let _ = params.required(name);
            }
            if let Err(e) = params.budget() {
                let _ = error_response(&e);
            }
        }
        Err(e) => {
            let response = error_response(&e);
            assert!(response.status().is_client_error(), "{e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The fuzz target's body on arbitrary bytes, and on inputs shaped like requests.
        #[test]
        fn fuzz_request_never_breaks(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            fuzz_request(&data);
        }

        #[test]
        fn fuzz_request_on_request_shapes(
            flags in 0u8..4,
            prefix in "(/wx)?",
            appid in "[a-z0-9._%/-]{0,12}",
            kind in "(token|ticket|jssdk|app|x)",
            op in "(get|refresh|config|create|/)",
            query in "[a-z0-9=&%+_]{0,30}",
            body in "(wtk_fuzz|\\{\"appid\":\"wxfuzz\"\\}|[ -~]{0,40})",
        ) {
            let data = format!("{}{prefix}/{appid}/wechat/{kind}/{op}?{query}\n{body}", flags as char);
            fuzz_request(data.as_bytes());
        }
    }
}
