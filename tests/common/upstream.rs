//! The upstream: a recording hyper HTTP/1.1 server (plain or TLS) standing in for Twenty, with
//! "gated" paths whose progress the test controls and a health-check path whose status it sets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::tls::provider;
use super::{CertFiles, ReqBody, TIMEOUT, chan_body, full};

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
    health: AtomicU16,
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

/// [`spawn_upstream`] over TLS with `cert` (issued by the test [`ca`](super::ca)), ALPN
/// `http/1.1`.
pub async fn spawn_tls_upstream(name: &str, cert: &CertFiles) -> Upstream {
    let chain: Vec<CertificateDer<'static>> = vec![cert.der.clone()];
    let key = PrivateKeyDer::from_pem_file(&cert.key).expect("upstream key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("upstream TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    spawn_upstream_on(name, Some(TlsAcceptor::from(Arc::new(config)))).await
}

async fn spawn_upstream_on(name: &str, tls: Option<TlsAcceptor>) -> Upstream {
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
        health: AtomicU16::new(200),
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

/// The same boxed body type serves requests and responses.
type RespBody = ReqBody;

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
            .body(full(if status == 200 { "ok" } else { "down" }))
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
            let (tx, body) = chan_body(2);
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
            let (tx, body) = chan_body(2);
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
            Response::builder().status(200).body(full("late")).unwrap()
        }
        "_slow" => {
            let (tx, body) = chan_body(2);
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
                .body(full(j.to_string()))
                .unwrap()
        }
    };
    Ok(resp)
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
