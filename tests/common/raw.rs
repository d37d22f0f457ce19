//! Exact bytes on a socket: [`RawConn`] for requests a client library would normalise or
//! refuse, and a small HTTP/1.1 response reader ([`RawResp`]).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::json_body;
use super::{Gateway, TIMEOUT, TOKEN_ACME, TlsOpts, find_bytes, tls_connect, within};

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Which client listener a raw test connects to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Via {
    /// `listen.https`, SNI `acme.gw.test`, ALPN http/1.1.
    Tls,
    /// `listen.http`.
    Plain,
}

pub const VIAS: [Via; 2] = [Via::Tls, Via::Plain];

impl Gateway {
    /// The address of the listener `via` names.
    pub fn addr(&self, via: Via) -> SocketAddr {
        match via {
            Via::Tls => self.https(),
            Via::Plain => self.http(),
        }
    }

    /// A raw connection to the listener `via` names.
    pub async fn raw(&self, via: Via) -> RawConn {
        match via {
            Via::Tls => RawConn::tls(self.https(), Some("acme.gw.test")).await,
            Via::Plain => RawConn::plain(self.http()).await,
        }
    }
}

/// `GET path` for `acme.gw.test` with [`TOKEN_ACME`], then `extra` (whole header lines, each
/// ending in CRLF) and the empty line.
pub fn raw_get(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: acme.gw.test\r\nAuthorization: Bearer {TOKEN_ACME}\r\n{extra}\r\n"
    )
}

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
        json_body(&self.body, self.status)
    }
}

/// Whether a [`RawConn::read_some`] result means the peer closed the connection (EOF or an
/// error other than our own timeout).
pub fn is_eof(res: &std::io::Result<Vec<u8>>) -> bool {
    match res {
        Ok(v) => v.is_empty(),
        Err(e) => e.kind() != std::io::ErrorKind::TimedOut,
    }
}

impl RawConn {
    /// TLS with ALPN http/1.1 and the given SNI (None: no SNI).
    pub async fn tls(addr: SocketAddr, sni: Option<&str>) -> RawConn {
        let mut o = TlsOpts::h1(sni.unwrap_or("x"));
        o.sni = sni.map(str::to_string);
        let (s, _) = tls_connect(addr, &o).await;
        RawConn::from_io(s)
    }

    pub async fn plain(addr: SocketAddr) -> RawConn {
        let s = TcpStream::connect(addr).await.expect("connect");
        RawConn::from_io(s)
    }

    /// Wrap an already connected stream (e.g. a TLS stream with custom options).
    pub fn from_io(io: impl Io + 'static) -> RawConn {
        RawConn {
            io: Box::new(io),
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.write_result(bytes).await.expect("write");
    }

    /// Like [`RawConn::write`], but a peer that already closed (it answered and hung up
    /// before reading everything) is not a test failure.
    pub async fn write_result(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
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
            if let Some(p) = find_bytes(&self.buf, b"\r\n\r\n") {
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
            self.read_chunked().await
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

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find_bytes(&self.buf, b"\r\n") {
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
                    if let Some(p) = find_bytes(&self.buf, b"\r\n") {
                        let empty = p == 0;
                        self.buf.drain(..p + 2);
                        if empty {
                            break;
                        }
                    } else if self.fill().await == 0 {
                        break;
                    }
                }
                return body;
            }
            while self.buf.len() < size + 2 {
                if self.fill().await == 0 {
                    panic!("EOF inside chunk");
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// True if the peer closes the connection (EOF or reset) with no further bytes, within
    /// [`TIMEOUT`].
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

    /// Read whatever arrives within `wait` (at most 64 KiB); `Ok(empty)` on EOF, an error of
    /// kind `TimedOut` if nothing came (see [`is_eof`]).
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

/// Send one raw HTTP/1.1 request on a fresh TLS connection and read the response.
pub async fn raw_tls_request(addr: SocketAddr, sni: Option<&str>, bytes: &[u8]) -> RawResp {
    let mut c = RawConn::tls(addr, sni).await;
    c.write(bytes).await;
    c.read_response().await
}
