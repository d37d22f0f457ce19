//! Several servers per upstream through the real gateway: spread, the slow
//! server gets less, failover of what was never sent (and never of what
//! was), health checks driving traffic away and back, all servers down,
//! HTTPS servers with a CA, state kept across a reload.

pub mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// `{ servers: [...] }` plus `extra` fields, as the YAML value of an upstream.
fn pool(servers: &[&str], extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!("{{ servers: [{}]{extra} }}", servers.join(", "))
}

/// Checks every 50 ms, one failure takes a server out, one pass brings it back.
const FAST_CHECKS: &str = "health_check: { path: /_health, interval: 50ms, timeout: 2s, unhealthy_after: 1, healthy_after: 1 }";

/// `GET /rest/people` as acme; the response and its request id.
async fn get(c: &mut Conn) -> (Resp, String) {
    c.get_with_id("/rest/people", &[("authorization", &acme_auth())])
        .await
}

/// Which stand-in answered (its `X-Upstream`).
fn answered_by(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-upstream").unwrap_or_default()
}

/// Wait for an `event` line about `server` printed after `start` lines.
async fn server_event(
    gw: &Gateway,
    start: usize,
    event: &str,
    server: &str,
) -> serde_json::Map<String, Value> {
    let line = gw
        .stdout
        .wait_after(start, |l| {
            parse_json_line(l).is_some_and(|m| {
                m.get("event").and_then(Value::as_str) == Some(event)
                    && m.get("server").and_then(Value::as_str) == Some(server)
            })
        })
        .await;
    match line {
        Some(l) => parse_json_line(&l).unwrap(),
        None => panic!("no {event} for {server}; output:\n{}", gw.all_output()),
    }
}

fn series(name: &str, upstream: &str, server: &str) -> String {
    format!("{name}{{upstream=\"{upstream}\",server=\"{server}\"}} ")
}

#[tokio::test]
async fn requests_spread_over_the_servers() {
    let a = spawn_upstream("a").await;
    let b = spawn_upstream("b").await;
    let core = pool(&[&a.url(), &b.url()], "");
    let gw = Conf::new(&core, &a.url()).with_admin().spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        *count.entry(answered_by(&get(&mut c).await.0)).or_default() += 1;
    }
    assert!(count["a"] >= 10 && count["b"] >= 10, "{count:?}");
    // Counted per server, named by its URL as written.
    let text = gw.metrics_text().await;
    let total: f64 = [a.url(), b.url()]
        .iter()
        .map(|u| metric(&text, &series("gateway_upstream_requests_total", "core", u)))
        .sum();
    assert_eq!(total, 60.0, "{text}");
    let healthy = series("gateway_upstream_server_healthy", "core", &a.url());
    assert_eq!(metric(&text, &healthy), 1.0, "{text}");
}

