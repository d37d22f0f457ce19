//! JSON bodies for the requests hyper's HTTP/1 codec refuses by itself.
//!
//! When a request head cannot be parsed (bad request line, conflicting
//! `Content-Length`, invalid header bytes, head over `max_header_bytes`),
//! hyper answers on its own — before any service runs — with a bare
//! `400`/`414`/`431` head, `content-length: 0`, and closes the connection.
//! SPEC wants every gateway error as JSON wherever the connection can still
//! carry one, so this I/O adapter recognises exactly that head and writes the
//! gateway's JSON error (with a request id and an access-log line) instead.
//!
//! The match is precise: the write must be one complete head with status
//! 400, 414 or 431, `content-length: 0`, and no `x-request-id` — a header
//! every response produced by the gateway's service carries, so nothing it
//! sends (its own errors or Twenty's responses) can ever be rewritten.
//! Everything else passes through untouched; the cost per write is a prefix
//! comparison.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::base::request_id::{self, new_request_id};
use crate::error::{BadRequest, ErrorShape, GatewayError};

const MAX_HEAD: usize = 256;

/// A request the HTTP/1 codec refused before any service ran: the event the
/// connection reports (access log, metrics) like any other refusal.
#[derive(Debug)]
pub struct CodecRefusal {
    pub error: GatewayError,
    pub request_id: HeaderValue,
    /// Bytes of the JSON body sent.
    pub body_len: usize,
}

/// Who hears of codec refusals.
pub type RefusalSink = Arc<dyn Fn(CodecRefusal) + Send + Sync>;

pub struct CodecErrors<T> {
    inner: T,
    sink: RefusalSink,
    /// A replacement being written, and the length hyper asked us to write.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> CodecErrors<T> {
    pub fn new(inner: T, sink: RefusalSink) -> Self {
        CodecErrors {
            inner,
            sink,
            pending: None,
        }
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// The error behind a head hyper wrote for a codec error, if `buf` is one.
fn codec_error(buf: &[u8]) -> Option<GatewayError> {
    if buf.len() > MAX_HEAD || !buf.starts_with(b"HTTP/1.1 4") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let error = match &buf[9..12] {
        b"400" => GatewayError::BadRequest(BadRequest::Framing),
        b"414" => GatewayError::UriTooLong,
        b"431" => GatewayError::HeadersTooLarge,
        _ => return None,
    };
    let head = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    let empty = head.contains("\r\ncontent-length: 0\r\n");
    let ours = head.contains("\r\nx-request-id:");
    (empty && !ours).then_some(error)
}

/// An error response as HTTP/1.1 bytes, closing the connection (hyper
/// closes it after its own error head too).
fn http1_bytes(resp: &Response<bytes::Bytes>) -> Vec<u8> {
    let status = resp.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("Error")
    )
    .into_bytes();
    for (name, value) in resp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", resp.body().len()).as_bytes());
    out.extend_from_slice(resp.body());
    out
}

impl<T> CodecErrors<T> {
    /// The gateway's JSON answer for `error`, rendered by the error table,
    /// and the event reported.
    fn replacement(&self, error: GatewayError) -> Vec<u8> {
        let request_id = new_request_id();
        let mut resp = error.to_response(ErrorShape::Rest, request_id::as_str(&request_id));
        resp.headers_mut().insert(
            crate::base::headers::X_REQUEST_ID.clone(),
            request_id.clone(),
        );
        let bytes = http1_bytes(&resp);
        (self.sink)(CodecRefusal {
            error,
            request_id,
            body_len: resp.body().len(),
        });
        bytes
    }
}

impl<T: AsyncWrite + Unpin> CodecErrors<T> {
    fn drive_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, pos, reported)) = self.pending.as_mut() {
            if *pos >= bytes.len() {
                let n = *reported;
                self.pending = None;
                return Poll::Ready(Ok(n));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pos += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CodecErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CodecErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match codec_error(buf) {
                Some(error) => this.pending = Some((this.replacement(error), 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.drive_pending(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let first = bufs.iter().find(|b| !b.is_empty());
            let candidate =
                total <= MAX_HEAD && first.is_some_and(|b| b.starts_with(b"HTTP/1.1 4"));
            if !candidate {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
            let flat: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            match codec_error(&flat) {
                Some(error) => this.pending = Some((this.replacement(error), 0, total)),
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.drive_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.drive_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.drive_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(buf: &[u8]) -> Option<u16> {
        codec_error(buf).map(|e| e.status().as_u16())
    }

    #[test]
    fn replacements_are_rendered_by_the_error_table() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink: RefusalSink = {
            let seen = seen.clone();
            Arc::new(move |r: CodecRefusal| seen.lock().unwrap().push(r))
        };
        let c = CodecErrors::new((), sink);
        let bytes = c.replacement(GatewayError::UriTooLong);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 414 URI Too Long\r\nconnection: close\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\ncontent-type: application/json\r\n"),
            "{text}"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let rid = seen[0].request_id.to_str().unwrap();
        assert!(text.contains(&format!("x-request-id: {rid}\r\n")), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(body.len(), seen[0].body_len);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["statusCode"], 414);
        assert_eq!(v["messages"][0], "Request target too long");
    }

    #[test]
    fn recognises_only_hypers_own_error_heads() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 20:56:54 GMT\r\n\r\n";
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 20:56:54 GMT\r\n\r\n";
        assert_eq!(status(hyper_400), Some(400));
        assert_eq!(status(hyper_431), Some(431));
        // Anything the service produced carries x-request-id.
        let ours = b"HTTP/1.1 400 Bad Request\r\nx-request-id: abc\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(status(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(status(with_body), None);
        assert_eq!(
            status(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            status(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"),
            None
        );
    }
}
