//! One keep-alive HTTP/1.1 connection to a server, driven by the request
//! that holds it: no task per connection and no channel between the request
//! and its connection. [`Conn::exchange`] writes the request and reads the
//! response head (watching for an early answer while the body goes up);
//! [`Conn::poll_event`] then reads the body. The bytes are [`super::codec`]'s.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf};

use super::body::{RequestBody, body_error};
use super::codec::{self, BodyDecoder, BodyFraming, Event, Head, ProtocolError};
use super::headers::Added;
use crate::balance::Stream;
use crate::error::{BadRequest, BoxError, GatewayError, UpstreamFailure};

/// A request body up to this size is copied behind the head and goes in
/// the same write (one TLS record, one segment) instead of two.
const COPY_BODY: usize = 16 * 1024;
/// Read-buffer space asked for before each read.
const READ_SPACE: usize = 16 * 1024;
/// How long an upload the answer overtook may go on after the response
/// ended (the gateway's lingering close towards clients waits as long).
const UPLOAD_LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// 1xx answers skipped before the final one; more is a broken server.
const MAX_INFORMATIONAL: usize = 16;

/// How an exchange failed: whether anything of the request went out
/// decides whether it may go to another connection.
#[derive(Debug)]
pub enum Failure {
    /// Not a byte was written: the request is intact.
    Unsent(GatewayError),
    Sent(GatewayError),
}

pub struct Conn {
    io: Io,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written (reused from request to request).
    out: Vec<u8>,
    /// The server closed its side.
    eof: bool,
    /// The rest of a request body the answer overtook goes up in a task of
    /// its own; dropped with the connection, this tells it the response
    /// is over.
    upload: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The connection's stream: whole, or only its reading half while an
/// upload task holds the other.
enum Io {
    Whole(Stream),
    Read(ReadHalf<Stream>),
    Gone,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Whole(s) => Pin::new(s).poll_read(cx, buf),
            Io::Read(r) => Pin::new(r).poll_read(cx, buf),
            Io::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// A stream that is not whole any more cannot take a request.
fn split_off() -> Failure {
    Failure::Unsent(reset(io::Error::new(
        io::ErrorKind::NotConnected,
        "connection is split",
    )))
}

impl Conn {
    pub fn new(io: Stream) -> Self {
        Conn {
            io: Io::Whole(io),
            buf: BytesMut::new(),
            out: Vec::new(),
            eof: false,
            upload: None,
        }
    }

