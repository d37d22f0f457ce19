//! Host → tenant, path → route → upstream, request-target hygiene, order of checks.

pub mod common;

use common::*;

struct Fx {
    core: Upstream,
    meta: Upstream,
    acme_core: Upstream,
    gw: Gateway,
}

/// core + metadata upstreams; tenant acme overrides `core`; `/healthz` is an `auth: false` route.
async fn fixture() -> Fx {
    let core = spawn_upstream("core").await;
    let meta = spawn_upstream("metadata").await;
    let acme_core = spawn_upstream("acme-core").await;
    let gw = Conf::two(&core, &meta)
        .tenants(&format!(
            "tenants:
  - name: acme
    subdomain: acme
    domains: [crm.acme.test]
    upstreams:
      core: {}
  - name: beta
    subdomain: beta
    domains: [crm.beta.test]
",
            acme_core.url()
        ))
        .routes(
            "  - { prefix: /rest/metadata, upstream: metadata }
  - { prefix: /metadata, upstream: metadata }
  - { prefix: /rest, upstream: core }
  - { prefix: /graphql, upstream: core }
  - { prefix: /healthz, upstream: core, auth: false }
",
        )
        .spawn()
        .await;
    Fx {
        core,
        meta,
        acme_core,
        gw,
    }
}

/// A TLS connection without SNI (so no 421 interferes with host tests).
async fn no_sni(gw: &Gateway, host: &str) -> Conn {
    Conn::tls(gw.https(), &TlsOpts::h1("x").no_sni(), host).await
}

#[tokio::test]
async fn tenant_from_custom_domain_and_subdomain() {
    let fx = fixture().await;
    for (host, token, tenant, upstream) in [
        ("crm.acme.test", TOKEN_ACME, "acme", "acme-core"),
        ("acme.gw.test", TOKEN_ACME, "acme", "acme-core"),
        ("crm.beta.test", TOKEN_BETA, "beta", "core"),
        ("beta.gw.test", TOKEN_BETA, "beta", "core"),
    ] {
        let mut c = fx.gw.h1(host).await;
        let (r, id) = c
            .get_with_id("/rest/people", &[("authorization", &bearer(token))])
            .await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.json()["upstream"], upstream, "{host} served by");
        let line = fx.gw.access_line(&id).await;
        assert_eq!(line["tenant"], tenant, "{host}");
        assert_eq!(line["host"], host, "{host}");
    }
    let got = fx.acme_core.wait_requests(2).await;
    assert!(
        got.iter()
            .all(|r| r.header("x-gateway-tenant") == Some("acme"))
    );
}

#[tokio::test]
async fn host_is_lowercased_and_port_and_trailing_dot_removed() {
    let fx = fixture().await;
    let a = bearer(TOKEN_ACME);
    for host in [
        "ACME.GW.TEST",
        "acme.gw.test.",
        "acme.gw.test:8443",
        "Crm.Acme.Test.:443",
        "acme.gw.test.:1",
    ] {
        let mut c = fx.gw.h1("acme.gw.test").await;
        let r = c
            .get("/rest/people", &[("host", host), ("authorization", &a)])
            .await;
        assert_eq!(r.status, 200, "Host {host:?}: {}", r.text());
        assert_eq!(r.json()["upstream"], "acme-core", "Host {host:?}");
    }
    // HTTP/2 :authority with a port
    let mut c = fx.gw.h2("acme.gw.test").await;
    let r = c
        .get(
            "/rest/people",
            &[("host", "acme.gw.test:443"), ("authorization", &a)],
        )
        .await;
    assert_eq!(r.status, 200, ":authority with port: {}", r.text());
}

#[tokio::test]
async fn unknown_hosts_are_404_not_found() {
    let fx = fixture().await;
    let a = bearer(TOKEN_ACME);
    for host in [
        "a.acme.gw.test",
        "gw.test",
        "nobody.example.org",
        "acme.other.test",
        "crm.acme.test.evil",
    ] {
        let mut c = no_sni(&fx.gw, host).await;
        let (r, id) = c
            .get_with_id("/rest/people", &[("authorization", &a)])
            .await;
        assert_rest_error(&r, 404, "NOT_FOUND");
        let line = fx.gw.access_line(&id).await;
        assert_eq!(line["outcome"], "unknown_host", "{host}");
        assert!(
            line["tenant"].is_null(),
            "{host}: tenant null, got {}",
            line["tenant"]
        );
    }
    // unknown host is checked before the route and before authentication
    let mut c = no_sni(&fx.gw, "nobody.example.org").await;
    let r = c.get("/nothing-here", &[]).await;
    assert_rest_error(&r, 404, "NOT_FOUND");
    assert!(
        fx.core.requests().is_empty()
            && fx.acme_core.requests().is_empty()
            && fx.meta.requests().is_empty()
    );
}

