//! Authentication: SPEC's table row by row, error shapes, and the auth-failure brake.

pub mod common;

use common::*;
use http::Method;

const WWW_MISSING: &str = r#"Bearer realm="twenty-gateway""#;
const WWW_INVALID: &str = r#"Bearer realm="twenty-gateway", error="invalid_token""#;

const TOKEN_EXPIRED: &str = "tgw_test_expired_0123456789";
const TOKEN_REVOKED: &str = "tgw_test_revoked_0123456789";
const TOKEN_FUTURE: &str = "tgw_test_future_0123456789";

fn keys() -> String {
    format!(
        "keys:\n{}{}{}{}{}",
        key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
        key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        key_yaml(
            "acme-old",
            "acme",
            TOKEN_EXPIRED,
            "expires: 2020-01-01T00:00:00Z"
        ),
        key_yaml("acme-gone", "acme", TOKEN_REVOKED, "revoked: true"),
        key_yaml(
            "acme-future",
            "acme",
            TOKEN_FUTURE,
            "expires: 2099-01-01T00:00:00Z\nrevoked: false"
        ),
    )
}

async fn gateway(up: &Upstream) -> Gateway {
    Conf::one(up)
        .keys(&keys())
        .routes(
            "  - { prefix: /rest/metadata, upstream: metadata }
  - { prefix: /metadata, upstream: metadata }
  - { prefix: /rest, upstream: core }
  - { prefix: /graphql, upstream: core }
  - { prefix: /public, upstream: core, auth: false }
",
        )
        .spawn()
        .await
}

/// GET `path` on a new connection to acme.gw.test with extra headers; returns (response,
/// request id).
async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (Resp, String) {
    gw.h1("acme.gw.test").await.get_with_id(path, headers).await
}

#[tokio::test]
async fn missing_key_is_401_with_bare_challenge() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up).await;
    let (r, id) = get(&gw, "/rest/people", &[]).await;
    assert_rest_error(&r, 401, "UNAUTHENTICATED");
    assert_eq!(r.header("www-authenticate").as_deref(), Some(WWW_MISSING));
    assert_eq!(r.request_id(), id, "sane client request id is echoed");
    assert_eq!(gw.outcome(&id).await, "missing_key");
    assert!(up.requests().is_empty(), "nothing forwarded");
}

#[tokio::test]
async fn invalid_expired_and_revoked_keys_look_the_same_but_log_differently() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up).await;
    let cases = [
        (
            format!("Basic {}", "YWxhZGRpbjpvcGVuc2VzYW1l"),
            "invalid_key",
        ),
        (format!("Token {TOKEN_ACME}"), "invalid_key"),
        ("Bearer".to_string(), "invalid_key"),
        ("Bearer tgw_no_such_token".to_string(), "invalid_key"),
        (bearer(TOKEN_EXPIRED), "expired_key"),
        (bearer(TOKEN_REVOKED), "revoked_key"),
    ];
    let mut bodies = Vec::new();
    for (authz, outcome) in &cases {
        let (r, id) = get(&gw, "/rest/people", &[("authorization", authz)]).await;
        assert_rest_error(&r, 401, "UNAUTHENTICATED");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some(WWW_INVALID),
            "{authz}"
        );
        assert_eq!(gw.outcome(&id).await, *outcome, "{authz}");
        let mut j = r.json();
        j["requestId"] = serde_json::Value::Null;
        bodies.push(j);
    }
    // The response does not say whether the key was expired, revoked or unknown.
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "identical bodies for all invalid keys: {bodies:#?}"
    );
    assert!(up.requests().is_empty(), "nothing forwarded");
}

