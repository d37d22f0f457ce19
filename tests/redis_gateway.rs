//! `cluster`: real gateway processes sharing limits through a real
//! `redis-server` (and a real Redis Cluster); Redis stopped and started
//! under them; `on_unavailable` local, allow and deny.

pub mod common;
mod redis_support;

use std::time::{Duration, Instant};

use common::*;
use redis_support::{RedisCluster, RedisServer};

const BAD_TOKEN: &str = "tgw_test_not_a_key_0123456789";

/// acme-ci: 10 per hour (burst 10); the brake at 3 failures per hour.
fn conf(up: &Upstream, redis: &str, on_unavailable: &str) -> Conf {
    Conf::one(up)
        .with_admin()
        .keys(&format!(
            "keys:\n{}{}",
            key_yaml(
                "acme-ci",
                "acme",
                TOKEN_ACME,
                "rate: { requests: 10, per: 1h }"
            ),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        ))
        .limit("auth_failures_per_ip: { requests: 3, per: 1h }")
        .extra(&format!(
            "cluster:\n  redis: {redis}\n  timeout: 200ms\n  on_unavailable: {on_unavailable}\n"
        ))
}

/// GET /rest/people on a new connection to `host`, with `token` if any; (response, request id).
async fn get(gw: &Gateway, host: &str, token: Option<&str>) -> (Resp, String) {
    let authz = token.map(bearer);
    let headers: Vec<(&str, &str)> = authz
        .iter()
        .map(|a| ("authorization", a.as_str()))
        .collect();
    gw.h1(host)
        .await
        .get_with_id("/rest/people", &headers)
        .await
}

/// Alternating between the gateways, acme-ci gets 10 in total.
async fn share_ten(gws: [&Gateway; 2]) {
    let mut allowed = 0;
    for i in 0..14usize {
        let (r, _) = get(gws[i % 2], "acme.gw.test", Some(TOKEN_ACME)).await;
        match r.status.as_u16() {
            200 => {
                // 360 s a request: the shared state, whichever gateway answers.
                assert_eq!(
                    r.header("ratelimit"),
                    Some(format!(
                        "\"key\";r={};t={}",
                        9 - allowed,
                        360 * (allowed + 1)
                    )),
                    "request {i}"
                );
                allowed += 1;
            }
            429 => {
                assert_rest_error(&r, 429, "RATE_LIMITED");
                let ra: u64 = r
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .expect("secs");
                assert!((1..=360).contains(&ra), "{ra}");
            }
            s => panic!("request {i}: {s} {}", r.text()),
        }
    }
    assert_eq!(allowed, 10, "one quota for the fleet");
}

#[tokio::test]
async fn two_gateways_share_one_key_quota_and_the_brake() {
    let redis = RedisServer::tcp();
    let up = spawn_upstream("core").await;
    let conf = conf(&up, &redis.url(), "local");
    let (g1, g2) = (conf.spawn().await, conf.spawn().await);
    share_ten([&g1, &g2]).await;
    assert_eq!(up.requests().len(), 10);
    // At most one Redis command per request (refusals are answered locally
    // once Redis refused on each gateway).
    let evalsha = redis.calls("evalsha");
    assert!((11..=14).contains(&evalsha), "EVALSHA calls: {evalsha}");

    // The brake: 3 guesses spread over both gateways, the 4th is braked,
    // and then even a valid key from that address, on the other gateway.
    for g in [&g1, &g2, &g1] {
        let (r, _) = get(g, "acme.gw.test", Some(BAD_TOKEN)).await;
        assert_rest_error(&r, 401, "UNAUTHENTICATED");
    }
    let (r, id) = get(&g2, "acme.gw.test", Some(BAD_TOKEN)).await;
    assert_rest_error(&r, 429, "TOO_MANY_AUTH_FAILURES");
    assert_eq!(g2.outcome(&id).await, "auth_throttled");
    let (r, _) = get(&g1, "beta.gw.test", Some(TOKEN_BETA)).await;
    assert_rest_error(&r, 429, "TOO_MANY_AUTH_FAILURES");

    // Redis holds key ids, tenant names and addresses, never a token or its
    // hash, and every key expires.
    let keys = redis.keys_with_ttl();
    assert!(
        keys.iter().any(|(k, _)| k.contains(":k:acme-ci:")),
        "{keys:?}"
    );
    for (k, ttl) in &keys {
        assert!(k.starts_with("twenty-gateway:"), "{k}");
        assert!(*ttl > 0, "{k} without expiry");
        let v = redis.cli(&["GET", k]);
        for secret in [
            TOKEN_ACME,
            TOKEN_BETA,
            BAD_TOKEN,
            &sha256_hex(TOKEN_ACME),
            &sha256_hex(BAD_TOKEN),
        ] {
            assert!(!k.contains(secret) && !v.contains(secret), "{k} = {v}");
        }
    }
    let metrics = g1.metrics_text().await;
    assert_eq!(metric(&metrics, "gateway_redis_up "), 1.0);
    assert_eq!(metric(&metrics, "gateway_ratelimit_fallback_total "), 0.0);
}

