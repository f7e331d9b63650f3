//! The database node at `/<platform>/var/db/<name>`, in either of its two forms:
//!
//! - the Go/hydra form, `{"provider":"mysql","connString":"user:pass@tcp(host:3306)/db?charset=utf8"}`,
//!   whose Go MySQL DSN is translated into a `mysql://` URL;
//! - a plain `{"url":"postgres://…"}` (also `mysql://…` and `sqlite://…`).
//!
//! Pool settings are read from either form: `maxOpen` (or `max_open`), `maxIdle` (`max_idle`),
//! `lifeTime` (`lifetime`, seconds).

use serde_json::Value;

/// Connection settings read from a database node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseNode {
    /// The connection URL.
    pub url: String,
    /// The most connections to open; never `Some(0)`: a node's 0 ("no limit" in Go) is `None`.
    pub max_open: Option<u32>,
    /// The most idle connections to keep.
    pub max_idle: Option<u32>,
    /// How long a connection may live, in seconds; never `Some(0)`: a node's 0 ("forever" in Go)
    /// is `None`.
    pub lifetime_secs: Option<u64>,
}

/// Reads a database node.
pub fn parse(node: &Value) -> Result<DatabaseNode, String> {
    let Some(object) = node.as_object() else {
        return Err("a database node is a JSON object".into());
    };
    let text = |keys: &[&str]| keys.iter().find_map(|k| object.get(*k)?.as_str());
    let number = |keys: &[&str]| -> Result<Option<u64>, String> {
        match keys.iter().find_map(|k| object.get(*k)) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| format!("{} must be a whole number", keys[0])),
        }
    };
    let url = match (text(&["url"]), text(&["provider"])) {
        (Some(url), _) => {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("mysql" | "postgres" | "postgresql" | "sqlite")) {
                // Name the scheme only: what is not a URL may be a DSN with its password.
                return Err(match scheme {
                    Some(scheme) if scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+') => format!(
                        "url must be mysql://, postgres:// or sqlite://, not {scheme}://"
                    ),
                    _ => "url must be a mysql://, postgres:// or sqlite:// URL (a Go DSN goes in connString, with provider)".into(),
                });
            }
            url.to_owned()
        }
        (None, Some("mysql")) => {
            let dsn = text(&["connString", "conn_string", "connstring"])
                .ok_or("a mysql node needs connString")?;
            go_mysql_dsn_to_url(dsn)?
        }
        (None, Some(provider @ ("oracle" | "ora" | "oci8" | "godror"))) => {
            return Err(format!(
                "provider {provider:?} is not supported: use mysql or postgres"
            ));
        }
        (None, Some("postgres" | "postgresql")) => {
            let conn = text(&["connString", "conn_string", "connstring"])
                .ok_or("a postgres node needs connString (a postgres:// URL)")?;
            if !conn.starts_with("postgres://") && !conn.starts_with("postgresql://") {
                return Err("a postgres connString must be a postgres:// URL".into());
            }
            conn.to_owned()
        }
        (None, Some(other)) => {
            return Err(format!(
                "provider {other:?} is not supported: use mysql or postgres"
            ));
        }
        (None, None) => return Err("a database node needs url, or provider and connString".into()),
    };
    let to_u32 = |v: Option<u64>, key: &str| -> Result<Option<u32>, String> {
        v.map(|n| u32::try_from(n).map_err(|_| format!("{key} is too large")))
            .transpose()
    };
    // Go's database/sql reads a limit of 0 as "no limit"; here it is left unset, so the pool's
    // default applies, rather than a pool of one connection or connections that die at once.
    let unlimited_is_unset = |v: Option<u64>| v.filter(|n| *n > 0);
    Ok(DatabaseNode {
        url,
        max_open: to_u32(
            unlimited_is_unset(number(&["maxOpen", "max_open"])?),
            "maxOpen",
        )?,
        max_idle: to_u32(number(&["maxIdle", "max_idle"])?, "maxIdle")?,
        lifetime_secs: unlimited_is_unset(number(&["lifeTime", "lifetime", "life_time"])?),
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes as Go's `url.PathUnescape` does (a `+` stays a `+`), for the DSN's
/// database name: `my%2Ddb` is `my-db`.
fn path_unescape(text: &str) -> Result<String, String> {
    let malformed = || "the database name in the DSN has a malformed %-escape".to_owned();
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(malformed)?;
            let hex = std::str::from_utf8(hex).map_err(|_| malformed())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| malformed())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| "the database name in the DSN is not UTF-8 once unescaped".into())
}

