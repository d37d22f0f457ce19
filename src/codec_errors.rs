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
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::access_log::AccessRecord;
use crate::error::{BadRequest, GatewayError, Outcome, rest_body};
use crate::proxy::new_request_id;
use crate::state::Gateway;

const MAX_HEAD: usize = 256;

pub struct CodecErrors<T> {
    inner: T,
    gw: Arc<Gateway>,
    peer: SocketAddr,
    /// A replacement being written, and the length hyper asked us to write.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> CodecErrors<T> {
    pub fn new(inner: T, gw: Arc<Gateway>, peer: SocketAddr) -> Self {
        CodecErrors {
            inner,
            gw,
            peer,
            pending: None,
        }
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// The status of a head hyper wrote for a codec error, if `buf` is one.
fn codec_error_status(buf: &[u8]) -> Option<u16> {
    if buf.len() > MAX_HEAD || !buf.starts_with(b"HTTP/1.1 4") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status = match &buf[9..12] {
        b"400" => 400,
        b"414" => 414,
        b"431" => 431,
        _ => return None,
    };
    let head = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    let empty = head.contains("\r\ncontent-length: 0\r\n");
    let ours = head.contains("\r\nx-request-id:");
    (empty && !ours).then_some(status)
}

impl<T> CodecErrors<T> {
    fn replacement(&self, status: u16) -> Vec<u8> {
        // The same wording as the pipeline's own 431 and 400 (HTTP/2 lists
        // over the limit, framing the pipeline refuses).
        let (reason, message) = match status {
            414 => ("URI Too Long", "Request target too long"),
            431 => (
                "Request Header Fields Too Large",
                GatewayError::HeadersTooLarge.public_message(),
            ),
            _ => (
                "Bad Request",
                GatewayError::BadRequest(BadRequest::Framing).public_message(),
            ),
        };
        let request_id = new_request_id();
        let body = rest_body(
            status,
            "BAD_REQUEST",
            message,
            request_id.to_str().unwrap_or("-"),
        );
        let mut record = AccessRecord::new(
            request_id,
            self.peer.ip(),
            http::Method::from_bytes(b"-").unwrap_or_default(),
            String::new(),
            "HTTP/1.1",
            Instant::now(),
        );
        record.status = status;
        record.outcome = Outcome::BadRequest;
        record.bytes_out = body.len() as u64;
        record.error = Some(format!("request refused by the HTTP/1 parser: {message}"));
        self.gw.metrics.observe(&record, None);
        if self.gw.current().config.access_log {
            self.gw.access_log.write(&record);
        }
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-type: application/json\r\nx-request-id: {}\r\ncontent-length: {}\r\n\r\n",
            record.request_id(),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
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
            match codec_error_status(buf) {
                Some(status) => this.pending = Some((this.replacement(status), 0, buf.len())),
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
            match codec_error_status(&flat) {
                Some(status) => this.pending = Some((this.replacement(status), 0, total)),
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

    #[test]
    fn recognises_only_hypers_own_error_heads() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 20:56:54 GMT\r\n\r\n";
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 20:56:54 GMT\r\n\r\n";
        assert_eq!(codec_error_status(hyper_400), Some(400));
        assert_eq!(codec_error_status(hyper_431), Some(431));
        // Anything the service produced carries x-request-id.
        let ours = b"HTTP/1.1 400 Bad Request\r\nx-request-id: abc\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(codec_error_status(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(codec_error_status(with_body), None);
        assert_eq!(
            codec_error_status(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            codec_error_status(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"),
            None
        );
    }
}