#[tokio::test]
async fn longest_whole_segment_prefix_wins() {
    let fx = fixture().await;
    let b = bearer(TOKEN_BETA);
    let mut c = fx.gw.h1("beta.gw.test").await;
    for (path, upstream) in [
        ("/rest/metadata/x", "metadata"),
        ("/rest/metadata", "metadata"),
        ("/rest/metadata/", "metadata"),
        ("/rest/people", "core"),
        ("/rest/metadataX", "core"),
        ("/rest", "core"),
        ("/rest/", "core"),
        ("/metadata", "metadata"),
        ("/metadata/x", "metadata"),
        ("/graphql", "core"),
    ] {
        let r = c.get(path, &[("authorization", &b)]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["upstream"], upstream, "{path}");
        assert_eq!(r.json()["target"], path, "{path} forwarded unchanged");
    }
    for path in [
        "/restaurant",
        "/",
        "/graphqlx",
        "/res",
        "/metadatax/y",
        "/other/rest",
    ] {
        let (r, id) = c.get_with_id(path, &[("authorization", &b)]).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "NOT_FOUND", "{path}");
        assert_eq!(fx.gw.outcome(&id).await, "no_route", "{path}");
    }
}

#[tokio::test]
async fn no_route_is_404_before_authentication() {
    let fx = fixture().await;
    let mut c = fx.gw.h1("acme.gw.test").await;
    let (r, id) = c.get_with_id("/restaurant", &[]).await;
    assert_rest_error(&r, 404, "NOT_FOUND");
    assert_eq!(fx.gw.outcome(&id).await, "no_route");
}

#[tokio::test]
async fn tenant_upstream_overrides_apply_per_name() {
    let fx = fixture().await;
    let mut c = fx.gw.h1("acme.gw.test").await;
    let a = bearer(TOKEN_ACME);
    let (r, id) = c
        .get_with_id("/rest/people", &[("authorization", &a)])
        .await;
    assert_eq!(r.json()["upstream"], "acme-core");
    assert_eq!(
        fx.gw.access_line(&id).await["upstream"],
        "core",
        "log names the upstream, not the URL"
    );
    let r = c
        .get("/rest/metadata/objects", &[("authorization", &a)])
        .await;
    assert_eq!(
        r.json()["upstream"],
        "metadata",
        "metadata not overridden → default"
    );
    let mut c = fx.gw.h1("beta.gw.test").await;
    let r = c
        .get("/rest/people", &[("authorization", &bearer(TOKEN_BETA))])
        .await;
    assert_eq!(r.json()["upstream"], "core", "beta uses the default core");
    assert!(
        fx.core
            .requests()
            .iter()
            .all(|r| r.header("x-gateway-tenant") == Some("beta"))
    );
}

#[tokio::test]
async fn route_with_auth_false_needs_no_key() {
    let fx = fixture().await;
    let mut c = fx.gw.h1("acme.gw.test").await;
    let (r, id) = c.get_with_id("/healthz", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], "acme-core");
    let line = fx.gw.access_line(&id).await;
    assert_eq!(line["outcome"], "ok");
    assert!(
        line["key_id"].is_null(),
        "no key: key_id null, got {}",
        line["key_id"]
    );
    // while the default routes still require one
    let r = c.get("/rest/people", &[]).await;
    assert_eq!(r.status, 401);
}

/// Targets that must be rejected with 400 before routing.
const BAD_TARGETS: &[&str] = &[
    "/rest/../x",
    "/rest/./x",
    "/rest/..",
    "/rest/.",
    "/rest/people/..",
    "/rest/%2e%2e/x",
    "/rest/%2E%2E/x",
    "/rest/.%2e/x",
    "/rest/%2e/x",
    "/rest/%2E/x",
    "//rest/people",
    "/rest//people",
    "/rest/people//",
    "/rest/a%2Fb",
    "/rest/a%2fb",
    "/rest/a%5Cb",
    "/rest/a%5cb",
    "/rest/a\\b",
    "/rest/a%00b",
    "/rest/a%zzb",
    "/rest/a%4",
    "/rest/a%ffb",
    "*",
    "https://evil.test/rest/people",
];

