//! The keep-alive HTTP/1.1 client towards Twenty: which server (the
//! balance step's choice), one [`Pool`] of idle connections per server,
//! shared by every config generation that names it (a reload keeps the
//! warm connections), failover of what could not be sent, and the response
//! body that gives its connection back when read to the end.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::Target;
use super::body::{RequestBody, classify};
use crate::balance::{
    self, Outcome, Pick, Scheme, Server, ServerPool, ServerUrl, TlsClient, Unreachable,
};
use crate::error::{BoxError, GatewayError, UpstreamFailure};

/// Idle keep-alive connections kept per server; more are closed.
const MAX_IDLE_PER_SERVER: usize = 1024;
/// An idle pooled connection is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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
/// last. Each connection's I/O runs in its own task; the pool holds the
/// sending halves.
pub struct Pool {
    url: ServerUrl,
    tls: Option<TlsClient>,
    idle: Mutex<Vec<(Instant, SendRequest<RequestBody>)>>,
}

impl Pool {
    /// A ready idle connection, newest first; closed ones are dropped.
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((_, sender)) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Back to the pool once the exchange is over. Usually the connection
    /// is ready again by the time its response body ended (hyper marks it
    /// idle in the same poll that reads the last byte); otherwise a task
    /// waits for it. One that closes or was upgraded is dropped.
    pub(super) fn give_back(self: &Arc<Self>, mut sender: SendRequest<RequestBody>) {
        if sender.is_ready() {
            self.park(sender);
        } else if !sender.is_closed() {
            let pool = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.park(sender);
                }
            });
        }
    }

    fn park(&self, sender: SendRequest<RequestBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_SERVER {
            idle.push((Instant::now(), sender));
        }
    }

    /// Close connections idle for longer than [`IDLE_TIMEOUT`] or closed by
    /// the upstream.
    fn prune(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(since, sender)| {
            !sender.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
        });
    }

    /// A new connection (TCP, plus TLS for `https`), its I/O in a task of
    /// its own. The caller's connect budget bounds it.
    async fn connect(&self) -> Result<SendRequest<RequestBody>, GatewayError> {
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
        req: http::Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let Some(servers) = &target.servers else {
            return Err(GatewayError::Internal("upstream without servers".into()));
        };
        // The server waited on, for the timeout's report.
        let mut waiting = None;
        let exchange = self.exchange(servers, &target.conns, req, &mut waiting);
        match tokio::time::timeout(timeout, exchange).await {
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
        mut req: http::Request<RequestBody>,
        waiting: &mut Option<Arc<Server>>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let mut failover = servers.failover(self.connect_timeout);
        let mut pick = failover.first();
        loop {
            *waiting = Some(pick.server().clone());
            let pool = &conns[pick.index()];
            if let Some(sender) = pool.checkout() {
                match send_on(pool, sender, req, pick).await {
                    Ok(resp) => return Ok(resp),
                    // The upstream closed this idle connection before the
                    // request went out: hyper hands it back untouched, and
                    // it goes once more, on a fresh connection.
                    Err((e, back)) => match back {
                        Some((unsent, p)) => (req, pick) = (unsent, p),
                        None => return Err(e),
                    },
                }
            }
            let connected = failover
                .connect(pick, |p| {
                    let pool = conns[p.index()].clone();
                    async move { pool.connect().await }
                })
                .await;
            let (p, sender) = connected.map_err(|e| match e {
                Unreachable::Timeout => connect_failed("connect_timeout elapsed".into()),
                Unreachable::Failed(e) => e,
            })?;
            *waiting = Some(p.server().clone());
            match send_on(&conns[p.index()], sender, req, p).await {
                Ok(resp) => return Ok(resp),
                Err((e, back)) => {
                    let Some((unsent, p)) = back else {
                        return Err(e);
                    };
                    // A new connection closed before the request went out:
                    // as good as refused.
                    req = unsent;
                    pick = failover
                        .next(p, Outcome::ConnectFailure)
                        .ok_or_else(|| connect_failed(e.into()))?;
                }
            }
        }
    }
}

/// What a failed send leaves: the error, and the request with its pick if
/// nothing of it went out.
type SendFailure = (GatewayError, Option<(http::Request<RequestBody>, Pick)>);

/// Send on `sender`; an answer proves the server alive, and the response
/// body gives the connection back to `pool` once read to the end.
async fn send_on(
    pool: &Arc<Pool>,
    mut sender: SendRequest<RequestBody>,
    req: http::Request<RequestBody>,
    pick: Pick,
) -> Result<Response<UpstreamBody>, SendFailure> {
    match sender.try_send_request(req).await {
        Ok(resp) => {
            pick.report(Outcome::Success);
            let pool = pool.clone();
            Ok(resp.map(|incoming| UpstreamBody {
                incoming,
                connection: Some((pool, sender)),
                ended: false,
                _pick: pick,
            }))
        }
        Err(mut e) => {
            let unsent = e.take_message();
            let error = classify(e.into_error());
            Err((error, unsent.map(|r| (r, pick))))
        }
    }
}

/// An upstream response body. Read to the end, it hands its connection
/// back to the pool (no task per request waits for that); dropped early, the
/// connection goes with it, since unread bytes would be the next response.
pub struct UpstreamBody {
    incoming: Incoming,
    connection: Option<(Arc<Pool>, SendRequest<RequestBody>)>,
    /// The body said it was over. A chunked body only says so by ending:
    /// `is_end_stream` knows the end of a Content-Length body alone.
    ended: bool,
    /// The server counts this exchange as in flight until the body is gone.
    _pick: Pick,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.incoming).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some((pool, sender)) = self.connection.take()
            && self.is_end_stream()
        {
            pool.give_back(sender);
        }
    }
}
