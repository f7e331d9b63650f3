//! Who may call which route: the consumer-key policy of the token, ticket and jssdk routes
//! ([`ReaderPolicy`]), the admin policy ([`AdminPolicy`]), and the rule that trust granted by a
//! caller's address alone does not extend to web pages a browser opens on that caller's machine.
//! `dispatch` runs these checks before anything else about a request is looked at.

use std::sync::Arc;

use tracing::warn;
use wetoken_core::keys::{Access, Refusal};
use wetoken_core::{ConsumerKey, Engine, KeyTable, Reporter};

use super::limit::Holder;

use super::error::ApiError;

/// Who may use the token, ticket and jssdk routes.
pub(crate) struct ReaderPolicy {
    /// While no consumer key exists, callers must come from one of these.
    pub networks: Vec<ipnet::IpNet>,
    /// The consumer keys, as last read from the database. The request path only takes the read
    /// lock for the length of a hash lookup; the reload task swaps in a new snapshot.
    pub keys: std::sync::RwLock<Arc<KeyTable>>,
    /// The passive-refresh route's buckets, per key or per address.
    pub limits: super::limit::RefreshLimiter,
}

/// The header Go-era clients that cannot set `Authorization` may send the consumer key in.
/// A passive-refresh report admitted past its caller's rate limit.
pub(super) struct Report {
    holder: Holder,
    limit: wetoken_core::RefreshLimit,
    /// Who reports, for the engine's log lines and stable-token shares.
    pub(super) reporter: Reporter,
}

pub(crate) const KEY_HEADER: &str = "x-wetoken-key";

/// What a request on a guarded route does with the app's credentials, for the scope check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Reads a token or ticket (`get`, and a read-only `query`): a consumer key for the app, or
    /// the app's own secret in the query, which is how the Go SDK asks.
    Read,
    /// A passive refresh: a consumer key for the app that allows refreshes.
    Refresh,
    /// Anything else done with the app's credentials (the jssdk signature, sending a message):
    /// a consumer key for the app.
    Use,
}

/// The 401's message when the app secret presented in the query is not the app's.
const WRONG_SECRET: &str = "refused: the secret presented is not this app's; this route needs a \
     consumer key (Authorization: Bearer <key>) or the app's own secret (?secret=)";

/// The 401's message: what a guarded route takes.
const NEEDS_A_KEY: &str = "this route needs a consumer key (Authorization: Bearer <key>); \
     token and ticket reads also take the app's own secret (?secret=)";

