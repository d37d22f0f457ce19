//! Slow and greedy clients: slowloris (header bytes trickled), slow TLS handshakes, the
//! connection cap, and idle connections — each while other clients keep being served.
//!
//! Timing assertions use generous windows around the configured 1 s timeouts (the machine has
//! two cores shared with the test process); each test fails if the protection is missing,
//! because the hostile connection would then stay open for the whole observation window.

pub mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a connection that should be cut after 1 s may take at most.
const CUT_BY: Duration = Duration::from_secs(4);

/// Trickle `bytes` one byte per `every` until the peer closes (`started` hears of the first
/// byte); the time it took, or `None` if all bytes were sent and the connection was still open
/// `CUT_BY` after the start.
async fn trickle_until_closed(
    c: &mut RawConn,
    bytes: &[u8],
    every: Duration,
    started: mpsc::Sender<()>,
) -> Option<Duration> {
    let t = Instant::now();
    for (i, b) in bytes.iter().enumerate() {
        if c.write_result(&[*b]).await.is_err() {
            return Some(t.elapsed());
        }
        if i == 0 {
            let _ = started.send(()).await;
        }
        let res = c.read_some(every).await;
        // a response (e.g. 408) before the close is fine; keep going until EOF
        if is_eof(&res) {
            return Some(t.elapsed());
        }
        if t.elapsed() > CUT_BY {
            return None;
        }
    }
    None
}

/// Slowloris: a request head trickled one byte per 200 ms, with `header_read_timeout: 1s`.
/// The connection is closed about a second in (over TLS and over `listen.http`), and so is a
/// slowloris *second* request on a keep-alive connection, while a fresh client is served
/// meanwhile; nothing goes upstream. The three slow clients trickle at the same time.
#[tokio::test]
async fn slowloris_head_is_cut_after_header_read_timeout_while_others_are_served() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .with_http()
        .limit("header_read_timeout: 1s")
        .limit("idle_timeout: 30s")
        .spawn()
        .await;
    let head = raw_get(
        "/rest/slowloris",
        &format!("X-Pad: {}\r\n", "a".repeat(200)),
    );
    let (started_tx, mut started) = mpsc::channel(3);
    let mut tricklers = Vec::new();
    for via in ["tls", "plain", "keep-alive"] {
        let mut slow = match via {
            "plain" => RawConn::plain(gw.http()).await,
            _ => RawConn::tls(gw.https(), Some("acme.gw.test")).await,
        };
        if via == "keep-alive" {
            slow.write(raw_get("/rest/first", "").as_bytes()).await;
            assert_eq!(slow.read_response().await.status, 200);
        }
        let (head, started) = (head.clone(), started_tx.clone());
        let trickler = tokio::spawn(async move {
            let every = Duration::from_millis(200);
            trickle_until_closed(&mut slow, head.as_bytes(), every, started).await
        });
        tricklers.push((via, trickler));
    }
    for _ in 0..3 {
        within("the slow clients' first bytes", started.recv()).await;
    }
    let took = assert_served(&gw, &up, "during slowloris").await;
    assert!(
        took < Duration::from_secs(2),
        "during slowloris: the other client waited {took:?}"
    );
    for (via, trickler) in tricklers {
        let took = trickler.await.unwrap().unwrap_or_else(|| {
            panic!(
                "{via}: slowloris connection still open after {CUT_BY:?} (header_read_timeout 1s)"
            )
        });
        assert!(
            via == "keep-alive" || took >= Duration::from_millis(800),
            "{via}: closed after {took:?}, before header_read_timeout"
        );
    }
    assert!(
        up.requests().iter().all(|r| r.path() != "/rest/slowloris"),
        "a trickled head reached the upstream"
    );
}

/// Slow TLS handshake: TCP connect and send nothing, or half a ClientHello. Closed after
/// `header_read_timeout` (1 s), counted as a handshake timeout; TLS clients served meanwhile.
#[tokio::test]
async fn slow_tls_handshake_is_cut_after_header_read_timeout() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .with_admin()
        .limit("header_read_timeout: 1s")
        .limit("idle_timeout: 30s")
        .spawn()
        .await;
    let before = metric(
        &gw.metrics_text().await,
        "gateway_tls_handshakes_total{result=\"timeout\"}",
    );
    let silent = TcpStream::connect(gw.https()).await.unwrap();
    let mut partial = TcpStream::connect(gw.https()).await.unwrap();
    // a TLS record header announcing 512 bytes of handshake, then 10 of them
    partial
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0,
        ])
        .await
        .unwrap();
    let t = Instant::now();
    let mut silent = RawConn::from_io(silent);
    let mut partial = RawConn::from_io(partial);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = assert_served(&gw, &up, "during slow handshakes").await;
    assert!(
        took < Duration::from_secs(2),
        "during slow handshakes: the other client waited {took:?}"
    );
    for (what, c) in [
        ("silent", &mut silent),
        ("half a ClientHello", &mut partial),
    ] {
        let res = c.read_some(CUT_BY).await;
        assert!(
            is_eof(&res),
            "{what}: connection not closed within {CUT_BY:?} (got {res:?})"
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(800),
            "{what}: closed after {took:?}, before header_read_timeout"
        );
    }
    let after = metric(
        &gw.metrics_text().await,
        "gateway_tls_handshakes_total{result=\"timeout\"}",
    );
    assert!(
        after >= before + 2.0,
        "handshake timeouts counted: {before} → {after}"
    );
}

