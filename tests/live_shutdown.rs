//! Graceful shutdown (issue 3): SIGTERM stops accepting, lets in-flight requests finish within
//! `shutdown_grace`, closes idle connections, and exits 0 — also when the grace period had to
//! cut a request (`shutdown_forced`).
//!
//! The harness's `Gateway` does not hand out the child's exit status without sending another
//! signal, so this file runs the binary itself ([`Proc`]), reusing [`GatewaySetup`] and
//! [`Conf`] for the config and certificates.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};

// ---------------------------------------------------------------------------------------------
// the gateway process, with its exit status
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Out {
    lines: Vec<String>,
    eof: bool,
}

struct Proc {
    pid: u32,
    stdout: Arc<watch::Sender<Out>>,
    stderr: Arc<watch::Sender<Out>>,
    exit: watch::Receiver<Option<ExitStatus>>,
    https: SocketAddr,
    admin: SocketAddr,
    _setup: GatewaySetup,
}

fn collect(r: impl std::io::Read + Send + 'static) -> Arc<watch::Sender<Out>> {
    let tx = Arc::new(watch::channel(Out::default()).0);
    let t = tx.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let l = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    t.send_modify(|o| o.lines.push(l));
                }
            }
        }
        t.send_modify(|o| o.eof = true);
    });
    tx
}

impl Proc {
    /// Run the binary on `yaml` in `setup`'s directory; wait for the https and admin listeners.
    async fn spawn(setup: GatewaySetup, yaml: &str) -> Proc {
        let path = setup.write_config(yaml);
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .current_dir(setup.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("GATEWAY_CONFIG")
            .env("RUST_BACKTRACE", "0")
            .spawn()
            .expect("spawn twenty-gateway");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let pid = child.id();
        let (exit_tx, exit) = watch::channel(None);
        std::thread::spawn(move || {
            let st = child.wait().expect("wait for twenty-gateway");
            let _ = exit_tx.send(Some(st));
        });
        let mut p = Proc {
            pid,
            stdout,
            stderr,
            exit,
            https: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            _setup: setup,
        };
        for name in ["https", "admin"] {
            let ev = p
                .event(0, &format!("listening ({name})"), |m| {
                    m.get("event") == Some(&Value::from("listening"))
                        && m.get("listener") == Some(&Value::from(name))
                })
                .await;
            let addr = ev["addr"].as_str().unwrap().parse().unwrap();
            match name {
                "https" => p.https = addr,
                _ => p.admin = addr,
            }
        }
        p
    }

    fn lines(&self) -> usize {
        self.stdout.borrow().lines.len()
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.borrow().lines.join("\n"),
            self.stderr.borrow().lines.join("\n")
        )
    }

    fn json_lines(&self) -> Vec<Map<String, Value>> {
        self.stdout
            .borrow()
            .lines
            .iter()
            .filter_map(|l| parse_json_line(l))
            .collect()
    }

    /// First JSON line after `start` lines satisfying `pred` (waits up to [`TIMEOUT`]).
    async fn event(
        &self,
        start: usize,
        what: &str,
        pred: impl Fn(&Map<String, Value>) -> bool,
    ) -> Map<String, Value> {
        let find = |o: &Out| {
            o.lines
                .iter()
                .skip(start)
                .filter_map(|l| parse_json_line(l))
                .find(|m| pred(m))
        };
        let mut rx = self.stdout.subscribe();
        let r = tokio::time::timeout(TIMEOUT, rx.wait_for(|o| o.eof || find(o).is_some())).await;
        if let Ok(Ok(o)) = r
            && let Some(m) = find(&o)
        {
            return m;
        }
        panic!(
            "no log line for {what} within {TIMEOUT:?}\n{}",
            self.output()
        );
    }

    async fn event_named(&self, start: usize, name: &str) -> Map<String, Value> {
        self.event(start, name, |m| m.get("event") == Some(&Value::from(name)))
            .await
    }

    fn signal(&self, sig: &str) {
        assert!(
            self.exit.borrow().is_none(),
            "process already exited\n{}",
            self.output()
        );
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{sig} {}", self.pid);
    }

    fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Wait for the process to exit (up to `limit`), then for its output to be fully read.
    async fn wait_exit(&self, limit: Duration) -> ExitStatus {
        let mut rx = self.exit.clone();
        let st = match tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await {
            Ok(Ok(st)) => st.unwrap(),
            _ => panic!(
                "the process did not exit within {limit:?}\n{}",
                self.output()
            ),
        };
        for out in [&self.stdout, &self.stderr] {
            let mut rx = out.subscribe();
            let _ = tokio::time::timeout(TIMEOUT, rx.wait_for(|o| o.eof)).await;
        }
        st
    }