impl ReaderPolicy {
    /// Checks the caller before anything else, and before the app is looked up: a refusal says
    /// nothing about whether the app exists.
    ///
    /// While consumer keys exist, a request that presents none may read (`Purpose::Read`) an
    /// app's token and ticket with that app's secret in its `secret` query parameter, as the
    /// Go SDK sends it: as if it held a key for that one app, without refreshes. A wrong secret
    /// counts as no key. `engine` holds the secrets' digests.
    ///
    /// For a passive refresh, returns the key that allowed it (`None`: the caller's address
    /// did, while no keys exist), whose bucket it then takes from.
    pub(super) fn check(
        &self,
        request: &http::request::Parts,
        peer: std::net::IpAddr,
        appid: &str,
        purpose: Purpose,
        engine: &Engine,
    ) -> Result<Option<Arc<ConsumerKey>>, ApiError> {
        let headers = &request.headers;
        let table = self.keys.read().unwrap_or_else(|e| e.into_inner());
        if !table.is_required() {
            return if self.networks.iter().any(|n| n.contains(&peer)) {
                trusted_by_address(request, peer).map(|()| None)
            } else {
                Err(ApiError::Forbidden(
                    "token and ticket reads answer only local callers until consumer keys are configured"
                        .into(),
                ))
            };
        }
        let presented = presented_key(headers);
        if presented.is_none()
            && purpose != Purpose::Use
            && let Some(secret) = query_secret(request.uri.query())
        {
            drop(table);
            if !engine.is_app_secret(appid, &secret) {
                // Never the secret itself; the path (in the span) names the app. The same
                // answer for an app that does not exist.
                return Err(ApiError::Unauthorized(WRONG_SECRET));
            }
            if purpose == Purpose::Refresh {
                return Err(ApiError::Forbidden(
                    "the app's secret reads its token and ticket; a passive refresh needs a \
                     consumer key"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let access = Access {
            appid,
            refresh: purpose == Purpose::Refresh,
            peer,
        };
        table
            .check(presented, access)
            .map(|key| (purpose == Purpose::Refresh).then(|| key.clone()))
            .inspect_err(|refusal| {
                // The refusal's log line (in `handle`) names the key, when it is one we know.
                let name = match refusal {
                    Refusal::MissingKey => return,
                    Refusal::UnknownKey => "an unknown or revoked key",
                    _ => presented.and_then(|p| table.name_of(p)).unwrap_or_default(),
                };
                tracing::Span::current().record("key", name);
            })
            .map_err(|refusal| match refusal {
                Refusal::MissingKey | Refusal::UnknownKey => ApiError::Unauthorized(NEEDS_A_KEY),
                Refusal::OutOfScope => {
                    ApiError::Forbidden("this consumer key does not cover this appid".into())
                }
                Refusal::Address => ApiError::Forbidden(
                    "this consumer key may not be used from this address".into(),
                ),
                Refusal::RefreshNotAllowed => {
                    ApiError::Forbidden("this consumer key may not ask for refreshes".into())
                }
            })
    }

    /// Admits one passive-refresh report if the caller's bucket holds one: the key's (under
    /// its own limit, or the server's), or while no keys exist the caller address's. The
    /// report is charged only if the engine declines it ([`ReaderPolicy::declined`]).
    pub(super) fn admit_report(
        &self,
        key: Option<&ConsumerKey>,
        peer: std::net::IpAddr,
        appid: &wetoken_core::AppId,
    ) -> Result<Report, ApiError> {
        let default = self.limits.default;
        let report = match key {
            Some(k) => Report {
                holder: Holder::Key(k.id.clone()),
                limit: k.refresh_limit.unwrap_or(default),
                reporter: Reporter::Key(k.name.clone()),
            },
            None => Report {
                holder: Holder::Address(peer),
                limit: default,
                reporter: Reporter::Address(peer),
            },
        };
        let Err(wait) = self
            .limits
            .check(&report.holder, report.limit, std::time::Instant::now())
        else {
            return Ok(report);
        };
        let (reporter, limit) = (&report.reporter, report.limit);
        let secs = wait.as_secs_f64().ceil().max(1.0);
        warn!(
            %appid, %reporter, %limit, retry_after_secs = secs,
            "passive refresh refused: the caller is over its rate"
        );
        Err(ApiError::Limited(
            format!(
                "{reporter} is over its passive-refresh rate ({limit}) for reports of values \
                 WeChat still accepts; try again in {secs} s. Report a value only when WeChat \
                 rejected it: reporting a working value does not bring a new one"
            ),
            wait,
        ))
    }

    /// Charges a report the engine declined (the value reported is still the one served) to
    /// its caller's bucket.
    pub(super) fn declined(&self, report: Report) {
        self.limits
            .charge(report.holder, report.limit, std::time::Instant::now());
    }

    /// Installs a new snapshot of the keys.
    pub(crate) fn replace(&self, table: KeyTable) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
}

/// The app secret a request presents in its query, as the Go SDK sends it: it appends
/// `<appid>&secret=<secret>` to the URL it is given, so `?wx1&secret=S`, or `?x=1wx1&secret=S`
/// after a query of its own. The first non-empty `secret` counts.
fn query_secret(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(name, value)| name == "secret" && !value.is_empty())
        .map(|(_, value)| value)
}

/// The consumer key a request presents: `Authorization: Bearer <key>`, else `X-Wetoken-Key`.
fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    bearer(headers)
        .or_else(|| headers.get(KEY_HEADER).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// The credentials of an `Authorization: Bearer <credentials>` header. The scheme's case does
/// not matter (RFC 9110), so `bearer …` from a client library is the same key.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
}

/// Who may use the admin routes, and who may read `/metrics`. Its `Debug` shows the keys as
/// `Secret(***)`.
#[derive(Debug)]
pub(crate) struct AdminPolicy {
    /// When set, callers must present it as a bearer token, from anywhere.
    pub key: Option<wetoken_core::Secret>,
    /// While no key is set, callers must come from one of these.
    pub networks: Vec<ipnet::IpNet>,
    /// A key that reads `/metrics` and nothing else.
    pub metrics_key: Option<wetoken_core::Secret>,
    /// Where `/metrics` may be read from without a key.
    pub metrics_networks: Vec<ipnet::IpNet>,
}

/// The 401's message on `/metrics` when a metrics key is configured.
const METRICS_NEEDS_A_KEY: &str =
    "/metrics needs the metrics key or the admin key: Authorization: Bearer <key>";

impl AdminPolicy {
    pub(super) fn check(
        &self,
        request: &http::request::Parts,
        peer: std::net::IpAddr,
    ) -> Result<(), ApiError> {
        match &self.key {
            Some(key) => {
                if presents(request, key) {
                    Ok(())
                } else {
                    Err(ApiError::Unauthorized(
                        "this route needs the admin key: Authorization: Bearer <key>",
                    ))
                }
            }
            None if self.networks.iter().any(|n| n.contains(&peer)) => {
                trusted_by_address(request, peer)
            }
            None => Err(ApiError::Forbidden(
                "the admin routes answer only local callers until an admin key is configured"
                    .into(),
            )),
        }
    }

    /// `/metrics`: the metrics key, a caller in `metrics_networks`, or whoever the admin routes
    /// answer. The metrics key opens nothing else: [`AdminPolicy::check`] does not know it.
    pub(super) fn check_metrics(
        &self,
        request: &http::request::Parts,
        peer: std::net::IpAddr,
    ) -> Result<(), ApiError> {
        if self
            .metrics_key
            .as_ref()
            .is_some_and(|k| presents(request, k))
        {
            return Ok(());
        }
        if self.metrics_networks.iter().any(|n| n.contains(&peer))
            && trusted_by_address(request, peer).is_ok()
        {
            return Ok(());
        }
        self.check(request, peer).map_err(|refused| {
            if self.metrics_key.is_some() {
                ApiError::Unauthorized(METRICS_NEEDS_A_KEY)
            } else {
                refused
            }
        })
    }
}

/// Whether the request presents `key` as its bearer token: compared in constant time in the
/// key's content; only the (public) length can show.
fn presents(request: &http::request::Parts, key: &wetoken_core::Secret) -> bool {
    use subtle::ConstantTimeEq;
    let presented = bearer(&request.headers).unwrap_or_default();
    bool::from(presented.as_bytes().ct_eq(key.expose().as_bytes()))
}

/// Access granted by the caller's address alone (no admin key, no consumer key yet) must not
/// extend to web pages that a browser on a trusted machine happens to open. Refused:
/// - a request a browser marks as coming from another site (`Sec-Fetch-Site: cross-site` or
///   `same-site`), or whose `Origin` is not this server: a form or script on some page (CSRF);
/// - a loopback caller that names this server by a domain name other than `localhost` or this
///   host's own name (which a registry announcement uses): a page
///   whose domain was made to resolve to 127.0.0.1 (DNS rebinding), or a proxy on this host that
///   passes its public `Host` on, which would make every outside caller look local.
///
/// Programs (the clients, curl, the Go SDKs) send none of these headers, and a person opening
/// the status page by its address sends `Sec-Fetch-Site: none` or `same-origin`.
fn trusted_by_address(
    request: &http::request::Parts,
    peer: std::net::IpAddr,
) -> Result<(), ApiError> {
    let refuse = |what: &str| {
        Err(ApiError::Forbidden(format!(
            "access by network address alone does not extend to {what}; configure an admin key \
             or consumer keys to call this route from there"
        )))
    };
    // One pass over the few headers a request carries rather than a hashed lookup each: this
    // runs on every token read of an install without keys. Every `Origin` and
    // `Sec-Fetch-Site` counts, not the first: a second one must not hide a cross-site first.
    let (mut host, mut origins, mut cross_site, mut proxied) = (None, Vec::new(), false, false);
    for (name, value) in &request.headers {
        if *name == http::header::HOST {
            host.get_or_insert(value);
        } else if *name == http::header::ORIGIN {
            origins.push(value);
        } else if *name == SEC_FETCH_SITE {
            cross_site |= value != "none" && value != "same-origin";
        } else if PROXY_HEADERS.contains(name) {
            proxied = true;
        }
    }
    if proxied {
        // The address is the proxy's: the caller behind it may be anyone. nginx's default
        // `proxy_pass http://127.0.0.1:…` also rewrites Host, so the name check below would
        // not catch it.
        return refuse(
            "requests passed on by a proxy (Forwarded, X-Forwarded-For, X-Real-IP or Via)",
        );
    }
    let authority = request
        .uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| host?.to_str().ok());
    if cross_site {
        return refuse("requests from other web sites");
    }
    for origin in origins {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, host)| authority.is_some_and(|a| a.eq_ignore_ascii_case(host)));
        if !same {
            return refuse("requests from other web sites");
        }
    }
    if peer.is_loopback()
        && let Some(authority) = authority
    {
        // An IPv6 literal is bracketed; a browser takes a name of digits and dots for IPv4.
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, port)| {
                if port.ends_with(']') { authority } else { host }
            });
        let literal =
            host.starts_with('[') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        // This host's own name is fine: a server listening on every address announces itself
        // by it, and a rebinding page cannot take it over.
        if !(literal
            || host.eq_ignore_ascii_case("localhost")
            || host.eq_ignore_ascii_case(crate::hostname()))
        {
            return refuse("loopback callers that name this server by a domain name");
        }
    }
    Ok(())
}

