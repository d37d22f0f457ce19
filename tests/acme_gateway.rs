//! ACME end to end: the real gateway binary against a real CA (pebble +
//! pebble-challtestsrv resolving every name to 127.0.0.1). Pebble validates
//! against the gateway's own listeners, so their ports are chosen first.

mod acme_support;
pub mod common;
mod redis_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use acme_support::pebble::{Pebble, PebbleConfig, free_port};
use acme_support::{ISSUE_TIMEOUT, client_config, connect, handshake, https_get, serial};
use common::*;
use redis_support::RedisServer;
use serde_json::Value;

const TOKEN_DELTA: &str = "tgw_test_delta_ci_0123456789abcdef";
/// A tenant domain no file certificate covers: ACME's.
const DELTA: &str = "crm.delta.test";

/// The common test config plus tenant `delta` with `domains`, the gateway on
/// `https` (and `http`), and the given `acme:` block.
fn config(upstream: &str, https: u16, http: Option<u16>, domains: &str, acme: &str) -> String {
    let tenants = format!("{DEFAULT_TENANTS}  - name: delta\n    domains: [{domains}]\n");
    let keys = format!(
        "keys:\n{}{}",
        key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
        key_yaml("delta-ci", "delta", TOKEN_DELTA, "")
    );
    let mut conf = Conf::new(upstream, upstream)
        .with_admin()
        .tenants(&tenants)
        .keys(&keys)
        .extra(acme);
    if http.is_some() {
        conf = conf.with_http();
    }
    let mut yaml = conf.render().replacen(
        "https: 127.0.0.1:0",
        &format!("https: 127.0.0.1:{https}"),
        1,
    );
    if let Some(http) = http {
        yaml = yaml.replacen("http: 127.0.0.1:0", &format!("http: 127.0.0.1:{http}"), 1);
    }
    yaml
}

/// An `acme:` block for `pebble`, its listener root copied next to the
/// config (so the config stays valid once pebble is gone).
fn acme_block(setup: &GatewaySetup, pebble: &Pebble) -> String {
    let roots = std::fs::read(&pebble.ca_roots).expect("pebble listener root");
    setup.file("pebble-ca.pem", roots);
    format!(
        "acme:\n  directory: {}\n  contact: [mailto:ops@delta.test]\n  storage: acme\n  ca_roots: pebble-ca.pem\n",
        pebble.directory
    )
}

/// A running pebble, its issuing root, a gateway setup and the `acme:`
/// block pointing at pebble.
struct Fixture {
    pebble: Pebble,
    /// The gateway's HTTPS port, where pebble validates TLS-ALPN-01.
    https: u16,
    root: rustls::pki_types::CertificateDer<'static>,
    setup: GatewaySetup,
    acme: String,
}

/// `config.tls_port` 0: the gateway's HTTPS port (chosen here); `http_port`
/// 0: nothing (HTTP-01 fails).
async fn fixture(mut config: PebbleConfig) -> Fixture {
    let https = free_port();
    if config.tls_port == 0 {
        config.tls_port = https;
    }
    if config.http_port == 0 {
        config.http_port = free_port();
    }
    let pebble = Pebble::start(config);
    let root = pebble.issuing_root().await;
    let setup = GatewaySetup::new();
    let acme = acme_block(&setup, &pebble);
    Fixture {
        pebble,
        https,
        root,
        setup,
        acme,
    }
}

fn event_is(line: &str, event: &str, name: &str) -> bool {
    parse_json_line(line).is_some_and(|m| {
        m.get("event").and_then(Value::as_str) == Some(event)
            && m.get("name").and_then(Value::as_str) == Some(name)
    })
}

/// The first stdout line for `event` about `name`, waiting up to `limit`.
async fn wait_event(
    gw: &Gateway,
    event: &str,
    name: &str,
    limit: Duration,
) -> serde_json::Map<String, Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(line) = gw.stdout.wait(|l| event_is(l, event, name)).await {
            return parse_json_line(&line).expect("json");
        }
        assert!(
            Instant::now() < deadline && !gw.stdout.is_eof(),
            "no {event} for {name} within {limit:?}:\n{}",
            gw.all_output()
        );
    }
}

fn events(gw: &Gateway, event: &str) -> Vec<serde_json::Map<String, Value>> {
    gw.json_lines()
        .into_iter()
        .filter(|m| m.get("event").and_then(Value::as_str) == Some(event))
        .collect()
}

async fn get_delta(
    addr: SocketAddr,
    root: &rustls::pki_types::CertificateDer<'static>,
) -> (u16, String, Vec<rustls::pki_types::CertificateDer<'static>>) {
    let auth = bearer(TOKEN_DELTA);
    https_get(
        addr,
        DELTA,
        root.clone(),
        "/rest/people",
        &[("authorization", &auth)],
    )
    .await
    .unwrap_or_else(|e| panic!("request to {DELTA}: {e}"))
}

