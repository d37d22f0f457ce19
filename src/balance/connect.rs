//! Connections to a server: TCP for `http://`, TCP + rustls for `https://`
//! (verified against the pool's `ca` or the system roots, SNI from the URL's
//! host, ALPN `http/1.1`). An `https://` server is never spoken to in
//! plaintext.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::url::{Scheme, ServerUrl};

/// TCP keepalive probes on upstream connections start after this long idle.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} contains no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: certificate {index} is not a usable CA certificate: {reason}")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("no usable system root certificates ({detail}); set `ca`")]
    NoSystemRoots { detail: String },
    #[error("TLS client setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client side for a pool's `https://` servers. Two are equal
/// when they trust the same roots (a reload that rereads an unchanged `ca`
/// changes nothing).
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    roots: [u8; 32],
}

impl TlsClient {
    /// Trust the certificates of the PEM file `ca` only, or, without it,
    /// the system's roots. Reads files: call it while building a config,
    /// not on an async worker.
    pub fn new(ca: Option<&Path>) -> Result<Self, TlsClientError> {
        let mut roots = RootCertStore::empty();
        let mut digest = Sha256::new();
        match ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| TlsClientError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
                    let bad = |reason: String| TlsClientError::BadCertificate {
                        path: path.to_owned(),
                        index,
                        reason,
                    };
                    let cert = cert.map_err(|e| bad(e.to_string()))?;
                    digest.update(&cert);
                    roots.add(cert).map_err(|e| bad(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(TlsClientError::NoCertificate {
                        path: path.to_owned(),
                    });
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in &found.certs {
                    digest.update(cert);
                }
                let (added, _unusable) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let detail = match found.errors.first() {
                        Some(e) => e.to_string(),
                        None => "none found".to_owned(),
                    };
                    return Err(TlsClientError::NoSystemRoots { detail });
                }
            }
        }
        let provider = Arc::new(aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            roots: digest.finalize().into(),
        })
    }
}

impl TlsClient {
    /// What identifies it: a digest of the roots it trusts.
    pub fn roots_id(&self) -> [u8; 32] {
        self.roots
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.roots == other.roots
    }
}

impl Eq for TlsClient {}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Tcp(#[source] io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] io::Error),
    #[error("https server without a TLS client")]
    NoTlsClient,
}

/// A connection to a server, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connect to `url` (no timeout here: the caller's budget bounds it).
/// `tls` is required for `https://`.
pub async fn connect(url: &ServerUrl, tls: Option<&TlsClient>) -> Result<Stream, ConnectError> {
    // Checked before any packet: an https server is never reached in
    // plaintext, not even for a moment.
    let tls = match url.scheme() {
        Scheme::Http => None,
        Scheme::Https => Some(tls.ok_or(ConnectError::NoTlsClient)?),
    };
    let tcp = TcpStream::connect((url.host(), url.port()))
        .await
        .map_err(ConnectError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let Some(tls) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let name = url.server_name().ok_or_else(|| {
        ConnectError::Tls(io::Error::new(
            io::ErrorKind::InvalidInput,
            "host is not a TLS server name",
        ))
    })?;
    let stream = tls
        .connector
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Tls)?;
    Ok(Stream::Tls(Box::new(stream)))
}

impl Stream {
    /// The ALPN protocol the server chose, if any (TLS only).
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
