//! One client connection once it is accepted (and TLS is up): pick HTTP/1.1
//! or HTTP/2, serve it with hyper, close it gracefully on drain or after
//! `idle_timeout` — and *park* idle HTTP/1.1 keep-alive connections.
//!
//! # Parking
//!
//! A hyper HTTP/1 connection holds about 16 KiB of buffers (read buffer,
//! header write buffer) for as long as it lives, whether a request is coming
//! or not. Most keep-alive connections spend most of their life waiting, so —
//! like nginx, which frees its request buffers between keep-alive requests —
//! a connection with nothing in flight for [`PARK_AFTER`] is handed back by
//! hyper (a graceful close that keeps the socket open), waits with only its
//! socket and TLS state, and gets a fresh hyper connection as soon as the
//! next bytes arrive. Nothing a client can see changes: no byte is lost
//! (hyper returns what it had read), no header is added.
//!
//! A connection is only parked when it is between requests: at least one
//! request has finished on it and no byte has been read since. So a request
//! head that is being trickled in stays under hyper's `header_read_timeout`
//! (parking would restart that clock), and a connection that never sent a
//! request is closed by it too. Waiting between requests is bounded by
//! `idle_timeout`, as nginx's `keepalive_timeout` bounds it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;

use crate::codec_errors::CodecErrors;
use crate::config::Limits;
use crate::metrics::ConnectionGuard;
use crate::proxy::ctx::Activity;
use crate::proxy::{self, ConnInfo};
use crate::runtime::Gateway;

/// How long an HTTP/1.1 connection waits between requests before it gives
/// its hyper buffers back (capped at half of `header_read_timeout`).
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// Tells connections to drain; `closed()` on the sender resolves once every
/// connection (each holds a receiver) has ended.
pub type Drain = tokio::sync::watch::Receiver<bool>;

/// The client's byte stream: TCP, or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would make progress (bytes, end of stream or an
    /// error), without reading anything.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Transport for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// The TLS state is over 1 KiB: boxed, the futures that move a connection
/// around stay small.
impl<T: Transport> Transport for Box<T> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_readable(cx)
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_mut();
        // Records already read from the socket may hold plaintext (or the
        // peer's close_notify, or an error): then a read makes progress now.
        match tls.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {
                tcp.poll_read_ready(cx)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// What hyper reads from and writes to: the transport, bytes to replay
/// first (what a previous hyper connection had read but not used, or the
/// sniffed start of a plain connection), and the read count for [`Activity`].
struct ConnIo<T> {
    inner: CodecErrors<T>,
    replay: Bytes,
    info: Arc<ConnInfo>,
}

impl<T: Transport> AsyncRead for ConnIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.info.activity.read_bytes();
        }
        res
    }
}

impl<T: Transport> AsyncWrite for ConnIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.info.activity.parking.load(Ordering::Relaxed) {
            // Parking: hyper is done with the socket, we are not.
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// HTTP/1.1 settings.
fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper needs at least 8 KiB; its overflow answer is 431.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b
}

/// HTTP/2 settings.
fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // Twice the limit: the pipeline answers lists between the limit and
        // this with a JSON 431; only lists past it get the h2 crate's own
        // bodiless 431 (SETTINGS_MAX_HEADER_LIST_SIZE tells clients this cap).
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    b
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain-TCP connection speaks HTTP/2 with prior knowledge (its
/// first bytes are the preface), and the bytes read to tell. `None` when the
/// client sent nothing: closed, or silent for as long as any connection may
/// wait for a request head (`header_read_timeout`, `idle_timeout`).
async fn sniff<T: Transport>(io: &mut T, limits: &Limits) -> Option<(bool, Bytes)> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    let read = async {
        while buf.len() < H2_PREFACE.len() {
            let n = io.read_buf(&mut buf).await.ok()?;
            if n == 0 || !H2_PREFACE.starts_with(&buf) {
                break;
            }
        }
        Some(())
    };
    let wait = limits.header_read_timeout.min(limits.idle_timeout);
    tokio::time::timeout(wait, read).await.ok()??;
    (!buf.is_empty()).then(|| (buf.starts_with(H2_PREFACE), buf.freeze()))
}

/// Serve one connection until it ends. `alpn_h2`: whether TLS negotiated
/// `h2`; `None` on plain TCP, where the first bytes decide.
pub async fn serve<T: Transport>(
    gw: Arc<Gateway>,
    mut io: T,
    alpn_h2: Option<bool>,
    info: Arc<ConnInfo>,
    limits: &Limits,
    mut drain: Drain,
) {
    let (h2, replay) = match alpn_h2 {
        Some(h2) => (h2, Bytes::new()),
        None => tokio::select! {
            found = sniff(&mut io, limits) => match found {
                Some(found) => found,
                None => return,
            },
            _ = drain.changed() => return,
        },
    };
    let peer = info.peer;
    let io = ConnIo {
        inner: CodecErrors::new(io, {
            let gw = gw.clone();
            Arc::new(move |r| proxy::codec_refused(&gw, peer, r))
        }),
        replay,
        info: info.clone(),
    };
    if h2 {
        serve_h2(gw, io, info, limits, drain).await;
    } else {
        serve_h1(gw, io, info, limits, drain).await;
    }
}

