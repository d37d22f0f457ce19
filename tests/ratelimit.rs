//! Per-key and per-tenant GCRA limits, precedence, 429s and the IETF rate-limit fields.
//! Periods are long (`1h`) so no replenishment happens during a test: no sleeps needed.

pub mod common;

use common::*;

const TOKEN_TWO: &str = "tgw_test_acme_two_0123456789";
const TOKEN_OWN: &str = "tgw_test_acme_own_0123456789";

/// GET `path` with `token` on a new connection to `host`; (response, request id).
async fn get(gw: &Gateway, host: &str, token: &str, path: &str) -> (Resp, String) {
    let authz = bearer(token);
    let mut c = gw.h1(host).await;
    c.get_with_id(path, &[("authorization", &authz)]).await
}

fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers))
        .parse()
        .expect("Retry-After is whole seconds")
}

#[tokio::test]
async fn key_rate_gives_429_with_retry_after() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .keys(&format!(
            "keys:\n{}{}",
            key_yaml(
                "acme-ci",
                "acme",
                TOKEN_ACME,
                "rate: { requests: 2, per: 1h }"
            ),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        ))
        .spawn()
        .await;
    for _ in 0..2 {
        let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (r, id) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
    assert_rest_error(&r, 429, "RATE_LIMITED");
    let ra = retry_after(&r);
    assert!(
        (1799..=1800).contains(&ra),
        "2/h: next request in 1800 s (rounded up), got {ra}"
    );
    let line = gw.access_line(&id).await;
    assert_eq!(line["outcome"], "rate_limited");
    assert_eq!(line["key_id"], "acme-ci");
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/graphql").await;
    assert_graphql_error(&r, 429, "RATE_LIMITED");
    // another key is not affected
    let (r, _) = get(&gw, "beta.gw.test", TOKEN_BETA, "/rest/people").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.requests().len(),
        3,
        "rate-limited requests are not forwarded"
    );
}