    /// May this idle connection take a request? Not if the server closed
    /// it or sent anything unasked (which would be taken for the next
    /// answer). Never waits. Asks the socket itself (`MSG_PEEK`): tokio's
    /// cached readiness may not have seen a FIN that already arrived.
    pub fn idle_usable(&mut self) -> bool {
        if self.eof || !self.buf.is_empty() {
            return false;
        }
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        let (tcp, tls) = match &self.io {
            Io::Whole(Stream::Plain(tcp)) => (tcp, false),
            Io::Whole(Stream::Tls(tls)) => (tls.get_ref().0, true),
            _ => return false,
        };
        match socket2::SockRef::from(tcp).peek(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !tls => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(n) if n > 0 && tls => {}
            _ => return false,
        }
        // TLS: rustls may hold plaintext (or an error) it already took off
        // the socket, and a record may wait in the socket: read through it.
        // A late session ticket yields nothing (Pending: fine); a
        // close_notify, data or an error does not.
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Write the request (`parts`' head and the `added` fields, `body` with the framing its size
    /// calls for) and read the final response head. `body` is taken once
    /// its first byte is due: a failure that leaves it (and says
    /// [`Failure::Unsent`]) leaves the request intact for another
    /// connection. An answer may come while a streamed body is still going
    /// up (the server answers early, or streams both ways): the rest of the
    /// body then goes with the response body ([`Upload`]).
    pub async fn exchange(
        &mut self,
        parts: &Parts,
        added: &Added<'_>,
        body: &mut Option<RequestBody>,
    ) -> Result<(Head, Option<Upload>), Failure> {
        let framing = body.as_ref().map_or(BodyFraming::None, body_framing);
        self.out.clear();
        codec::encode_head(parts, added, framing, &mut self.out);
        let mut w = Upload {
            pos: 0,
            line: [0; 18],
            line_pos: 0,
            line_len: 0,
            extra: Bytes::new(),
            tail: b"",
            body: None,
            streaming: false,
            framing,
            remaining: match framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            wrote: false,
            done: false,
        };
        match body.as_ref().and_then(RequestBody::full_bytes) {
            Some(bytes) if bytes.len() <= COPY_BODY => self.out.extend_from_slice(bytes),
            Some(bytes) => w.extra = bytes.clone(),
            None => w.streaming = framing != BodyFraming::None,
        }
        let mut informational = 0;
        // A write that failed after bytes went out: the answer may be in
        // the socket already (a 413 sent before the server stopped
        // reading), so reading goes on; this is the error if none comes.
        let mut write_failed = None;
        // Bytes of the buffer known to hold no complete head: a head ends
        // with a line feed, so it is parsed again only when one arrived
        // (a head trickling in byte by byte is parsed once per line, not
        // once per byte), or when the buffer reached the head's limit.
        let mut scanned = 0;
        let mut head = std::future::poll_fn(|cx| {
            loop {
                // 1. An answer, complete in the buffer?
                if self.buf[scanned.min(self.buf.len())..].contains(&b'\n')
                    || self.buf.len() >= codec::MAX_HEAD
                {
                    match codec::parse_head(&mut self.buf, &parts.method) {
                        Ok(Some(head)) if head.status.is_informational() => {
                            scanned = 0;
                            informational += 1;
                            if informational > MAX_INFORMATIONAL {
                                return Poll::Ready(Err(sent(ProtocolError::Head(
                                    httparse::Error::Status,
                                ))));
                            }
                            continue;
                        }
                        Ok(Some(head)) => return Poll::Ready(Ok(head)),
                        Ok(None) => scanned = self.buf.len(),
                        Err(e) => return Poll::Ready(Err(sent(e))),
                    }
                }
                // 2. The request, as far as the socket takes it.
                if !w.done && write_failed.is_none() {
                    let Io::Whole(stream) = &mut self.io else {
                        return Poll::Ready(Err(split_off()));
                    };
                    match w.poll(cx, stream, &self.out, body) {
                        // The socket failed after bytes went out: listen on.
                        Poll::Ready(Err(Failure::Sent(e @ GatewayError::Upstream { .. }))) => {
                            write_failed = Some(Failure::Sent(e));
                        }
                        // Unsent (another connection may take it), or the
                        // client's body failed (413, 400): over now.
                        Poll::Ready(Err(f)) => return Poll::Ready(Err(f)),
                        _ => {}
                    }
                }
                // 3. More of the answer.
                let read = if self.eof {
                    Err(if self.buf.is_empty() {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the response",
                        )
                    } else {
                        io::Error::new(io::ErrorKind::UnexpectedEof, ProtocolError::Incomplete)
                    })
                } else {
                    ready!(self.poll_fill(cx))
                };
                if let Err(e) = read {
                    return Poll::Ready(Err(write_failed.take().unwrap_or_else(|| w.failed(e))));
                }
            }
        })
        .await?;
        // An answer to a request that did not wholly go out: the server and
        // the gateway may disagree on where the next message starts.
        if !w.done {
            head.reusable = false;
        }
        let pending = !w.done && write_failed.is_none();
        if pending && w.streaming && w.body.is_none() {
            // The answer came before the body's first byte was due.
            w.body = body.take();
        }
        Ok((head, pending.then_some(w)))
    }

    /// Go on with an upload the answer overtook, in a task of its own: the
    /// response body is read when the client wants it, the upload must not
    /// wait for that (a server that answers while it reads would stall).
    /// The task ends with the upload, or [`UPLOAD_LINGER`] after the
    /// connection goes.
    pub fn spawn_upload(&mut self, mut upload: Upload) {
        let Io::Whole(stream) = std::mem::replace(&mut self.io, Io::Gone) else {
            return;
        };
        let (read, mut write) = tokio::io::split(stream);
        self.io = Io::Read(read);
        let out = std::mem::take(&mut self.out);
        let (ended, response_ended) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let upload = std::future::poll_fn(|cx| upload.poll(cx, &mut write, &out, &mut None));
            // Once the response is over (the connection dropped), the rest
            // of the body still gets UPLOAD_LINGER to go up: the client's
            // connection stays usable only if its body was read to the end,
            // and a server that answers early usually reads on.
            let linger = async {
                let _ = response_ended.await;
                tokio::time::sleep(UPLOAD_LINGER).await;
            };
            tokio::select! {
                sent = upload => if let Err(e) = sent {
                    tracing::debug!(error = ?e, "upload stopped after the upstream answered");
                },
                () = linger => tracing::debug!("upload cut: the response ended before it"),
            }
        });
        self.upload = Some(ended);
    }

