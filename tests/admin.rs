//! Admin listener: /healthz, /readyz, /metrics.

mod common;

use common::*;

#[tokio::test]
async fn health_and_readiness() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_admin().spawn().await;
    let mut c = gw.admin_conn().await;
    assert_eq!(c.get("/healthz", &[]).await.status, 200);
    // The `listening` lines are the startup signal operators and this harness wait for.
    let r = c.get("/readyz", &[]).await;
    assert_eq!(
        r.status,
        200,
        "/readyz right after the `listening` lines: {}",
        r.text()
    );
    assert_eq!(c.get("/nope", &[]).await.status, 404);
}

#[tokio::test]
async fn metrics_expose_spec_families() {
    let up = spawn_upstream("core").await;
    let dead = closed_port_url().await;
    let gw = Conf::one(&up)
        .with_admin()
        .tenants(&format!(
            "tenants:
  - name: acme
    subdomain: acme
  - name: beta
    subdomain: beta
    upstreams:
      core: {dead}
"
        ))
        .keys(&format!(
            "keys:\n{}{}",
            key_yaml(
                "acme-ci",
                "acme",
                TOKEN_ACME,
                "rate: { requests: 1, per: 1h }"
            ),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        ))
        .spawn()
        .await;
    let mut c = gw.h1("acme.gw.test").await;
    assert_eq!(
        c.get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
            .await
            .status,
        200
    );
    assert_eq!(
        c.get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
            .await
            .status,
        429
    );
    assert_eq!(
        c.get("/rest/people", &[("authorization", "Bearer wrong")])
            .await
            .status,
        401
    );
    let mut b = gw.h1("beta.gw.test").await;
    assert_eq!(
        b.get("/rest/people", &[("authorization", &bearer(TOKEN_BETA))])
            .await
            .status,
        502
    );
    let mut a = gw.admin_conn().await;
    let r = a.request(http::Method::POST, "/reload", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = a.get("/metrics", &[]).await;
    assert_eq!(m.status, 200);
    let text = m.text();
    let has = |prefix: &str, labels: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
    };
    let mut missing = Vec::new();
    for (prefix, labels) in [
        (
            "gateway_requests_total{",
            &[r#"tenant="acme""#, "route=", "status_class="][..],
        ),
        ("gateway_request_duration_seconds_bucket", &[][..]),
        (
            "gateway_auth_failures_total{",
            &[r#"outcome="invalid_key""#][..],
        ),
        ("gateway_rate_limited_total{", &[r#"tenant="acme""#][..]),
        (
            "gateway_upstream_errors_total{",
            &[r#"upstream="core""#, "kind="][..],
        ),
        ("gateway_config_reloads_total{", &["result="][..]),
        ("gateway_config_generation", &[][..]),
        ("gateway_open_connections", &[][..]),
        ("gateway_tls_handshakes_total{", &["result="][..]),
    ] {
        if !has(prefix, labels) {
            missing.push(format!("{prefix} {labels:?}"));
        }
    }
    assert!(missing.is_empty(), "missing metrics {missing:#?}\n{text}");
}
