//! Listeners and connections: accept with a connection cap and backoff,
//! TLS handshake bounded by `header_read_timeout`, then hyper-util serving
//! HTTP/1.1 and HTTP/2 on the same socket, each connection watched for
//! graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::codec_errors::CodecErrors;
use crate::config::{Limits, Listen};
use crate::metrics::ConnectionGuard;
use crate::proxy::{self, Activity, ConnInfo, TlsInfo};
use crate::state::Gateway;

/// Sockets bound before anything else runs, so a port clash fails startup.
pub struct Bound {
    pub https: TcpListener,
    pub http: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Bound {
    pub async fn bind(listen: &Listen) -> Result<Self, BindError> {
        async fn one(name: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { name, addr, source })
        }
        Ok(Bound {
            https: one("listen.https", listen.https).await?,
            http: match listen.http {
                Some(a) => Some(one("listen.http", a).await?),
                None => None,
            },
            admin: match listen.admin {
                Some(a) => Some(one("listen.admin", a).await?),
                None => None,
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({name}): {source}")]
pub struct BindError {
    pub name: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// HTTP/1.1 + HTTP/2 server settings for one new connection.
fn conn_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper needs at least 8 KiB; its overflow answer is 431.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    b
}

/// Tells connections to drain; `closed()` on the sender resolves once every
/// connection (each holds a receiver) has ended.
pub type Drain = tokio::sync::watch::Receiver<bool>;

/// Accept on one listener until the future is dropped (shutdown).
pub async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Semaphore>,
    drain: Drain,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                // EMFILE and friends: wait, don't spin.
                tracing::warn!(event = "accept_error", error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over max_connections: refuse this one, keep serving the rest.
            gw.metrics.connections_refused.inc();
            tracing::debug!(event = "connection_refused", %peer, "max_connections reached");
            drop(tcp);
            continue;
        };
        let gw = gw.clone();
        let tls = tls.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            serve_connection(gw, tcp, peer, tls, drain).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    gw: Arc<Gateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    drain: Drain,
) {
    let _ = tcp.set_nodelay(true);
    let _open = ConnectionGuard::new(&gw.metrics.open_connections);
    // Connection-level limits come from the snapshot current at accept time.
    let limits = gw.current().config.limits.clone();
    let builder = conn_builder(&limits);
    match tls {
        None => {
            let info = Arc::new(ConnInfo {
                peer,
                tls: None,
                activity: Activity::default(),
            });
            let io = CodecErrors::new(tcp, gw.clone(), peer);
            serve_io(gw, &builder, TokioIo::new(io), info, &limits, drain).await;
        }
        Some(acceptor) => {
            let stream = match tokio::time::timeout(
                limits.header_read_timeout,
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    gw.metrics.handshake("ok");
                    stream
                }
                Ok(Err(e)) => {
                    gw.metrics.handshake("error");
                    tracing::debug!(event = "tls_handshake_failed", %peer, reason = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    gw.metrics.handshake("timeout");
                    tracing::debug!(event = "tls_handshake_failed", %peer, reason = "timeout", "TLS handshake timed out");
                    return;
                }
            };
            let sni = stream.get_ref().1.server_name().map(str::to_owned);
            let cert = gw.current().config.certs.select(sni.as_deref()).cloned();
            let info = Arc::new(ConnInfo {
                peer,
                tls: Some(TlsInfo { sni, cert }),
                activity: Activity::default(),
            });
            let io = CodecErrors::new(stream, gw.clone(), peer);
            serve_io(gw, &builder, TokioIo::new(io), info, &limits, drain).await;
        }
    }
}

/// Serve HTTP on one connection until it ends. Asked to close gracefully
/// (idle keep-alive closed, HTTP/2 GOAWAY, in-flight requests finish) when
/// the gateway drains or when no request has been in flight for
/// `idle_timeout`.
async fn serve_io<I>(
    gw: Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    info: Arc<ConnInfo>,
    limits: &Limits,
    mut drain: Drain,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_info = info.clone();
    let svc = service_fn(move |req| proxy::handle(gw.clone(), svc_info.clone(), req));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    let mut conn = std::pin::pin!(conn);
    let idle = limits.idle_timeout;
    let idle_check = tokio::time::sleep(idle);
    let mut idle_check = std::pin::pin!(idle_check);
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let result = loop {
        tokio::select! {
            res = conn.as_mut() => break res,
            _ = drain.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut idle_check, if !closing => {
                match info.activity.idle_since() {
                    Some(since) if since.elapsed() >= idle => {
                        tracing::debug!(event = "idle_close", peer = %info.peer, "closing idle connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(since) => idle_check.as_mut().reset((since + idle).into()),
                    None => idle_check.as_mut().reset(tokio::time::Instant::now() + idle),
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(event = "connection_error", error = %e, "connection ended with an error");
    }
}