    async fn admin_get(&self, path: &str) -> Resp {
        Conn::plain(self.admin, "127.0.0.1")
            .await
            .get(path, &[])
            .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.borrow().is_none() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// a client connection whose closing the test can observe
// ---------------------------------------------------------------------------------------------

enum Client {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// An HTTP/1.1 or HTTP/2 TLS connection plus a receiver that fires when the connection ends
/// (the server closed it, or sent GOAWAY and finished).
async fn watched_conn(addr: SocketAddr, host: &str, h2: bool) -> (Client, oneshot::Receiver<()>) {
    let opts = if h2 {
        TlsOpts::h2(host)
    } else {
        TlsOpts::h1(host)
    };
    let (tls, _) = tls_connect(addr, &opts).await;
    let io = TokioIo::new(tls);
    let (done_tx, done) = oneshot::channel();
    let send = if h2 {
        let (s, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
            let _ = done_tx.send(());
        });
        Client::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
            let _ = done_tx.send(());
        });
        Client::H1(s)
    };
    (send, done)
}

async fn watched_get(s: &mut Client, host: &str, path: &str) -> (u16, Bytes) {
    let auth = bearer(TOKEN_ACME);
    let resp = match s {
        Client::H1(s) => {
            let req = Request::get(path)
                .header("host", host)
                .header("authorization", &auth)
                .body(empty())
                .unwrap();
            within("h1 response", s.send_request(req)).await.unwrap()
        }
        Client::H2(s) => {
            let req = Request::get(format!("https://{host}{path}"))
                .version(http::Version::HTTP_2)
                .header("authorization", &auth)
                .body(empty())
                .unwrap();
            within("h2 response", s.send_request(req)).await.unwrap()
        }
    };
    let status = resp.status().as_u16();
    let body = within("body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn conf(up: &Upstream, grace: &str) -> String {
    Conf::one(up)
        .with_admin()
        .limit(&format!("shutdown_grace: {grace}"))
        .render()
}

/// Send GET `path` with the acme key on `c` in a task; the task yields the full response.
fn in_flight(mut c: Conn, path: &'static str, id: String) -> tokio::task::JoinHandle<Resp> {
    tokio::spawn(async move {
        let auth = bearer(TOKEN_ACME);
        c.get(path, &[("authorization", &auth), ("x-request-id", &id)])
            .await
    })
}

fn is_refused(r: &std::io::Result<tokio::net::TcpStream>) -> bool {
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let up = spawn_upstream("core").await;
    let gw = Proc::spawn(GatewaySetup::new(), &conf(&up, "10s")).await;

    // Two requests in flight: HTTP/1.1 waiting for the response head (`_hang`), HTTP/2 with
    // the head and half the body sent (`_slow`).
    let (id1, id2) = (rid(), rid());
    let hang = in_flight(
        Conn::h1(gw.https, "acme.gw.test").await,
        "/rest/_hang",
        id1.clone(),
    );
    let slow = in_flight(
        Conn::h2(gw.https, "acme.gw.test").await,
        "/rest/_slow",
        id2.clone(),
    );
    up.request_with_id(&id1).await;
    up.request_with_id(&id2).await;

    let start = gw.lines();
    gw.signal("TERM");
    let ev = gw.event_named(start, "shutdown_started").await;
    assert!(
        ev["open_connections"].as_u64().is_none_or(|n| n >= 2),
        "{ev:?}"
    );

    // no longer accepting
    let r = tokio::net::TcpStream::connect(gw.https).await;
    assert!(
        is_refused(&r),
        "a new connection during the drain must be refused, got {r:?}"
    );
    // the admin listener still answers while draining; not ready any more
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.status, 503);
    assert!(
        gw.exited().is_none(),
        "exited with requests in flight\n{}",
        gw.output()
    );

    up.gates().hang.add_permits(1);
    up.gates().slow.add_permits(1);
    let r1 = within("the _hang request", hang).await.unwrap();
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert_eq!(r1.text(), "late", "full body");
    let r2 = within("the _slow request", slow).await.unwrap();
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(r2.text(), "first-part;second-part", "full body");

    let st = gw.wait_exit(TIMEOUT).await;
    assert_eq!(st.code(), Some(0), "exit status {st:?}\n{}", gw.output());
    let lines = gw.json_lines();
    let has = |e: &str| {
        lines
            .iter()
            .any(|m| m.get("event") == Some(&Value::from(e)))
    };
    assert!(has("shutdown_complete"), "{}", gw.output());
    assert!(!has("shutdown_forced"), "{}", gw.output());
}

