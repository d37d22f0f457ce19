//! Idle HTTP/1.1 keep-alive connections are parked: hyper hands them back 100 ms after their
//! last request (`gateway_parked_connections` counts them), they wait without request
//! buffers, and the next request on them is served by a fresh hyper connection — with no
//! byte lost, within `idle_timeout`, and closed at once on shutdown. Also: the protocol
//! choice on the plain listener, which the same connection code makes.

pub mod common;

use std::time::{Duration, Instant};

use common::*;

const PARKED: &str = "gateway_parked_connections";

/// GET `path` with acme's key and the last part of `path` as its request id.
fn get(path: &str) -> String {
    let id = path.trim_start_matches("/rest/");
    raw_get(path, &format!("X-Request-Id: {id}\r\n"))
}

#[tokio::test]
async fn idle_keep_alive_connections_park_and_serve_the_next_request() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_http().with_admin().spawn().await;
    assert_eq!(gw.wait_metric(PARKED, |v| v == 0.0).await, 0.0);
    let mut tls = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    let mut plain = RawConn::plain(gw.http()).await;
    for (i, c) in [&mut tls, &mut plain].into_iter().enumerate() {
        c.write(get(&format!("/rest/first-{i}")).as_bytes()).await;
        assert_eq!(c.read_response().await.status, 200);
    }
    // both park once idle
    gw.wait_metric(PARKED, |v| v == 2.0).await;
    for (i, c) in [&mut tls, &mut plain].into_iter().enumerate() {
        c.write(get(&format!("/rest/second-{i}")).as_bytes()).await;
        let r = c.read_response().await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let rec = up.request_with_id(&format!("second-{i}")).await;
        assert_eq!(rec.path(), format!("/rest/second-{i}"));
    }
    // woken: no longer parked, and they park again when idle again
    gw.wait_metric(PARKED, |v| v < 2.0).await;
    gw.wait_metric(PARKED, |v| v == 2.0).await;
    drop((tls, plain));
    gw.wait_metric(PARKED, |v| v == 0.0).await;
}

/// A client that pipelines a complete request and the start of the next one, then pauses past
/// the park point: the bytes hyper had already read are replayed into the next hyper
/// connection. Losing them would turn the second request into a 400.
#[tokio::test]
async fn bytes_read_before_parking_are_not_lost() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .with_admin()
        .limit("header_read_timeout: 10s")
        .spawn()
        .await;
    let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    let second = get("/rest/pipelined-second");
    let (start, rest) = second.split_at(20);
    c.write(format!("{}{start}", get("/rest/pipelined-first")).as_bytes())
        .await;
    assert_eq!(c.read_response().await.status, 200);
    // Past the park point (100 ms after the first response; the idle check runs at most
    // 200 ms later here): there is no event to wait for, the pause *is* the scenario.
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.write(rest.as_bytes()).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rec = up.request_with_id("pipelined-second").await;
    assert_eq!(rec.path(), "/rest/pipelined-second");
}

/// A parked connection is still bounded by `idle_timeout`, and shutdown closes it at once
/// (no wait for `shutdown_grace`).
#[tokio::test]
async fn parked_connections_close_at_idle_timeout_and_on_shutdown() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .with_admin()
        .limit("idle_timeout: 2s")
        .limit("header_read_timeout: 30s")
        .limit("shutdown_grace: 20s")
        .spawn()
        .await;
    let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    c.write(get("/rest/idle").as_bytes()).await;
    assert_eq!(c.read_response().await.status, 200);
    let t = Instant::now();
    gw.wait_metric(PARKED, |v| v == 1.0).await;
    assert!(
        c.closed().await,
        "parked connection not closed at idle_timeout"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before idle_timeout (2 s)",
        t.elapsed()
    );
    gw.wait_metric(PARKED, |v| v == 0.0).await;

    let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    c.write(get("/rest/before-shutdown").as_bytes()).await;
    assert_eq!(c.read_response().await.status, 200);
    gw.wait_metric(PARKED, |v| v == 1.0).await;
    let t = Instant::now();
    let status = gw.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} for a parked connection",
        t.elapsed()
    );
    assert!(c.closed().await, "parked connection still open after exit");
    assert!(
        !gw.all_output().contains("shutdown_forced"),
        "shutdown had to cut connections:\n{}",
        gw.all_output()
    );
}

/// On the plain listener the first bytes choose the protocol: the HTTP/2 preface means h2c
/// with prior knowledge, anything else HTTP/1.1 (over TLS, ALPN decides: tests/tls.rs).
#[tokio::test]
async fn plain_listener_chooses_the_protocol_by_the_preface() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_http().spawn().await;
    let a = bearer(TOKEN_ACME);
    let mut h2 = Conn::plain_h2(gw.http(), "acme.gw.test").await;
    let r = h2.get("/rest/h2c", &[("authorization", &a)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let mut h1 = Conn::plain(gw.http(), "acme.gw.test").await;
    let r = h1.get("/rest/h1-plain", &[("authorization", &a)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
}