#[tokio::test]
async fn anonymous_budget_is_shared() {
    let redis = RedisServer::tcp();
    let up = spawn_upstream("core").await;
    let conf = conf(&up, &redis.url(), "local")
        .limit("anonymous_per_ip: { requests: 5, per: 1h }")
        .routes("  - { prefix: /open-api, upstream: core, auth: none }\n  - { prefix: /rest, upstream: core }\n");
    let (g1, g2) = (conf.spawn().await, conf.spawn().await);
    let mut statuses = Vec::new();
    for i in 0..8usize {
        let mut c = [&g1, &g2][i % 2].h1("acme.gw.test").await;
        statuses.push(c.get("/open-api/core", &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert!(
        redis
            .keys_with_ttl()
            .iter()
            .any(|(k, _)| k.starts_with("twenty-gateway:a:127.0.0.1:"))
    );
}

#[tokio::test]
async fn two_gateways_share_over_rediss() {
    // The gateways trust the development CA through SSL_CERT_FILE (read by
    // the system-roots loader the Redis client uses).
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let ca = certs.join("dev-ca.crt");
    let redis = RedisServer::tls(
        &certs.join("localhost.crt"),
        &certs.join("localhost.key"),
        &ca,
    );
    let up = spawn_upstream("core").await;
    let conf = conf(&up, &redis.url(), "deny");
    let ca = ca.display().to_string();
    let g1 = conf
        .spawn_in(GatewaySetup::new().env("SSL_CERT_FILE", &ca))
        .await;
    let g2 = conf
        .spawn_in(GatewaySetup::new().env("SSL_CERT_FILE", &ca))
        .await;
    share_ten([&g1, &g2]).await;
    assert!(redis.calls("evalsha") >= 11);

    // Without the CA the certificate is refused: Redis is unavailable
    // (here: 503), nothing panics.
    let g3 = conf
        .spawn_in(GatewaySetup::new().env("SSL_CERT_FILE", "/nonexistent"))
        .await;
    let (r, _) = get(&g3, "beta.gw.test", Some(TOKEN_BETA)).await;
    assert_rest_error(&r, 503, "SERVICE_UNAVAILABLE");
}

#[tokio::test]
async fn redis_cluster_shares_one_key_quota() {
    let cluster = RedisCluster::start();
    let up = spawn_upstream("core").await;
    let nodes = format!("[{}]", cluster.urls().join(", "));
    let conf = conf(&up, &nodes, "local");
    let (g1, g2) = (conf.spawn().await, conf.spawn().await);
    share_ten([&g1, &g2]).await;
    assert_eq!(up.requests().len(), 10);
}

#[tokio::test]
async fn redis_down_local_limits_then_shared_again() {
    let mut redis = RedisServer::tcp();
    let up = spawn_upstream("core").await;
    let conf = conf(&up, &redis.url(), "local");
    let (g1, g2) = (conf.spawn().await, conf.spawn().await);
    let (r, _) = get(&g1, "acme.gw.test", Some(TOKEN_ACME)).await;
    assert_eq!(r.status, 200);

    redis.kill();
    // Answers keep coming, none waiting much past `timeout`; each gateway
    // then enforces the key's limit from its own memory (its local
    // limiter has not been used: a full burst of 10).
    let (mark1, mark2) = (g1.stdout.line_count(), g2.stdout.line_count());
    let mut allowed = 0;
    for i in 0..12 {
        let started = Instant::now();
        let (r, _) = get(&g1, "acme.gw.test", Some(TOKEN_ACME)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "request {i} waited {:?}",
            started.elapsed()
        );
        match r.status.as_u16() {
            200 => allowed += 1,
            429 => assert_rest_error(&r, 429, "RATE_LIMITED"),
            s => panic!("{s}: {}", r.text()),
        }
        // g2 finds out too (so it does not share a stale view later).
        get(&g2, "beta.gw.test", Some(TOKEN_BETA)).await;
    }
    assert_eq!(allowed, 10, "the local limiter decided");
    let down = g1.wait_event_after(mark1, |e| e == "redis_down").await;
    assert!(down["reason"].as_str().is_some_and(|r| !r.is_empty()));
    g2.wait_event_after(mark2, |e| e == "redis_down").await;
    let metrics = g1.metrics_text().await;
    assert_eq!(metric(&metrics, "gateway_redis_up "), 0.0);
    assert!(metric(&metrics, "gateway_ratelimit_fallback_total ") >= 12.0);
    let errors = metric(&metrics, "gateway_redis_errors_total{kind=\"connect\"} ")
        + metric(&metrics, "gateway_redis_errors_total{kind=\"timeout\"} ");
    assert!(errors >= 3.0, "{metrics}");

    // Back on the same port: shared again without a restart (the new Redis
    // kept nothing, so the fleet has a fresh 10).
    let (mark1, mark2) = (g1.stdout.line_count(), g2.stdout.line_count());
    redis.restart();
    g1.wait_event_after(mark1, |e| e == "redis_up").await;
    g2.wait_event_after(mark2, |e| e == "redis_up").await;
    share_ten([&g1, &g2]).await;
}

#[tokio::test]
async fn on_unavailable_allow_and_deny() {
    let mut redis = RedisServer::tcp();
    redis.kill();
    let up = spawn_upstream("core").await;

    // allow: no limit, no brake, no RateLimit fields.
    let allow = conf(&up, &redis.url(), "allow").spawn().await;
    for _ in 0..12 {
        let started = Instant::now();
        let (r, _) = get(&allow, "acme.gw.test", Some(TOKEN_ACME)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("ratelimit"), None);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    for _ in 0..5 {
        let (r, _) = get(&allow, "acme.gw.test", Some(BAD_TOKEN)).await;
        assert_rest_error(&r, 401, "UNAUTHENTICATED");
    }

    // deny: 503 to a valid key; missing and invalid keys keep their 401.
    let deny_conf = conf(&up, &redis.url(), "deny");
    let deny = deny_conf.spawn().await;
    let (r, id) = get(&deny, "acme.gw.test", Some(TOKEN_ACME)).await;
    assert_rest_error(&r, 503, "SERVICE_UNAVAILABLE");
    let line = deny.access_line(&id).await;
    assert_eq!(line["outcome"], "limiter_unavailable");
    assert_eq!(line["key_id"], "acme-ci");
    let (r, _) = get(&deny, "acme.gw.test", Some(BAD_TOKEN)).await;
    assert_rest_error(&r, 401, "UNAUTHENTICATED");
    let (r, _) = get(&deny, "acme.gw.test", None).await;
    assert_rest_error(&r, 401, "UNAUTHENTICATED");
    assert_eq!(up.requests().len(), 12, "allow forwarded 12, deny nothing");

    // `cluster` is reloadable: deny → local.
    deny.replace_config(&conf(&up, &redis.url(), "local").render());
    let r = deny.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (r, _) = get(&deny, "acme.gw.test", Some(TOKEN_ACME)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("ratelimit"), Some("\"key\";r=9;t=360".to_string()));
}

/// `twenty-gateway check` on the test config plus `cluster_block`: exit
/// code and stderr.
fn check(setup: &GatewaySetup, cluster_block: &str) -> (Option<i32>, String) {
    let mut y = Conf::new("http://127.0.0.1:9", "http://127.0.0.1:9").render();
    y.push_str(cluster_block);
    let path = setup.write_config(&y);
    let out = run_cli(
        &["check", "--config", path.to_str().expect("utf-8")],
        None,
        None,
        &[],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_validates_cluster_without_contacting_redis() {
    let setup = GatewaySetup::new();
    // A port nobody listens on: `check` must not try it.
    let (code, err) = check(&setup, "cluster:\n  redis: redis://127.0.0.1:1\n");
    assert_eq!(code, Some(0), "{err}");

    // An unknown field is refused by itself (serde stops there).
    let (code, err) = check(
        &setup,
        "cluster:\n  redis: redis://:s3cret@h:1\n  bogus: 1\n",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("bogus") && !err.contains("s3cret"), "{err}");

    // Otherwise every problem, each with its path, no password.
    let (code, err) = check(
        &setup,
        "cluster:\n  redis: [redis://:s3cret@h:1, unix:///x]\n  timeout: 0s\n  on_unavailable: open\n",
    );
    assert_eq!(code, Some(1));
    for field in [
        "cluster.redis[1]",
        "cluster.timeout",
        "cluster.on_unavailable",
    ] {
        assert!(err.contains(field), "{field} missing in {err}");
    }
    assert!(!err.contains("s3cret"), "{err}");
}
