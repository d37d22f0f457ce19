//! All of Twenty's API surface: the default route table's file links (`auth: twenty_token`),
//! MCP (key, SSE), OpenAPI (`auth: none`), and `limits.anonymous_per_ip` on open routes.
//! The default table is used (no `routes:`), so these tests fail if a route is missing from it.

pub mod common;

use common::*;
use http::Method;

/// A Twenty-signed token as it appears in attachment links (a JWT with URL-unsafe bytes escaped).
const TWENTY_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJ3b3Jrc3BhY2VJZCI6ImFjbWUifQ.c2ln%2Bb%2Fx";

fn acme_key() -> String {
    format!("keys:\n{}", key_yaml("acme-ci", "acme", TOKEN_ACME, ""))
}

/// Tenant `acme` sends its own Twenty key upstream for keyed requests.
fn tenants_with_upstream_token() -> &'static str {
    "tenants:
  - name: acme
    subdomain: acme
    upstream_token_file: twenty.key
"
}

/// The config without its `routes:` block, so the gateway uses SPEC's default table.
fn without_routes(yaml: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in yaml.lines() {
        if line.starts_with("routes:") {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with(' ') {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

async fn gateway(up: &Upstream, limits: &[&str]) -> Gateway {
    let setup = GatewaySetup::new();
    setup.file("twenty.key", "twenty-own-api-key\n");
    let conf = Conf::one(up)
        .tenants(tenants_with_upstream_token())
        .keys(&acme_key())
        .limits(limits);
    let yaml = without_routes(&conf.render());
    assert!(!yaml.contains("routes:"));
    setup.spawn(&yaml).await
}

#[tokio::test]
async fn file_links_with_twentys_token_go_upstream_byte_for_byte_without_a_gateway_key() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    for (h2, method, target) in [
        (
            false,
            Method::GET,
            format!("/file/attachment/a1b2?token={TWENTY_TOKEN}"),
        ),
        (
            true,
            Method::GET,
            format!("/files/attachment/a1b2?x=1&token={TWENTY_TOKEN}"),
        ),
        (
            false,
            Method::GET,
            format!("/files-field/f/9?token={TWENTY_TOKEN}"),
        ),
        (
            true,
            Method::PUT,
            format!("/file-upload/77?token={TWENTY_TOKEN}"),
        ),
    ] {
        let mut c = gw.conn(h2, "acme.gw.test").await;
        let id = rid();
        let r = c
            .request(method.clone(), &target, &[("x-request-id", &id)], "bytes")
            .await;
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        let got = up.request_with_id(&id).await;
        assert_eq!(got.method, method.as_str());
        assert_eq!(got.target, target, "path and query byte for byte");
        assert!(
            !got.has("authorization"),
            "{target}: Twenty's key injected on an open route"
        );
        assert!(!got.has("x-gateway-key-id"));
        let line = gw.access_line(&id).await;
        assert_eq!(line["outcome"], "ok");
        assert_eq!(line["key_id"], serde_json::Value::Null);
        assert!(!line["path"].as_str().unwrap_or("").contains('?'));
    }
    // The token never reaches the gateway's output.
    let out = gw.all_output();
    assert!(
        !out.contains("eyJ3b3Jrc3BhY2VJZCI6ImFjbWUifQ"),
        "token in the logs"
    );
}

#[tokio::test]
async fn file_links_without_a_token_are_401_and_never_forwarded() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    for target in [
        "/file/attachment/a1b2",
        "/file/attachment/a1b2?token=",
        "/files/x?tokens=abc",
        "/file-upload/77?x=token",
    ] {
        let mut c = gw.h1("acme.gw.test").await;
        let id = rid();
        // A gateway key does not open a twenty_token route either: the token is Twenty's.
        let r = c
            .get(
                target,
                &[
                    ("x-request-id", &id),
                    ("authorization", &bearer(TOKEN_ACME)),
                ],
            )
            .await;
        assert_rest_error(&r, 401, "UNAUTHENTICATED");
        assert_eq!(gw.outcome(&id).await, "missing_key", "{target}");
    }
    assert!(up.requests().is_empty(), "refused requests reached Twenty");
}

#[tokio::test]
async fn open_api_needs_no_key_and_passes_the_clients_authorization_unchanged() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    let mut c = gw.h2("acme.gw.test").await;
    let id = rid();
    let r = c
        .get(
            "/open-api/core",
            &[
                ("x-request-id", &id),
                ("authorization", "Bearer not-a-gateway-key"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.request_with_id(&id).await;
    assert_eq!(
        got.header("authorization"),
        Some("Bearer not-a-gateway-key")
    );
    assert!(!got.has("x-gateway-key-id"));
    assert_eq!(got.header("x-gateway-tenant"), Some("acme"));
    assert_eq!(gw.outcome(&id).await, "ok");
}

#[tokio::test]
async fn mcp_needs_a_key_and_streams_server_sent_events() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    let mut c = gw.h1("acme.gw.test").await;
    let r = c.get("/mcp", &[]).await;
    assert_rest_error(&r, 401, "UNAUTHENTICATED");
    assert!(up.requests().is_empty());

    let mut c = gw.h2("acme.gw.test").await;
    let req = c.build(
        Method::POST,
        "/mcp/_sse",
        &[
            ("authorization", &bearer(TOKEN_ACME)),
            ("accept", "text/event-stream"),
        ],
        full("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}"),
    );
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut seen = String::new();
    // The first event arrives while the upstream holds the rest back: streamed, not buffered.
    while !seen.contains("data: event-1\n\n") {
        let d = next_data(&mut body).await.expect("first event");
        seen.push_str(&String::from_utf8_lossy(&d));
    }
    assert!(!seen.contains("event-2"));
    up.gates().sse.add_permits(2);
    while next_data(&mut body).await.is_some() {}
    let got = up.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("authorization"),
        Some("Bearer twenty-own-api-key")
    );
    assert_eq!(got[0].header("x-gateway-key-id"), Some("acme-ci"));
}

#[tokio::test]
async fn anonymous_requests_share_one_budget_per_client_ip_and_refusals_count() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &["anonymous_per_ip: { requests: 3, per: 1h }"]).await;
    let mut c = gw.h1("acme.gw.test").await;
    // Three requests across open routes, a 401 among them, use the budget...
    let r = c.get("/open-api/core", &[]).await;
    assert_eq!(r.status, 200);
    let r = c.get("/file/a/1", &[]).await;
    assert_eq!(r.status, 401);
    let r = c.get(&format!("/file/a/1?token={TWENTY_TOKEN}"), &[]).await;
    assert_eq!(r.status, 200);
    // ... the fourth is refused, whichever open route it asks for.
    for target in [
        "/open-api/metadata".to_string(),
        format!("/files/b/2?token={TWENTY_TOKEN}"),
    ] {
        let (r, id) = c.get_with_id(&target, &[]).await;
        assert_rest_error(&r, 429, "RATE_LIMITED");
        assert!(r.header("retry-after").is_some());
        let line = gw.access_line(&id).await;
        assert_eq!(line["outcome"], "rate_limited");
        assert_eq!(line["key_id"], serde_json::Value::Null);
    }
    assert_eq!(up.requests().len(), 2, "refused requests reached Twenty");
    // Keyed routes are not counted against it.
    let r = c
        .get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn route_auth_takes_the_new_names_and_refuses_unknown_ones_with_the_field() {
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up).routes(
        "  - { prefix: /rest, upstream: core, auth: key }\n  - { prefix: /public, upstream: core, auth: none }\n  - { prefix: /dl, upstream: core, auth: twenty_token }\n  - { prefix: /x, upstream: core, auth: maybe }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, conf.render()).unwrap();
    let out = run_cli(
        &["--config", path.to_str().unwrap(), "check"],
        None,
        None,
        &[],
    );
    let stderr =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("routes[3].auth") && stderr.contains("\"maybe\""),
        "{stderr}"
    );
    assert!(
        !stderr.contains("routes[1]") && !stderr.contains("routes[2]"),
        "{stderr}"
    );
}