#[tokio::test]
async fn valid_key_is_forwarded_with_tenant_and_key_id() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up).await;
    for (token, key_id) in [(TOKEN_ACME, "acme-ci"), (TOKEN_FUTURE, "acme-future")] {
        let authz = bearer(token);
        let (r, id) = get(&gw, "/rest/people", &[("authorization", &authz)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let got = up.request_with_id(&id).await;
        assert_eq!(
            got.header_all("authorization"),
            vec![authz.as_str()],
            "Authorization passed unchanged"
        );
        assert_eq!(got.header("x-gateway-tenant"), Some("acme"));
        assert_eq!(got.header("x-gateway-key-id"), Some(key_id));
        let line = gw.access_line(&id).await;
        assert_eq!(line["outcome"], "ok");
        assert_eq!(line["key_id"], key_id);
        assert_eq!(line["tenant"], "acme");
    }
}

#[tokio::test]
async fn two_authorization_headers_are_400() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up).await;
    let a = bearer(TOKEN_ACME);
    let (r, id) = get(
        &gw,
        "/rest/people",
        &[("authorization", &a), ("authorization", &a)],
    )
    .await;
    assert_rest_error(&r, 400, "BAD_REQUEST");
    assert_eq!(gw.outcome(&id).await, "bad_request");
    let (r, id) = get(
        &gw,
        "/rest/people",
        &[("authorization", &a), ("authorization", "Bearer other")],
    )
    .await;
    assert_rest_error(&r, 400, "BAD_REQUEST");
    assert_eq!(gw.outcome(&id).await, "bad_request");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn key_of_another_tenant_is_403() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up).await;
    let (r, id) = get(
        &gw,
        "/rest/people",
        &[("authorization", &bearer(TOKEN_BETA))],
    )
    .await;
    assert_rest_error(&r, 403, "FORBIDDEN");
    let line = gw.access_line(&id).await;
    assert_eq!(line["outcome"], "wrong_tenant");
    assert_eq!(line["tenant"], "acme", "tenant is the host's");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn query_parameters_are_never_credentials() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up).await;
    for q in [
        format!("token={TOKEN_ACME}"),
        format!("access_token={TOKEN_ACME}"),
        format!("api_key={TOKEN_ACME}&authorization=Bearer%20{TOKEN_ACME}"),
    ] {
        let (r, id) = get(&gw, &format!("/rest/people?{q}"), &[]).await;
        assert_rest_error(&r, 401, "UNAUTHENTICATED");
        assert_eq!(gw.outcome(&id).await, "missing_key", "?{q}");
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn graphql_routes_get_graphql_shaped_errors() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up).await;
    for path in ["/graphql", "/metadata", "/metadata/sub", "/graphql?query=x"] {
        let (r, _) = get(&gw, path, &[]).await;
        assert_graphql_error(&r, 401, "UNAUTHENTICATED");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some(WWW_MISSING),
            "{path}"
        );
        let (r, _) = get(&gw, path, &[("authorization", "Bearer nope")]).await;
        assert_graphql_error(&r, 401, "UNAUTHENTICATED");
        let (r, _) = get(&gw, path, &[("authorization", &bearer(TOKEN_BETA))]).await;
        assert_graphql_error(&r, 403, "FORBIDDEN");
    }
    // REST shape elsewhere, including /rest/metadata
    for path in ["/rest/people", "/rest/metadata/objects"] {
        let (r, _) = get(&gw, path, &[]).await;
        assert_rest_error(&r, 401, "UNAUTHENTICATED");
        assert!(r.json().get("errors").is_none(), "{path}: REST shape");
    }
    // POST with a GraphQL body over HTTP/2 as well
    let mut c = gw.h2("acme.gw.test").await;
    let req = c.build(
        Method::POST,
        "/graphql",
        &[("content-type", "application/json")],
        full(r#"{"query":"{ people { edges { node { id } } } }"}"#),
    );
    let r = collect(c.send(req).await).await;
    assert_graphql_error(&r, 401, "UNAUTHENTICATED");
}

#[tokio::test]
async fn generated_request_id_is_echoed_and_in_the_error_body() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up).await;
    let mut c = gw.h1("acme.gw.test").await;
    let r = c.get("/rest/people", &[]).await;
    let id = r.request_id();
    assert!(!id.is_empty() && id.len() <= 128);
    assert_eq!(r.json()["requestId"], id.as_str());
    assert_eq!(gw.outcome(&id).await, "missing_key");
}

