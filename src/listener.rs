//! Listeners: bind, accept with a connection cap and backoff, TLS handshake
//! bounded by `header_read_timeout` (answering ACME's TLS-ALPN-01 validations
//! there, and letting a tenant domain's handshake wait for its first ACME
//! certificate); then [`crate::conn`] serves the connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use crate::acme::challenge::is_acme_tls_alpn;
use crate::config::Listen;
use crate::conn;
use crate::metrics::ConnectionGuard;
use crate::proxy::{ConnInfo, TlsInfo};
use crate::runtime::Gateway;
use crate::tls::normalize_sni;

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
            let handshake = Box::pin(handshake(
                &gw,
                tcp,
                acceptor.config().clone(),
                limits.header_read_timeout,
            ));
            let stream = match handshake.await {
                Handshake::Ready(stream) => {
                    gw.metrics.handshake("ok");
                    stream
                }
                Handshake::AcmeAnswered => {
                    // A TLS-ALPN-01 validation: the handshake was the answer.
                    gw.metrics.handshake("ok");
                    tracing::debug!(event = "acme_challenge_answered", %peer, "TLS-ALPN-01 validation answered");
                    return;
                }
                Handshake::Failed { result, reason } => {
                    gw.metrics.handshake(result);
                    tracing::debug!(event = "tls_handshake_failed", %peer, %reason, "TLS handshake failed");
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

/// How long a handshake for a tenant domain waits for its first ACME
/// certificate before going on with the default certificate (SPEC).
const FIRST_CERTIFICATE_WAIT: Duration = Duration::from_secs(10);

/// How a TLS handshake ended ([`handshake`]).
pub enum Handshake<IO> {
    Ready(Box<TlsStream<IO>>),
    /// A TLS-ALPN-01 validation got its challenge certificate; nothing more
    /// is served on that connection.
    AcmeAnswered,
    Failed {
        /// `gateway_tls_handshakes` result: `error` or `timeout`.
        result: &'static str,
        reason: String,
    },
}

/// The TLS handshake, with the ClientHello read first: a ClientHello that
/// offers only `acme-tls/1` is a TLS-ALPN-01 validation (answered with the
/// challenge certificate, or refused when none is pending); one for a name
/// whose first ACME certificate is being ordered waits for it up to
/// [`FIRST_CERTIFICATE_WAIT`]. Reading the hello and finishing the handshake
/// are each bounded by `timeout`.
/// (Public for `benches/handshake.rs`.)
pub async fn handshake<IO>(
    gw: &Gateway,
    tcp: IO,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Handshake<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn failed<IO>(e: impl std::fmt::Display) -> Handshake<IO> {
        Handshake::Failed {
            result: "error",
            reason: e.to_string(),
        }
    }
    fn timed_out<IO>() -> Handshake<IO> {
        Handshake::Failed {
            result: "timeout",
            reason: "timeout".into(),
        }
    }
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match tokio::time::timeout(timeout, lazy).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return failed(e),
        Err(_) => return timed_out(),
    };
    let hello = start.client_hello();
    let sni = hello.server_name().map(normalize_sni);
    if is_acme_tls_alpn(&hello) {
        // Ours, or (with `cluster`) one another gateway published.
        let challenge = match sni.as_deref() {
            Some(name) => gw.acme.tls_alpn01_answer(name).await,
            None => None,
        };
        let Some(challenge) = challenge else {
            return failed("acme-tls/1 offered with no TLS-ALPN-01 validation pending");
        };
        return match tokio::time::timeout(timeout, start.into_stream(challenge)).await {
            Ok(Ok(_)) => Handshake::AcmeAnswered,
            Ok(Err(e)) => failed(e),
            Err(_) => timed_out(),
        };
    }
    if let Some(name) = sni.as_deref()
        && gw.acme.awaits_first(name)
    {
        // Whatever the wait gives, the resolver then picks the best there is.
        let _ = gw
            .acme
            .first_certificate(name, FIRST_CERTIFICATE_WAIT)
            .await;
    }
    match tokio::time::timeout(timeout, start.into_stream(config)).await {
        Ok(Ok(stream)) => Handshake::Ready(Box::new(stream)),
        Ok(Err(e)) => failed(e),
        Err(_) => timed_out(),
    }
}
