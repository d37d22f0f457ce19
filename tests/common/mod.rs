//! Shared integration-test harness: everything here is real (processes, sockets, TLS).
//!
//! - [`ca`]: a process-wide test CA (rcgen) that issues leaf certificates into a directory.
//! - [`spawn_upstream`]: a hyper HTTP/1.1 server standing in for Twenty that records every
//!   request it receives and has "gated" paths whose progress the test controls.
//! - [`GatewaySetup`] / [`spawn_gateway`]: runs the real `twenty-gateway` binary on a config in a
//!   tempdir, learns its addresses from the `listening` log lines, and collects its output.
//! - [`Conn`]: HTTP/1.1 or HTTP/2 client over real TLS (or plain TCP), several requests on one
//!   connection; [`RawConn`]: exact bytes on a TLS or TCP socket.
//!
//! Synchronisation is by channels and log lines, never by fixed sleeps.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

/// Default wait for anything asynchronous (a log line, a recorded request, a response).
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = BoxBody<Bytes, BoxError>;

pub const BIN: &str = env!("CARGO_BIN_EXE_twenty-gateway");

// ---------------------------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------------------------

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// A unique request id for this test process (so a test can find its own access line).
pub fn rid() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "t-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `tokio::time::timeout` that panics with a message instead of returning an error.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn empty() -> ReqBody {
    full(Bytes::new())
}

/// A body fed by the test through an mpsc sender (one `Bytes` per data frame); ends when the
/// sender is dropped. Its size is unknown, so HTTP/1.1 sends it chunked.
pub struct ChanBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

pub fn chan_body(buffer: usize) -> (mpsc::Sender<Bytes>, ReqBody) {
    let (tx, rx) = mpsc::channel(buffer);
    (tx, ChanBody { rx }.boxed())
}

// ---------------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------------

pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub der: CertificateDer<'static>,
}

/// Paths of a leaf certificate and its key, plus the DER of the leaf.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

/// The process-wide test CA.
pub fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "twenty-gateway test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        let der = cert.der().clone();
        Ca { cert, key, der }
    })
}

impl Ca {
    /// Issue a leaf for `sans` (DNS names, wildcards like `*.gw.test`, or IPs), written as
    /// `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn issue(&self, dir: &Path, name: &str, sans: &[&str]) -> CertFiles {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            sans.first().copied().unwrap_or(name),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        std::fs::create_dir_all(dir).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        CertFiles {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// The CA certificate as PEM (what a config's `ca:` file holds).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        roots
    }
}

/// DNS names in a certificate's SubjectAltName.
pub fn cert_dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse served certificate");
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push(d.to_string());
            }
        }
    }
    out
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Verifies the chain against the test CA but, unless `strict`, accepts a certificate that does
/// not name the server (so tests can connect without SNI, or with an SNI the certificate does
/// not cover, and inspect what was served).
#[derive(Debug)]
struct TestVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    strict: bool,
}

impl ServerCertVerifier for TestVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.strict => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a test client does its TLS handshake.
#[derive(Clone, Debug)]
pub struct TlsOpts {
    /// `None`: send no SNI (the handshake uses an IP address as server name).
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    /// `None`: TLS 1.2 and 1.3.
    pub versions: Option<Vec<&'static rustls::SupportedProtocolVersion>>,
    /// Require the served certificate to cover the SNI name (full webpki check).
    pub strict: bool,
}

impl TlsOpts {
    pub fn h1(sni: &str) -> Self {
        TlsOpts {
            sni: Some(sni.into()),
            alpn: vec![b"http/1.1".to_vec()],
            versions: None,
            strict: false,
        }
    }
    pub fn h2(sni: &str) -> Self {
        TlsOpts {
            sni: Some(sni.into()),
            alpn: vec![b"h2".to_vec()],
            versions: None,
            strict: false,
        }
    }
    pub fn no_sni(mut self) -> Self {
        self.sni = None;
        self
    }
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }
    pub fn alpn(mut self, alpn: &[&[u8]]) -> Self {
        self.alpn = alpn.iter().map(|a| a.to_vec()).collect();
        self
    }
    pub fn versions(mut self, v: &[&'static rustls::SupportedProtocolVersion]) -> Self {
        self.versions = Some(v.to_vec());
        self
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = self
            .versions
            .clone()
            .unwrap_or_else(|| vec![&rustls::version::TLS13, &rustls::version::TLS12]);
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(ca().roots()),
            provider(),
        )
        .build()
        .unwrap();
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TestVerifier {
                inner,
                strict: self.strict,
            }))
            .with_no_client_auth();
        cfg.alpn_protocols = self.alpn.clone();
        Arc::new(cfg)
    }
}

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// What the handshake produced.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    pub leaf: CertificateDer<'static>,
}

impl TlsInfo {
    pub fn dns_names(&self) -> Vec<String> {
        cert_dns_names(&self.leaf)
    }
}

pub async fn tls_connect_result(addr: SocketAddr, opts: &TlsOpts) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true).ok();
    let name: ServerName<'static> = match &opts.sni {
        Some(s) => ServerName::try_from(s.clone()).expect("valid SNI name"),
        None => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
    };
    tokio_rustls::TlsConnector::from(opts.client_config())
        .connect(name, tcp)
        .await
}

