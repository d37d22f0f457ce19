//! The access log: one flat JSON line per request with SPEC's fields, and no secrets anywhere.

pub mod common;

use common::*;
use http::Method;
use serde_json::Value;

const FIELDS: &[&str] = &[
    "timestamp",
    "request_id",
    "client_ip",
    "method",
    "host",
    "path",
    "route",
    "tenant",
    "key_id",
    "status",
    "outcome",
    "upstream",
    "duration_ms",
    "upstream_ms",
    "bytes_out",
    "protocol",
    "user_agent",
];

#[tokio::test]
async fn access_line_has_every_field_with_the_right_type() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    for h2 in [false, true] {
        let mut c = gw.conn(h2, "acme.gw.test").await;
        let id = rid();
        let r = c
            .get(
                "/rest/people?filter=name%3Dx",
                &[
                    ("authorization", &bearer(TOKEN_ACME)),
                    ("x-request-id", &id),
                    ("user-agent", "test-agent/1.0"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        let l = gw.access_line(&id).await;
        let missing: Vec<_> = FIELDS.iter().filter(|f| !l.contains_key(**f)).collect();
        assert!(missing.is_empty(), "missing fields {missing:?} in {l:?}");
        assert_eq!(l["event"], "request");
        let ts = l["timestamp"].as_str().expect("timestamp string");
        assert!(
            ts.starts_with("20") && ts.contains('T'),
            "RFC 3339 timestamp: {ts}"
        );
        assert_eq!(l["request_id"], id.as_str());
        assert_eq!(l["client_ip"], "127.0.0.1");
        assert_eq!(l["method"], "GET");
        assert_eq!(l["host"], "acme.gw.test");
        assert_eq!(l["path"], "/rest/people", "no query string");
        assert_eq!(l["route"], "/rest", "route is the matched prefix");
        assert_eq!(l["tenant"], "acme");
        assert_eq!(l["key_id"], "acme-ci");
        assert_eq!(l["status"], 200, "status is a number");
        assert_eq!(l["outcome"], "ok");
        assert_eq!(l["upstream"], "core");
        assert!(
            l["duration_ms"].is_number(),
            "duration_ms number: {}",
            l["duration_ms"]
        );
        assert!(
            l["upstream_ms"].is_number(),
            "upstream_ms number: {}",
            l["upstream_ms"]
        );
        let bytes_out = l["bytes_out"].as_u64().expect("bytes_out integer");
        assert!(
            bytes_out >= r.body.len() as u64,
            "bytes_out {bytes_out} < body {}",
            r.body.len()
        );
        assert_eq!(l["protocol"], if h2 { "HTTP/2" } else { "HTTP/1.1" });
        assert_eq!(l["user_agent"], "test-agent/1.0");
        for (k, v) in &l {
            assert!(
                !v.is_object() && !v.is_array(),
                "flat object: field {k} is {v}"
            );
        }
    }
}

#[tokio::test]
async fn unknown_values_are_null() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    // unknown host: no tenant, route, key, upstream
    let mut c = Conn::tls(gw.https(), &TlsOpts::h1("x").no_sni(), "nobody.example.org").await;
    let (r, id) = c.get_with_id("/rest/people", &[]).await;
    assert_eq!(r.status, 404);
    let l = gw.access_line(&id).await;
    for f in ["tenant", "route", "key_id", "upstream", "upstream_ms"] {
        assert!(
            l.get(f).is_some_and(Value::is_null),
            "{f} is present and null: {:?}",
            l.get(f)
        );
    }
    assert!(
        l.get("user_agent").is_some_and(Value::is_null),
        "no User-Agent sent → null: {:?}",
        l.get("user_agent")
    );
    assert_eq!(l["status"], 404);
    assert_eq!(l["outcome"], "unknown_host");
    // missing key: tenant and route known, key not
    let mut c = gw.h1("acme.gw.test").await;
    let id = rid();
    c.get("/rest/people", &[("x-request-id", &id)]).await;
    let l = gw.access_line(&id).await;
    assert_eq!(l["tenant"], "acme");
    assert_eq!(l["route"], "/rest");
    assert!(l["key_id"].is_null());
    assert!(
        l["upstream_ms"].is_null(),
        "not forwarded → upstream_ms null"
    );
    assert_eq!(l["status"], 401);
}

#[tokio::test]
async fn exactly_one_line_per_request() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let mut ids = Vec::new();
    for (path, auth) in [
        ("/rest/people", true),
        ("/rest/people", false),
        ("/restaurant", true),
        ("/graphql", true),
    ] {
        let id = rid();
        let a = bearer(TOKEN_ACME);
        let mut h = vec![("x-request-id", id.as_str())];
        if auth {
            h.push(("authorization", &a));
        }
        c.get(path, &h).await;
        ids.push(id);
    }
    // streaming and upstream-error responses too
    let req = c.build(
        Method::GET,
        "/rest/x/_sse",
        &[
            ("authorization", &bearer(TOKEN_ACME)),
            ("x-request-id", "sse-once"),
        ],
        empty(),
    );
    let resp = c.send(req).await;
    up.gates().sse.add_permits(2);
    collect(resp).await;
    ids.push("sse-once".into());
    let last = rid();
    c.get(
        "/rest/people",
        &[
            ("authorization", &bearer(TOKEN_ACME)),
            ("x-request-id", &last),
        ],
    )
    .await;
    gw.access_line(&last).await;
    for id in &ids {
        gw.access_line(id).await;
        let n = gw
            .access_lines()
            .iter()
            .filter(|l| l["request_id"] == id.as_str())
            .count();
        assert_eq!(n, 1, "access lines for {id}");
    }
}

