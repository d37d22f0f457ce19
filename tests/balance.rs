//! The balance module against real sockets: active health checks on
//! stand-in servers whose answer the test flips, and the HTTPS connector
//! against a real TLS server with a test CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use twenty_gateway::balance::{
    ConnectError, HealthCheck, PoolSpec, Registry, Server, ServerUrl, Stream, TlsClient,
    TlsClientError, connect,
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What a stand-in saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    host: String,
    user_agent: String,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// A tiny HTTP/1.1 server answering every request with `status` (the test
/// flips it), over TLS when given a config.
struct StandIn {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    seen: watch::Receiver<Vec<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    async fn start(tls: Option<Arc<ServerConfig>>) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let (tx, seen) = watch::channel(Vec::new());
        let tx = Arc::new(tx);
        let acceptor = tls.map(TlsAcceptor::from);
        let st = status.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (status, tx, acceptor) = (st.clone(), tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(tcp, None, None, status, tx).await,
                        Some(a) => {
                            let Ok(tls) = a.accept(tcp).await else { return };
                            let conn = tls.get_ref().1;
                            let sni = conn.server_name().map(str::to_owned);
                            let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                            serve(tls, sni, alpn, status, tx).await
                        }
                    }
                });
            }
        });
        StandIn {
            addr,
            status,
            seen,
            task,
        }
    }

    fn url(&self, scheme: &str, host: &str) -> ServerUrl {
        ServerUrl::parse(&format!("{scheme}://{host}:{}", self.addr.port())).unwrap()
    }

    async fn wait_seen(&self, n: usize) -> Vec<Seen> {
        let mut rx = self.seen.clone();
        let seen = tokio::time::timeout(TIMEOUT, rx.wait_for(|v| v.len() >= n)).await;
        seen.expect("requests at the stand-in").unwrap().clone()
    }
}

async fn serve<IO>(
    io: IO,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    status: Arc<AtomicU16>,
    tx: Arc<watch::Sender<Vec<Seen>>>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        tx.send_modify(|v| {
            v.push(Seen {
                path: req.uri().path().to_owned(),
                host: header(http::header::HOST),
                user_agent: header(http::header::USER_AGENT),
                sni: sni.clone(),
                alpn: alpn.clone(),
            })
        });
        let status = status.load(Ordering::Relaxed);
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(b"ok")))
                    .unwrap(),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn health_check() -> HealthCheck {
    HealthCheck {
        path: http::uri::PathAndQuery::from_static("/healthz"),
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
        unhealthy_after: NonZeroU32::new(2).unwrap(),
        healthy_after: NonZeroU32::new(2).unwrap(),
    }
}

async fn wait_health(server: &Server, healthy: bool) {
    let mut rx = server.watch_health();
    let r = tokio::time::timeout(TIMEOUT, rx.wait_for(|h| *h == healthy)).await;
    assert!(
        matches!(r, Ok(Ok(_))),
        "{} never became healthy={healthy}",
        server.url()
    );
}

fn exposition(registry: &Registry) -> String {
    let mut r = prometheus_client::registry::Registry::default();
    registry.metrics().register(&mut r);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
    out
}

#[tokio::test]
async fn active_checks_follow_the_answers() {
    let up = StandIn::start(None).await;
    let closed = closed_port().await;
    let spec = PoolSpec {
        servers: vec![
            up.url("http", "127.0.0.1"),
            ServerUrl::parse(&format!("http://{closed}")).unwrap(),
        ],
        health_check: Some(health_check()),
        tls: None,
    };
    let registry = Registry::default();
    let mut build = registry.build();
    let pool = build.pool("core", &spec).unwrap();
    build.commit();
    let (live, dead) = (pool.servers()[0].clone(), pool.servers()[1].clone());
    assert!(live.is_checked() && dead.is_checked());

    // Refused connections fail the checks of the closed port.
    wait_health(&dead, false).await;
    let seen = up.wait_seen(2).await;
    assert!(live.is_healthy());
    for s in &seen {
        assert_eq!(s.path, "/healthz");
        assert_eq!(s.host, up.addr.to_string());
        assert_eq!(s.user_agent, "twenty-gateway health check");
    }

    // 503 takes it out, 200 brings it back.
    up.status.store(503, Ordering::Relaxed);
    wait_health(&live, false).await;
    let text = exposition(&registry);
    let series = |name: &str, server: &str, value: u8| {
        format!("{name}{{upstream=\"core\",server=\"{server}\"}} {value}")
    };
    let live_url = live.url().as_str();
    assert!(text.contains(&series("gateway_upstream_server_healthy", live_url, 0)));
    up.status.store(200, Ordering::Relaxed);
    wait_health(&live, true).await;

    // Checks are not requests.
    let text = exposition(&registry);
    assert!(text.contains(&series("gateway_upstream_server_healthy", live_url, 1)));
    assert!(text.contains(&series("gateway_upstream_requests_total", live_url, 0)));
    assert_eq!(live.outstanding(), 0);

    // A reload that keeps both keeps their state (the closed port stays
    // down, its check running); one that drops the closed port stops its
    // checks.
    let mut build = registry.build();
    let again = build.pool("core", &spec).unwrap();
    build.commit();
    assert!(Arc::ptr_eq(&again.servers()[1], &dead));
    assert!(!dead.is_healthy() && dead.is_checked());
    let mut build = registry.build();
    let kept = PoolSpec {
        servers: spec.servers[..1].to_vec(),
        ..spec.clone()
    };
    build.pool("core", &kept).unwrap();
    build.commit();
    assert!(!dead.is_checked() && live.is_checked());
    assert!(!exposition(&registry).contains(dead.url().as_str()));
}