/// How a connection's idle check turned out.
#[derive(Debug, PartialEq)]
enum Idle {
    /// Check again at this instant.
    Later(Instant),
    Park,
    Close,
}

/// When to look at a connection's [`Activity`] again, and what to do.
///
/// An HTTP/1.1 connection is parked [`PARK_AFTER`] after its last request
/// finished — soon, so a burst of new connections (each with ~18 KiB of
/// hyper state) does not pile up before it is released. A busy connection
/// would make that check run ten times a second for nothing, so while it
/// stays busy the check backs off (doubling, up to [`PARK_CHECK_MAX`]);
/// parking resets it. Every delay stays under half of
/// `header_read_timeout`, which hyper also runs while it waits for a head:
/// a connection between requests is parked before that could close it, so
/// waiting between requests is bounded by `idle_timeout` alone.
///
/// The clock is a pure function of the [`Activity`], its own back-off and
/// the `now` it is given: the connection passes the time, the tests pass
/// any time they like.
struct IdleClock {
    idle: Duration,
    /// `None`: this connection does not park (HTTP/2).
    park_after: Option<Duration>,
    max_check: Duration,
    interval: Duration,
    /// No look since the last (re)start.
    fresh: bool,
}

/// The longest a busy HTTP/1.1 connection goes between idle checks.
pub const PARK_CHECK_MAX: Duration = Duration::from_secs(2);

impl IdleClock {
    fn new(limits: &Limits, parks: bool) -> Self {
        Self::with(limits.idle_timeout, limits.header_read_timeout, parks)
    }

    fn with(idle: Duration, header_read_timeout: Duration, parks: bool) -> Self {
        let half_head = header_read_timeout / 2;
        let park_after = parks.then(|| PARK_AFTER.min(half_head));
        IdleClock {
            idle,
            park_after,
            max_check: PARK_CHECK_MAX
                .min(half_head)
                .max(park_after.unwrap_or_default()),
            interval: park_after.unwrap_or(idle),
            fresh: true,
        }
    }

    /// When to look first, and again after a parked connection wakes.
    fn restart(&mut self, now: Instant) -> Instant {
        self.interval = self.park_after.unwrap_or(self.idle);
        self.fresh = true;
        now + self.interval.min(self.idle)
    }

    /// Look at the connection at `now`.
    fn check(&mut self, activity: &Activity, now: Instant) -> Idle {
        let since = activity.idle_since();
        let for_ = since.map(|s| now.duration_since(s));
        if for_.is_some_and(|f| f >= self.idle) {
            return Idle::Close;
        }
        let (Some(park_after), Some(s), Some(f)) = (self.park_after, since, for_) else {
            // HTTP/2, or a request in flight.
            let next = match (self.park_after, since) {
                (None, Some(s)) => s + self.idle,
                (None, None) => now + self.idle,
                (Some(_), _) => now + self.backoff(),
            };
            return Idle::Later(next);
        };
        if f >= park_after && activity.between_requests() {
            return Idle::Park;
        }
        let next = if f < park_after && self.fresh {
            // First look: quiet since `s`, park at `s + park_after`.
            s + park_after
        } else {
            // Busy since the last look, or a head is arriving.
            now + self.backoff()
        };
        self.fresh = false;
        // Never later than idle_timeout.
        Idle::Later(next.min(s + self.idle))
    }

    fn backoff(&mut self) -> Duration {
        self.fresh = false;
        self.interval = (self.interval * 2).min(self.max_check);
        self.interval
    }
}

