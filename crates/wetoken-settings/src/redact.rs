//! Database URLs as messages and logs show them: without the password.

/// The URL with its password hidden, for messages and logs.
///
/// The user info ends at the last `@` before the first `?` or `#`, so a password holding an
/// unencoded `/` (`mysql://root:p/ss@db/w`, which the drivers accept) is hidden whole, and the
/// values of password-like query parameters (`password`, `sslpassword`, …) are hidden too.
/// Where it cannot tell what is the password (an `@` after the `?` or `#`, or in text that is
/// not `scheme://…`), only the scheme is shown.
pub fn redact_url(url: &str) -> String {
    const HIDDEN: &str = "***";
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let is_scheme = !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            if !is_scheme {
                return HIDDEN.to_owned();
            }
            (format!("{scheme}://"), rest)
        }
        // `sqlite:wetoken.db` and the like; with user info it is no URL wetoken knows.
        None if url.contains('@') => return HIDDEN.to_owned(),
        None => (String::new(), url),
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (before, after) = rest.split_at(end);
    if after.contains('@') {
        return format!("{prefix}{HIDDEN}");
    }
    let mut out = prefix;
    match before.rfind('@') {
        Some(at) => {
            let user = before[..at].split(':').next().unwrap_or_default();
            out.push_str(user);
            out.push(':');
            out.push_str(HIDDEN);
            out.push_str(&before[at..]);
        }
        None => out.push_str(before),
    }
    let (query, fragment) = after.split_at(after.find('#').unwrap_or(after.len()));
    if let Some(query) = query.strip_prefix('?') {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_password_key(key) => format!("{key}={HIDDEN}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out.push_str(fragment);
    out
}

/// Whether a URL query parameter holds a password or another secret.
fn is_password_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "secret"]
        .iter()
        .any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://root:s3cret@127.0.0.1:3306/test"),
            "mysql://root:***@127.0.0.1:3306/test"
        );
        assert_eq!(redact_url("sqlite://wetoken.db"), "sqlite://wetoken.db");
        assert_eq!(redact_url("postgres://a@h/db"), "postgres://a:***@h/db");
    }

    /// The authority was cut at the first '/', so in `mysql://root:p/ss@db:3306/w` no '@' was
    /// seen and the URL was printed with its password (by install's `using …`, error contexts
    /// and the start log line); query parameters holding a password were printed too.
    #[test]
    fn a_slash_in_the_password_or_a_password_parameter_is_redacted() {
        for (url, shown) in [
            ("mysql://root:p/ss@db:3306/w", "mysql://root:***@db:3306/w"),
            (
                "mysql://root:a/b/c@db/w?charset=utf8",
                "mysql://root:***@db/w?charset=utf8",
            ),
            (
                "postgres://h/db?user=u&password=p4ss",
                "postgres://h/db?user=u&password=***",
            ),
            (
                "postgres://u@h/db?sslmode=require&sslpassword=k3y&PassWord=x#f",
                "postgres://u:***@h/db?sslmode=require&sslpassword=***&PassWord=***#f",
            ),
            // Unsure where the password ends: the scheme only.
            ("mysql://root:p?ss@db/w", "mysql://***"),
            ("mysql://root:p@ss#x@db/w", "mysql://***"),
            ("root:s3cret@tcp(db)/w", "***"),
            ("sqlite:x.db?password=k3y", "sqlite:x.db?password=***"),
            ("my sql://root:s3cret@db/w", "***"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        for plain in [
            "sqlite://wetoken.db",
            "sqlite://wetoken.db?mode=rwc",
            "sqlite::memory:",
            "sqlite:wetoken.db?mode=rwc",
            "postgres://db.internal:5432/wetoken?sslmode=verify-full",
            "mysql://127.0.0.1:3306/test?ssl-mode=REQUIRED&charset=utf8mb4",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
    }
}
