//! Graceful shutdown (issue 3): SIGTERM stops accepting, lets in-flight requests finish within
//! `shutdown_grace`, closes idle connections, and exits 0 — also when the grace period had to
//! cut a request (`shutdown_forced`).
//!

pub mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

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
    let gw = spawn_gateway(&conf(&up, "10s")).await;

    // Two requests in flight: HTTP/1.1 waiting for the response head (`_hang`), HTTP/2 with
    // the head and half the body sent (`_slow`).
    let (id1, id2) = (rid(), rid());
    let hang = in_flight(
        Conn::h1(gw.https(), "acme.gw.test").await,
        "/rest/_hang",
        id1.clone(),
    );
    let slow = in_flight(
        Conn::h2(gw.https(), "acme.gw.test").await,
        "/rest/_slow",
        id2.clone(),
    );
    up.request_with_id(&id1).await;
    up.request_with_id(&id2).await;

    let start = gw.stdout.line_count();
    gw.signal("TERM");
    let ev = gw
        .wait_event_after(start, |e| e == "shutdown_started")
        .await;
    assert!(
        ev["open_connections"].as_u64().is_none_or(|n| n >= 2),
        "{ev:?}"
    );

    // no longer accepting
    let r = tokio::net::TcpStream::connect(gw.https()).await;
    assert!(
        is_refused(&r),
        "a new connection during the drain must be refused, got {r:?}"
    );
    // the admin listener still answers while draining; not ready any more
    assert_eq!(gw.admin_conn().await.get("/healthz", &[]).await.status, 200);
    assert_eq!(gw.admin_conn().await.get("/readyz", &[]).await.status, 503);
    assert!(
        gw.exited().is_none(),
        "exited with requests in flight\n{}",
        gw.all_output()
    );

    up.gates().hang.add_permits(1);
    up.gates().slow.add_permits(1);
    let r1 = within("the _hang request", hang).await.unwrap();
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert_eq!(r1.text(), "late", "full body");
    let r2 = within("the _slow request", slow).await.unwrap();
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(r2.text(), "first-part;second-part", "full body");

    gw.wait_exit_0(TIMEOUT).await;
    let lines = gw.json_lines();
    let has = |e: &str| {
        lines
            .iter()
            .any(|m| m.get("event") == Some(&Value::from(e)))
    };
    assert!(has("shutdown_complete"), "{}", gw.all_output());
    assert!(!has("shutdown_forced"), "{}", gw.all_output());
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
    let gw = spawn_gateway(&conf(&up, "10s")).await;
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..N {
        let id = rid();
        tasks.push(in_flight(
            Conn::h1(gw.https(), "acme.gw.test").await,
            "/rest/_hang",
            id.clone(),
        ));
        ids.push(id);
    }
    up.wait_for(&format!("{N} requests"), |v| v.len() >= N)
        .await;

    let start = gw.stdout.line_count();
    gw.signal("TERM");
    gw.wait_event_after(start, |e| e == "shutdown_started")
        .await;
    up.gates().hang.add_permits(N);
    for t in tasks {
        let r = within("a drained request", t).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "late");
    }
    gw.wait_exit_0(TIMEOUT).await;

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
    let gw = spawn_gateway(&conf(&up, "10s")).await;

    // idle connections that have served a request each
    let a = acme_auth();
    let auth = [("authorization", a.as_str())];
    let mut h1 = gw.h1("acme.gw.test").await;
    let mut h2 = gw.h2("acme.gw.test").await;
    assert_eq!(h1.get("/rest/people", &auth).await.status, 200);
    assert_eq!(h2.get("/rest/people", &auth).await.status, 200);
    // one request in flight keeps the drain (and the process) going
    let id = rid();
    let hang = in_flight(
        Conn::h1(gw.https(), "acme.gw.test").await,
        "/rest/_hang",
        id.clone(),
    );
    up.request_with_id(&id).await;

    let start = gw.stdout.line_count();
    gw.signal("TERM");
    gw.wait_event_after(start, |e| e == "shutdown_started")
        .await;
    within("idle HTTP/1.1 keep-alive connection closed", h1.ended()).await;
    within("idle HTTP/2 connection closed (GOAWAY)", h2.ended()).await;
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
    gw.wait_exit_0(TIMEOUT).await;
}

#[tokio::test]
async fn sigterm_with_a_stuck_request_is_forced_after_the_grace_and_exits_0() {
    let up = spawn_upstream("core").await;
    let gw = spawn_gateway(&conf(&up, "300ms")).await;
    let id = rid();
    let mut c = Conn::h1(gw.https(), "acme.gw.test").await;
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

    let start = gw.stdout.line_count();
    let t0 = Instant::now();
    gw.signal("TERM");
    gw.wait_event_after(start, |e| e == "shutdown_started")
        .await;
    let forced = gw.wait_event_after(start, |e| e == "shutdown_forced").await;
    assert_eq!(
        forced["level"], "WARN",
        "forced shutdown is a warning: {forced:?}"
    );
    gw.wait_exit_0(TIMEOUT).await;
    let took = t0.elapsed();
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