async fn serve_h2<T: Transport>(
    gw: Arc<Gateway>,
    io: ConnIo<T>,
    info: Arc<ConnInfo>,
    limits: &Limits,
    mut drain: Drain,
) {
    let svc_info = info.clone();
    // Boxed: hyper spawns a task per stream around this ~2 KiB future and
    // would copy it several times on the way (callgrind: 76.6k -> 75.0k
    // instructions per HTTP/2 request).
    let svc = service_fn(move |req| Box::pin(proxy::handle(gw.clone(), svc_info.clone(), req)));
    let mut conn = Box::pin(http2_builder(limits).serve_connection(TokioIo::new(io), svc));
    let mut clock = IdleClock::new(limits, false);
    let timer = tokio::time::sleep_until(clock.restart(Instant::now()).into());
    let mut timer = std::pin::pin!(timer);
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let result = loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => break res,
            _ = drain.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut timer, if !closing => match clock.check(&info.activity, Instant::now()) {
                Idle::Later(at) => timer.as_mut().reset(at.into()),
                Idle::Park | Idle::Close => {
                    tracing::debug!(event = "idle_close", peer = %info.peer, "closing idle connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(event = "connection_error", error = %e, "connection ended with an error");
    }
}

async fn serve_h1<T: Transport>(
    gw: Arc<Gateway>,
    mut io: ConnIo<T>,
    info: Arc<ConnInfo>,
    limits: &Limits,
    mut drain: Drain,
) {
    let builder = http1_builder(limits);
    let mut clock = IdleClock::new(limits, true);
    let timer = tokio::time::sleep_until(clock.restart(Instant::now()).into());
    let mut timer = std::pin::pin!(timer);
    loop {
        match serve_until_parked(
            &builder,
            &gw,
            io,
            &info,
            &mut clock,
            timer.as_mut(),
            &mut drain,
        )
        .await
        {
            Some(back) => io = back,
            None => return,
        }
        let _parked = ConnectionGuard::new(&gw.metrics.parked_connections);
        let deadline = info
            .activity
            .idle_since()
            .map_or_else(TokioInstant::now, |s| (s + limits.idle_timeout).into());
        timer.as_mut().reset(deadline);
        let wake = std::future::poll_fn(|cx| io.inner.get_mut().poll_readable(cx));
        tokio::select! {
            biased;
            res = wake => {
                if res.is_err() {
                    return;
                }
                timer.as_mut().reset(clock.restart(Instant::now()).into());
            }
            _ = drain.changed() => return close(io).await,
            _ = &mut timer => {
                tracing::debug!(event = "idle_close", peer = %info.peer, "closing idle connection");
                return close(io).await;
            }
        }
    }
}

/// Serve with a fresh hyper connection until it ends (`None`) or hands the
/// socket back to be parked. Everything hyper allocated is freed when this
/// returns.
async fn serve_until_parked<T: Transport>(
    builder: &http1::Builder,
    gw: &Arc<Gateway>,
    mut io: ConnIo<T>,
    info: &Arc<ConnInfo>,
    clock: &mut IdleClock,
    mut timer: Pin<&mut tokio::time::Sleep>,
    drain: &mut Drain,
) -> Option<ConnIo<T>> {
    loop {
        info.activity.parking.store(false, Ordering::Relaxed);
        let (svc_gw, svc_info) = (gw.clone(), info.clone());
        let svc = service_fn(move |req| proxy::handle(svc_gw.clone(), svc_info.clone(), req));
        // Boxed: the parked task keeps none of hyper's state.
        let mut conn = Box::new(
            builder
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades(),
        );
        let mut closing = *drain.borrow();
        if closing {
            Pin::new(&mut *conn).graceful_shutdown();
        }
        let result = loop {
            tokio::select! {
                // hyper first: bytes that woke a parked connection are
                // read before the idle check could park it again.
                biased;
                res = Pin::new(&mut *conn) => break res,
                _ = drain.changed(), if !closing => {
                    closing = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
                _ = timer.as_mut(), if !closing => {
                    match clock.check(&info.activity, Instant::now()) {
                        Idle::Later(at) => timer.as_mut().reset(at.into()),
                        Idle::Park => {
                            closing = true;
                            info.activity.parking.store(true, Ordering::Relaxed);
                            Pin::new(&mut *conn).graceful_shutdown();
                        }
                        Idle::Close => {
                            tracing::debug!(event = "idle_close", peer = %info.peer, "closing idle connection");
                            closing = true;
                            Pin::new(&mut *conn).graceful_shutdown();
                        }
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(event = "connection_error", error = %e, "connection ended with an error");
            return None;
        }
        if !info.activity.parking.load(Ordering::Relaxed) {
            // hyper has answered and shut our side down; what the client
            // still sends (a body we refused without reading) is read
            // and dropped for a moment, so the close is a FIN after our
            // answer, not a reset that can destroy it in the client's
            // buffer. `None`: upgraded, the socket went to the tunnel.
            if let Some(parts) = conn.into_parts() {
                linger(parts.io.into_inner()).await;
            }
            return None;
        }
        // `None`: upgraded (WebSocket), the socket went to the tunnel.
        let parts = conn.into_parts()?;
        io = parts.io.into_inner();
        if parts.read_buf.is_empty() {
            return Some(io);
        }
        // hyper had read the start of a next request (pipelined behind
        // the last one): serve it right away, and don't park again
        // before it is done — its head stays under `header_read_timeout`.
        io.replay = Bytes::from([&parts.read_buf[..], &io.replay[..]].concat());
        info.activity.read_bytes();
        timer.as_mut().reset(clock.restart(Instant::now()).into());
    }
}

/// How long a closed HTTP/1.1 connection keeps reading what the client
/// still sends, and how much of it (nginx's lingering close, shorter).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Read and drop what the client sends after our side was shut down, until
/// it closes too (at once, for a client that was done), [`LINGER_TIME`] or
/// [`LINGER_BYTES`]: closing a socket with unread bytes sends a TCP reset,
/// and a reset can discard the response the client had not read yet (a
/// 413 answered before the body it refuses arrived).
///
/// The buffer is on the heap, made only when lingering: an array here would
/// be part of every connection's future, parked or not (+8 KiB per idle
/// connection: 19.3 KiB in `bench/run.sh`'s 5,000-connection test).
async fn linger<T: AsyncRead + Unpin>(mut io: T) {
    let mut buf = vec![0u8; 8192];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Close a parked connection the way hyper would: TLS close_notify, FIN.
async fn close<T: Transport>(mut io: ConnIo<T>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.inner.shutdown()).await;
}

#[cfg(test)]
mod tests;