#[tokio::test]
async fn a_slow_server_gets_less() {
    // Both answer `_hang` (with no `X-Upstream`) only when the test lets
    // them: the fast one at once, the slow one at the end.
    let fast = spawn_upstream("fast").await;
    let slow = spawn_upstream("slow").await;
    fast.gates().hang.add_permits(1000);
    let core = pool(&[&fast.url(), &slow.url()], "");
    let gw = Conf::new(&core, &fast.url()).spawn().await;
    let mut held = Vec::new();
    let mut to_fast = 0;
    for _ in 0..20 {
        let mut c = gw.h1("acme.gw.test").await;
        let id = rid();
        let headers = [("authorization", acme_auth()), ("x-request-id", id.clone())];
        let mut task = tokio::spawn(async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.get("/rest/_hang", &h).await
        });
        tokio::select! {
            r = &mut task => {
                assert_eq!(r.unwrap().status, 200);
                fast.request_with_id(&id).await;
                to_fast += 1;
            }
            _ = slow.request_with_id(&id) => held.push(task),
        }
    }
    // Only while the slow one had no more in flight than the fast one
    // (a tie) could it be chosen.
    assert!(held.len() <= 5, "slow got {} of 20", held.len());
    assert_eq!(to_fast + held.len(), 20);
    slow.gates().hang.add_permits(1000);
    for task in held {
        assert_eq!(task.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn a_closed_port_costs_no_request() {
    let up = spawn_upstream("up").await;
    let dead = closed_port_url().await;
    let core = pool(&[&dead, &up.url()], "");
    let gw = Conf::new(&core, &up.url()).with_admin().spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    for _ in 0..20 {
        assert_eq!(answered_by(&get(&mut c).await.0), "up");
    }
    // Three refusals in a row took it out (it is chosen half the time until
    // then): an event and the gauge say so.
    let down = server_event(&gw, 0, "upstream_server_down", &dead).await;
    assert_eq!(down["upstream"], "core");
    assert_eq!(down["level"], "WARN");
    let healthy = series("gateway_upstream_server_healthy", "core", &dead);
    gw.wait_metric(&healthy, |v| v == 0.0).await;
}

/// A server that reads a request head, notes its `X-Request-Id`, and closes
/// the connection without a word.
struct Dropper {
    url: String,
    seen: watch::Receiver<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn spawn_dropper() -> Dropper {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, seen) = watch::channel(Vec::new());
    let tx = Arc::new(tx);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let id = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-request-id:"))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default();
                tx.send_modify(|v| v.push(id));
            });
        }
    });
    Dropper { url, seen, task }
}

#[tokio::test]
async fn a_request_that_was_sent_is_never_replayed() {
    let up = spawn_upstream("up").await;
    let dropper = spawn_dropper().await;
    let core = pool(&[&dropper.url, &up.url()], "");
    let gw = Conf::new(&core, &up.url()).spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let mut dropped = None;
    for _ in 0..60 {
        let (r, id) = get(&mut c).await;
        if dropper.seen.borrow().contains(&id) {
            dropped = Some((r, id));
            break;
        }
        assert_eq!(answered_by(&r), "up");
    }
    let (r, id) = dropped.expect("no request went to the dropping server in 60");
    assert_rest_error(&r, 502, "BAD_GATEWAY");
    assert_eq!(gw.outcome(&id).await, "upstream_error");
    // Not sent again, to either server.
    assert!(
        !up.requests()
            .iter()
            .any(|q| q.header("x-request-id") == Some(id.as_str()))
    );
    assert_eq!(
        dropper.seen.borrow().iter().filter(|s| **s == id).count(),
        1
    );
}

#[tokio::test]
async fn health_checks_move_traffic_away_and_back() {
    let a = spawn_upstream("a").await;
    let b = spawn_upstream("b").await;
    let core = pool(&[&a.url(), &b.url()], FAST_CHECKS);
    let gw = Conf::new(&core, &a.url()).with_admin().spawn().await;
    a.wait_health_checks(1).await;
    b.wait_health_checks(1).await;
    let mut c = gw.h1("acme.gw.test").await;
    let mut sent = 0;

    let start = gw.stdout.line_count();
    a.set_health(503);
    let down = server_event(&gw, start, "upstream_server_down", &a.url()).await;
    assert!(
        down["reason"].as_str().unwrap_or_default().contains("503"),
        "{down:?}"
    );
    for _ in 0..20 {
        assert_eq!(answered_by(&get(&mut c).await.0), "b");
        sent += 1;
    }

    let start = gw.stdout.line_count();
    a.set_health(200);
    server_event(&gw, start, "upstream_server_up", &a.url()).await;
    let back = async {
        loop {
            sent += 1;
            if answered_by(&get(&mut c).await.0) == "a" {
                break;
            }
        }
    };
    within("a request on the recovered server", back).await;
    // Checks are not requests: only what was sent is counted.
    a.wait_health_checks(10).await;
    let text = gw.metrics_text().await;
    let counted: f64 = [a.url(), b.url()]
        .iter()
        .map(|u| metric(&text, &series("gateway_upstream_requests_total", "core", u)))
        .sum();
    assert_eq!(counted, f64::from(sent), "{text}");
}