/// A DSN's TCP address, `host`, `host:port` or `[ipv6]:port`, as the URL's `host:port`.
///
/// It is checked, not copied: a `/`, `?`, `#`, `@` or control character in it would otherwise
/// end the URL's authority early and move the database name into the query or the path (found
/// by the `dsn` fuzz target). The error does not quote the address: in a DSN whose `@` is missing
/// or misplaced, what is read as the address may be the password.
fn tcp_address(addr: &str) -> Result<String, String> {
    let malformed = || {
        "malformed address in the DSN's tcp(…): expected host, host:port or [ipv6]:port, the \
         host of letters, digits, '.', '-' or '_'"
            .to_owned()
    };
    let (host, port) = crate::host_port(addr, 3306).ok_or_else(malformed)?;
    Ok(format!("{host}:{port}"))
}

/// The Rust driver's `ssl-mode` for the Go driver's `tls` parameter, so that a DSN that asks for
/// TLS, or refuses it, is not quietly given the Rust driver's default (`PREFERRED`, which falls
/// back to plain text). A custom TLS config name is refused: only a Go program can register one.
fn ssl_mode(tls: &str) -> Result<&'static str, String> {
    Ok(match tls {
        // Go's readBool.
        "1" | "true" | "TRUE" | "True" => "VERIFY_IDENTITY",
        "0" | "false" | "FALSE" | "False" => "DISABLED",
        v if v.eq_ignore_ascii_case("skip-verify") => "REQUIRED",
        v if v.eq_ignore_ascii_case("preferred") => "PREFERRED",
        _ => {
            return Err(
                "tls in the DSN names a custom TLS config, which only a Go program can register: \
                 use tls=true, skip-verify, preferred or false, or give a mysql:// url with ssl-mode \
                 and ssl-ca"
                    .into(),
            );
        }
    })
}