#[tokio::test]
async fn a_tenant_domain_gets_a_certificate_and_a_restart_without_the_ca_orders_nothing() {
    let up = spawn_upstream("core").await;
    let Fixture {
        pebble,
        https,
        root,
        setup,
        acme,
    } = fixture(PebbleConfig::default()).await;
    let yaml = config(&up.url(), https, None, DELTA, &acme);
    let mut gw = setup.spawn(&yaml).await;

    // The first handshake for the name waits for its first certificate; the
    // chain verifies against pebble's root and the request reaches delta.
    let t = Instant::now();
    let (status, body, chain) = get_delta(gw.https(), &root).await;
    let first_request = t.elapsed();
    assert_eq!(status, 200, "{body}\n{}", gw.all_output());
    eprintln!("first request to a fresh name, ordering included: {first_request:?}");
    let recorded = up.wait_requests(1).await;
    assert_eq!(recorded[0].header("x-gateway-tenant"), Some("delta"));

    let issued = wait_event(&gw, "acme_certificate_issued", DELTA, ISSUE_TIMEOUT).await;
    assert_eq!(issued["challenge"], "tls-alpn-01");
    let metrics = gw.metrics_text().await;
    assert_eq!(
        metric(&metrics, "gateway_acme_orders_total{result=\"issued\"}"),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for name in [DELTA, "gw.test"] {
        let expiry = metric(
            &metrics,
            &format!("gateway_certificate_expiry_timestamp_seconds{{name=\"{name}\"}}"),
        );
        assert!(expiry > now, "{name}: {expiry}\n{metrics}");
    }

    // An unknown name gets the default certificate and is never ordered.
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1("nope.delta.test")).await;
    assert!(info.dns_names().contains(&"gw.test".to_string()));
    // acme-tls/1 with no validation pending: refused.
    assert!(
        connect(
            gw.https(),
            DELTA,
            client_config(root.clone(), &[b"acme-tls/1"])
        )
        .await
        .is_err()
    );
    let started = events(&gw, "acme_order_started");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["name"], DELTA);

    // A restart with the CA gone serves the stored certificate at once.
    gw.terminate().await;
    drop(pebble);
    let setup = std::mem::take(&mut gw.setup);
    let gw = setup.spawn(&yaml).await;
    let (status, _, again) = get_delta(gw.https(), &root).await;
    assert_eq!(status, 200, "{}", gw.all_output());
    assert_eq!(serial(&again), serial(&chain));
    assert!(
        events(&gw, "acme_order_started").is_empty(),
        "{}",
        gw.all_output()
    );
}

#[tokio::test]
async fn http01_on_the_plain_listener_when_tls_alpn01_fails() {
    let up = spawn_upstream("core").await;
    let http = free_port();
    let f = fixture(PebbleConfig {
        tls_port: free_port(), // nothing there: TLS-ALPN-01 fails
        http_port: http,
        ..Default::default()
    })
    .await;
    let root = f.root.clone();
    let yaml = config(&up.url(), f.https, Some(http), DELTA, &f.acme);
    let gw = f.setup.spawn(&yaml).await;

    let failed = wait_event(&gw, "acme_order_failed", DELTA, ISSUE_TIMEOUT).await;
    assert_eq!(failed["challenge"], "tls-alpn-01");
    assert_eq!(failed["next_challenge"], "http-01");
    assert!(
        failed["problem"]
            .as_str()
            .is_some_and(|p| p.contains("urn:ietf:params:acme:error:")),
        "{failed:?}"
    );
    let issued = wait_event(&gw, "acme_certificate_issued", DELTA, ISSUE_TIMEOUT).await;
    assert_eq!(issued["challenge"], "http-01");
    let (status, _, _) = get_delta(gw.https(), &root).await;
    assert_eq!(status, 200);

    // Any other token: 404 NOT_FOUND, no key asked, whatever the host.
    let r = Conn::plain(gw.http(), "unknown.test")
        .await
        .get("/.well-known/acme-challenge/no-such-token", &[])
        .await;
    assert_rest_error(&r, 404, "NOT_FOUND");
    assert_eq!(gw.outcome(&r.request_id()).await, "unknown_challenge");
}

