//! The keep-alive HTTP/1.1 client towards Twenty: which server (the
//! balance step's choice), one [`Pool`] of idle connections per server,
//! shared by every config generation that names it (a reload keeps the
//! warm connections), failover of what could not be sent, and the response
//! body that gives its connection back when read to the end. Requests
//! speak our own codec ([`super::conn`]) on pooled connections; WebSocket
//! handshakes take hyper's client on a connection of their own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http::header::UPGRADE;
use http::request::Parts;
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::Target;
use super::body::{RequestBody, classify};
use super::codec::{BodyDecoder, Event};
use super::conn::{Conn, Failure};
use super::headers::Added;
use crate::balance::{
    self, Outcome, Pick, Scheme, Server, ServerPool, ServerUrl, TlsClient, Unreachable,
};
use crate::error::{BoxError, GatewayError, UpstreamFailure};

/// Idle keep-alive connections kept per server; more are closed.
const MAX_IDLE_PER_SERVER: usize = 1024;
/// An idle pooled connection is not used again after this long, and closed
/// by the upkeep: below the 5 s after which Node (Twenty's server) closes
/// an idle keep-alive connection itself, so that a request never races that
/// close (it would be sent, and so never replayed: a 502).
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Which servers' connections are interchangeable: same scheme and
/// address, and for `https` the same trusted roots (a connection verified
/// against one `ca` never serves a pool that trusts another).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    scheme: Scheme,
    authority: Authority,
    /// [`TlsClient::roots_id`].
    roots: Option<[u8; 32]>,
}

/// One server's idle keep-alive HTTP/1.1 connections, most recently used
/// last. An idle connection has no task of its own: the request that takes
/// it drives it ([`Conn`]).
pub struct Pool {
    url: ServerUrl,
    tls: Option<TlsClient>,
    idle: Mutex<Vec<(Instant, Box<Conn>)>>,
}

impl Pool {
    /// An idle connection still open and idle for less than
    /// [`IDLE_TIMEOUT`], newest first; others are dropped.
    fn checkout(&self) -> Option<Box<Conn>> {
        let now = Instant::now();
        loop {
            let (since, mut conn) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if now.duration_since(since) < IDLE_TIMEOUT && conn.idle_usable() {
                return Some(conn);
            }
        }
    }

    /// Back to the pool once the exchange is over (the caller knows both
    /// messages were complete and nothing is left over).
    fn park(&self, conn: Box<Conn>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_SERVER {
            idle.push((Instant::now(), conn));
        }
    }

    /// Close connections idle for longer than [`IDLE_TIMEOUT`] or closed by
    /// the upstream.
    fn prune(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|(since, conn)| {
            now.duration_since(*since) < IDLE_TIMEOUT && conn.idle_usable()
        });
    }

    /// A new connection (TCP, plus TLS for `https`). The caller's connect
    /// budget bounds it.
    async fn connect(&self) -> Result<Box<Conn>, GatewayError> {
        let stream = balance::connect(&self.url, self.tls.as_ref())
            .await
            .map_err(|e| connect_failed(e.into()))?;
        Ok(Box::new(Conn::new(stream)))
    }

    /// A new connection for one WebSocket handshake, spoken by hyper (which
    /// hands the connection to the tunnel after a 101); never pooled.
    async fn connect_upgrade(&self) -> Result<SendRequest<RequestBody>, GatewayError> {
        let stream = balance::connect(&self.url, self.tls.as_ref())
            .await
            .map_err(|e| connect_failed(e.into()))?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_failed(e.into()))?;
        tokio::spawn(async move {
            // Ends when either side closes; `with_upgrades` hands a
            // WebSocket's connection to the tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed with error");
            }
        });
        Ok(sender)
    }
}

fn connect_failed(source: BoxError) -> GatewayError {
    GatewayError::Upstream {
        kind: UpstreamFailure::Connect,
        source,
    }
}

/// The upstream client: one [`Pool`] per server, shared by every config
/// generation and upstream name that lists it (a reload keeps the warm
/// connections).
pub struct UpstreamClient {
    pools: Mutex<HashMap<ConnKey, Arc<Pool>>>,
    connect_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> Self {
        UpstreamClient {
            pools: Mutex::default(),
            connect_timeout,
        }
    }