/// Translates a Go MySQL DSN, `[user[:password]@][net[(addr)]]/dbname[?param=value&…]`, into a
/// `mysql://` URL. The user and password may hold any character (`@`, `:`, `/`, `?` included),
/// as the Go driver reads them: the DSN's last `/` starts the database name, the first `?` after
/// it starts the parameters, and the last `@` before it ends the password. Parameters the Rust
/// driver also knows (`charset`, `collation`) are kept, `tls` becomes `ssl-mode`, and Go-only
/// ones (`parseTime`, `loc`, `timeout`, …) are dropped.
///
/// No error quotes the DSN: a part it names may, in a DSN mistyped, hold the user or password.
pub fn go_mysql_dsn_to_url(dsn: &str) -> Result<String, String> {
    let slash = dsn.rfind('/').ok_or("a Go MySQL DSN needs /dbname")?;
    let (head, tail) = (&dsn[..slash], &dsn[slash + 1..]);
    let (dbname, query) = match tail.split_once('?') {
        Some((dbname, query)) => (dbname, Some(query)),
        None => (tail, None),
    };
    let (userinfo, address) = match head.rfind('@') {
        Some(at) => (Some(&head[..at]), &head[at + 1..]),
        None => (None, head),
    };
    let (user, password) = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (info, None),
        },
        None => ("", None),
    };
    let (net, addr) = match address.find('(') {
        Some(open) if address.ends_with(')') => {
            (&address[..open], &address[open + 1..address.len() - 1])
        }
        Some(_) => {
            return Err(
                "malformed address in the DSN: net(addr) must end with ')' just before the '/' \
                 of the database name"
                    .into(),
            );
        }
        None if address.is_empty() => ("tcp", ""),
        None => (address, ""),
    };
    let mut params: Vec<(String, String)> = Vec::new();
    let host = match net {
        // `user@(host:3306)/db`: Go's driver takes a missing network for tcp.
        "" | "tcp" | "tcp4" | "tcp6" if addr.is_empty() => "127.0.0.1:3306".to_owned(),
        "" | "tcp" | "tcp4" | "tcp6" => tcp_address(addr)?,
        "unix" => {
            // Go's default socket.
            let socket = if addr.is_empty() {
                "/tmp/mysql.sock"
            } else {
                addr
            };
            params.push(("socket".into(), socket.to_owned()));
            "localhost".to_owned()
        }
        _ => {
            return Err(
                "the network in the DSN (before the address, after the '@') is not supported: use \
                 tcp(host:port) or unix(/path/to/socket)"
                    .into(),
            );
        }
    };
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "charset" | "collation" => {
                // Go takes a list of charsets; the first is the one wanted.
                let value = value.split(',').next().unwrap_or_default();
                params.push((key.to_owned(), value.to_owned()));
            }
            "tls" => params.push(("ssl-mode".into(), ssl_mode(value)?.into())),
            _ => {}
        }
    }
    let mut url = String::from("mysql://");
    if !user.is_empty() || password.is_some() {
        url.push_str(&encode(user));
        if let Some(password) = password {
            url.push(':');
            url.push_str(&encode(password));
        }
        url.push('@');
    }
    url.push_str(&host);
    url.push('/');
    url.push_str(&encode(&path_unescape(dbname)?));
    if !params.is_empty() {
        url.push('?');
        let joined: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        url.push_str(&joined.join("&"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn the_go_readme_form() {
        assert_eq!(
            go_mysql_dsn_to_url("root:123456@tcp(192.168.0.36:3306)/mall?charset=utf8").unwrap(),
            "mysql://root:123456@192.168.0.36:3306/mall?charset=utf8"
        );
        assert_eq!(
            go_mysql_dsn_to_url("u@tcp(db)/x?parseTime=true&loc=Local&charset=utf8mb4,utf8")
                .unwrap(),
            "mysql://u@db:3306/x?charset=utf8mb4"
        );
        assert_eq!(
            go_mysql_dsn_to_url("/x").unwrap(),
            "mysql://127.0.0.1:3306/x"
        );
        assert_eq!(
            go_mysql_dsn_to_url("u:p@unix(/run/mysqld/mysqld.sock)/x").unwrap(),
            "mysql://u:p@localhost/x?socket=%2Frun%2Fmysqld%2Fmysqld.sock"
        );
        // The table in docs/registry.md.
        for (dsn, url) in [
            (
                "root:pass@tcp(db:3306)/mall?charset=utf8",
                "mysql://root:pass@db:3306/mall?charset=utf8",
            ),
            (
                "root:p@ss:w/rd@tcp(db)/mall",
                "mysql://root:p%40ss%3Aw%2Frd@db:3306/mall",
            ),
            (
                "root@unix(/run/mysqld/mysqld.sock)/mall",
                "mysql://root@localhost/mall?socket=%2Frun%2Fmysqld%2Fmysqld.sock",
            ),
            ("root:pass@/mall", "mysql://root:pass@127.0.0.1:3306/mall"),
        ] {
            assert_eq!(go_mysql_dsn_to_url(dsn).unwrap(), url, "{dsn}");
        }
        assert!(go_mysql_dsn_to_url("no-database").is_err());
        assert!(go_mysql_dsn_to_url("u@pipe(x)/db").is_err());
    }

    #[test]
    fn a_dsn_given_as_url_is_refused_without_its_password() {
        let err = parse(&json!({"url": "root:s3cret@tcp(db:3306)/mall"})).unwrap_err();
        assert!(
            !err.contains("s3cret") && err.contains("connString"),
            "{err}"
        );
        let err = parse(&json!({"url": "oracle://scott@db"})).unwrap_err();
        assert!(err.contains("not oracle://"), "{err}");
    }

    #[test]
    fn node_forms() {
        let go = parse(&json!({"provider": "mysql", "connString": "a:b@tcp(h:1)/d", "maxOpen": 20, "maxIdle": "5", "lifeTime": 600})).unwrap();
        assert_eq!(go.url, "mysql://a:b@h:1/d");
        assert_eq!(
            (go.max_open, go.max_idle, go.lifetime_secs),
            (Some(20), Some(5), Some(600))
        );
        let plain = parse(&json!({"url": "postgres://u@h/db"})).unwrap();
        assert_eq!(
            (plain.url.as_str(), plain.max_open),
            ("postgres://u@h/db", None)
        );
        assert!(parse(&json!({"url": "sqlite://wetoken.db"})).is_ok());
        let oracle = parse(&json!({"provider": "oracle", "connString": "x"})).unwrap_err();
        assert!(
            oracle.contains("not supported") && oracle.contains("mysql or postgres"),
            "{oracle}"
        );
        for bad in [
            json!([]),
            json!({}),
            json!({"url": "redis://x"}),
            json!({"provider": "mysql"}),
            json!({"url": "mysql://h/d", "maxOpen": -1}),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }

    /// `maxOpen: 0` and `lifeTime: 0` mean "no limit" in Go's database/sql, but became a pool of
    /// one connection and a lifetime of 0 s (each connection thrown away after one use).
    #[test]
    fn zero_pool_settings_mean_unset_as_in_go() {
        for node in [
            json!({"url": "mysql://h/d", "maxOpen": 0, "lifeTime": 0}),
            json!({"provider": "mysql", "connString": "u@tcp(h)/d", "max_open": "0", "lifetime": "0"}),
        ] {
            let parsed = parse(&node).unwrap();
            assert_eq!(
                (parsed.max_open, parsed.lifetime_secs),
                (None, None),
                "{node}"
            );
        }
        let parsed = parse(&json!({"url": "mysql://h/d", "maxOpen": 1, "lifeTime": 1})).unwrap();
        assert_eq!((parsed.max_open, parsed.lifetime_secs), (Some(1), Some(1)));
    }

    /// The bug the `dsn` fuzz target found: the address inside `tcp(…)` was copied into the URL
    /// as it was, so `tcp(h?x)/db` became `mysql://h?x:3306/db`, whose host is `h` and whose
    /// database name sits in the query; a `/`, `#` or NUL broke the URL likewise.
    #[test]
    fn dsn_host_with_url_delimiters_is_refused() {
        for bad in [
            "u@tcp(h?x)/db",
            "u@tcp(h#x)/db",
            "u@tcp(h x)/db",
            "root:123456@tcp(122.1'\x00\x003306)/mall?charset=utf8",
            "root::ass@tcp(?b:3307)/mall",
            "u@tcp([::1)/db",
            "u@tcp([::1]x)/db",
            "u@tcp(h:99999)/db",
            "u@tcp(h:)/db",
            "u@tcp(::1)/db",
        ] {
            let err = go_mysql_dsn_to_url(bad).unwrap_err();
            assert!(err.contains("malformed address"), "{bad:?}: {err}");
            crate::fuzz::dsn(bad.as_bytes());
        }
        assert_eq!(
            go_mysql_dsn_to_url("u@tcp([::1]:3307)/db").unwrap(),
            "mysql://u@[::1]:3307/db"
        );
        assert_eq!(
            go_mysql_dsn_to_url("u@tcp([fe80::1])/db").unwrap(),
            "mysql://u@[fe80::1]:3306/db"
        );
        assert_eq!(
            go_mysql_dsn_to_url("u@tcp(db_1.internal-x)/db").unwrap(),
            "mysql://u@db_1.internal-x:3306/db"
        );
    }

    /// The query was split off at the DSN's last `?` rather than at the first `?` after its
    /// last `/`: a `?` in the password made `root:a/b?c@tcp(db:3306)/mall`, valid in Go, fail
    /// with an error quoting `root:a`, and a `?` in a parameter value moved the parameters into
    /// the database name.
    #[test]
    fn the_query_starts_at_the_first_question_mark_after_the_last_slash() {
        for (dsn, url) in [
            (
                "root:a/b?c@tcp(db:3306)/mall",
                "mysql://root:a%2Fb%3Fc@db:3306/mall",
            ),
            ("u:a(b/c?d@tcp(h)/db", "mysql://u:a%28b%2Fc%3Fd@h:3306/db"),
            (
                "u:p@tcp(h)/db?charset=utf8&x=a?b",
                "mysql://u:p@h:3306/db?charset=utf8",
            ),
            ("u:?@/db?", "mysql://u:%3F@127.0.0.1:3306/db"),
        ] {
            assert_eq!(go_mysql_dsn_to_url(dsn).as_deref(), Ok(url), "{dsn}");
        }
    }

    /// `unix()` or `unix` with no path means Go's default socket; it gave `socket=` (empty).
    #[test]
    fn unix_without_a_path_is_gos_default_socket() {
        for dsn in ["u:p@unix()/db", "u:p@unix/db"] {
            assert_eq!(
                go_mysql_dsn_to_url(dsn).as_deref(),
                Ok("mysql://u:p@localhost/db?socket=%2Ftmp%2Fmysql.sock"),
                "{dsn}"
            );
        }
    }

    /// Go's driver takes a missing network, `user@(host:port)/db`, for tcp.
    #[test]
    fn a_missing_network_is_tcp_as_in_go() {
        assert_eq!(
            go_mysql_dsn_to_url("u:p@(db:3307)/mall").as_deref(),
            Ok("mysql://u:p@db:3307/mall")
        );
        assert_eq!(
            go_mysql_dsn_to_url("u:p@()/mall").as_deref(),
            Ok("mysql://u:p@127.0.0.1:3306/mall")
        );
    }

    /// Go URL-unescapes the database name; it was copied as it was, so `my%2Ddb` named a
    /// database called `my%2Ddb` instead of `my-db`.
    #[test]
    fn the_database_name_is_unescaped_as_go_does() {
        for (dsn, url) in [
            ("u@tcp(h)/my%2Ddb", "mysql://u@h:3306/my-db"),
            (
                "u@tcp(h)/a%20b+c?charset=utf8",
                "mysql://u@h:3306/a%20b%2Bc?charset=utf8",
            ),
            ("u@tcp(h)/%E5%BA%93", "mysql://u@h:3306/%E5%BA%93"),
        ] {
            assert_eq!(go_mysql_dsn_to_url(dsn).as_deref(), Ok(url), "{dsn}");
        }
        for bad in [
            "u@tcp(h)/d%zz",
            "u@tcp(h)/d%2",
            "u@tcp(h)/d%",
            "u@tcp(h)/%FF",
        ] {
            let err = go_mysql_dsn_to_url(bad).unwrap_err();
            assert!(err.contains("database name"), "{bad}: {err}");
        }
    }

    /// Go's `tls` parameter was dropped, so the Rust driver fell back to `ssl-mode=PREFERRED`:
    /// a DSN asking for a verified connection got one that may be plain text.
    #[test]
    fn go_tls_becomes_ssl_mode() {
        for (tls, mode) in [
            ("true", "VERIFY_IDENTITY"),
            ("1", "VERIFY_IDENTITY"),
            ("skip-verify", "REQUIRED"),
            ("preferred", "PREFERRED"),
            ("false", "DISABLED"),
            ("0", "DISABLED"),
        ] {
            assert_eq!(
                go_mysql_dsn_to_url(&format!("u:p@tcp(h)/db?charset=utf8&tls={tls}")).unwrap(),
                format!("mysql://u:p@h:3306/db?charset=utf8&ssl-mode={mode}"),
                "tls={tls}"
            );
        }
        for custom in ["custom", "my%20config", ""] {
            let err = go_mysql_dsn_to_url(&format!("u:p@tcp(h)/db?tls={custom}")).unwrap_err();
            assert!(err.contains("custom TLS config"), "tls={custom}: {err}");
        }
    }

    /// DSNs that fail, with the user and the password in every place a mistyped DSN can put
    /// them. Both are made of `Ж`-words and delimiters, and no error text of ours has a `Ж`: an
    /// error that quotes any piece of them is caught.
    fn dsns_with_secrets(user: &str, password: &str) -> Vec<String> {
        [
            "{u}:{p}@tcp(h:3306)/db?charset=utf8",
            "{u}:{p}@tcp(h:3306)",
            "{u}:{p}/db",
            "{u}:{p}@pipe(x)/db",
            "{u}:{p}@tcp(h/db",
            "{u}:{p}@tcp(h:0)/db",
            "{u}:{p}@tcp([::1)/db",
            "{u}:{p}tcp(h)/db",
            "{u}:{p}@tcp({p})/db",
            "{u}:{p}@{p}/db",
            "{u}:{p}@unix({p})/{p}",
            "{u}:{p}@tcp(h)/{p}?{p}",
            "{u}:{p}@tcp(h)/db?tls={p}",
            "{u}:{p}@tcp(h)/d%z{p}",
            "{u}:{p}",
            "{p}",
        ]
        .iter()
        .map(|t| t.replace("{u}", user).replace("{p}", password))
        .collect()
    }

    proptest! {
        #[test]
        fn no_error_quotes_the_user_or_the_password(
            user in "(Ж[a-z]|[@/?()#&=,%\\[\\] ]){1,6}",
            password in "(Ж[a-z]|[@/?():#&=,%\\[\\] ]){1,10}",
        ) {
            for dsn in dsns_with_secrets(&user, &password) {
                for err in [
                    go_mysql_dsn_to_url(&dsn).err(),
                    parse(&json!({"provider": "mysql", "connString": dsn})).err(),
                    parse(&json!({"url": dsn})).err(),
                ]
                .into_iter()
                .flatten()
                {
                    prop_assert!(!err.contains('Ж'), "{dsn:?}: {err}");
                }
            }
        }

        /// Any user, password, database name and parameter value survive the translation: the
        /// URL parses, and its parts decode to what the DSN held.
        #[test]
        fn odd_credentials_survive(
            user in "[a-zA-Z0-9_]{1,12}",
            password in "[ -~]{0,24}",
            db in "[a-zA-Z0-9_$-]{1,16}",
            charset in "[a-z0-9]{1,10}",
            port in 1u16..,
        ) {
            // Go reads the first ':' of the user info as the separator, so the user has none.
            let dsn = format!("{user}:{password}@tcp(db.example:{port})/{db}?parseTime=true&charset={charset}");
            let url = go_mysql_dsn_to_url(&dsn).unwrap();
            let parsed = url::Url::parse(&url).unwrap();
            prop_assert_eq!(parsed.scheme(), "mysql");
            let decode = |s: &str| String::from_utf8(url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes()).next().unwrap().1.as_bytes().to_vec()).unwrap();
            prop_assert_eq!(decode(parsed.username()), user);
            prop_assert_eq!(decode(parsed.password().unwrap_or_default()), password);
            prop_assert_eq!(parsed.host_str(), Some("db.example"));
            prop_assert_eq!(parsed.port_or_known_default(), Some(port));
            prop_assert_eq!(decode(parsed.path().trim_start_matches('/')), db);
            let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
            prop_assert_eq!(pairs, vec![("charset".to_owned(), charset)]);
        }
    }
}