#[tokio::test]
async fn malformed_request_targets_are_400_and_never_forwarded() {
    let fx = fixture().await;
    let mut failures = Vec::new();
    for target in BAD_TARGETS {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: acme.gw.test\r\nAuthorization: Bearer {TOKEN_ACME}\r\nConnection: close\r\n\r\n"
        );
        let mut c = RawConn::tls(fx.gw.https(), Some("acme.gw.test")).await;
        c.write(req.as_bytes()).await;
        match c.try_read_response().await {
            None => failures.push(format!("{target:?}: connection closed without a response")),
            Some(r) => {
                let code = serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|j| j["error"].as_str().map(str::to_string));
                if r.status != 400 || code.as_deref() != Some("BAD_REQUEST") {
                    failures.push(format!(
                        "{target:?}: status {} body {:?} (want 400 BAD_REQUEST JSON)",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                }
            }
        }
    }
    // The upstream got none of them: the next valid request is the first thing it sees.
    let mut c = fx.gw.h1("acme.gw.test").await;
    let r = c
        .get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
        .await;
    assert_eq!(r.status, 200);
    let got = fx.acme_core.wait_requests(1).await;
    let seen: Vec<_> = got.iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        seen,
        vec!["/rest/people".to_string()],
        "upstream saw rejected targets"
    );
    assert!(fx.core.requests().is_empty() && fx.meta.requests().is_empty());
    assert!(
        failures.is_empty(),
        "rejected targets not answered 400 BAD_REQUEST:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn bad_target_is_logged_as_bad_request_and_checked_before_host() {
    let fx = fixture().await;
    let id = rid();
    let r = raw_tls_request(
        fx.gw.https(),
        None,
        format!("GET /rest/%2e%2e/x HTTP/1.1\r\nHost: nobody.example.org\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "target (400) before host (404)");
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    assert_eq!(fx.gw.outcome(&id).await, "bad_request");
}

#[tokio::test]
async fn path_and_query_reach_upstream_byte_for_byte() {
    let fx = fixture().await;
    let targets = [
        "/rest/people/",
        "/rest/people?filter=a%20b&x=%2F&x=%2f&y=1&y=2&z=&plus=a+b",
        "/rest/caf%C3%A9/People%20X?orderBy=name%5BAscNullsFirst%5D&q='q'",
        "/rest/people?last_cursor=eyJpZCI6IjEifQ%3D%3D",
        "/rest/metadata/objects?limit=5&a=%252e%252e",
        "/graphql?",
        "/rest/a.b/..c/c..",
    ];
    for target in targets {
        let id = rid();
        let r = raw_tls_request(
            fx.gw.https(),
            Some("beta.gw.test"),
            format!(
                "GET {target} HTTP/1.1\r\nHost: beta.gw.test\r\nAuthorization: Bearer {TOKEN_BETA}\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{target}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let up = if target.starts_with("/rest/metadata") {
            &fx.meta
        } else {
            &fx.core
        };
        let got = up.request_with_id(&id).await;
        assert_eq!(got.target, target, "upstream request target");
        // the access line has the path without the query
        let line = fx.gw.access_line(&id).await;
        assert_eq!(
            line["path"],
            target.split('?').next().unwrap(),
            "log path has no query"
        );
    }
}

/// A request target that is not even origin-form: hyper's parser may reject it before the
/// gateway's code runs, but SPEC still wants a JSON error wherever the connection can carry one.
#[tokio::test]
async fn non_absolute_path_target_is_400_json() {
    let fx = fixture().await;
    let r = raw_tls_request(
        fx.gw.https(),
        Some("acme.gw.test"),
        format!("GET rest/people HTTP/1.1\r\nHost: acme.gw.test\r\nAuthorization: Bearer {TOKEN_ACME}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(fx.acme_core.requests().is_empty());
    assert_raw_rest_error(&r, 400, "BAD_REQUEST");
}

/// The same checks apply to HTTP/2 `:path` (the h2 client sends the path verbatim).
#[tokio::test]
async fn malformed_paths_over_http2_are_400() {
    let fx = fixture().await;
    let mut c = fx.gw.h2("acme.gw.test").await;
    let a = bearer(TOKEN_ACME);
    let mut failures = Vec::new();
    for target in [
        "/rest/../x",
        "/rest/./x",
        "/rest/%2e%2e/x",
        "/rest/%2E/x",
        "/rest//people",
        "/rest/a%2Fb",
        "/rest/a%5cb",
        "/rest/a%00b",
        "/rest/a%zzb",
    ] {
        let r = c.get(target, &[("authorization", &a)]).await;
        let code = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|j| j["error"].as_str().map(str::to_string));
        if r.status != 400 || code.as_deref() != Some("BAD_REQUEST") {
            failures.push(format!("{target:?}: {} {}", r.status, r.text()));
        }
    }
    let r = c.get("/rest/people/", &[("authorization", &a)]).await;
    assert_eq!(r.status, 200, "trailing slash is fine");
    let got = fx.acme_core.wait_requests(1).await;
    assert_eq!(
        got.len(),
        1,
        "only the valid request was forwarded: {got:#?}"
    );
    assert!(
        failures.is_empty(),
        "h2 targets not rejected:\n{}",
        failures.join("\n")
    );
}
