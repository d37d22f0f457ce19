//! WebSocket upgrades through the gateway (HTTP/1.1, TLS and `listen.http`).
//!
//! The stand-in upstream is a small threaded HTTP/1.1 server that speaks WebSocket (the
//! protocol layer is `tungstenite`, re-exported by `tokio-tungstenite`) on `…/ws`, refuses the
//! upgrade on `…/ws-403` / `…/ws-400`, ignores it on `…/ws-200`, and — like a real server —
//! keeps a connection alive after a refusal, recording every request head it parses. So if the
//! gateway tunnelled before the upstream's 101, bytes the client sends next would show up here
//! as requests that never passed the gateway's checks.
//!
//! The WebSocket clients are synchronous (`tungstenite` over `std::net` + `rustls`), run on
//! the blocking pool.

pub mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::*;
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest, handshake::derive_accept_key, protocol::Role,
};

// ---------------------------------------------------------------------------------------------
// stand-in upstream
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct WsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl WsUpstream {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }
}

fn spawn_ws_upstream() -> WsUpstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let seen = s2.clone();
            std::thread::spawn(move || serve_upstream(s, seen));
        }
    });
    WsUpstream { addr, seen }
}

fn serve_upstream(mut s: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    loop {
        let end = loop {
            if let Some(p) = find_bytes(&buf, b"\r\n\r\n") {
                break p;
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let rl: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let req = Seen {
            method: rl.first().unwrap_or(&"").to_string(),
            path: rl.get(1).unwrap_or(&"").to_string(),
            headers,
        };
        // discard a Content-Length body (these tests send none)
        if let Some(n) = req
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while buf.len() < n {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                }
            }
            buf.drain(..n);
        }
        seen.lock().unwrap().push(req.clone());
        let last = req.path.rsplit('/').next().unwrap_or("").to_string();
        let plain = |status: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        match last.as_str() {
            "ws" => {
                let key = req.header("sec-websocket-key").unwrap_or("");
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                if s.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                let mut ws = tungstenite::WebSocket::from_partially_read(
                    s,
                    std::mem::take(&mut buf),
                    Role::Server,
                    None,
                );
                if ws.send(Message::text("hello from upstream")).is_err() {
                    return;
                }
                loop {
                    match ws.read() {
                        Ok(Message::Text(t)) => {
                            if ws
                                .send(Message::text(format!("echo:{}", t.as_str())))
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(Message::Binary(b)) => {
                            let mut v = b.to_vec();
                            v.reverse();
                            if ws.send(Message::binary(v)).is_err() {
                                return;
                            }
                        }
                        // the Close reply is queued by `read`; flush it, then read to the end
                        Ok(Message::Close(_)) => {
                            let _ = ws.flush();
                        }
                        Err(_) => return,
                        Ok(_) => {}
                    }
                }
            }
            "ws-403" => {
                let _ = s.write_all(plain("403 Forbidden", "forbidden by upstream").as_bytes());
            }
            "ws-400" => {
                let _ = s.write_all(plain("400 Bad Request", "no websocket here").as_bytes());
            }
            _ => {
                let _ = s.write_all(plain("200 OK", "plain answer").as_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// synchronous WebSocket client through the gateway
// ---------------------------------------------------------------------------------------------

enum Sock {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Plain(s) => s.read(b),
            Sock::Tls(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Plain(s) => s.write(b),
            Sock::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sock::Plain(s) => s.flush(),
            Sock::Tls(s) => s.flush(),
        }
    }
}

fn sock(gw_addr: SocketAddr, via: Via) -> Sock {
    let tcp = TcpStream::connect(gw_addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    match via {
        Via::Plain => Sock::Plain(tcp),
        Via::Tls => {
            let cfg = TlsOpts::h1("acme.gw.test").client_config();
            let name = rustls::pki_types::ServerName::try_from("acme.gw.test").unwrap();
            let conn = rustls::ClientConnection::new(cfg, name).unwrap();
            Sock::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
        }
    }
}

type Ws = tungstenite::WebSocket<Sock>;
type WsResult = Result<(Ws, tungstenite::handshake::client::Response), Box<tungstenite::Error>>;

/// Open a WebSocket to `path` through the gateway (blocking).
fn ws_connect(gw_addr: SocketAddr, via: Via, path: &str, authz: Option<&str>) -> WsResult {
    let scheme = if via == Via::Tls { "wss" } else { "ws" };
    let mut req = format!("{scheme}://acme.gw.test{path}")
        .into_client_request()
        .unwrap();
    if let Some(a) = authz {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    tungstenite::client::client(req, sock(gw_addr, via)).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => Box::new(e),
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within("blocking WebSocket client", tokio::task::spawn_blocking(f))
        .await
        .expect("blocking task")
}

struct Fx {
    up: WsUpstream,
    gw: Gateway,
}

async fn fixture() -> Fx {
    let up = spawn_ws_upstream();
    let gw = Conf::new(&up.url(), &up.url()).with_http().spawn().await;
    Fx { up, gw }
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

/// Messages flow both ways (text and binary, small and 256 KiB), the upstream saw the
/// authenticated upgrade with the gateway's headers, and the close handshake completes.
#[tokio::test]
async fn websocket_messages_echo_both_ways_through_the_gateway() {
    let fx = fixture().await;
    for via in VIAS {
        let addr = fx.gw.addr(via);
        let authz = bearer(TOKEN_ACME);
        blocking(move || {
            let (mut ws, resp) =
                ws_connect(addr, via, "/rest/live/ws", Some(&authz)).expect("upgrade");
            assert_eq!(resp.status(), 101, "[{via:?}]");
            assert!(
                resp.headers().get("x-request-id").is_some(),
                "[{via:?}] the 101 carries X-Request-Id"
            );
            // upstream → client without any client message first
            assert_eq!(ws.read().unwrap(), Message::text("hello from upstream"));
            for i in 0..20 {
                ws.send(Message::text(format!("m{i}"))).unwrap();
                assert_eq!(ws.read().unwrap(), Message::text(format!("echo:m{i}")));
            }
            let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
            ws.send(Message::binary(big.clone())).unwrap();
            let mut rev = big;
            rev.reverse();
            assert_eq!(ws.read().unwrap(), Message::binary(rev));
            ws.close(None).unwrap();
            // drain until the close completes
            loop {
                match ws.read() {
                    Ok(Message::Close(_)) => {}
                    Ok(m) => panic!("[{via:?}] unexpected message after close: {m:?}"),
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(e) => panic!("[{via:?}] close handshake: {e}"),
                }
            }
        })
        .await;
    }
    let seen = fx.up.seen();
    assert_eq!(
        seen.len(),
        2,
        "one upgrade request per connection: {seen:#?}"
    );
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(s.path, "/rest/live/ws");
        assert_eq!(s.header("upgrade"), Some("websocket"), "{s:?}");
        assert!(
            s.header("connection")
                .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
            "{s:?}"
        );
        assert!(s.header("sec-websocket-key").is_some(), "{s:?}");
        assert_eq!(s.header("x-gateway-tenant"), Some("acme"));
        assert_eq!(s.header("x-gateway-key-id"), Some("acme-ci"));
        assert_eq!(s.header("authorization"), Some(bearer(TOKEN_ACME).as_str()));
    }
}

/// No 101 from the upstream, no tunnel: its 403/400 (or a plain 200 that ignores the
/// upgrade) reaches the client as an ordinary response, and the bytes the client sends next
/// on that connection — even pipelined right behind the upgrade request — are parsed by the
/// gateway as HTTP (so a request without a key gets 401), never relayed raw to the upstream.
#[tokio::test]
async fn tunnel_starts_only_after_the_upstream_answers_101() {
    let fx = fixture().await;
    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: acme.gw.test\r\nAuthorization: Bearer {TOKEN_ACME}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    // a request that skips the gateway's checks if it were tunnelled: no credentials
    let sneak = "GET /rest/internal/admin HTTP/1.1\r\nHost: acme.gw.test\r\n\r\n";
    for via in VIAS {
        for (path, status, pipelined) in [
            ("/rest/a/ws-403", 403, false),
            ("/rest/a/ws-400", 400, false),
            ("/rest/a/ws-200", 200, false),
            ("/rest/b/ws-403", 403, true),
        ] {
            let mut c = fx.gw.raw(via).await;
            let mut bytes = upgrade(path);
            if pipelined {
                bytes.push_str(sneak);
            }
            c.write(bytes.as_bytes()).await;
            let r = c.read_response().await;
            assert_eq!(r.status, status, "[{via:?}] {path}: the upstream's answer");
            assert!(
                r.header("upgrade").is_none(),
                "[{via:?}] {path}: Upgrade header on a non-101"
            );
            let want_body = match status {
                403 => "forbidden by upstream",
                400 => "no websocket here",
                _ => "plain answer",
            };
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                want_body,
                "[{via:?}] {path}: the upstream's response is relayed as an ordinary response"
            );
            if !pipelined {
                c.write(sneak.as_bytes()).await;
            }
            // closing the connection after a refused upgrade would be fine too
            if let Some(r2) = c.try_read_response().await {
                assert_eq!(
                    r2.status, 401,
                    "[{via:?}] {path}: the next bytes are a new request for the gateway"
                );
                assert_eq!(r2.json()["error"], "UNAUTHENTICATED");
            }
        }
    }
    let paths = fx.up.paths();
    assert!(
        !paths.iter().any(|p| p.contains("internal")),
        "bytes after a refused upgrade reached the upstream: {paths:?}"
    );
    // the tungstenite client sees the refusal as an HTTP error, with the upstream's status
    let addr = fx.gw.https();
    let authz = bearer(TOKEN_ACME);
    let err = blocking(move || ws_connect(addr, Via::Tls, "/rest/c/ws-403", Some(&authz)).err())
        .await
        .expect("refused upgrade");
    match *err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        e => panic!("expected an HTTP 403, got {e}"),
    }
}

/// Authentication applies to the upgrade request like to any other: no key 401, unknown key
/// 401, another tenant's key 403 — over raw sockets and the tungstenite client — and nothing
/// reaches the upstream.
#[tokio::test]
async fn upgrade_requires_a_valid_key() {
    let fx = fixture().await;
    for via in VIAS {
        let addr = fx.gw.addr(via);
        for (authz, status) in [
            (None, 401),
            (Some("Bearer tgw_wrong".to_string()), 401),
            (Some(format!("Basic {TOKEN_ACME}")), 401),
            (Some(bearer(TOKEN_BETA)), 403),
        ] {
            let a2 = authz.clone();
            let err =
                blocking(move || ws_connect(addr, via, "/rest/live/ws", a2.as_deref()).err()).await;
            match err.map(|e| *e) {
                Some(tungstenite::Error::Http(resp)) => {
                    assert_eq!(resp.status(), status, "[{via:?}] {authz:?}");
                    let body: serde_json::Value =
                        serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null"))
                            .unwrap_or_default();
                    assert_eq!(body["statusCode"], status, "[{via:?}] JSON error {body}");
                }
                other => panic!("[{via:?}] {authz:?}: upgrade not refused: {other:?}"),
            }
        }
    }
    assert!(
        fx.up.seen().is_empty(),
        "refused upgrades reached the upstream: {:?}",
        fx.up.paths()
    );
}

/// The key is checked on every upgrade request, not per connection: on one keep-alive
/// connection an authenticated request does not let a following keyless upgrade through;
/// and after a reload revokes the key, a new upgrade with it is refused.
#[tokio::test]
async fn the_key_is_checked_per_upgrade_request() {
    let up = spawn_ws_upstream();
    let conf = Conf::new(&up.url(), &up.url());
    let gw = conf.spawn().await;
    let upgrade = |authz: &str| {
        format!(
            "GET /rest/k/ws HTTP/1.1\r\nHost: acme.gw.test\r\n{authz}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    c.write(
        format!(
            "GET /rest/k/plain HTTP/1.1\r\nHost: acme.gw.test\r\nAuthorization: Bearer {TOKEN_ACME}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.read_response().await.status, 200);
    c.write(upgrade("").as_bytes()).await;
    let r = c.read_response().await;
    assert_eq!(
        r.status, 401,
        "keyless upgrade after an authenticated request"
    );
    c.write(upgrade("Authorization: Bearer tgw_guess\r\n").as_bytes())
        .await;
    assert_eq!(c.read_response().await.status, 401);
    assert_eq!(up.paths(), ["/rest/k/plain"]);

    // a valid upgrade works...
    let addr = gw.https();
    let a = bearer(TOKEN_ACME);
    let a2 = a.clone();
    let mut ws = blocking(move || ws_connect(addr, Via::Tls, "/rest/k/ws", Some(&a2)).map(|x| x.0))
        .await
        .expect("upgrade with the valid key");
    // ...until the key is revoked by a reload: the next upgrade with it is refused
    let start = gw.stdout.line_count();
    gw.rewrite_config_in_place(
        &conf
            .clone()
            .keys(&format!(
                "keys:\n{}{}",
                key_yaml("acme-ci", "acme", TOKEN_ACME, "revoked: true"),
                key_yaml("beta-ci", "beta", TOKEN_BETA, "")
            ))
            .render(),
    );
    gw.signal("HUP");
    gw.wait_event_after(start, |e| e == "reload").await;
    let err = blocking(move || ws_connect(addr, Via::Tls, "/rest/k/ws", Some(&a)).err()).await;
    match err.map(|e| *e) {
        Some(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("upgrade with a revoked key: {other:?}"),
    }
    // (a tunnel opened before the revocation is one request that already passed its check;
    // SPEC does not ask for it to be cut — it keeps working)
    blocking(move || {
        assert_eq!(ws.read().unwrap(), Message::text("hello from upstream"));
        ws.send(Message::text("still")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("echo:still"));
    })
    .await;
}