#[tokio::test]
async fn every_stdout_line_is_a_json_object() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_http().spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let id = rid();
    c.get(
        "/rest/people",
        &[
            ("authorization", &bearer(TOKEN_ACME)),
            ("x-request-id", &id),
        ],
    )
    .await;
    gw.access_line(&id).await;
    for l in gw.stdout.snapshot() {
        let m =
            parse_json_line(&l).unwrap_or_else(|| panic!("stdout line is not a JSON object: {l}"));
        assert!(m.contains_key("timestamp"), "timestamp in {l}");
    }
    let listening: Vec<_> = gw
        .json_lines()
        .into_iter()
        .filter(|m| m["event"] == "listening")
        .collect();
    assert!(
        listening
            .iter()
            .any(|m| m["listener"] == "https" && m["addr"] == gw.https().to_string().as_str())
    );
    assert!(
        listening
            .iter()
            .any(|m| m["listener"] == "http" && m["addr"] == gw.http().to_string().as_str())
    );
}

#[tokio::test]
async fn secrets_never_appear_in_any_output() {
    let up = spawn_upstream("core").await;
    let setup = GatewaySetup::new().env("TGW_LOG_TEST_UPSTREAM_KEY", "UPSTREAMSECRETENV42");
    setup.file("twenty.key", "UPSTREAMSECRETFILE42\n");
    let gw = Conf::one(&up)
        .tenants(
            "tenants:
  - name: acme
    subdomain: acme
    domains: [crm.acme.test]
    upstream_token_env: TGW_LOG_TEST_UPSTREAM_KEY
  - name: beta
    subdomain: beta
    upstream_token_file: twenty.key
",
        )
        .limit("max_request_body: 1KiB")
        .spawn_in(setup)
        .await;

    let guess = "tgw_GUESSEDSECRET42";
    let mut ids = Vec::new();
    let a = bearer(TOKEN_ACME);
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>);
    let cases: Vec<Case> = vec![
        (
            "acme.gw.test",
            "/rest/people?token=QUERYSECRET1",
            vec![("authorization", a.clone())],
        ),
        ("acme.gw.test", "/rest/people?token=QUERYSECRET2", vec![]),
        (
            "acme.gw.test",
            "/graphql?access_token=QUERYSECRET3",
            vec![("authorization", bearer(guess))],
        ),
        (
            "acme.gw.test",
            "/rest/people",
            vec![("authorization", "Basic QkFTSUNTRUNSRVQ0Mg==".into())],
        ),
        (
            "acme.gw.test",
            "/rest/people",
            vec![("authorization", "BEARERWEIRDSECRET42".into())],
        ),
        (
            "acme.gw.test",
            "/rest/people",
            vec![
                ("authorization", a.clone()),
                ("authorization", bearer(guess)),
            ],
        ),
        (
            "acme.gw.test",
            "/rest/people",
            vec![
                ("authorization", bearer(TOKEN_BETA)),
                ("proxy-authorization", "Basic PROXYSECRET42".into()),
            ],
        ),
        (
            "beta.gw.test",
            "/rest/people?x=QUERYSECRET4",
            vec![("authorization", bearer(TOKEN_BETA))],
        ),
        (
            "nobody.gw.test",
            "/rest/people?k=QUERYSECRET5",
            vec![("authorization", a.clone())],
        ),
        (
            "acme.gw.test",
            "/restaurant?k=QUERYSECRET6",
            vec![("authorization", a.clone())],
        ),
    ];
    for (h2, (host, path, headers)) in [false, true]
        .into_iter()
        .flat_map(|h2| cases.iter().map(move |c| (h2, c)))
    {
        let mut c = gw.conn(h2, host).await;
        let id = rid();
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("x-request-id", &id));
        c.get(path, &h).await;
        ids.push(id);
    }
    // a too-large body with a token
    let mut c = gw.h1("acme.gw.test").await;
    let id = rid();
    c.request(
        Method::POST,
        "/rest/people?q=QUERYSECRET7",
        &[("authorization", &a), ("x-request-id", &id)],
        vec![b'x'; 4096],
    )
    .await;
    ids.push(id);
    for id in &ids {
        gw.access_line(id).await;
    }
    // Stop the process so that everything it will ever print has been printed.
    gw.terminate().await;
    let out = gw.all_output();
    let secrets = [
        TOKEN_ACME,
        TOKEN_BETA,
        guess,
        "QUERYSECRET",
        "QkFTSUNTRUNSRVQ0Mg",
        "BEARERWEIRDSECRET42",
        "PROXYSECRET42",
        "UPSTREAMSECRETENV42",
        "UPSTREAMSECRETFILE42",
    ];
    let leaks: Vec<_> = secrets.iter().filter(|s| out.contains(**s)).collect();
    assert!(leaks.is_empty(), "secrets {leaks:?} in output:\n{out}");
}

#[tokio::test]
async fn access_log_false_disables_request_lines() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).extra("access_log: false").spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let r = c
        .get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
        .await;
    assert_eq!(r.status, 200);
    drop(c);
    gw.terminate().await;
    assert!(
        gw.access_lines().is_empty(),
        "no access lines with access_log: false: {:?}",
        gw.access_lines()
    );
}

#[tokio::test]
async fn sigterm_exits_0_and_logs_shutdown() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    assert_eq!(
        c.get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
            .await
            .status,
        200
    );
    drop(c);
    let status = gw.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM → exit 0; stderr: {}",
        gw.stderr.snapshot().join("\n")
    );
    gw.stdout.wait_eof().await;
    let events: Vec<String> = gw
        .json_lines()
        .iter()
        .filter_map(|m| m.get("event").and_then(Value::as_str).map(str::to_string))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.contains("shutdown") || e.contains("stopp")),
        "a shutdown event is logged: {events:?}"
    );
}