/// Brake: 3 failures per hour per IP.
async fn braked_gateway(up: &Upstream) -> Gateway {
    Conf::one(up)
        .keys(&keys())
        .routes(
            "  - { prefix: /rest, upstream: core }
  - { prefix: /graphql, upstream: core }
  - { prefix: /public, upstream: core, auth: false }
",
        )
        .limit("auth_failures_per_ip: { requests: 3, per: 1h }")
        .spawn()
        .await
}

#[tokio::test]
async fn auth_failure_brake_throttles_the_ip_even_with_a_valid_key() {
    let up = spawn_upstream("core").await;
    let gw = braked_gateway(&up).await;
    // unknown, expired and revoked all count
    for authz in [
        "Bearer guess-1".to_string(),
        bearer(TOKEN_EXPIRED),
        bearer(TOKEN_REVOKED),
    ] {
        let (r, _) = get(&gw, "/rest/people", &[("authorization", &authz)]).await;
        assert_eq!(r.status, 401, "{authz}: under the brake: {}", r.text());
    }
    let (r, id) = get(&gw, "/rest/people", &[("authorization", "Bearer guess-4")]).await;
    assert_rest_error(&r, 429, "TOO_MANY_AUTH_FAILURES");
    let ra: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(
        (1000..=1200).contains(&ra),
        "3/h → next attempt in ≤ 1200 s, got {ra}"
    );
    assert_eq!(gw.outcome(&id).await, "auth_throttled");

    // now even the right key is refused from this IP
    let (r, id) = get(
        &gw,
        "/rest/people",
        &[("authorization", &bearer(TOKEN_ACME))],
    )
    .await;
    assert_rest_error(&r, 429, "TOO_MANY_AUTH_FAILURES");
    assert!(r.header("retry-after").is_some());
    assert_eq!(gw.outcome(&id).await, "auth_throttled");
    // GraphQL shape on GraphQL routes
    let (r, _) = get(&gw, "/graphql", &[("authorization", &bearer(TOKEN_ACME))]).await;
    assert_graphql_error(&r, 429, "TOO_MANY_AUTH_FAILURES");
    // and a missing key too: the route needs authentication
    let (r, _) = get(&gw, "/rest/people", &[]).await;
    assert_eq!(r.status, 429);
    assert!(up.requests().is_empty(), "nothing forwarded");

    // routes without authentication are not braked
    let (r, _) = get(&gw, "/public/x", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn missing_keys_and_wrong_tenant_do_not_feed_the_brake() {
    let up = spawn_upstream("core").await;
    let gw = braked_gateway(&up).await;
    for _ in 0..6 {
        let (r, _) = get(&gw, "/rest/people", &[]).await;
        assert_eq!(r.status, 401);
        let (r, _) = get(
            &gw,
            "/rest/people",
            &[("authorization", &bearer(TOKEN_BETA))],
        )
        .await;
        assert_eq!(r.status, 403);
    }
    let (r, _) = get(
        &gw,
        "/rest/people",
        &[("authorization", &bearer(TOKEN_ACME))],
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "brake must not count missing keys or 403s: {}",
        r.text()
    );
}

#[tokio::test]
async fn brake_applies_to_all_connections_and_protocols_of_the_ip() {
    let up = spawn_upstream("core").await;
    let gw = braked_gateway(&up).await;
    // failures over one h2 connection (several streams)...
    let mut c = gw.h2("acme.gw.test").await;
    for i in 0..4 {
        let r = c
            .get(
                "/rest/people",
                &[("authorization", &format!("Bearer guess-{i}"))],
            )
            .await;
        assert!(r.status == 401 || r.status == 429);
    }
    // ...throttle a fresh HTTP/1.1 connection from the same IP, on another tenant's host.
    let mut c = gw.h1("beta.gw.test").await;
    let r = c
        .get("/rest/people", &[("authorization", &bearer(TOKEN_BETA))])
        .await;
    assert_rest_error(&r, 429, "TOO_MANY_AUTH_FAILURES");
}