/// SPEC's example quota (600/min, burst 50) on the first response; how the fields count down
/// on the next one with a quota that does not refill while the test runs (600/h: one request
/// back every 6 s — at 600/min one comes back every 100 ms, quicker than two TLS connections on
/// a loaded machine). The countdown at 600/min, on a clock: `ratelimit::tests::
/// spec_example_first_response`.
#[tokio::test]
async fn ratelimit_headers_match_spec_example() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .keys(&format!(
            "keys:\n{}{}",
            key_yaml(
                "acme-ci",
                "acme",
                TOKEN_ACME,
                "rate: { requests: 600, per: 1m, burst: 50 }"
            ),
            key_yaml(
                "acme-two",
                "acme",
                TOKEN_TWO,
                "rate: { requests: 600, per: 1h, burst: 50 }"
            ),
        ))
        .spawn()
        .await;
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some(r#""key";q=600;w=60"#)
    );
    assert_eq!(r.header("ratelimit").as_deref(), Some(r#""key";r=49;t=1"#));
    // the countdown
    for (remaining, reset) in [(49, 6), (48, 12)] {
        let (r, _) = get(&gw, "acme.gw.test", TOKEN_TWO, "/rest/people").await;
        assert_eq!(
            r.header("ratelimit-policy").as_deref(),
            Some(r#""key";q=600;w=3600"#)
        );
        assert_eq!(
            r.header("ratelimit"),
            Some(format!(r#""key";r={remaining};t={reset}"#)),
        );
    }
    // over HTTP/2 too
    let mut c = gw.h2("acme.gw.test").await;
    let r = c
        .get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
        .await;
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some(r#""key";q=600;w=60"#)
    );
    for v in [
        r.header("ratelimit").unwrap(),
        r.header("ratelimit-policy").unwrap(),
    ] {
        assert!(!v.contains("acme-ci"), "key id must not appear: {v}");
    }
}

#[tokio::test]
async fn key_rate_beats_tenant_key_rate_beats_default_rate() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .limit("default_rate: { requests: 3, per: 1h }")
        .tenants(
            "tenants:
  - name: acme
    subdomain: acme
    key_rate: { requests: 2, per: 1h }
  - name: beta
    subdomain: beta
",
        )
        .keys(&format!(
            "keys:\n{}{}{}",
            key_yaml(
                "acme-own",
                "acme",
                TOKEN_OWN,
                "rate: { requests: 1, per: 1h }"
            ),
            key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        ))
        .spawn()
        .await;
    for (host, token, allowed) in [
        ("acme.gw.test", TOKEN_OWN, 1u64),
        ("acme.gw.test", TOKEN_ACME, 2),
        ("beta.gw.test", TOKEN_BETA, 3),
    ] {
        for i in 0..allowed {
            let (r, _) = get(&gw, host, token, "/rest/people").await;
            assert_eq!(r.status, 200, "{token} request {i}: {}", r.text());
            assert_eq!(
                r.header("ratelimit-policy").as_deref(),
                Some(format!(r#""key";q={allowed};w=3600"#).as_str()),
                "{token}"
            );
            let rl = parse_sf_list(&r.header("ratelimit").expect("RateLimit"));
            assert_eq!(
                rl["key"]["r"],
                (allowed - 1 - i).to_string(),
                "{token} remaining after {i}"
            );
        }
        let (r, _) = get(&gw, host, token, "/rest/people").await;
        assert_rest_error(&r, 429, "RATE_LIMITED");
    }
}

#[tokio::test]
async fn tenant_rate_is_shared_by_all_its_keys() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .tenants(
            "tenants:
  - name: acme
    subdomain: acme
    rate: { requests: 3, per: 1h }
  - name: beta
    subdomain: beta
",
        )
        .keys(&format!(
            "keys:\n{}{}{}",
            key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
            key_yaml("acme-two", "acme", TOKEN_TWO, ""),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        ))
        .spawn()
        .await;
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some(r#""tenant";q=3;w=3600"#)
    );
    assert_eq!(
        r.header("ratelimit").as_deref(),
        Some(r#""tenant";r=2;t=1200"#)
    );
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
    assert_eq!(r.status, 200);
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_TWO, "/rest/people").await;
    assert_eq!(r.status, 200);
    let (r, id) = get(&gw, "acme.gw.test", TOKEN_TWO, "/rest/people").await;
    assert_rest_error(&r, 429, "RATE_LIMITED");
    let ra = retry_after(&r);
    assert!((1199..=1200).contains(&ra), "3/h: next in 1200 s, got {ra}");
    let line = gw.access_line(&id).await;
    assert_eq!(line["outcome"], "rate_limited");
    assert_eq!(line["key_id"], "acme-two");
    // another tenant is not affected
    let (r, _) = get(&gw, "beta.gw.test", TOKEN_BETA, "/rest/people").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("ratelimit-policy").is_none(),
        "no limit applies to beta-ci: {:?}",
        r.header("ratelimit-policy")
    );
    assert_eq!(up.requests().len(), 4);
}

#[tokio::test]
async fn key_and_tenant_items_together_without_key_id() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .tenants(
            "tenants:
  - name: acme
    subdomain: acme
    rate: { requests: 100, per: 1m }
",
        )
        .keys(&format!(
            "keys:\n{}",
            key_yaml(
                "acme-ci",
                "acme",
                TOKEN_ACME,
                "rate: { requests: 10, per: 1h }"
            )
        ))
        .spawn()
        .await;
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
    assert_eq!(r.status, 200);
    let policy = r.header("ratelimit-policy").expect("RateLimit-Policy");
    let rl = r.header("ratelimit").expect("RateLimit");
    let p = parse_sf_list(&policy);
    assert_eq!(p.len(), 2, "{policy}");
    assert_eq!(p["key"]["q"], "10");
    assert_eq!(p["key"]["w"], "3600");
    assert_eq!(p["tenant"]["q"], "100");
    assert_eq!(p["tenant"]["w"], "60");
    let l = parse_sf_list(&rl);
    assert_eq!(l["key"]["r"], "9", "{rl}");
    assert_eq!(l["key"]["t"], "360", "{rl}");
    assert_eq!(l["tenant"]["r"], "99", "{rl}");
    assert_eq!(l["tenant"]["t"], "1", "{rl}");
    for v in [&policy, &rl] {
        assert!(!v.contains("acme-ci"), "key id must not appear: {v}");
    }
}

#[tokio::test]
async fn only_authenticated_requests_count() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .tenants(
            "tenants:
  - name: acme
    subdomain: acme
    rate: { requests: 2, per: 1h }
",
        )
        .keys(&format!(
            "keys:\n{}",
            key_yaml(
                "acme-ci",
                "acme",
                TOKEN_ACME,
                "rate: { requests: 2, per: 1h }"
            )
        ))
        .spawn()
        .await;
    let mut c = gw.h1("acme.gw.test").await;
    for _ in 0..5 {
        let r = c.get("/rest/people", &[]).await;
        assert_eq!(r.status, 401);
        let r = c
            .get("/restaurant", &[("authorization", &bearer(TOKEN_ACME))])
            .await;
        assert_eq!(r.status, 404);
    }
    for _ in 0..2 {
        let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
        assert_eq!(
            r.status,
            200,
            "unauthenticated requests must not use up the budget: {}",
            r.text()
        );
    }
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
    assert_eq!(r.status, 429);
}

#[tokio::test]
async fn default_rate_applies_to_keys_without_one() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .limit("default_rate: { requests: 1, per: 1h }")
        .spawn()
        .await;
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some(r#""key";q=1;w=3600"#)
    );
    assert_eq!(
        r.header("ratelimit").as_deref(),
        Some(r#""key";r=0;t=3600"#)
    );
    let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
    assert_rest_error(&r, 429, "RATE_LIMITED");
    // each key has its own limiter
    let (r, _) = get(&gw, "beta.gw.test", TOKEN_BETA, "/rest/people").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn no_limits_means_no_ratelimit_fields() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    for _ in 0..30 {
        let (r, _) = get(&gw, "acme.gw.test", TOKEN_ACME, "/rest/people").await;
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit").is_none() && r.header("ratelimit-policy").is_none());
    }
}