pub async fn tls_connect(addr: SocketAddr, opts: &TlsOpts) -> (TlsStream, TlsInfo) {
    let s = within("TLS handshake", tls_connect_result(addr, opts))
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} ({opts:?}) failed: {e}"));
    let info = tls_info(&s);
    (s, info)
}

pub fn tls_info(s: &TlsStream) -> TlsInfo {
    let c = s.get_ref().1;
    TlsInfo {
        alpn: c.alpn_protocol().map(|a| a.to_vec()),
        version: c.protocol_version(),
        leaf: c.peer_certificates().expect("server certificate")[0]
            .clone()
            .into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP clients
// ---------------------------------------------------------------------------------------------

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// One client connection (HTTP/1.1 keep-alive or HTTP/2), TLS or plain.
pub struct Conn {
    sender: Sender,
    /// Host / :authority used when a request does not name one.
    pub host: String,
    scheme: &'static str,
    pub tls: Option<TlsInfo>,
}

/// A fully read response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .expect("response has X-Request-Id")
    }
}

impl Conn {
    /// TLS, ALPN http/1.1, SNI = `host`, Host = `host`.
    pub async fn h1(addr: SocketAddr, host: &str) -> Conn {
        Conn::tls(addr, &TlsOpts::h1(host), host).await
    }

    /// TLS, ALPN h2, SNI = `host`, :authority = `host`.
    pub async fn h2(addr: SocketAddr, host: &str) -> Conn {
        Conn::tls(addr, &TlsOpts::h2(host), host).await
    }

    /// TLS with explicit options; the protocol follows the negotiated ALPN (none → HTTP/1.1).
    pub async fn tls(addr: SocketAddr, opts: &TlsOpts, host: &str) -> Conn {
        let (s, info) = tls_connect(addr, opts).await;
        let h2 = info.alpn.as_deref() == Some(b"h2");
        let mut c = Conn::handshake(s, h2, host, "https").await;
        c.tls = Some(info);
        c
    }

    /// Plain TCP HTTP/1.1 (for `listen.http`).
    pub async fn plain(addr: SocketAddr, host: &str) -> Conn {
        let tcp = within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        tcp.set_nodelay(true).ok();
        Conn::handshake(tcp, false, host, "http").await
    }

    /// Plain TCP HTTP/2 with prior knowledge.
    pub async fn plain_h2(addr: SocketAddr, host: &str) -> Conn {
        let tcp = within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        tcp.set_nodelay(true).ok();
        Conn::handshake(tcp, true, host, "http").await
    }