    /// The connection pool for a server reached with `tls` (looked up when
    /// a config is installed, not per request).
    pub fn pool(&self, url: &ServerUrl, tls: Option<&TlsClient>) -> (ConnKey, Arc<Pool>) {
        let tls = match url.scheme() {
            Scheme::Http => None,
            Scheme::Https => tls.cloned(),
        };
        let key = ConnKey {
            scheme: url.scheme(),
            authority: url.authority().clone(),
            roots: tls.as_ref().map(TlsClient::roots_id),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pools
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    url: url.clone(),
                    tls,
                    idle: Mutex::default(),
                })
            })
            .clone();
        (key, pool)
    }

    /// Forget the pools no installed config names any more; their idle
    /// connections close when the last request still using them ends.
    pub fn retain(&self, used: &HashSet<ConnKey>) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| used.contains(key));
    }

    /// Periodic upkeep: close idle connections past their time.
    pub fn prune_idle(&self) {
        let now = Instant::now();
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for pool in pools {
            pool.prune(now);
        }
    }

    /// Send the request to one of `target`'s servers; the response *head*
    /// must arrive within `timeout` (connecting included). The body then
    /// streams for as long as it lasts (SSE), the server counting it as in
    /// flight until it ends.
    pub async fn send(
        &self,
        target: &Target,
        mut req: http::Request<RequestBody>,
        added: &Added<'_>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let Some(servers) = &target.servers else {
            return Err(GatewayError::Internal("upstream without servers".into()));
        };
        // The server waited on, for the timeout's report.
        let mut waiting = None;
        // `rewrite_request` keeps `Upgrade` for WebSocket handshakes only.
        let result = if req.headers().contains_key(UPGRADE) {
            added.insert_into(req.headers_mut());
            let exchange = self.upgrade(servers, &target.conns, req, &mut waiting);
            tokio::time::timeout(timeout, exchange).await
        } else {
            let exchange = self.exchange(servers, &target.conns, req, added, &mut waiting);
            tokio::time::timeout(timeout, exchange).await
        };
        match result {
            Ok(result) => result,
            Err(_) => {
                if let Some(server) = waiting {
                    server.report(Outcome::Timeout);
                }
                Err(GatewayError::UpstreamTimeout)
            }
        }
    }

    /// Warm connection of the chosen server first, else a new one; a
    /// request that could not be sent at all (refused, TLS failed, reset
    /// before the first byte) moves to another server within
    /// `connect_timeout`; one that was sent is never sent again.
    async fn exchange(
        &self,
        servers: &ServerPool,
        conns: &[Arc<Pool>],
        req: http::Request<RequestBody>,
        added: &Added<'_>,
        waiting: &mut Option<Arc<Server>>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let (parts, body) = req.into_parts();
        let head = (&parts, added);
        let mut body = Some(body);
        let mut failover = servers.failover(self.connect_timeout);
        let mut pick = failover.first();
        loop {
            *waiting = Some(pick.server().clone());
            let pool = &conns[pick.index()];
            if let Some(conn) = pool.checkout() {
                match send_on(pool, conn, head, &mut body, pick).await {
                    Ok(resp) => return Ok(resp),
                    // The upstream closed this idle connection before a
                    // byte went out: once more, on a fresh connection.
                    Err((Failure::Unsent(_), p)) => pick = p,
                    Err((Failure::Sent(e), _)) => return Err(e),
                }
            }
            let connected = failover
                .connect(pick, |p| {
                    let pool = conns[p.index()].clone();
                    async move { pool.connect().await }
                })
                .await;
            let (p, conn) = connected.map_err(unreachable)?;
            *waiting = Some(p.server().clone());
            match send_on(&conns[p.index()], conn, head, &mut body, p).await {
                Ok(resp) => return Ok(resp),
                // A new connection closed before the request went out: as
                // good as refused.
                Err((Failure::Unsent(e), p)) => {
                    pick = failover
                        .next(p, Outcome::ConnectFailure)
                        .ok_or_else(|| connect_failed(e.into()))?;
                }
                Err((Failure::Sent(e), _)) => return Err(e),
            }
        }
    }

    /// A WebSocket handshake: on a connection of its own, through hyper.
    async fn upgrade(
        &self,
        servers: &ServerPool,
        conns: &[Arc<Pool>],
        req: http::Request<RequestBody>,
        waiting: &mut Option<Arc<Server>>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let mut failover = servers.failover(self.connect_timeout);
        let mut pick = failover.first();
        let mut req = req;
        loop {
            *waiting = Some(pick.server().clone());
            let connected = failover
                .connect(pick, |p| {
                    let pool = conns[p.index()].clone();
                    async move { pool.connect_upgrade().await }
                })
                .await;
            let (p, mut sender) = connected.map_err(unreachable)?;
            *waiting = Some(p.server().clone());
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    p.report(Outcome::Success);
                    return Ok(resp.map(|incoming| UpstreamBody {
                        inner: Inner::Hyper(incoming),
                        _pick: p,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Closed before the handshake went out: as good as
                    // refused, another server.
                    Some(unsent) => {
                        req = unsent;
                        pick = failover
                            .next(p, Outcome::ConnectFailure)
                            .ok_or_else(|| classify(e.into_error()))?;
                    }
                    None => return Err(classify(e.into_error())),
                },
            }
        }
    }
}