/// A test CA and a certificate for `localhost` it signed.
struct Pki {
    _dir: tempfile::TempDir,
    ca_pem: PathBuf,
    server: Arc<ServerConfig>,
}

fn test_pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("internal-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let mut server = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Pki {
        _dir: dir,
        ca_pem,
        server: Arc::new(server),
    }
}

async fn get(stream: Stream, path: &str, host: &str) -> u16 {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let status = sender.send_request(req).await.unwrap().status().as_u16();
    conn.abort();
    status
}

fn refused_by_verification(e: &ConnectError) -> bool {
    matches!(e, ConnectError::Tls(io) if io.to_string().contains("invalid peer certificate"))
}

#[tokio::test]
async fn https_servers_are_verified_against_the_ca() {
    let pki = test_pki();
    let up = StandIn::start(Some(pki.server.clone())).await;
    let url = up.url("https", "localhost");

    // With the CA: verified, SNI from the URL host, ALPN http/1.1.
    let tls = TlsClient::new(Some(&pki.ca_pem)).unwrap();
    let stream = connect(&url, Some(&tls)).await.unwrap();
    assert_eq!(stream.alpn(), Some(&b"http/1.1"[..]));
    assert_eq!(get(stream, "/rest/people", "acme.example").await, 200);
    let seen = up.wait_seen(1).await;
    assert_eq!(seen[0].sni.as_deref(), Some("localhost"));
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(seen[0].host, "acme.example");

    // Active checks go over TLS too.
    let spec = PoolSpec {
        servers: vec![url.clone()],
        health_check: Some(health_check()),
        tls: Some(tls.clone()),
    };
    let registry = Registry::default();
    let mut build = registry.build();
    let pool = build.pool("core", &spec).unwrap();
    build.commit();
    let seen = up.wait_seen(3).await;
    assert_eq!(seen[2].path, "/healthz");
    assert_eq!(seen[2].sni.as_deref(), Some("localhost"));
    up.status.store(503, Ordering::Relaxed);
    wait_health(&pool.servers()[0], false).await;

    // The same roots read twice are the same client (a reload changes nothing).
    assert_eq!(TlsClient::new(Some(&pki.ca_pem)).unwrap(), tls);

    // Without the CA: the system roots do not know it.
    match TlsClient::new(None) {
        Ok(system) => {
            assert_ne!(system, tls);
            let e = connect(&url, Some(&system)).await.err().unwrap();
            assert!(refused_by_verification(&e), "{e}");
        }
        Err(TlsClientError::NoSystemRoots { .. }) => {}
        Err(e) => panic!("system roots: {e}"),
    }
    // Another CA: refused.
    let other = TlsClient::new(Some(&test_pki().ca_pem)).unwrap();
    let e = connect(&url, Some(&other)).await.err().unwrap();
    assert!(refused_by_verification(&e), "{e}");
    // A name the certificate does not cover: refused.
    let by_ip = up.url("https", "127.0.0.1");
    let e = connect(&by_ip, Some(&tls)).await.err().unwrap();
    assert!(refused_by_verification(&e), "{e}");
}

#[tokio::test]
async fn https_never_falls_back_to_plaintext() {
    let pki = test_pki();
    let plain = StandIn::start(None).await;
    let url = plain.url("https", "localhost");
    let tls = TlsClient::new(Some(&pki.ca_pem)).unwrap();
    let e = connect(&url, Some(&tls)).await.err().unwrap();
    assert!(matches!(e, ConnectError::Tls(_)), "{e}");
    assert!(matches!(
        connect(&url, None).await.err().unwrap(),
        ConnectError::NoTlsClient
    ));
    assert!(plain.seen.borrow().is_empty());
}

#[test]
fn a_bad_ca_file_is_a_setup_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.pem");
    assert!(matches!(
        TlsClient::new(Some(&missing)),
        Err(TlsClientError::Read { .. })
    ));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    assert!(matches!(
        TlsClient::new(Some(&empty)),
        Err(TlsClientError::NoCertificate { .. })
    ));
}