    async fn handshake<S>(io: S, h2: bool, host: &str, scheme: &'static str) -> Conn
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let sender = if h2 {
            let (s, conn) = within(
                "h2 handshake",
                hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(io),
            )
            .await
            .expect("h2 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Sender::H2(s)
        } else {
            let (s, conn) = within("h1 handshake", hyper::client::conn::http1::handshake(io))
                .await
                .expect("h1 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Sender::H1(s)
        };
        Conn {
            sender,
            host: host.to_string(),
            scheme,
            tls: None,
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Build a request for `path` (origin-form, sent as is). A `host` entry in `headers`
    /// overrides the connection's host (on HTTP/2 it becomes the :authority instead of a header).
    pub fn build(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Request<ReqBody> {
        let host = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| self.host.clone());
        let mut b = Request::builder().method(method);
        if self.is_h2() {
            b = b
                .uri(format!("{}://{}{}", self.scheme, host, path))
                .version(http::Version::HTTP_2);
        } else {
            b = b.uri(path).header("host", host.as_str());
        }
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("host") {
                continue;
            }
            b = b.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        b.body(body).expect("valid request")
    }

    /// Send a request and return the response head (body still streaming).
    pub async fn send(&mut self, req: Request<ReqBody>) -> Response<Incoming> {
        within("response head", self.send_result(req))
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}"))
    }

    pub async fn send_result(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let req = self.build(method, path, headers, full(body));
        let resp = self.send(req).await;
        collect(resp).await
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(Method::GET, path, headers, Bytes::new()).await
    }
}

/// Read a whole response body.
pub async fn collect(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = within("response body", body.collect())
        .await
        .unwrap_or_else(|e| panic!("reading response body: {e}"))
        .to_bytes();
    Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// Next data frame of a streaming body (skipping trailers); `None` at the end.
pub async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let f = within("next body frame", body.frame()).await?;
        let f = f.unwrap_or_else(|e| panic!("body error: {e}"));
        if let Ok(d) = f.into_data() {
            if !d.is_empty() {
                return Some(d);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// raw sockets
// ---------------------------------------------------------------------------------------------

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A socket for exact bytes (requests a client library would normalise or refuse).
pub struct RawConn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }
}

impl RawConn {
    /// TLS with ALPN http/1.1 and the given SNI (None: no SNI).
    pub async fn tls(addr: SocketAddr, sni: Option<&str>) -> RawConn {
        let mut o = TlsOpts::h1(sni.unwrap_or("x"));
        o.sni = sni.map(str::to_string);
        let (s, _) = tls_connect(addr, &o).await;
        RawConn {
            io: Box::new(s),
            buf: Vec::new(),
        }
    }

    pub async fn plain(addr: SocketAddr) -> RawConn {
        let s = TcpStream::connect(addr).await.expect("connect");
        RawConn {
            io: Box::new(s),
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    async fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16384];
        let n = within("raw read", self.io.read(&mut tmp))
            .await
            .unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n
    }

    /// Read one HTTP/1.1 response (Content-Length, chunked, or until EOF).
    pub async fn read_response(&mut self) -> RawResp {
        self.try_read_response()
            .await
            .expect("connection closed before a response")
    }

    /// `None` if the connection closed before a response head.
    pub async fn try_read_response(&mut self) -> Option<RawResp> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            if self.fill().await == 0 {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf, b"\r\n") {
                        break p;
                    }
                    if self.fill().await == 0 {
                        panic!("EOF inside chunked body");
                    }
                };
                let size_str = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    // trailers until empty line
                    loop {
                        if let Some(p) = find(&self.buf, b"\r\n") {
                            let empty = p == 0;
                            self.buf.drain(..p + 2);
                            if empty {
                                break;
                            }
                        } else if self.fill().await == 0 {
                            break;
                        }
                    }
                    break;
                }
                while self.buf.len() < size + 2 {
                    if self.fill().await == 0 {
                        panic!("EOF inside chunk");
                    }
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
            body
        } else if let Some(cl) = get("content-length") {
            let n: usize = cl.parse().expect("content-length");
            while self.buf.len() < n {
                if self.fill().await == 0 {
                    panic!("EOF inside body");
                }
            }
            self.buf.drain(..n).collect()
        } else {
            while self.fill().await > 0 {}
            std::mem::take(&mut self.buf)
        };
        Some(RawResp {
            status,
            headers,
            body,
        })
    }

    /// True if the peer closes the connection (EOF or reset) with no further bytes.
    pub async fn closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut tmp = [0u8; 1024];
        matches!(
            tokio::time::timeout(TIMEOUT, self.io.read(&mut tmp)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Send one raw HTTP/1.1 request on a fresh TLS connection and read the response.
pub async fn raw_tls_request(addr: SocketAddr, sni: Option<&str>, bytes: &[u8]) -> RawResp {
    let mut c = RawConn::tls(addr, sni).await;
    c.write(bytes).await;
    c.read_response().await
}

// ---------------------------------------------------------------------------------------------
// upstream (stands in for Twenty)
// ---------------------------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as on the request line.
    pub target: String,
    pub version: http::Version,
    /// Lowercase names, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended (not just started arriving).
    pub complete: bool,
    /// Gateway-side address of the upstream connection (same port = same pooled connection).
    pub peer: SocketAddr,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap()
    }
}

/// Test-controlled progress of the special paths.
pub struct Gates {
    /// `/…/_big`: after the first 64 KiB.
    pub big: Semaphore,
    /// `/…/_sse`: before each event after the first.
    pub sse: Semaphore,
    /// `/…/_hang`: before the response head.
    pub hang: Semaphore,
    /// `/…/_slow`: between the two body parts.
    pub slow: Semaphore,
}

pub const BIG_LEN: usize = 8 * 1024 * 1024;
pub const BIG_CHUNK: usize = 64 * 1024;

/// Expected byte at `offset` of the `_big` body.
pub fn big_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// The stand-in's health-check path (not `/healthz`, which tests route as a request).
pub const HEALTH_PATH: &str = "/_health";

struct UpState {
    name: String,
    rec: watch::Sender<Vec<Recorded>>,
    gates: Gates,
    /// Status of `GET` [`HEALTH_PATH`] (health checks; not recorded as requests).
    health: std::sync::atomic::AtomicU16,
    health_checks: watch::Sender<u64>,
}

/// A recording HTTP/1.1 upstream on 127.0.0.1:0.
///
/// Answers by the last path segment:
/// - `_big`: 200, 8 MiB in 64 KiB chunks; pauses after the first chunk until `gates.big`.
/// - `_sse`: 200 `text/event-stream`, `event-1`, then one more event per `gates.sse` permit
///   (3 events), then ends.
/// - `_hang`: sends nothing until `gates.hang`.
/// - `_slow`: head and `first-part;` at once, `second-part` after `gates.slow`.
/// - anything else: 200 JSON `{"upstream", "method", "target", "body_len"}` after reading the
///   whole body, with `X-Upstream: <name>`.
///
/// `GET` [`HEALTH_PATH`] (the gateway's health checks, when a test points them there) answers
/// [`Upstream::set_health`]'s status (200 at first) and is counted apart, not recorded.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<UpState>,
    rx: watch::Receiver<Vec<Recorded>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn spawn_upstream(name: &str) -> Upstream {
    spawn_upstream_on(name, None).await
}

/// [`spawn_upstream`] over TLS with `cert` (issued by the test [`ca`]), ALPN `http/1.1`.
pub async fn spawn_tls_upstream(name: &str, cert: &CertFiles) -> Upstream {
    let chain: Vec<CertificateDer<'static>> = vec![cert.der.clone()];
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).expect("upstream key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("upstream TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    spawn_upstream_on(
        name,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    )
    .await
}

async fn spawn_upstream_on(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(Vec::new());
    let state = Arc::new(UpState {
        name: name.to_string(),
        rec: tx,
        gates: Gates {
            big: Semaphore::new(0),
            sse: Semaphore::new(0),
            hang: Semaphore::new(0),
            slow: Semaphore::new(0),
        },
        health: std::sync::atomic::AtomicU16::new(200),
        health_checks: watch::channel(0).0,
    });
    let st = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let st = st.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| upstream_handle(req, st.clone(), peer));
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    None => http.serve_connection(TokioIo::new(stream), svc).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), svc).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    Upstream {
        name: name.to_string(),
        addr,
        state,
        rx,
        task,
    }
}