fn unreachable(e: Unreachable<GatewayError>) -> GatewayError {
    match e {
        Unreachable::Timeout => connect_failed("connect_timeout elapsed".into()),
        Unreachable::Failed(e) => e,
    }
}

/// Send on `conn`; an answer proves the server alive, and the response
/// body gives the connection back to `pool` once read to the end. A
/// failure hands back the pick, for another try when nothing was sent.
async fn send_on(
    pool: &Arc<Pool>,
    mut conn: Box<Conn>,
    (parts, added): (&Parts, &Added<'_>),
    body: &mut Option<RequestBody>,
    pick: Pick,
) -> Result<Response<UpstreamBody>, (Failure, Pick)> {
    let (head, upload) = match conn.exchange(parts, added, body).await {
        Ok(answer) => answer,
        Err(f) => return Err((f, pick)),
    };
    pick.report(Outcome::Success);
    if let Some(upload) = upload {
        conn.spawn_upload(upload);
    }
    let mut own = OwnBody {
        conn: Some(conn),
        decoder: BodyDecoder::new(head.framing),
        reuse: head.reusable.then(|| pool.clone()),
    };
    if own.decoder.is_done() {
        own.finish();
    }
    let mut resp = Response::new(UpstreamBody {
        inner: Inner::Own(own),
        _pick: pick,
    });
    // The version is ours to say towards the client (RFC 9110 §6.2): an
    // HTTP/1.0 server's answer goes to an HTTP/1.1 client as HTTP/1.1.
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// An upstream response body. Read to the end, it hands its connection
/// back to the pool (no task per request waits for that); dropped early, the
/// connection goes with it, since unread bytes would be the next response.
pub struct UpstreamBody {
    inner: Inner,
    /// The server counts this exchange as in flight until the body is gone.
    _pick: Pick,
}

enum Inner {
    Own(OwnBody),
    /// A WebSocket handshake's answer other than 101.
    Hyper(Incoming),
}

struct OwnBody {
    /// Until the body ended (boxed: it moves with every response).
    conn: Option<Box<Conn>>,
    decoder: BodyDecoder,
    /// Where the connection goes when the body ended, if it may be reused.
    reuse: Option<Arc<Pool>>,
}

impl OwnBody {
    /// The body was read to its end: the connection back to its pool if
    /// both messages were exact and complete and nothing is left over (a
    /// request body still going up ends with the connection).
    fn finish(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.reuse.take())
            && conn.is_clean()
        {
            pool.park(conn);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let event = match ready!(conn.poll_event(cx, &mut self.decoder)) {
            Ok(event) => event,
            Err(e) => {
                self.conn = None;
                return Poll::Ready(Some(Err(e)));
            }
        };
        if self.decoder.is_done() {
            self.finish();
        }
        Poll::Ready(match event {
            Event::Data(data) => Some(Ok(Frame::data(data))),
            Event::Trailers(trailers) => Some(Ok(Frame::trailers(trailers))),
            Event::End => None,
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::Own(own) => own.poll_frame(cx),
            Inner::Hyper(incoming) => Pin::new(incoming).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Own(own) => own.conn.is_none() || own.decoder.is_done(),
            Inner::Hyper(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Own(own) => match own.decoder.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Inner::Hyper(incoming) => incoming.size_hint(),
        }
    }
}