/// The caller's address. From a trusted proxy (`trusted_proxies`), it is the address the proxy
/// forwards for: `X-Forwarded-For` read from its end, where the proxy appended the address it
/// was called from, past any further trusted proxies, to the first address that is not one.
/// The entries left of that one were written by the caller and are not believed. From anyone
/// else, the TCP peer, whatever it sends.
///
/// A trusted proxy's request without `X-Forwarded-For` is its own (or a local program's, when
/// the proxy runs on this host): the TCP peer. One with an entry that is not an address is
/// refused with a 400 that says so.
pub(super) fn client_address(
    peer: std::net::IpAddr,
    headers: &http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Result<std::net::IpAddr, ApiError> {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let bad = |what: String| {
        ApiError::BadRequest(format!(
            "this request came through trusted proxy {peer}, {what}; configure the proxy to \
             append the caller's address (nginx: proxy_set_header X-Forwarded-For \
             $proxy_add_x_forwarded_for)"
        ))
    };
    // Several headers are one list, in order (RFC 9110 5.3).
    let mut hops = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let value = value
            .to_str()
            .map_err(|_| bad("whose X-Forwarded-For is not text".into()))?;
        hops.extend(value.split(',').map(str::trim));
    }
    let mut client = None;
    for hop in hops.iter().rev() {
        let ip = forwarded_address(hop).ok_or_else(|| {
            let shown: String = hop.chars().take(64).filter(|c| !c.is_control()).collect();
            bad(format!(
                "whose X-Forwarded-For names {shown:?}, not an address"
            ))
        })?;
        client = Some(ip);
        if !is_trusted(&ip) {
            break;
        }
    }
    Ok(client.unwrap_or(peer))
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`203.0.113.9`,
/// `203.0.113.9:4711`, `2001:db8::1`, `[2001:db8::1]:4711`).
fn forwarded_address(hop: &str) -> Option<std::net::IpAddr> {
    hop.parse::<std::net::IpAddr>()
        .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

const SEC_FETCH_SITE: http::HeaderName = http::HeaderName::from_static("sec-fetch-site");

/// Headers a proxy adds when it passes a request on (RFC 7239, the de facto `X-Forwarded-For`
/// and `X-Real-IP`, RFC 9110's `Via`).
const PROXY_HEADERS: [http::HeaderName; 4] = [
    http::HeaderName::from_static("forwarded"),
    X_FORWARDED_FOR,
    http::HeaderName::from_static("x-real-ip"),
    http::header::VIA,
];

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn address_trust_does_not_extend_to_web_pages() {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let lan = std::net::IpAddr::from([10, 0, 0, 7]);
        let check =
            |peer, headers: &[(&str, &str)]| trusted_by_address(&parts(headers), peer).is_ok();
        // How a server listening on every address announces itself, so how a local caller
        // that found it in the registry names it.
        let own_name = format!("{}:9999", crate::hostname());
        let allowed: &[(std::net::IpAddr, &[(&str, &str)])] = &[
            (loopback, &[]),
            (loopback, &[("host", "127.0.0.1:9999")]),
            (loopback, &[("host", "localhost:9999")]),
            (loopback, &[("host", "LOCALHOST")]),
            (loopback, &[("host", "[::1]:9999")]),
            (loopback, &[("host", "[::1]")]),
            (loopback, &[("host", &own_name)]),
            (
                loopback,
                &[("host", "127.0.0.1:9999"), ("sec-fetch-site", "none")],
            ),
            (
                loopback,
                &[
                    ("host", "127.0.0.1:9999"),
                    ("sec-fetch-site", "same-origin"),
                ],
            ),
            (
                loopback,
                &[
                    ("host", "127.0.0.1:9999"),
                    ("origin", "http://127.0.0.1:9999"),
                ],
            ),
            // From the network, a name is how callers reach it.
            (lan, &[("host", "wetoken.internal:9999")]),
        ];
        for (peer, headers) in allowed {
            assert!(check(*peer, headers), "{peer} {headers:?} should pass");
        }
        let refused: &[(std::net::IpAddr, &[(&str, &str)])] = &[
            (
                loopback,
                &[("host", "127.0.0.1:9999"), ("sec-fetch-site", "cross-site")],
            ),
            (
                loopback,
                &[("host", "127.0.0.1:9999"), ("sec-fetch-site", "same-site")],
            ),
            (
                lan,
                &[
                    ("host", "wetoken.internal"),
                    ("sec-fetch-site", "cross-site"),
                ],
            ),
            (
                loopback,
                &[
                    ("host", "127.0.0.1:9999"),
                    ("origin", "http://evil.example"),
                ],
            ),
            (loopback, &[("host", "127.0.0.1:9999"), ("origin", "null")]),
            (loopback, &[("origin", "http://127.0.0.1:9999")]),
            (
                lan,
                &[
                    ("host", "wetoken.internal"),
                    ("origin", "https://evil.example"),
                ],
            ),
            // DNS rebinding, or a local proxy passing the public name on.
            (loopback, &[("host", "rebind.evil.example:9999")]),
            (loopback, &[("host", "wetoken.example.com")]),
        ];
        for (peer, headers) in refused {
            assert!(
                !check(*peer, headers),
                "{peer} {headers:?} should be refused"
            );
        }
    }

    /// Builds `headers` into a request, each pair its own header line (so names repeat).
    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut request = Request::builder().uri("/wx1/wechat/token/get");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_admin_and_metrics_keys_are_not_in_debug() {
        let policy = AdminPolicy {
            key: Some(wetoken_core::Secret::new("admin-key-0123456789")),
            networks: Vec::new(),
            metrics_key: Some(wetoken_core::Secret::new("metrics-key-0123456789")),
            metrics_networks: Vec::new(),
        };
        let shown = format!("{policy:?}");
        assert!(!shown.contains("admin-key-0123456789"), "{shown}");
        assert!(!shown.contains("metrics-key-0123456789"), "{shown}");
    }

    #[test]
    fn every_origin_and_fetch_site_header_counts() {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let host = ("host", "127.0.0.1:9999");
        let ok = [
            vec![
                host,
                ("origin", "http://127.0.0.1:9999"),
                ("origin", "http://127.0.0.1:9999"),
            ],
            vec![
                host,
                ("sec-fetch-site", "none"),
                ("sec-fetch-site", "same-origin"),
            ],
        ];
        for headers in ok {
            assert!(
                trusted_by_address(&parts(&headers), loopback).is_ok(),
                "{headers:?}"
            );
        }
        let refused = [
            vec![
                host,
                ("origin", "http://127.0.0.1:9999"),
                ("origin", "http://evil.example"),
            ],
            vec![
                host,
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-site", "cross-site"),
            ],
            vec![
                host,
                ("sec-fetch-site", "none"),
                ("sec-fetch-site", "bogus"),
            ],
        ];
        for headers in refused {
            assert!(
                trusted_by_address(&parts(&headers), loopback).is_err(),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn address_trust_does_not_extend_through_a_proxy() {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let host = ("host", "127.0.0.1:9999");
        for proxy in [
            ("x-forwarded-for", "203.0.113.9"),
            ("X-Forwarded-For", "127.0.0.1"),
            ("x-real-ip", "203.0.113.9"),
            ("via", "1.1 nginx"),
            ("forwarded", "for=203.0.113.9;proto=https"),
        ] {
            let refused = trusted_by_address(&parts(&[host, proxy]), loopback).unwrap_err();
            let ApiError::Forbidden(message) = refused else {
                panic!("{proxy:?}: not a 403");
            };
            assert!(message.contains("proxy"), "{message}");
        }
        assert!(trusted_by_address(&parts(&[host]), loopback).is_ok());
    }

    #[test]
    fn the_caller_behind_a_trusted_proxy_is_the_last_untrusted_hop() {
        let trusted: Vec<ipnet::IpNet> =
            vec!["10.0.0.0/24".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let proxy = ip("10.0.0.7");
        let headers = |values: &[&str]| {
            let mut map = http::HeaderMap::new();
            for v in values {
                map.append(X_FORWARDED_FOR, v.parse().unwrap());
            }
            map
        };
        let client = |peer, values: &[&str]| client_address(peer, &headers(values), &trusted);
        // Not a trusted proxy: its headers are not read, whatever they say.
        let outsider = ip("198.51.100.1");
        assert_eq!(client(outsider, &["127.0.0.1"]).unwrap(), outsider);
        assert_eq!(client(outsider, &["garbage"]).unwrap(), outsider);
        // The proxy appends the address it was called from; what the caller wrote to its left
        // is not believed.
        assert_eq!(
            client(proxy, &["127.0.0.1, 203.0.113.9"]).unwrap(),
            ip("203.0.113.9")
        );
        // A chain of trusted proxies, over two headers, with ports and IPv6.
        assert_eq!(
            client(
                proxy,
                &["192.0.2.1, 203.0.113.9:4711", "10.0.0.9, [::1]:80"]
            )
            .unwrap(),
            ip("203.0.113.9")
        );
        assert_eq!(client(proxy, &["2001:db8::1"]).unwrap(), ip("2001:db8::1"));
        assert_eq!(
            client(proxy, &["::ffff:203.0.113.9"]).unwrap(),
            ip("203.0.113.9")
        );
        // Every hop trusted: the first proxy's caller was a proxy of ours.
        assert_eq!(client(proxy, &["10.0.0.3"]).unwrap(), ip("10.0.0.3"));
        // No header: the proxy's own request (or a local program's, beside it).
        assert_eq!(client(proxy, &[]).unwrap(), proxy);
        // Garbage from a trusted proxy is refused, loudly.
        for bad in [&["unknown"][..], &["203.0.113.9, "], &["203.0.113.9 junk"]] {
            let Err(ApiError::BadRequest(m)) = client(proxy, bad) else {
                panic!("{bad:?} was believed");
            };
            assert!(
                m.contains("10.0.0.7") && m.contains("X-Forwarded-For"),
                "{m}"
            );
        }
    }
}
