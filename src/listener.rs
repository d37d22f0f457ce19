//! Listeners: bind, accept with a connection cap and backoff, TLS handshake
//! bounded by `header_read_timeout`; then [`crate::conn`] serves the
//! connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::Listen;
use crate::conn;
use crate::metrics::ConnectionGuard;
use crate::proxy::{ConnInfo, TlsInfo};
use crate::runtime::Gateway;

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

pub use crate::conn::Drain;

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
    match tls {
        None => {
            let info = Arc::new(ConnInfo::new(peer, None));
            conn::serve(gw, tcp, None, info, &limits, drain).await;
        }
        Some(acceptor) => {
            // Boxed: the handshake state would otherwise stay in the task
            // for the connection's whole life.
            let stream = match tokio::time::timeout(
                limits.header_read_timeout,
                Box::pin(acceptor.accept(tcp)),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    gw.metrics.handshake("ok");
                    Box::new(stream)
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
            let cert = gw.certs.select(sni.as_deref());
            let info = Arc::new(ConnInfo::new(peer, Some(TlsInfo { sni, cert })));
            // HTTP/2 over TLS is chosen by ALPN only (RFC 9113 §3.3).
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            conn::serve(gw, stream, Some(h2), info, &limits, drain).await;
        }
    }
}
