//! HTTP clients: [`Conn`] (HTTP/1.1 keep-alive or HTTP/2, TLS or plain), request bodies
//! ([`full`], [`empty`], [`chan_body`]) and the fully read [`Resp`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::{BoxError, TlsInfo, TlsOpts, rid, tls_connect, within};

// ---------------------------------------------------------------------------------------------
// bodies
// ---------------------------------------------------------------------------------------------

pub type ReqBody = BoxBody<Bytes, BoxError>;

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
// responses
// ---------------------------------------------------------------------------------------------

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
    pub fn json(&self) -> Value {
        json_body(&self.body, self.status.as_u16())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .expect("response has X-Request-Id")
    }
}

/// A response body as JSON; panics (naming the status) if it is not.
pub(super) fn json_body(body: &[u8], status: u16) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {:?} (status {status})",
            String::from_utf8_lossy(body)
        )
    })
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
// connections
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
    /// Turns true when the connection has ended (the server closed it, or sent GOAWAY and
    /// finished).
    ended: watch::Receiver<bool>,
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
        Conn::handshake(Self::tcp(addr).await, false, host, "http").await
    }

    /// Plain TCP HTTP/2 with prior knowledge.
    pub async fn plain_h2(addr: SocketAddr, host: &str) -> Conn {
        Conn::handshake(Self::tcp(addr).await, true, host, "http").await
    }

    async fn tcp(addr: SocketAddr) -> TcpStream {
        let tcp = within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        tcp.set_nodelay(true).ok();
        tcp
    }

    async fn handshake<S>(io: S, h2: bool, host: &str, scheme: &'static str) -> Conn
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let (ended_tx, ended) = watch::channel(false);
        let sender = if h2 {
            let (s, conn) = within(
                "h2 handshake",
                hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(io),
            )
            .await
            .expect("h2 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
                let _ = ended_tx.send(true);
            });
            Sender::H2(s)
        } else {
            let (s, conn) = within("h1 handshake", hyper::client::conn::http1::handshake(io))
                .await
                .expect("h1 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
                let _ = ended_tx.send(true);
            });
            Sender::H1(s)
        };
        Conn {
            sender,
            host: host.to_string(),
            scheme,
            tls: None,
            ended,
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Resolves once the connection has ended (closed by the server, or GOAWAY and done).
    pub async fn ended(&self) {
        let mut rx = self.ended.clone();
        let _ = rx.wait_for(|ended| *ended).await;
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

    /// [`Conn::get`] with a fresh `X-Request-Id` ([`rid`]) added: (response, request id), so the
    /// test can find its access line and what the upstream received.
    pub async fn get_with_id(&mut self, path: &str, headers: &[(&str, &str)]) -> (Resp, String) {
        let id = rid();
        let mut h = headers.to_vec();
        h.push(("x-request-id", &id));
        let r = self.get(path, &h).await;
        (r, id)
    }
}