type RespBody = BoxBody<Bytes, BoxError>;

fn resp_chan(buffer: usize) -> (mpsc::Sender<Bytes>, RespBody) {
    chan_body(buffer)
}

async fn acquire(s: &Semaphore) {
    s.acquire().await.expect("gate").forget();
}

async fn upstream_handle(
    req: Request<Incoming>,
    st: Arc<UpState>,
    peer: SocketAddr,
) -> Result<Response<RespBody>, Infallible> {
    if req.uri().path() == HEALTH_PATH {
        st.health_checks.send_modify(|n| *n += 1);
        let status = st.health.load(Ordering::Relaxed);
        return Ok(Response::builder()
            .status(status)
            .body(full_resp(if status == 200 { "ok" } else { "down" }))
            .unwrap());
    }
    let (parts, mut body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut idx = 0;
    st.rec.send_modify(|v| {
        idx = v.len();
        v.push(Recorded {
            method: parts.method.to_string(),
            target: target.clone(),
            version: parts.version,
            headers,
            body: Vec::new(),
            complete: false,
            peer,
        })
    });
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    len += d.len();
                    st.rec.send_modify(|v| v[idx].body.extend_from_slice(&d));
                }
            }
            Err(_) => break,
        }
    }
    st.rec.send_modify(|v| v[idx].complete = true);

    let last = parts
        .uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    let resp = match last.as_str() {
        "_big" => {
            let (tx, body) = resp_chan(2);
            let st2 = st.clone();
            tokio::spawn(async move {
                let mut off = 0;
                while off < BIG_LEN {
                    let chunk: Vec<u8> = (off..off + BIG_CHUNK).map(big_byte).collect();
                    if tx.send(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                    if off == 0 {
                        acquire(&st2.gates.big).await;
                    }
                    off += BIG_CHUNK;
                }
            });
            Response::builder()
                .status(200)
                .header("content-type", "application/octet-stream")
                .body(body)
                .unwrap()
        }
        "_sse" => {
            let (tx, body) = resp_chan(2);
            let st2 = st.clone();
            tokio::spawn(async move {
                for i in 1..=3 {
                    if i > 1 {
                        acquire(&st2.gates.sse).await;
                    }
                    if tx
                        .send(Bytes::from(format!("id: {i}\ndata: event-{i}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(body)
                .unwrap()
        }
        "_hang" => {
            acquire(&st.gates.hang).await;
            Response::builder()
                .status(200)
                .body(full_resp("late"))
                .unwrap()
        }
        "_slow" => {
            let (tx, body) = resp_chan(2);
            let st2 = st.clone();
            tokio::spawn(async move {
                if tx.send(Bytes::from_static(b"first-part;")).await.is_err() {
                    return;
                }
                acquire(&st2.gates.slow).await;
                let _ = tx.send(Bytes::from_static(b"second-part")).await;
            });
            Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .body(body)
                .unwrap()
        }
        _ => {
            let j = serde_json::json!({
                "upstream": st.name,
                "method": parts.method.as_str(),
                "target": target,
                "body_len": len,
            });
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-upstream", st.name.as_str())
                .body(full_resp(j.to_string()))
                .unwrap()
        }
    };
    Ok(resp)
}

fn full_resp(b: impl Into<Bytes>) -> RespBody {
    full(b)
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The status `GET` [`HEALTH_PATH`] answers from now on.
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::Relaxed);
    }
    /// Wait until at least `n` health checks arrived in all.
    pub async fn wait_health_checks(&self, n: u64) {
        let mut rx = self.state.health_checks.subscribe();
        let r = tokio::time::timeout(TIMEOUT, rx.wait_for(|c| *c >= n)).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "upstream {}: fewer than {n} health checks within {TIMEOUT:?}",
            self.name
        );
    }
    pub fn gates(&self) -> &Gates {
        &self.state.gates
    }
    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.rx.borrow().clone()
    }
    /// Wait until the recording satisfies `pred`, then return it.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let mut rx = self.rx.clone();
        let r = tokio::time::timeout(TIMEOUT, rx.wait_for(|v| pred(v))).await;
        match r {
            Ok(Ok(v)) => v.clone(),
            _ => panic!(
                "upstream {}: timed out waiting for {what}; received: {:#?}",
                self.name,
                self.requests()
            ),
        }
    }
    /// Wait for at least `n` requests with complete bodies.
    pub async fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        self.wait_for(&format!("{n} requests"), |v| {
            v.len() >= n && v.iter().take(n).all(|r| r.complete)
        })
        .await
    }
    /// The request carrying `X-Request-Id: id` (waits for it).
    pub async fn request_with_id(&self, id: &str) -> Recorded {
        let v = self
            .wait_for(&format!("request {id}"), |v| {
                v.iter().any(|r| r.header("x-request-id") == Some(id))
            })
            .await;
        v.into_iter()
            .find(|r| r.header("x-request-id") == Some(id))
            .unwrap()
    }
}

