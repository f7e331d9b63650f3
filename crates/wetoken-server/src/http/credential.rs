//! The credential answer: the token and ticket routes' body, a [`wetoken_wire::CredentialBody`]
//! written by hand into one buffer, since it is the hot path.

use std::io::Write;

use bytes::Bytes;
use chrono::{DateTime, Local, Utc};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response};
use http_body_util::Full;
use wetoken_core::{Credential, Kind};

/// The token route's answer, written by hand: this is the hot path, and the body is a
/// [`wetoken_wire::CredentialBody`] (a test checks the two agree). No clone of the value, no
/// intermediate structure, one allocation: measurably cheaper than serializing a
/// `CredentialBody` (docs/performance.md).
pub(super) fn credential_response(
    kind: Kind,
    c: &Credential,
    now: DateTime<Utc>,
) -> Response<Full<Bytes>> {
    let field = match kind {
        Kind::AccessToken => "access_token",
        Kind::JsapiTicket | Kind::CardTicket => "ticket",
    };
    let mut body = Vec::with_capacity(c.value.len() + 128);
    body.extend_from_slice(br#"{"errcode":0,"errmsg":"success",""#);
    body.extend_from_slice(field.as_bytes());
    body.extend_from_slice(b"\":");
    // WeChat's values are plain printable ASCII and go in as they are; anything else is escaped
    // by serde_json, so nothing here depends on it.
    // A fold without short-circuit, so the check vectorizes.
    let plain = c.value.bytes().fold(true, |plain, b| {
        plain & (b > b' ') & (b < 0x7f) & (b != b'"') & (b != b'\\')
    });
    if plain {
        body.push(b'"');
        body.extend_from_slice(c.value.as_bytes());
        body.push(b'"');
    } else {
        serde_json::to_writer(&mut body, c.value.as_str()).expect("writing to a Vec cannot fail");
    }
    body.extend_from_slice(br#","expires_in":"#);
    write!(body, "{}", c.seconds_left(now)).expect("writing to a Vec cannot fail");
    body.extend_from_slice(br#","expires_date":""#);
    expires_date(c.expires_at, &mut body);
    body.extend_from_slice(br#""}"#);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Appends `at` as `YYYYMMDDHHMMSS` in local time (as the Go wetoken wrote it). Converting to
/// local time consults the time zone, so each thread remembers its last answer: nearly every
/// request asks for the same few instants, and docs/performance.md measures the difference.
fn expires_date(at: DateTime<Utc>, out: &mut Vec<u8>) {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, [u8; 14])> = const { std::cell::RefCell::new((i64::MIN, [0; 14])) };
    }
    let key = at.timestamp();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != key {
            let text = at.with_timezone(&Local).format("%Y%m%d%H%M%S").to_string();
            let mut digits = [b'0'; 14];
            let bytes = text.as_bytes();
            let n = bytes.len().min(14);
            digits[..n].copy_from_slice(&bytes[..n]);
            *last = (key, digits);
        }
        out.extend_from_slice(&last.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use wetoken_wire::CredentialBody;

    #[test]
    fn the_hand_written_body_is_a_credential_body() {
        for value in ["86_vWP_BMIM-x.y~z", "86_a\"b\\c", "é\u{1}\t", ""] {
            check_body(value);
        }
    }

    fn check_body(value: &str) {
        let c = Credential {
            value: value.into(),
            expires_at: Utc::now() + chrono::TimeDelta::seconds(7000),
        };
        for (kind, field) in [
            (Kind::AccessToken, "access_token"),
            (Kind::JsapiTicket, "ticket"),
        ] {
            let response = credential_response(kind, &c, Utc::now());
            let bytes = futures_lite_body(response);
            let body: CredentialBody = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body.value(), Some(c.value.as_str()));
            assert_eq!((body.errcode, body.errmsg.as_str()), (0, "success"));
            assert!((6999..=7000).contains(&body.expires_in));
            let expected = c
                .expires_at
                .with_timezone(&Local)
                .format("%Y%m%d%H%M%S")
                .to_string();
            assert_eq!(body.expires_date, expected);
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(value.get(field).is_some(), "{value}");
        }
    }

    fn futures_lite_body(response: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async { response.into_body().collect().await.unwrap().to_bytes() })
    }
}