#[tokio::test]
async fn a_domain_added_by_reload_gets_its_certificate_without_a_restart() {
    let up = spawn_upstream("core").await;
    let f = fixture(PebbleConfig::default()).await;
    let (https, acme, root) = (f.https, f.acme.clone(), f.root.clone());
    let gw = f
        .setup
        .spawn(&config(&up.url(), https, None, "", &acme))
        .await;
    assert!(events(&gw, "acme_order_started").is_empty());

    gw.replace_config(&config(&up.url(), https, None, DELTA, &acme));
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_event(&gw, "acme_certificate_issued", DELTA, ISSUE_TIMEOUT).await;
    let (status, _, _) = get_delta(gw.https(), &root).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn short_lived_certificates_renew_without_a_failed_handshake() {
    let up = spawn_upstream("core").await;
    // 15 s certificates: renewed with 5 s left.
    let f = fixture(PebbleConfig {
        validity: Some(Duration::from_secs(15)),
        ..Default::default()
    })
    .await;
    let root = f.root.clone();
    let yaml = config(&up.url(), f.https, None, DELTA, &f.acme);
    let gw = f.setup.spawn(&yaml).await;
    let first = handshake(gw.https(), DELTA, root.clone())
        .await
        .expect("first handshake");

    let deadline = Instant::now() + ISSUE_TIMEOUT;
    let mut handshakes = 0;
    while !gw
        .stdout
        .snapshot()
        .iter()
        .any(|l| event_is(l, "acme_renewed", DELTA))
    {
        assert!(
            Instant::now() < deadline,
            "no renewal:\n{}",
            gw.all_output()
        );
        handshake(gw.https(), DELTA, root.clone())
            .await
            .unwrap_or_else(|e| panic!("handshake {handshakes}: {e}\n{}", gw.all_output()));
        handshakes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handshakes > 0);
    let renewed = handshake(gw.https(), DELTA, root.clone())
        .await
        .expect("handshake after renewal");
    assert_ne!(serial(&renewed), serial(&first));
}

#[tokio::test]
async fn a_dead_ca_does_not_stop_the_gateway() {
    let up = spawn_upstream("core").await;
    let https = free_port();
    let acme = format!(
        "acme:\n  directory: https://127.0.0.1:{}/dir\n  storage: acme\n",
        free_port()
    );
    let gw = GatewaySetup::new()
        .spawn(&config(&up.url(), https, None, DELTA, &acme))
        .await;

    let failed = wait_event(&gw, "acme_order_failed", DELTA, ISSUE_TIMEOUT).await;
    assert!(
        failed["problem"]
            .as_str()
            .is_some_and(|p| p.to_lowercase().contains("connect")),
        "{failed:?}"
    );
    assert!(failed["retry_in_s"].as_f64().is_some_and(|s| s >= 60.0));
    // Other tenants are served, the gateway is ready, the name gets the
    // default certificate without waiting out a backoff.
    let r = gw
        .h1("crm.acme.test")
        .await
        .get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
        .await;
    assert_eq!(r.status, 200);
    let ready = gw.admin_conn().await.get("/readyz", &[]).await;
    assert_eq!(ready.status, 200);
    let t = Instant::now();
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1(DELTA)).await;
    assert!(info.dns_names().contains(&"gw.test".to_string()));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        metric(
            &gw.metrics_text().await,
            "gateway_acme_orders_total{result=\"failed\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn check_validates_the_acme_block_without_the_ca() {
    let setup = GatewaySetup::new();
    let upstream = "http://127.0.0.1:9";
    let bad = "acme:\n  directory: http://ca.test/dir\n  contact: [ops@delta.test]\n  storage: acme\n  ca_roots: missing.pem\n";
    let path = setup.write_config(&config(upstream, 8443, None, "localhost", bad));
    let out = run_cli(
        &["--config", &path.to_string_lossy(), "check"],
        None,
        None,
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for field in [
        "acme.directory",
        "acme.contact[0]",
        "acme.ca_roots",
        "tenants[2].domains[0]",
    ] {
        assert!(stderr.contains(field), "{field} missing in:\n{stderr}");
    }

    // A valid block passes without any CA answering.
    let good = format!(
        "acme:\n  directory: https://127.0.0.1:{}/dir\n  contact: [mailto:ops@delta.test]\n  storage: acme\n",
        free_port()
    );
    setup.write_config(&config(upstream, 8443, None, DELTA, &good));
    let out = run_cli(
        &["--config", &path.to_string_lossy(), "check"],
        None,
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !setup.dir.path().join("acme").exists(),
        "check creates nothing"
    );
}

/// Two gateways sharing one `redis-server` and one pebble (SPEC: "the CA
/// may validate against any gateway behind the load balancer").
///
/// The arrangement that makes pebble validate against the gateway that did
/// NOT place the order, deterministically: pebble's `tlsPort` (TLS-ALPN-01)
/// or `httpPort` (HTTP-01) is gateway B's listener, and only gateway A has
/// the domain at first, so A is the one that orders while B is already up
/// and answers from the key authorization A published in Redis. B's config
/// then gains the domain by reload: B takes A's certificate from Redis
/// instead of ordering it.
async fn two_gateways_one_order(http01: bool) {
    let redis = RedisServer::tcp();
    let up = spawn_upstream("core").await;
    let (b_https, b_http) = (free_port(), free_port());
    let f = fixture(PebbleConfig {
        // TLS-ALPN-01 at B; or at nothing, so that A falls back to HTTP-01
        // at B.
        tls_port: if http01 { free_port() } else { b_https },
        http_port: b_http,
        ..Default::default()
    })
    .await;
    let cluster = format!("cluster:\n  redis: {}\n  timeout: 500ms\n", redis.url());
    let acme = format!("{}{cluster}", f.acme);
    let root = f.root.clone();
    // A's listeners are not where pebble looks.
    let (a_https, a_http) = (f.https, http01.then(free_port));
    let b_yaml = |domains: &str| config(&up.url(), b_https, Some(b_http), domains, &acme);
    let b_setup = GatewaySetup::new();
    b_setup.file(
        "pebble-ca.pem",
        std::fs::read(&f.pebble.ca_roots).expect("roots"),
    );
    let b = b_setup.spawn(&b_yaml("")).await;
    let a = f
        .setup
        .spawn(&config(&up.url(), a_https, a_http, DELTA, &acme))
        .await;

    let issued = wait_event(&a, "acme_certificate_issued", DELTA, ISSUE_TIMEOUT).await;
    let challenge = if http01 { "http-01" } else { "tls-alpn-01" };
    assert_eq!(issued["challenge"], challenge, "{}", f.pebble.log());

    // B gets the name: it serves A's certificate, taken from Redis.
    b.replace_config(&b_yaml(DELTA));
    let r = b.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_event(
        &b,
        "acme_certificate_loaded",
        DELTA,
        Duration::from_secs(10),
    )
    .await;

    // Both serve the same chain (verified against pebble's root), and a
    // request through each reaches delta's upstream.
    let (status_a, body_a, chain_a) = get_delta(a.https(), &root).await;
    assert_eq!(status_a, 200, "{body_a}\n{}", a.all_output());
    let (status_b, body_b, chain_b) = get_delta(b.https(), &root).await;
    assert_eq!(status_b, 200, "{body_b}\n{}", b.all_output());
    assert_eq!(serial(&chain_a), serial(&chain_b));
    assert_eq!(chain_a, chain_b);
    let recorded = up.wait_requests(2).await;
    for r in &recorded {
        assert_eq!(r.header("x-gateway-tenant"), Some("delta"));
    }

    // One order in all, placed by A.
    let started = events(&a, "acme_order_started");
    assert!(!started.is_empty());
    assert!(started.iter().all(|e| e["name"] == DELTA));
    assert!(
        events(&b, "acme_order_started").is_empty(),
        "{}",
        b.all_output()
    );
    let issued_series = "gateway_acme_orders_total{result=\"issued\"}";
    assert_eq!(metric(&a.metrics_text().await, issued_series), 1.0);
    assert_eq!(metric(&b.metrics_text().await, issued_series), 0.0);
    // The answers were withdrawn with the order.
    let left = redis.cli(&["KEYS", "twenty-gateway:acme:*-01:*"]);
    assert!(left.trim().is_empty(), "{left}");
}

#[tokio::test]
async fn two_gateways_share_one_tls_alpn01_order_through_redis() {
    two_gateways_one_order(false).await;
}

#[tokio::test]
async fn two_gateways_share_one_http01_order_through_redis() {
    two_gateways_one_order(true).await;
}

#[tokio::test]
async fn with_redis_down_acme_works_unshared() {
    let up = spawn_upstream("core").await;
    let f = fixture(PebbleConfig::default()).await;
    let root = f.root.clone();
    // Nothing listens there: the order lock, the published answers and the
    // shared copy all fail, bounded; the order goes on locally.
    let acme = format!(
        "{}cluster:\n  redis: redis://127.0.0.1:{}\n  timeout: 200ms\n",
        f.acme,
        free_port()
    );
    let yaml = config(&up.url(), f.https, None, DELTA, &acme);
    let gw = f.setup.spawn(&yaml).await;

    let issued = wait_event(&gw, "acme_certificate_issued", DELTA, ISSUE_TIMEOUT).await;
    assert_eq!(issued["challenge"], "tls-alpn-01");
    let (status, body, _) = get_delta(gw.https(), &root).await;
    assert_eq!(status, 200, "{body}\n{}", gw.all_output());
    let unshared = events(&gw, "acme_store_error");
    assert!(
        unshared.iter().any(|e| e["name"] == DELTA),
        "{}",
        gw.all_output()
    );
    assert!(
        gw.setup
            .dir
            .path()
            .join(format!("acme/certs/{DELTA}.pem"))
            .exists(),
        "the local copy"
    );
}