/// An address where nothing listens (connection refused).
pub async fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}")
}

// ---------------------------------------------------------------------------------------------
// the gateway process
// ---------------------------------------------------------------------------------------------

/// Lines a child process printed, awaitable.
#[derive(Clone)]
pub struct Lines {
    tx: Arc<watch::Sender<LinesState>>,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    eof: bool,
}

impl Lines {
    fn new() -> Self {
        Lines {
            tx: Arc::new(watch::channel(LinesState::default()).0),
        }
    }
    fn collect_from<R: std::io::Read + Send + 'static>(&self, r: R) -> std::thread::JoinHandle<()> {
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&line)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        tx.send_modify(|st| st.lines.push(s));
                    }
                }
            }
            tx.send_modify(|st| st.eof = true);
        })
    }
    pub fn snapshot(&self) -> Vec<String> {
        self.tx.borrow().lines.clone()
    }
    /// The first line matching `pred`, waiting up to [`TIMEOUT`]; None on timeout or EOF.
    pub async fn wait(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut rx = self.tx.subscribe();
        let r = tokio::time::timeout(
            TIMEOUT,
            rx.wait_for(|st| st.eof || st.lines.iter().any(|l| pred(l))),
        )
        .await;
        match r {
            Ok(Ok(st)) => st.lines.iter().find(|l| pred(l)).cloned(),
            _ => None,
        }
    }
    pub fn is_eof(&self) -> bool {
        self.tx.borrow().eof
    }
    pub fn len(&self) -> usize {
        self.tx.borrow().lines.len()
    }
    /// Like [`Lines::wait`], but only lines printed after the first `start` lines count.
    pub async fn wait_after(&self, start: usize, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut rx = self.tx.subscribe();
        let r = tokio::time::timeout(
            TIMEOUT,
            rx.wait_for(|st| st.eof || st.lines.iter().skip(start).any(|l| pred(l))),
        )
        .await;
        match r {
            Ok(Ok(st)) => st.lines.iter().skip(start).find(|l| pred(l)).cloned(),
            _ => None,
        }
    }
    /// Wait until the stream is closed (the process exited and everything was read).
    pub async fn wait_eof(&self) {
        let mut rx = self.tx.subscribe();
        let r = tokio::time::timeout(TIMEOUT, rx.wait_for(|st| st.eof)).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "output stream not closed within {TIMEOUT:?}"
        );
    }
}

/// Parse a log line as a JSON object (None if it is not one).
pub fn parse_json_line(l: &str) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_str::<Value>(l) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Builder for a gateway run: a tempdir with the config, certificates and other files.
pub struct GatewaySetup {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Always issued: `certs/default.crt|key` covering [`DEFAULT_SANS`].
    pub default_cert: CertFiles,
}

/// Names the default certificate covers.
pub const DEFAULT_SANS: &[&str] = &["gw.test", "*.gw.test", "crm.acme.test", "crm.beta.test"];

impl Default for GatewaySetup {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewaySetup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let default_cert = ca().issue(&dir.path().join("certs"), "default", DEFAULT_SANS);
        GatewaySetup {
            dir,
            env: Vec::new(),
            default_cert,
        }
    }
    /// Issue another certificate as `certs/<name>.crt|key`.
    pub fn cert(&self, name: &str, sans: &[&str]) -> CertFiles {
        ca().issue(&self.dir.path().join("certs"), name, sans)
    }
    /// Write a file relative to the config directory.
    pub fn file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let p = self.config_path();
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// Start `twenty-gateway --config <dir>/gateway.yaml` and wait for all its listeners.
    pub async fn spawn(self, yaml: &str) -> Gateway {
        let path = self.write_config(yaml);
        let wanted = configured_listeners(yaml);
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("GATEWAY_CONFIG")
            .env("RUST_BACKTRACE", "0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn twenty-gateway");
        let stdout = Lines::new();
        let stderr = Lines::new();
        stdout.collect_from(child.stdout.take().unwrap());
        stderr.collect_from(child.stderr.take().unwrap());
        let pid = child.id();
        // A thread owns the child and publishes its exit status when it exits.
        let (exit_tx, exit) = watch::channel(None);
        std::thread::spawn(move || {
            let st = child.wait().expect("wait for twenty-gateway");
            let _ = exit_tx.send(Some(st));
        });
        let mut gw = Gateway {
            pid,
            exit,
            setup: self,
            https: None,
            http: None,
            admin: None,
            stdout,
            stderr,
        };
        for l in wanted {
            let line = gw
                .stdout
                .wait(|s| {
                    parse_json_line(s).is_some_and(|m| {
                        m.get("event").and_then(Value::as_str) == Some("listening")
                            && m.get("listener").and_then(Value::as_str) == Some(l.as_str())
                    })
                })
                .await;
            let Some(line) = line else {
                let status = gw.exited();
                panic!(
                    "gateway never logged `listening` for {l} (exit status: {status:?})\n--- config ---\n{yaml}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    gw.stdout.snapshot().join("\n"),
                    gw.stderr.snapshot().join("\n")
                );
            };
            let m = parse_json_line(&line).unwrap();
            let addr: SocketAddr = m
                .get("addr")
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("listening line without a socket addr: {line}"));
            match l.as_str() {
                "https" => gw.https = Some(addr),
                "http" => gw.http = Some(addr),
                "admin" => gw.admin = Some(addr),
                _ => {}
            }
        }
        gw
    }
}