    /// Read more into the buffer (`eof` set when the server closed).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.capacity() - self.buf.len() < READ_SPACE / 4 {
            self.buf.reserve(READ_SPACE);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(()))
    }

    /// The response body's next event, read as needed.
    pub fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        decoder: &mut BodyDecoder,
    ) -> Poll<Result<Event, BoxError>> {
        loop {
            match decoder.decode(&mut self.buf, self.eof) {
                Ok(Some(event)) => return Poll::Ready(Ok(event)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
            match ready!(self.poll_fill(cx)) {
                Ok(()) => {}
                // A TLS server that ends a close-delimited body without
                // close_notify: the end all the same (what clients accept).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && decoder.is_close() => {
                    self.eof = true;
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Nothing is left over past the response just read: the connection
    /// is clean for the next request.
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty() && !self.eof
    }
}

/// The framing a request body calls for: none when it is empty, its length
/// when known (a body read whole, or an announced `Content-Length`),
/// chunked otherwise.
fn body_framing(body: &RequestBody) -> BodyFraming {
    if body.is_end_stream() {
        return BodyFraming::None;
    }
    match body.size_hint().exact() {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Chunked,
    }
}

fn reset(e: impl Into<BoxError>) -> GatewayError {
    GatewayError::Upstream {
        kind: UpstreamFailure::Reset,
        source: e.into(),
    }
}

fn sent(e: impl Into<BoxError>) -> Failure {
    Failure::Sent(reset(e))
}

/// The request on its way out: what is left of the head buffer, then a
/// chunk-size `line`, then `extra` (a body, or a chunk's data), then `tail`
/// (a chunk's CRLF, or the last chunk), then the next frame of a streamed
/// body.
pub struct Upload {
    /// Written so far of the head buffer.
    pos: usize,
    line: [u8; 18],
    line_pos: usize,
    line_len: usize,
    extra: Bytes,
    tail: &'static [u8],
    /// The client's body, streaming (taken when its first byte is due).
    body: Option<RequestBody>,
    /// A streamed body is still to come.
    streaming: bool,
    framing: BodyFraming,
    /// Of a streamed body with a `Content-Length`: bytes still due.
    remaining: u64,
    /// A byte went out: the request may no longer go elsewhere.
    wrote: bool,
    /// All of it went out and was flushed.
    done: bool,
}

impl Upload {
    /// Write until done or the socket (or the client's body) makes us
    /// wait. `source` holds the streamed body until it is due.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut (impl AsyncWrite + Unpin),
        head: &[u8],
        source: &mut Option<RequestBody>,
    ) -> Poll<Result<(), Failure>> {
        loop {
            let pending = [
                &head[self.pos.min(head.len())..],
                &self.line[self.line_pos..self.line_len],
                &self.extra,
                self.tail,
            ];
            if pending.iter().any(|p| !p.is_empty()) {
                let slices = pending.map(io::IoSlice::new);
                let n = match ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices)) {
                    Ok(0) => return Poll::Ready(Err(self.failed(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(self.failed(e))),
                };
                self.wrote = true;
                self.advance(n, head.len());
                continue;
            }
            if self.streaming && self.body.is_none() {
                self.body = source.take();
                if self.body.is_none() {
                    return Poll::Ready(Err(Failure::Sent(GatewayError::Internal(
                        "request body gone before it was sent".into(),
                    ))));
                }
            }
            let Some(body) = self.body.as_mut() else {
                return match ready!(Pin::new(&mut *io).poll_flush(cx)) {
                    Ok(()) => {
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                    Err(e) => Poll::Ready(Err(self.failed(e))),
                };
            };
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    // Waiting for the client: what is written must reach
                    // the server meanwhile.
                    if let Poll::Ready(Err(e)) = Pin::new(&mut *io).poll_flush(cx) {
                        return Poll::Ready(Err(self.failed(e)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // request trailers are not forwarded
                    };
                    if data.is_empty() {
                        continue;
                    }
                    match self.framing {
                        BodyFraming::Chunked => {
                            self.set_line(data.len());
                            self.tail = b"\r\n";
                        }
                        _ if data.len() as u64 > self.remaining => {
                            return Poll::Ready(Err(Failure::Sent(GatewayError::BadRequest(
                                BadRequest::Framing,
                            ))));
                        }
                        _ => self.remaining -= data.len() as u64,
                    }
                    self.extra = data;
                }
                Some(Err(e)) => {
                    self.body = None;
                    self.streaming = false;
                    return Poll::Ready(Err(Failure::Sent(body_error(e))));
                }
                None => {
                    self.body = None;
                    self.streaming = false;
                    match self.framing {
                        BodyFraming::Chunked => self.tail = b"0\r\n\r\n",
                        _ if self.remaining > 0 => {
                            return Poll::Ready(Err(Failure::Sent(GatewayError::BadRequest(
                                BadRequest::Framing,
                            ))));
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// The next chunk's size line: hex digits and CRLF.
    fn set_line(&mut self, size: usize) {
        let digits = format!("{size:X}\r\n");
        let digits = digits.as_bytes();
        self.line[..digits.len()].copy_from_slice(digits);
        self.line_pos = 0;
        self.line_len = digits.len();
    }

    /// `n` more bytes went out.
    fn advance(&mut self, mut n: usize, head_len: usize) {
        let from_head = n.min(head_len.saturating_sub(self.pos));
        self.pos += from_head;
        n -= from_head;
        let from_line = n.min(self.line_len - self.line_pos);
        self.line_pos += from_line;
        n -= from_line;
        let from_extra = n.min(self.extra.len());
        bytes::Buf::advance(&mut self.extra, from_extra);
        n -= from_extra;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }

    fn failed(&self, e: io::Error) -> Failure {
        if self.wrote {
            sent(e)
        } else {
            Failure::Unsent(reset(e))
        }
    }
}
