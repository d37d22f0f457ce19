//! Harness for the ACME tests: a real CA ([`pebble`]), the listeners the CA
//! validates against (a TLS listener answering `acme-tls/1` and serving the
//! issued certificates, an HTTP server answering HTTP-01), a TLS client, and
//! a capture of the manager's tracing events.

#![allow(dead_code)]

pub mod pebble;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use twenty_gateway::acme::challenge::{http01_token, is_acme_tls_alpn};
use twenty_gateway::acme::{Challenges, Manager};

/// Generous bound for an issuance against pebble.
pub const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// events
// ---------------------------------------------------------------------------------------------

/// One captured tracing event: its fields as strings (`event`, `name`, …).
#[derive(Debug, Clone)]
pub struct Event(pub HashMap<String, String>);

impl Event {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    pub fn is(&self, event: &str, name: &str) -> bool {
        self.get("event") == Some(event) && self.get("name") == Some(name)
    }
}

/// Events recorded on this thread (the tests run on a current-thread
/// runtime, so the manager's tasks log here too).
#[derive(Clone, Default)]
pub struct Events {
    seen: Arc<Mutex<Vec<Event>>>,
    notify: Arc<Notify>,
}

impl Events {
    /// Record events on this thread until the guard is dropped.
    pub fn capture() -> (Events, tracing::subscriber::DefaultGuard) {
        let events = Events::default();
        let subscriber = tracing_subscriber::registry().with(events.clone());
        (events, tracing::subscriber::set_default(subscriber))
    }

    pub fn all(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    pub fn matching(&self, f: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.all().into_iter().filter(|e| f(e)).collect()
    }

    /// Wait for the first event `f` accepts.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Event) -> bool,
    ) -> Event {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if let Some(e) = self.all().into_iter().find(|e| f(e)) {
                    return e;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(e) => e,
            Err(_) => panic!("no {what} within {timeout:?}; events: {:#?}", self.all()),
        }
    }
}

struct FieldsVisitor<'a>(&'a mut HashMap<String, String>);

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        fields.insert("level".to_string(), event.metadata().level().to_string());
        event.record(&mut FieldsVisitor(&mut fields));
        self.seen.lock().unwrap().push(Event(fields));
        self.notify.notify_waiters();
    }
}

// ---------------------------------------------------------------------------------------------
// listeners the CA validates against
// ---------------------------------------------------------------------------------------------

/// A free port on 127.0.0.1 with its listener already bound.
pub async fn bind() -> (TcpListener, u16) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

/// The HTTPS side as the gateway will do it: a ClientHello offering only
/// `acme-tls/1` gets the pending challenge certificate (or is refused);
/// anything else gets the name's issued certificate, waiting up to 10 s for
/// a first one being ordered.
pub fn serve_tls(listener: TcpListener, manager: Arc<Manager>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(tls_connection(tcp, manager.clone()));
        }
    })
}

async fn tls_connection(tcp: TcpStream, manager: Arc<Manager>) {
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let Ok(start) = acceptor.await else { return };
    let hello = start.client_hello();
    let Some(sni) = hello.server_name().map(str::to_string) else {
        return;
    };
    let config = if is_acme_tls_alpn(&hello) {
        match manager.challenges().tls_alpn01_server_config(&sni) {
            Some(config) => config,
            None => return, // no validation pending: refuse
        }
    } else {
        let key = match manager.certificates().get(&sni) {
            Some(key) => key,
            None => match manager
                .first_certificate(&sni, Duration::from_secs(10))
                .await
            {
                Some(key) => key,
                None => return,
            },
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(key)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    };
    // The handshake is all either side needs; the connection ends after it.
    let _ = start.into_stream(config).await;
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// HTTP-01 as the gateway will do it: `GET /.well-known/acme-challenge/<t>`
/// → the key authorization, anything else 404.
pub fn serve_http01(
    listener: TcpListener,
    challenges: Arc<Challenges>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let challenges = challenges.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let answer = http01_token(req.uri().path()).and_then(|t| challenges.http01(t));
                    async move {
                        Ok::<_, Infallible>(match answer {
                            Some(body) => hyper::Response::new(Full::new(Bytes::from(body))),
                            None => hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new()))
                                .expect("response"),
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })
}

// ---------------------------------------------------------------------------------------------
// client
// ---------------------------------------------------------------------------------------------

/// A client trusting only `root`, offering `alpn`.
pub fn client_config(root: CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` for `sni` with `config`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The chain a TLS stream's server sent.
pub fn peer_chain(tls: &TlsStream) -> Vec<CertificateDer<'static>> {
    tls.get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect()
}

/// Handshake with `addr` for `sni`, trusting only `root`; the chain served.
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    root: CertificateDer<'static>,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    let tls = connect(addr, sni, client_config(root, &[])).await?;
    Ok(peer_chain(&tls))
}

/// `GET path` over HTTP/1.1 on a TLS connection for `sni` (also the Host)
/// trusting only `root`: the status, the body and the chain served.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    root: CertificateDer<'static>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, Vec<CertificateDer<'static>>), Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    let tls = connect(addr, sni, client_config(root, &[b"http/1.1"])).await?;
    let chain = peer_chain(&tls);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", sni);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(http_body_util::Empty::<Bytes>::new())?)
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned(), chain))
}

/// The leaf's serial number, hex.
pub fn serial(chain: &[CertificateDer<'_>]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref()).expect("leaf parses");
    cert.tbs_certificate.raw_serial_as_string()
}
