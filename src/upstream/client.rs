//! The keep-alive HTTP/1.1 client towards Twenty: one [`Pool`] of idle
//! connections per server address, shared by every config generation that
//! names it (a reload keeps the warm connections), and the response body
//! that gives its connection back when read to the end.

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
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{RequestBody, classify};
use crate::error::{BoxError, GatewayError, UpstreamFailure};

/// Idle keep-alive connections kept per upstream; more are closed.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;
/// An idle pooled connection is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keepalive probes on upstream connections start after this long idle.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// One upstream's idle keep-alive HTTP/1.1 connections, most recently used
/// last. Each connection's I/O runs in its own task; the pool holds the
/// sending halves.
pub struct Pool {
    authority: Authority,
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

    /// Send on `sender`; the response body gives it back to the pool once
    /// read to the end.
    async fn send_on(
        self: &Arc<Self>,
        mut sender: SendRequest<RequestBody>,
        req: http::Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, TrySendError<http::Request<RequestBody>>> {
        let resp = sender.try_send_request(req).await?;
        let pool = self.clone();
        Ok(resp.map(|incoming| UpstreamBody {
            incoming,
            connection: Some((pool, sender)),
            ended: false,
        }))
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
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
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
}

/// The upstream client: one [`Pool`] per upstream address, shared by every
/// config generation that names it (a reload keeps the warm connections).
pub struct UpstreamClient {
    pools: Mutex<HashMap<Authority, Arc<Pool>>>,
    connect_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> Self {
        UpstreamClient {
            pools: Mutex::default(),
            connect_timeout,
        }
    }

    /// The pool for an upstream address (looked up when a config is
    /// installed, not per request).
    pub fn pool(&self, authority: &Authority) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(authority.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    authority: authority.clone(),
                    idle: Mutex::default(),
                })
            })
            .clone()
    }

    /// Forget the pools no installed config names any more; their idle
    /// connections close when the last request still using them ends.
    pub fn retain(&self, used: &HashSet<Authority>) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|authority, _| used.contains(authority));
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

    /// Send the request; the response *head* must arrive within `timeout`
    /// (connecting included). The body then streams for as long as it
    /// lasts (SSE).
    pub async fn send(
        &self,
        pool: &Arc<Pool>,
        req: http::Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        match tokio::time::timeout(timeout, self.exchange(pool, req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(result) => result,
        }
    }

    async fn exchange(
        &self,
        pool: &Arc<Pool>,
        mut req: http::Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        if let Some(sender) = pool.checkout() {
            match pool.send_on(sender, req).await {
                Ok(resp) => return Ok(resp),
                // The upstream closed this idle connection before the
                // request went out: hyper hands it back untouched, and it
                // goes once more, on a fresh connection.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(classify(e.into_error())),
                },
            }
        }
        let sender = self.connect(&pool.authority).await?;
        pool.send_on(sender, req)
            .await
            .map_err(|e| classify(e.into_error()))
    }

    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<SendRequest<RequestBody>, GatewayError> {
        let connect_failed = |e: BoxError| GatewayError::Upstream {
            kind: UpstreamFailure::Connect,
            source: e,
        };
        // `[::1]` in a URL is `::1` to the resolver.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| connect_failed("connect_timeout elapsed".into()))?
            .map_err(|e| connect_failed(e.into()))?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
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

/// An upstream response body. Read to the end, it hands its connection
/// back to the pool (no task per request waits for that); dropped early, the
/// connection goes with it, since unread bytes would be the next response.
pub struct UpstreamBody {
    incoming: Incoming,
    connection: Option<(Arc<Pool>, SendRequest<RequestBody>)>,
    /// The body said it was over. A chunked body only says so by ending:
    /// `is_end_stream` knows the end of a Content-Length body alone.
    ended: bool,
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