/// Which of `listen.https|http|admin` the YAML sets to a non-null value.
fn configured_listeners(yaml: &str) -> Vec<String> {
    let v: serde_yaml::Value = match serde_yaml::from_str(yaml) {
        Ok(v) => v,
        Err(_) => return vec!["https".into()],
    };
    let mut out = Vec::new();
    for l in ["https", "http", "admin"] {
        if v.get("listen")
            .and_then(|x| x.get(l))
            .is_some_and(|x| !x.is_null())
        {
            out.push(l.to_string());
        }
    }
    out
}

pub async fn spawn_gateway(yaml: &str) -> Gateway {
    GatewaySetup::new().spawn(yaml).await
}

pub struct Gateway {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    pub setup: GatewaySetup,
    https: Option<SocketAddr>,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
        }
    }
}

impl Gateway {
    pub fn https(&self) -> SocketAddr {
        self.https.expect("https listener")
    }
    pub fn http(&self) -> SocketAddr {
        self.http.expect("http listener (listen.http)")
    }
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener")
    }
    pub fn dir(&self) -> &Path {
        self.setup.dir.path()
    }

    /// HTTP/1.1 over TLS with SNI and Host = `host`.
    pub async fn h1(&self, host: &str) -> Conn {
        Conn::h1(self.https(), host).await
    }
    /// HTTP/2 over TLS with SNI and :authority = `host`.
    pub async fn h2(&self, host: &str) -> Conn {
        Conn::h2(self.https(), host).await
    }
    /// [`Gateway::h2`] or [`Gateway::h1`]: for tests run over both.
    pub async fn conn(&self, h2: bool, host: &str) -> Conn {
        if h2 {
            self.h2(host).await
        } else {
            self.h1(host).await
        }
    }

    /// Every JSON object printed on stdout so far.
    pub fn json_lines(&self) -> Vec<serde_json::Map<String, Value>> {
        self.stdout
            .snapshot()
            .iter()
            .filter_map(|l| parse_json_line(l))
            .collect()
    }

    /// Access lines (`"event":"request"`) so far.
    pub fn access_lines(&self) -> Vec<serde_json::Map<String, Value>> {
        self.json_lines()
            .into_iter()
            .filter(|m| m.get("event").and_then(Value::as_str) == Some("request"))
            .collect()
    }

    /// The access line for `request_id` (waits for it).
    pub async fn access_line(&self, request_id: &str) -> serde_json::Map<String, Value> {
        let is = |l: &str| {
            parse_json_line(l).is_some_and(|m| {
                m.get("event").and_then(Value::as_str) == Some("request")
                    && m.get("request_id").and_then(Value::as_str) == Some(request_id)
            })
        };
        match self.stdout.wait(is).await {
            Some(l) => parse_json_line(&l).unwrap(),
            None => panic!(
                "no access line with request_id {request_id:?} within {TIMEOUT:?}; stdout:\n{}",
                self.stdout.snapshot().join("\n")
            ),
        }
    }

    /// `outcome` of the access line for `request_id`.
    pub async fn outcome(&self, request_id: &str) -> String {
        self.access_line(request_id)
            .await
            .get("outcome")
            .and_then(Value::as_str)
            .unwrap_or("<missing>")
            .to_string()
    }

    /// Everything the process printed on stdout and stderr so far.
    pub fn all_output(&self) -> String {
        let mut s = self.stdout.snapshot().join("\n");
        s.push('\n');
        s.push_str(&self.stderr.snapshot().join("\n"));
        s
    }

    /// Send a signal by name (`HUP`, `TERM`, ...) with the `kill` utility.
    pub fn signal(&self, sig: &str) {
        assert!(
            self.exited().is_none(),
            "process already exited\n{}",
            self.all_output()
        );
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Wait for a JSON log line printed after `start` lines whose `event` satisfies `pred`.
    pub async fn wait_event_after(
        &self,
        start: usize,
        pred: impl Fn(&str) -> bool,
    ) -> serde_json::Map<String, Value> {
        let line = self
            .stdout
            .wait_after(start, |l| {
                parse_json_line(l)
                    .is_some_and(|m| m.get("event").and_then(Value::as_str).is_some_and(&pred))
            })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "expected event not logged within {TIMEOUT:?}{}; stdout:\n{}\nstderr:\n{}",
                    if self.stdout.is_eof() {
                        " (stdout closed: the process exited)"
                    } else {
                        ""
                    },
                    self.stdout.snapshot().join("\n"),
                    self.stderr.snapshot().join("\n")
                )
            });
        parse_json_line(&line).unwrap()
    }

    /// Rewrite the config file in place (same inode).
    pub fn rewrite_config_in_place(&self, yaml: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.setup.config_path())
            .unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }

    /// Replace the config file by writing a temp file and renaming it over (like `sed -i`).
    pub fn replace_config(&self, yaml: &str) {
        let tmp = self.dir().join(".gateway.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.setup.config_path()).unwrap();
    }

    /// Plain HTTP/1.1 connection to the admin listener.
    pub async fn admin_conn(&self) -> Conn {
        Conn::plain(self.admin(), "127.0.0.1").await
    }

    /// `GET /metrics` on the admin listener.
    pub async fn metrics_text(&self) -> String {
        let r = self.admin_conn().await.get("/metrics", &[]).await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// `POST /reload` on the admin listener.
    pub async fn admin_reload(&self) -> Resp {
        self.admin_conn()
            .await
            .request(http::Method::POST, "/reload", &[], "")
            .await
    }

    /// Scrape until the sample starting with `line_prefix` satisfies `pred` (metrics move
    /// off the request path), up to [`TIMEOUT`].
    pub async fn wait_metric(&self, line_prefix: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let text = self.metrics_text().await;
            let v = metric(&text, line_prefix);
            if pred(v) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{line_prefix}: {v} did not reach the expected value within {TIMEOUT:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Wait for the process to exit (up to `limit`), then for its output to be fully read.
    pub async fn wait_exit(&self, limit: Duration) -> ExitStatus {
        let mut rx = self.exit.clone();
        let Ok(Ok(st)) = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await else {
            panic!(
                "the process did not exit within {limit:?}\n{}",
                self.all_output()
            );
        };
        let st = st.expect("exit status");
        self.stdout.wait_eof().await;
        self.stderr.wait_eof().await;
        st
    }

    /// Send SIGTERM and wait for the exit status (and the end of its output).
    pub async fn terminate(&self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(TIMEOUT * 3).await
    }
}

// ---------------------------------------------------------------------------------------------
// config YAML for the usual shape
// ---------------------------------------------------------------------------------------------

/// The value of the first sample line starting with `line_prefix` (0 if absent).
pub fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub const TOKEN_ACME: &str = "tgw_test_acme_ci_0123456789abcdef";
pub const TOKEN_BETA: &str = "tgw_test_beta_ci_0123456789abcdef";

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The common test config: base domain `gw.test`, tenants `acme` (`acme.gw.test`,
/// `crm.acme.test`) and `beta` (`beta.gw.test`, `crm.beta.test`), keys `acme-ci`
/// ([`TOKEN_ACME`]) and `beta-ci` ([`TOKEN_BETA`]), SPEC's default route table.
/// Sections are raw YAML so tests can replace any of them.
#[derive(Clone, Debug)]
pub struct Conf {
    pub http_listener: bool,
    pub admin_listener: bool,
    /// YAML list items under `tls.certificates`.
    pub certificates: Vec<String>,
    pub base_domains: Vec<String>,
    pub upstreams: Vec<(String, String)>,
    /// Lines of the `routes:` block (None: SPEC's default table).
    pub routes: Option<String>,
    /// Lines under `limits:` (indented by two spaces by the caller or not at all; each line is
    /// indented here).
    pub limits: Vec<String>,
    /// Full `tenants:` block.
    pub tenants: String,
    /// Full `keys:` block.
    pub keys: String,
    /// Appended verbatim (top-level keys such as `trusted_proxies` or `access_log`).
    pub extra: String,
}

pub fn key_yaml(id: &str, tenant: &str, token: &str, extra: &str) -> String {
    let mut s = format!(
        "  - id: {id}\n    tenant: {tenant}\n    sha256: {}\n",
        sha256_hex(token)
    );
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("    ");
        s.push_str(l.trim());
        s.push('\n');
    }
    s
}

pub const DEFAULT_TENANTS: &str = "tenants:
  - name: acme
    subdomain: acme
    domains: [crm.acme.test]
  - name: beta
    subdomain: beta
    domains: [crm.beta.test]
";

impl Conf {
    /// `core` and `metadata` both at `core`'s URL unless `metadata` is given.
    pub fn new(core: &str, metadata: &str) -> Self {
        Conf {
            http_listener: false,
            admin_listener: false,
            certificates: vec!["{ cert: certs/default.crt, key: certs/default.key }".into()],
            base_domains: vec!["gw.test".into()],
            upstreams: vec![
                ("core".into(), core.into()),
                ("metadata".into(), metadata.into()),
            ],
            routes: None,
            limits: Vec::new(),
            tenants: DEFAULT_TENANTS.into(),
            keys: format!(
                "keys:\n{}{}",
                key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
                key_yaml("beta-ci", "beta", TOKEN_BETA, "")
            ),
            extra: String::new(),
        }
    }
    pub fn one(up: &Upstream) -> Self {
        Conf::new(&up.url(), &up.url())
    }
    pub fn two(core: &Upstream, metadata: &Upstream) -> Self {
        Conf::new(&core.url(), &metadata.url())
    }
    pub fn limit(mut self, line: &str) -> Self {
        self.limits.push(line.to_string());
        self
    }
    pub fn tenants(mut self, t: &str) -> Self {
        self.tenants = t.to_string();
        self
    }
    pub fn keys(mut self, k: &str) -> Self {
        self.keys = k.to_string();
        self
    }
    pub fn routes(mut self, r: &str) -> Self {
        self.routes = Some(r.to_string());
        self
    }
    pub fn extra(mut self, e: &str) -> Self {
        self.extra.push_str(e);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }
    pub fn with_http(mut self) -> Self {
        self.http_listener = true;
        self
    }
    pub fn with_admin(mut self) -> Self {
        self.admin_listener = true;
        self
    }

    pub fn render(&self) -> String {
        let mut y = String::new();
        y.push_str("listen:\n  https: 127.0.0.1:0\n");
        if self.http_listener {
            y.push_str("  http: 127.0.0.1:0\n");
        }
        if self.admin_listener {
            y.push_str("  admin: 127.0.0.1:0\n");
        }
        y.push_str("tls:\n  certificates:\n");
        for c in &self.certificates {
            y.push_str(&format!("    - {c}\n"));
        }
        y.push_str(&format!(
            "base_domains: [{}]\n",
            self.base_domains.join(", ")
        ));
        y.push_str("upstreams:\n");
        for (n, u) in &self.upstreams {
            y.push_str(&format!("  {n}: {u}\n"));
        }
        y.push_str("routes:\n");
        match &self.routes {
            Some(r) => y.push_str(r),
            None => y.push_str(
                "  - { prefix: /rest/metadata, upstream: metadata }\n  - { prefix: /metadata, upstream: metadata }\n  - { prefix: /rest, upstream: core }\n  - { prefix: /graphql, upstream: core }\n",
            ),
        }
        if !y.ends_with('\n') {
            y.push('\n');
        }
        if !self.limits.is_empty() {
            y.push_str("limits:\n");
            for l in &self.limits {
                y.push_str(&format!("  {}\n", l.trim()));
            }
        }
        y.push_str(&self.tenants);
        if !y.ends_with('\n') {
            y.push('\n');
        }
        y.push_str(&self.keys);
        if !y.ends_with('\n') {
            y.push('\n');
        }
        y.push_str(&self.extra);
        y
    }

    pub async fn spawn(&self) -> Gateway {
        spawn_gateway(&self.render()).await
    }
    pub async fn spawn_in(&self, setup: GatewaySetup) -> Gateway {
        setup.spawn(&self.render()).await
    }
}

// ---------------------------------------------------------------------------------------------
// error-body assertions
// ---------------------------------------------------------------------------------------------

/// Assert a REST-shaped gateway error: status, `error` code, `statusCode`, `requestId` equal to
/// the `X-Request-Id` response header, JSON content type.
pub fn assert_rest_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "status; body: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let j = r.json();
    assert_eq!(j["error"], code, "error code in {j}");
    assert_eq!(j["statusCode"], status, "statusCode in {j}");
    assert!(j["messages"].is_array(), "messages array in {j}");
    let rid = r.request_id();
    assert_eq!(
        j["requestId"],
        rid.as_str(),
        "requestId in body vs X-Request-Id header"
    );
}

/// Assert a GraphQL-shaped gateway error.
pub fn assert_graphql_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "status; body: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let j = r.json();
    let e = &j["errors"][0];
    assert!(e["message"].is_string(), "errors[0].message in {j}");
    assert_eq!(
        e["extensions"]["code"], code,
        "errors[0].extensions.code in {j}"
    );
    let rid = r.request_id();
    assert_eq!(
        e["extensions"]["requestId"],
        rid.as_str(),
        "requestId in body vs X-Request-Id header"
    );
}

pub fn assert_raw_rest_error(r: &RawResp, status: u16, code: &str) {
    assert_eq!(
        r.status,
        status,
        "status; body: {}",
        String::from_utf8_lossy(&r.body)
    );
    let j = r.json();
    assert_eq!(j["error"], code, "error code in {j}");
}

/// Run the binary to completion with optional stdin.
pub fn run_cli(
    args: &[&str],
    stdin: Option<&[u8]>,
    cwd: Option<&Path>,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("GATEWAY_CONFIG");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(input).unwrap();
        drop(s);
    }
    // Bounded: a hung CLI must fail the test, not hang the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!(
                "`twenty-gateway {}` did not exit within 20s",
                args.join(" ")
            );
        }
    }
}