#[tokio::test]
async fn with_every_server_down_requests_are_still_served() {
    let a = spawn_upstream("a").await;
    let b = spawn_upstream("b").await;
    a.set_health(503);
    b.set_health(503);
    let core = pool(&[&a.url(), &b.url()], FAST_CHECKS);
    let gw = Conf::new(&core, &a.url()).spawn().await;
    server_event(&gw, 0, "upstream_server_down", &a.url()).await;
    server_event(&gw, 0, "upstream_server_down", &b.url()).await;
    let mut c = gw.h1("acme.gw.test").await;
    for _ in 0..10 {
        let by = answered_by(&get(&mut c).await.0);
        assert!(by == "a" || by == "b");
    }
}

#[tokio::test]
async fn https_servers_are_verified_against_the_ca() {
    let setup = GatewaySetup::new();
    let cert = setup.cert("upstream", &["localhost"]);
    setup.file("certs/upstream-ca.pem", ca().pem());
    let up = spawn_tls_upstream("tls", &cert).await;
    let url = format!("https://localhost:{}", up.addr.port());
    let core = pool(&[&url], "ca: certs/upstream-ca.pem");
    let gw = Conf::new(&core, &core).spawn_in(setup).await;
    let mut c = gw.h1("acme.gw.test").await;
    let (r, id) = get(&mut c).await;
    assert_eq!(answered_by(&r), "tls");
    // The Host header is still the client's.
    assert_eq!(
        up.request_with_id(&id).await.header("host"),
        Some("acme.gw.test")
    );

    // Without the CA (the system roots) the server is not trusted: 502,
    // and nothing reached it in plaintext either.
    let gw = Conf::new(&url, &url).spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let (r, id) = get(&mut c).await;
    assert_rest_error(&r, 502, "BAD_GATEWAY");
    let line = gw.access_line(&id).await;
    assert_eq!(line["outcome"], "upstream_error");
    assert!(
        up.requests()
            .iter()
            .all(|q| q.header("x-request-id") != Some(id.as_str()))
    );
}

#[tokio::test]
async fn a_reload_keeps_server_state() {
    let up = spawn_upstream("up").await;
    let dead = closed_port_url().await;
    let conf = Conf::new(&pool(&[&dead, &up.url()], ""), &up.url()).with_admin();
    let gw = conf.spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let healthy = series("gateway_upstream_server_healthy", "core", &dead);
    let requests = series("gateway_upstream_requests_total", "core", &up.url());
    let taken_out = async {
        while metric(&gw.metrics_text().await, &healthy) != 0.0 {
            assert_eq!(answered_by(&get(&mut c).await.0), "up");
        }
    };
    within("the closed port taken out", taken_out).await;
    let before = metric(&gw.metrics_text().await, &requests);
    assert!(before >= 1.0);

    // Same servers, another tenant: the closed port stays out, the count
    // goes on.
    let start = gw.stdout.line_count();
    let more = conf.clone().tenants(&format!(
        "{DEFAULT_TENANTS}  - name: gamma\n    subdomain: gamma\n"
    ));
    gw.rewrite_config_in_place(&more.render());
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = gw.metrics_text().await;
    assert_eq!(metric(&text, &healthy), 0.0, "{text}");
    assert!(metric(&text, &requests) >= before, "{text}");
    assert_eq!(answered_by(&get(&mut c).await.0), "up");
    assert!(
        !gw.stdout.snapshot()[start..]
            .iter()
            .any(|l| l.contains("upstream_server_up"))
    );

    // A reload without it: its series go.
    gw.rewrite_config_in_place(
        &Conf::new(&pool(&[&up.url()], ""), &up.url())
            .with_admin()
            .render(),
    );
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = gw.metrics_text().await;
    assert!(!text.contains(&dead), "{text}");
    assert!(metric(&text, &requests) >= before, "{text}");
}
