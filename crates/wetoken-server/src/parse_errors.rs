//! The JSON body for the answers hyper gives by itself.
//!
//! A request hyper cannot parse never reaches a service: a request line or header that is not
//! HTTP/1 (400), a URI over 65,534 bytes (414), more than 100 headers or a head over its read
//! buffer, about 400 KiB (431). hyper answers it at once, with no body, and closes the
//! connection; it offers no hook to shape that answer. So [`JsonParseErrors`], under the
//! connection, recognises that answer as hyper writes it (exactly `HTTP/1.1 <status>
//! <reason>`, `connection: close`, `content-length: 0` and `date`, the last bytes written before
//! the connection closes) and writes it with the `{"errcode":90400,"errmsg":…}` body that every
//! other error carries. No answer of wetoken's own has an empty body, so none is mistaken for
//! one, and an HTTP/2 frame never ends in such a head unless a body did, which none does.
//! Should hyper change how it writes these, the answer goes out as hyper wrote it, and
//! `limits.rs` (`the_http_layers_own_errors_carry_the_json_body`) fails.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper's own answers: its status line, and what wetoken's body says.
const ANSWERS: [(&str, &str); 3] = [
    (
        "HTTP/1.1 400 Bad Request",
        "the request is not valid HTTP/1.1: its request line or a header is malformed",
    ),
    (
        "HTTP/1.1 414 URI Too Long",
        "the request's URI is too long (over 65,534 bytes)",
    ),
    (
        "HTTP/1.1 431 Request Header Fields Too Large",
        "the request's headers are too large (over 100 headers, or about 400 KiB)",
    ),
];

/// What hyper writes after the status line, up to the date.
const HEADERS: &str = "\r\nconnection: close\r\ncontent-length: 0\r\ndate: ";
/// An HTTP date (`Sat, 05 Dec 2026 22:05:37 GMT`) is this long.
const DATE_LEN: usize = 29;

/// A connection's stream, whose writes pass through unchanged but for hyper's own bodiless
/// answers, which get wetoken's JSON body.
pub(crate) struct JsonParseErrors<S> {
    inner: S,
    /// A rewritten answer not yet all written, and how much of it is.
    pending: Vec<u8>,
    sent: usize,
}

impl<S> JsonParseErrors<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

/// `buf` with hyper's bodiless answer at its end given the JSON body, if it ends with one.
fn with_json_body(buf: &[u8]) -> Option<Vec<u8>> {
    let date_start = buf.len().checked_sub(DATE_LEN + 4)?;
    let (before, date_and_end) = buf.split_at(date_start);
    if !date_and_end.ends_with(b" GMT\r\n\r\n") {
        return None;
    }
    let before = before.strip_suffix(HEADERS.as_bytes())?;
    let (status_line, errmsg) = ANSWERS
        .iter()
        .find(|(line, _)| before.ends_with(line.as_bytes()))?;
    let earlier = &before[..before.len() - status_line.len()];
    // The answer must begin where an earlier one ended (or at the start of the write).
    if !(earlier.is_empty() || earlier.ends_with(b"\r\n") || earlier.ends_with(b"}")) {
        return None;
    }
    let body = serde_json::to_vec(&wetoken_wire::ErrorBody {
        errcode: wetoken_wire::code::BAD_REQUEST,
        errmsg: (*errmsg).to_owned(),
    })
    .ok()?;
    let date = &date_and_end[..DATE_LEN];
    let mut out = earlier.to_vec();
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(
        format!(
            "\r\nconnection: close\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\ndate: ",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    Some(out)
}

impl<S: AsyncWrite + Unpin> JsonParseErrors<S> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

/// Not vectored, so hyper hands each write over as one buffer, where its answer can be found.
impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        match with_json_body(buf) {
            Some(rewritten) => {
                this.pending = rewritten;
                // Taken whole; what the socket does not take now goes at the next flush.
                if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::with_json_body;

    const DATE: &str = "Sat, 05 Dec 2026 22:05:37 GMT";

    #[test]
    fn hypers_own_answers_get_the_body_and_nothing_else_changes() {
        let bare = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"
        );
        let out = String::from_utf8(with_json_body(bare.as_bytes()).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains(DATE));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["errcode"], 90400);

        // After an earlier answer in the same write.
        let earlier = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let both = format!("{earlier}{bare}");
        let out = with_json_body(both.as_bytes()).unwrap();
        assert!(out.starts_with(earlier.as_bytes()));

        // wetoken's own answers, and what is not at the end, pass.
        for passes in [
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\ndate: {DATE}\r\n\r\n{{}}"
            ),
            format!("{bare}x"),
            bare[1..].to_owned(),
            format!("x{bare}"),
            "HTTP/1.1 200 OK\r\n\r\n".to_owned(),
        ] {
            assert!(with_json_body(passes.as_bytes()).is_none(), "{passes:?}");
        }
    }
}