/// SPEC: one access line per request. Requests that complete during the drain must not lose
/// theirs when the process exits right after: the lines are written by a separate thread, and
/// an HTTP/1.1 connection closes (ending the drain) right after its last response, so the
/// window between "line queued" and "process gone" is short. Many connections finishing at
/// once make it likely to be hit.
#[tokio::test]
async fn requests_drained_at_shutdown_keep_their_access_lines() {
    const N: usize = 30;
    let up = spawn_upstream("core").await;
    let gw = Proc::spawn(GatewaySetup::new(), &conf(&up, "10s")).await;
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..N {
        let id = rid();
        tasks.push(in_flight(
            Conn::h1(gw.https, "acme.gw.test").await,
            "/rest/_hang",
            id.clone(),
        ));
        ids.push(id);
    }
    up.wait_for(&format!("{N} requests"), |v| v.len() >= N)
        .await;

    let start = gw.lines();
    gw.signal("TERM");
    gw.event_named(start, "shutdown_started").await;
    up.gates().hang.add_permits(N);
    for t in tasks {
        let r = within("a drained request", t).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "late");
    }
    let st = gw.wait_exit(TIMEOUT).await;
    assert_eq!(st.code(), Some(0), "exit status {st:?}\n{}", gw.output());

    let lines = gw.json_lines();
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| {
            !lines.iter().any(|m| {
                m.get("event") == Some(&Value::from("request"))
                    && m.get("request_id") == Some(&Value::from(id.as_str()))
                    && m["status"] == 200
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {N} requests answered 200 during the drain have no access line after exit \
         (queued for the access-log thread, lost when the process exited): {missing:?}",
        missing.len()
    );
}

#[tokio::test]
async fn sigterm_closes_idle_keepalive_and_h2_connections_while_draining() {
    let up = spawn_upstream("core").await;
    let gw = Proc::spawn(GatewaySetup::new(), &conf(&up, "10s")).await;

    // idle connections that have served a request each
    let (mut h1, h1_closed) = watched_conn(gw.https, "acme.gw.test", false).await;
    let (mut h2, h2_closed) = watched_conn(gw.https, "acme.gw.test", true).await;
    assert_eq!(
        watched_get(&mut h1, "acme.gw.test", "/rest/people").await.0,
        200
    );
    assert_eq!(
        watched_get(&mut h2, "acme.gw.test", "/rest/people").await.0,
        200
    );
    // one request in flight keeps the drain (and the process) going
    let id = rid();
    let hang = in_flight(
        Conn::h1(gw.https, "acme.gw.test").await,
        "/rest/_hang",
        id.clone(),
    );
    up.request_with_id(&id).await;

    let start = gw.lines();
    gw.signal("TERM");
    gw.event_named(start, "shutdown_started").await;
    within("idle HTTP/1.1 keep-alive connection closed", h1_closed)
        .await
        .ok();
    within("idle HTTP/2 connection closed (GOAWAY)", h2_closed)
        .await
        .ok();
    assert!(
        gw.exited().is_none(),
        "idle connections must close because of the drain, not because the process exited"
    );
    assert!(
        !hang.is_finished(),
        "the in-flight request is still running"
    );

    up.gates().hang.add_permits(1);
    let r = within("the _hang request", hang).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "late");
    let st = gw.wait_exit(TIMEOUT).await;
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", gw.output());
}

#[tokio::test]
async fn sigterm_with_a_stuck_request_is_forced_after_the_grace_and_exits_0() {
    let up = spawn_upstream("core").await;
    let gw = Proc::spawn(GatewaySetup::new(), &conf(&up, "300ms")).await;
    let id = rid();
    let mut c = Conn::h1(gw.https, "acme.gw.test").await;
    let stuck = tokio::spawn(async move {
        let auth = bearer(TOKEN_ACME);
        let req = c.build(
            http::Method::GET,
            "/rest/_hang",
            &[("authorization", &auth), ("x-request-id", &id)],
            empty(),
        );
        let r = c.send_result(req).await;
        r.map(|resp| resp.status().as_u16())
    });
    up.wait_for("the stuck request", |v| {
        v.iter().any(|r| r.path() == "/rest/_hang")
    })
    .await;

    let start = gw.lines();
    let t0 = Instant::now();
    gw.signal("TERM");
    gw.event_named(start, "shutdown_started").await;
    let forced = gw.event_named(start, "shutdown_forced").await;
    assert_eq!(
        forced["level"], "WARN",
        "forced shutdown is a warning: {forced:?}"
    );
    let st = gw.wait_exit(TIMEOUT).await;
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "exit status {st:?}\n{}", gw.output());
    assert!(
        took >= Duration::from_millis(300),
        "exited after {took:?}, before shutdown_grace (300ms)"
    );
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with shutdown_grace 300ms"
    );
    // the cut request did not get a 200
    let r = within("the stuck request to end", stuck).await.unwrap();
    assert!(
        !matches!(r, Ok(200)),
        "a request cut by the grace period cannot have succeeded: {r:?}"
    );
}