/// Parse a structured-field list like `"key";q=600;w=60, "tenant";q=100;w=60` into
/// name → params.
pub fn parse_sf_list(s: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in s.split(',') {
        let mut parts = item.trim().split(';');
        let name = parts.next().unwrap().trim().trim_matches('"').to_string();
        let params = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        out.insert(name, params);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// helpers added for the hostile-input suites (tests/hostile*.rs, tests/websocket.rs)
// ---------------------------------------------------------------------------------------------

impl RawConn {
    /// Like [`RawConn::write`], but a peer that already closed (it answered and hung up
    /// before reading everything) is not a test failure.
    pub async fn write_result(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Wrap an already connected stream (e.g. a TLS stream with custom options).
    pub fn from_io(io: impl Io + 'static) -> RawConn {
        RawConn {
            io: Box::new(io),
            buf: Vec::new(),
        }
    }

    /// Read whatever arrives within `wait` (at most `max` bytes); `Ok(0)` on EOF.
    pub async fn read_some(&mut self, wait: Duration) -> std::io::Result<Vec<u8>> {
        if !self.buf.is_empty() {
            return Ok(std::mem::take(&mut self.buf));
        }
        let mut tmp = vec![0u8; 65536];
        match tokio::time::timeout(wait, self.io.read(&mut tmp)).await {
            Ok(Ok(n)) => {
                tmp.truncate(n);
                Ok(tmp)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

impl Gateway {
    /// The gateway's process id (for /proc inspection).
    pub fn pid(&self) -> u32 {
        self.pid
    }
}