/// `max_connections: 3`: hold three connections; a fourth is closed at once (TLS and plain),
/// the three keep working, and once one closes a new connection is accepted.
#[tokio::test]
async fn max_connections_refuses_the_excess_and_keeps_serving_the_rest() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .with_http()
        .with_admin()
        .limit("max_connections: 3")
        .spawn()
        .await;
    // The admin listener is separate; read the baseline before filling the cap.
    let refused0 = metric(
        &gw.metrics_text().await,
        "gateway_connections_refused_total",
    );
    let a = bearer(TOKEN_ACME);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = gw.h1("acme.gw.test").await;
        assert_eq!(
            c.get("/rest/held", &[("authorization", &a)]).await.status,
            200
        );
        held.push(c);
    }
    // the 4th: TLS handshake fails (closed at accept) — quickly, not after a timeout
    let t = Instant::now();
    let fourth = tls_connect_result(gw.https(), &TlsOpts::h1("acme.gw.test")).await;
    assert!(fourth.is_err(), "a 4th TLS connection was accepted");
    assert!(t.elapsed() < Duration::from_secs(2), "refused at once");
    // plain listener shares the cap
    let mut plain = RawConn::plain(gw.http()).await;
    assert!(
        is_eof(&plain.read_some(Duration::from_secs(2)).await),
        "a 4th plain connection was not closed at once"
    );
    // the held ones still work
    for c in held.iter_mut() {
        assert_eq!(
            c.get("/rest/held", &[("authorization", &a)]).await.status,
            200
        );
    }
    // free one; a new connection gets in (the gateway notices the close asynchronously)
    held.pop();
    let t = Instant::now();
    loop {
        if let Ok(s) = tls_connect_result(gw.https(), &TlsOpts::h1("acme.gw.test")).await {
            let mut raw = RawConn::from_io(s);
            raw.write(raw_get("/rest/new", "").as_bytes()).await;
            if let Some(r) = raw.try_read_response().await {
                assert_eq!(r.status, 200);
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no new connection accepted after one of the three closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused1 = metric(
        &gw.metrics_text().await,
        "gateway_connections_refused_total",
    );
    assert!(
        refused1 >= refused0 + 2.0,
        "refusals counted: {refused0} → {refused1}"
    );
}

/// `idle_timeout: 1s`: an idle HTTP/1.1 keep-alive connection (after a request, and one that
/// never sent any) is closed; `header_read_timeout` is 30 s so it is not what closes them.
#[tokio::test]
async fn idle_h1_connections_are_closed_after_idle_timeout() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .with_http()
        .limit("idle_timeout: 1s")
        .limit("header_read_timeout: 30s")
        .spawn()
        .await;
    let mut after_request = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    after_request
        .write(raw_get("/rest/idle", "").as_bytes())
        .await;
    assert_eq!(after_request.read_response().await.status, 200);
    let t = Instant::now();
    let mut never = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    let mut plain = RawConn::plain(gw.http()).await;
    for (what, c) in [
        ("idle after a request (TLS)", &mut after_request),
        ("never sent a request (TLS)", &mut never),
        ("never sent a request (plain)", &mut plain),
    ] {
        let res = c.read_some(CUT_BY).await;
        assert!(
            is_eof(&res),
            "{what}: still open {:?} later ({res:?})",
            t.elapsed()
        );
        assert!(
            t.elapsed() >= Duration::from_millis(700),
            "{what}: closed after {:?}, before idle_timeout",
            t.elapsed()
        );
    }
}

/// A request still in flight keeps its connection past `idle_timeout: 1s`: a response whose
/// body pauses (HTTP/1.1) and one whose head is late (HTTP/2) complete after a connection opened
/// later than both was closed as idle, and the connections serve another request afterwards.
/// That the idle clock never cuts a request however long it runs, on a clock:
/// `conn::tests::a_request_in_flight_is_never_cut_and_idle_counts_from_its_end`.
#[tokio::test]
async fn in_flight_requests_are_not_cut_by_idle_timeout() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .limit("idle_timeout: 1s")
        .limit("header_read_timeout: 30s")
        .spawn()
        .await;
    let a = bearer(TOKEN_ACME);
    // HTTP/1.1: head + first part, then a 2.5 s pause before the rest
    let mut c = gw.h1("acme.gw.test").await;
    let req = c.build(
        http::Method::GET,
        "/rest/x/_slow",
        &[("authorization", &a)],
        empty(),
    );
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(
        next_data(&mut body).await.as_deref(),
        Some(&b"first-part;"[..])
    );
    // h2: a response head that comes late
    let mut c2 = gw.h2("acme.gw.test").await;
    let req2 = c2.build(
        http::Method::GET,
        "/rest/y/_hang",
        &[("authorization", &a)],
        empty(),
    );
    let pending = tokio::spawn(async move {
        let r = c2.send(req2).await;
        let r = collect(r).await;
        (c2, r)
    });
    up.wait_for("the h2 request", |v| {
        v.iter().any(|r| r.path() == "/rest/y/_hang")
    })
    .await;
    // A connection opened now, idle from the start, is closed at idle_timeout: by then both
    // requests have been in flight longer than that.
    let mut probe = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    let res = probe.read_some(CUT_BY).await;
    assert!(is_eof(&res), "the idle probe is still open: {res:?}");
    up.gates().slow.add_permits(1);
    up.gates().hang.add_permits(1);
    assert_eq!(
        next_data(&mut body).await.as_deref(),
        Some(&b"second-part"[..]),
        "HTTP/1.1 body cut while in flight"
    );
    assert!(next_data(&mut body).await.is_none());
    let (mut c2, r2) = pending.await.unwrap();
    assert_eq!(r2.status, 200, "HTTP/2 request cut while in flight");
    assert_eq!(r2.text(), "late");
    // both connections still usable right after
    assert_eq!(
        c.get("/rest/again", &[("authorization", &a)]).await.status,
        200
    );
    assert_eq!(
        c2.get("/rest/again", &[("authorization", &a)]).await.status,
        200
    );
}
