//! Scoped keys (SPEC "Scoped keys") through the real gateway: every allowed
//! and refused case asserted as status + error shape + log outcome + what
//! the upstream received (nothing for a refusal; the exact bytes for an
//! allowed checked body), on HTTP/1.1 and HTTP/2; quota use and `RateLimit`
//! fields on refusals; a reload changing a key's scope on open connections;
//! the metric; config errors with their paths.

pub mod common;

use bytes::Bytes;
use common::*;
use http::Method;

const TOKEN_READ: &str = "tgw_test_acme_read_0123456789abcdef";
const TOKEN_CORE: &str = "tgw_test_acme_core_0123456789abcdef";
const TOKEN_META_READ: &str = "tgw_test_acme_meta_read_0123456789ab";

fn keys(read_extra: &str) -> String {
    format!(
        "keys:\n{}{}{}{}{}",
        key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
        key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        key_yaml("acme-read", "acme", TOKEN_READ, read_extra),
        key_yaml("acme-core", "acme", TOKEN_CORE, "apis: [core]"),
        key_yaml(
            "acme-meta-read",
            "acme",
            TOKEN_META_READ,
            "scope: read\napis: [metadata]"
        ),
    )
}

fn conf(core: &Upstream, metadata: &Upstream) -> Conf {
    Conf::two(core, metadata)
        .keys(&keys("scope: read"))
        .with_admin()
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// What a case expects: forwarded unchanged, or refused with (status,
/// code, outcome) and nothing upstream.
#[derive(Clone, Copy, Debug)]
enum Want {
    Forwarded,
    Refused(u16, &'static str, &'static str),
}

const FORBIDDEN: Want = Want::Refused(403, "FORBIDDEN", "scope_denied");
const BAD: Want = Want::Refused(400, "BAD_REQUEST", "bad_request");
const MEDIA: Want = Want::Refused(415, "UNSUPPORTED_MEDIA_TYPE", "unsupported_media_type");
const TOO_LARGE: Want = Want::Refused(413, "PAYLOAD_TOO_LARGE", "payload_too_large");

struct Case {
    name: &'static str,
    token: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    /// Send the body in these many frames without a length (chunked on h1).
    chunks: usize,
    want: Want,
}

fn case(
    name: &'static str,
    token: &'static str,
    method: Method,
    path: &str,
    headers: &[(&'static str, &'static str)],
    body: impl Into<Vec<u8>>,
    want: Want,
) -> Case {
    Case {
        name,
        token,
        method,
        path: path.to_owned(),
        headers: headers.to_vec(),
        body: body.into(),
        chunks: 0,
        want,
    }
}

fn gql(name: &'static str, token: &'static str, body: &str, want: Want) -> Case {
    case(name, token, Method::POST, "/graphql", &[JSON], body, want)
}

fn doc(document: &str) -> String {
    serde_json::json!({ "query": document }).to_string()
}

#[rustfmt::skip]
fn table() -> Vec<Case> {
    use Method as M;
    use Want::Forwarded as OK;
    let r = TOKEN_READ;
    let big = format!("{{\"query\":\"{{ a }}\",\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let near = format!("{{\"query\":\"{{ a }}\",\"pad\":\"{}\"}}", "x".repeat(64 * 1024 - 40));
    let mut chunked_ok = gql("read: query sent in 7 chunks", r, "{\"query\" : \"query Q { people { id } }\",\n \"variables\":{}}", OK);
    chunked_ok.chunks = 7;
    let mut chunked_big = gql("read: 70 KiB chunked, unannounced", r, &big, TOO_LARGE);
    chunked_big.chunks = 5;
    vec![
        // unscoped keys stream as before, never parsed
        gql("unscoped: mutation", TOKEN_ACME, &doc("mutation { deleteOnePerson(id: 1) { id } }"), OK),
        case("unscoped: multipart", TOKEN_ACME, M::POST, "/graphql", &[("content-type", "multipart/form-data; boundary=x")], "--x--\r\n", OK),
        case("unscoped: DELETE rest", TOKEN_ACME, M::DELETE, "/rest/people/1", &[], "", OK),
        gql("unscoped: 70 KiB, not limited to 64", TOKEN_ACME, &big, OK),
        // apis
        case("core key: GET /rest/metadata", TOKEN_CORE, M::GET, "/rest/metadata/objects", &[], "", FORBIDDEN),
        case("core key: POST /metadata", TOKEN_CORE, M::POST, "/metadata", &[JSON], doc("{ objects { id } }"), FORBIDDEN),
        case("core key: DELETE /rest", TOKEN_CORE, M::DELETE, "/rest/people/1", &[], "", OK),
        case("metadata read key: POST /metadata query", TOKEN_META_READ, M::POST, "/metadata", &[JSON], doc("{ objects { id } }"), OK),
        case("metadata read key: POST /metadata mutation", TOKEN_META_READ, M::POST, "/metadata", &[JSON], doc("mutation { createOneObject { id } }"), FORBIDDEN),
        case("metadata read key: POST /graphql", TOKEN_META_READ, M::POST, "/graphql", &[JSON], doc("{ a }"), FORBIDDEN),
        // REST, read key
        case("read: GET rest", r, M::GET, "/rest/people?limit=1", &[], "", OK),
        case("read: HEAD rest", r, M::HEAD, "/rest/people", &[], "", OK),
        case("read: POST rest", r, M::POST, "/rest/people", &[JSON], "{}", FORBIDDEN),
        case("read: POST rest duplicates", r, M::POST, "/rest/people/duplicates", &[JSON], "{}", FORBIDDEN),
        case("read: PATCH rest", r, M::PATCH, "/rest/people/1", &[JSON], "{}", FORBIDDEN),
        case("read: DELETE rest", r, M::DELETE, "/rest/people/1", &[], "", FORBIDDEN),
        case("read: method override", r, M::GET, "/rest/people/1", &[("x-http-method-override", "DELETE")], "", FORBIDDEN),
        // GraphQL, read key: allowed
        gql("read: query", r, &doc("query People { people { edges { node { id } } } }"), OK),
        gql("read: subscription", r, &doc("subscription { onDbEvent { id } }"), OK),
        gql("read: fragments, aliases, mutation as a field name", r, &doc("query { mutation: people { ...F } } fragment F on Person { id }"), OK),
        gql("read: odd but exact JSON", r, "{ \"query\" :\"{ a(s: \\\"\\u00e9\\\") }\" , \"\\u006fperationName\": null,\"variables\":{\"x\":[1,2.50,{}]} }  \n", OK),
        chunked_ok,
        gql("read: body just under 64 KiB", r, &near, OK),
        case("read: charset", r, M::POST, "/graphql", &[("content-type", "application/json; charset=utf-8")], doc("{ a }"), OK),
        case("read: GET query", r, M::GET, "/graphql?query=%7B+people+%7B+id+%7D+%7D&operationName=", &[], "", OK),
        // GraphQL, read key: refused
        gql("read: mutation", r, &doc("mutation { deleteOnePerson(id: 1) { id } }"), FORBIDDEN),
        gql("read: mutation behind operationName", r, r#"{"query":"query A { a } mutation B { deleteAll }","operationName":"A"}"#, FORBIDDEN),
        gql("read: mutation spreading a fragment", r, &doc("fragment F on Mutation { deleteAll } mutation { ...F }"), FORBIDDEN),
        gql("read: mutation after a comment ended by CR", r, &doc("{ a } # c\rmutation { x }"), FORBIDDEN),
        case("read: GET mutation", r, M::GET, "/graphql?query=mutation+%7B+x+%7D", &[], "", FORBIDDEN),
        case("read: PUT graphql", r, M::PUT, "/graphql", &[JSON], doc("{ a }"), FORBIDDEN),
        gql("read: batch", r, r#"[{"query":"{ a }"}]"#, BAD),
        gql("read: persisted query", r, r#"{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"abc"}}}"#, BAD),
        gql("read: duplicate query", r, r#"{"query":"{ a }","\u0071uery":"mutation { x }"}"#, BAD),
        gql("read: duplicate in variables", r, r#"{"query":"{ a }","variables":{"a":1,"a":2}}"#, BAD),
        gql("read: unparseable", r, &doc("{ a"), BAD),
        gql("read: not JSON", r, "query { a }", BAD),
        case("read: GET repeated query", r, M::GET, "/graphql?query=%7Ba%7D&query=mutation+%7Bx%7D", &[], "", BAD),
        case("read: GET without query", r, M::GET, "/graphql?operationName=A", &[], "", BAD),
        case("read: POST with query in URL", r, M::POST, "/graphql?query=%7Ba%7D", &[JSON], doc("{ a }"), BAD),
        case("read: multipart", r, M::POST, "/graphql", &[("content-type", "multipart/form-data; boundary=x")], "--x--\r\n", MEDIA),
        case("read: form", r, M::POST, "/graphql", &[("content-type", "application/x-www-form-urlencoded")], "query=%7Ba%7D", MEDIA),
        case("read: application/graphql", r, M::POST, "/graphql", &[("content-type", "application/graphql")], "{ a }", MEDIA),
        case("read: gzip", r, M::POST, "/graphql", &[JSON, ("content-encoding", "gzip")], b"\x1f\x8b\x08\x00".to_vec(), MEDIA),
        gql("read: 70 KiB announced", r, &big, TOO_LARGE),
        chunked_big,
    ]
}

async fn send(c: &mut Conn, t: &Case, id: &str) -> Resp {
    let auth = bearer(t.token);
    let mut headers = t.headers.clone();
    headers.push(("authorization", &auth));
    headers.push(("x-request-id", id));
    if t.chunks == 0 {
        return c
            .request(t.method.clone(), &t.path, &headers, t.body.clone())
            .await;
    }
    let (tx, body) = chan_body(t.chunks + 1);
    let req = c.build(t.method.clone(), &t.path, &headers, body);
    let size = t.body.len().div_ceil(t.chunks);
    let parts: Vec<Bytes> = t.body.chunks(size).map(Bytes::copy_from_slice).collect();
    let feed = async move {
        for p in parts {
            if tx.send(p).await.is_err() {
                break; // the gateway answered before reading it all
            }
        }
    };
    let (resp, ()) = tokio::join!(c.send(req), feed);
    collect(resp).await
}

fn graphql_route(path: &str) -> bool {
    path.starts_with("/graphql") || path.starts_with("/metadata")
}

async fn run_table(gw: &Gateway, core: &Upstream, metadata: &Upstream, h2: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for t in table() {
        let mut c = gw.conn(h2, "acme.gw.test").await;
        let id = rid();
        let r = send(&mut c, &t, &id).await;
        let up = if t.path.starts_with("/metadata") || t.path.starts_with("/rest/metadata") {
            metadata
        } else {
            core
        };
        let label = format!("{} ({})", t.name, if h2 { "h2" } else { "h1" });
        match t.want {
            Want::Forwarded => {
                if r.status != 200 {
                    failures.push(format!("{label}: status {} {}", r.status, r.text()));
                    continue;
                }
                let got = up.request_with_id(&id).await;
                // A checked body goes up in one piece, with its length.
                let checked = t.token == TOKEN_READ && t.method == Method::POST;
                let length = t.body.len().to_string();
                if checked
                    && (got.header("content-length") != Some(length.as_str())
                        || got.has("transfer-encoding"))
                {
                    failures.push(format!("{label}: framing upstream {:?}", got.headers));
                }
                if got.method != t.method.as_str() || got.body != t.body || !got.complete {
                    failures.push(format!(
                        "{label}: upstream got {} with {} bytes (complete: {}), sent {} {} bytes",
                        got.method,
                        got.body.len(),
                        got.complete,
                        t.method,
                        t.body.len()
                    ));
                }
            }
            Want::Refused(status, code, outcome) => {
                let shape = std::panic::catch_unwind(|| {
                    if graphql_route(&t.path) {
                        assert_graphql_error(&r, status, code)
                    } else {
                        assert_rest_error(&r, status, code)
                    }
                });
                if shape.is_err() {
                    failures.push(format!("{label}: {} {}", r.status, r.text()));
                }
                let logged = gw.outcome(&id).await;
                if logged != outcome {
                    failures.push(format!("{label}: outcome {logged}, want {outcome}"));
                }
                let reached = [core, metadata].iter().any(|u| {
                    u.requests()
                        .iter()
                        .any(|q| q.header("x-request-id") == Some(&id))
                });
                if reached {
                    failures.push(format!("{label}: refused but reached the upstream"));
                }
            }
        }
    }
    failures
}

#[tokio::test]
async fn verdict_table_through_the_gateway() {
    let core = spawn_upstream("core").await;
    let metadata = spawn_upstream("metadata").await;
    let gw = conf(&core, &metadata).spawn().await;
    let mut failures = run_table(&gw, &core, &metadata, false).await;
    failures.extend(run_table(&gw, &core, &metadata, true).await);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every 403 counted for its tenant (twice: h1 and h2).
    let forbidden = table()
        .iter()
        .filter(|t| matches!(t.want, Want::Refused(403, ..)))
        .count() as f64;
    gw.wait_metric("gateway_scope_denied_total{tenant=\"acme\"}", |v| {
        v == 2.0 * forbidden
    })
    .await;
}

#[tokio::test]
async fn the_refused_document_is_named_in_the_log_but_never_its_text() {
    let core = spawn_upstream("core").await;
    let gw = conf(&core, &core).spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let id = rid();
    let secret_doc = doc("mutation { updateOnePerson(data: { name: \"s3cr3t-value\" }) { id } }");
    let t = gql("mutation", TOKEN_READ, &secret_doc, FORBIDDEN);
    let r = send(&mut c, &t, &id).await;
    assert_graphql_error(&r, 403, "FORBIDDEN");
    let line = gw.access_line(&id).await;
    assert_eq!(line["outcome"], "scope_denied");
    assert_eq!(line["key_id"], "acme-read");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("mutation"), "log detail says why: {error}");
    assert!(
        !gw.all_output().contains("s3cr3t-value") && !r.text().contains("s3cr3t-value"),
        "the document never reaches logs or responses"
    );
}

#[tokio::test]
async fn refusals_use_quota_and_carry_ratelimit_fields() {
    let core = spawn_upstream("core").await;
    let gw = Conf::one(&core)
        .keys(&keys("scope: read\nrate: { requests: 2, per: 1h }"))
        .spawn()
        .await;
    let mut c = gw.h1("acme.gw.test").await;
    for (i, want) in [403u16, 403, 429].into_iter().enumerate() {
        let id = rid();
        let t = case(
            "POST rest",
            TOKEN_READ,
            Method::POST,
            "/rest/people",
            &[JSON],
            "{}",
            FORBIDDEN,
        );
        let r = send(&mut c, &t, &id).await;
        assert_eq!(r.status, want, "attempt {i}: {}", r.text());
        assert!(
            r.header("ratelimit").is_some() && r.header("ratelimit-policy").is_some(),
            "attempt {i}: RateLimit fields on a refusal"
        );
    }
    assert!(core.requests().is_empty());
}

#[tokio::test]
async fn a_reload_changes_scope_on_open_connections() {
    let core = spawn_upstream("core").await;
    let base = Conf::one(&core).with_admin();
    let write = base.clone().keys(&keys("")).render();
    let read = base.clone().keys(&keys("scope: read")).render();
    let gw = base.clone().keys(&keys("")).spawn().await;
    let mut h1 = gw.h1("acme.gw.test").await;
    let mut h2 = gw.h2("acme.gw.test").await;
    let mutation = doc("mutation { deleteOnePerson(id: 1) { id } }");
    let t = gql("mutation", TOKEN_READ, &mutation, Want::Forwarded);

    for (yaml, want) in [(&write, 200u16), (&read, 403), (&write, 200)] {
        gw.rewrite_config_in_place(yaml);
        let reload = gw.admin_reload().await;
        assert_eq!(reload.status, 200, "reload: {}", reload.text());
        for (proto, c) in [("h1", &mut h1), ("h2", &mut h2)] {
            let id = rid();
            let r = send(c, &t, &id).await;
            assert_eq!(r.status, want, "{proto} after reload: {}", r.text());
            let line = gw.access_line(&id).await;
            assert_eq!(
                line["protocol"],
                if proto == "h1" { "HTTP/1.1" } else { "HTTP/2" }
            );
            if want == 200 {
                assert_eq!(core.request_with_id(&id).await.body, mutation.as_bytes());
            } else {
                assert_eq!(line["outcome"], "scope_denied");
            }
        }
    }
}

#[test]
fn config_errors_name_their_field() {
    let cases = [
        ("scope: write-only", "keys[2].scope"),
        ("scope: Read", "keys[2].scope"),
        ("apis: [core, graphql]", "keys[2].apis[1]"),
        ("apis: [core, core]", "keys[2].apis[1]"),
        ("apis: []", "keys[2].apis"),
    ];
    let mut failures = Vec::new();
    for (line, field) in cases {
        let yaml = Conf::new("http://127.0.0.1:3000", "http://127.0.0.1:3001")
            .keys(&keys(line))
            .render();
        let setup = GatewaySetup::new();
        let path = setup.write_config(&yaml);
        let o = run_cli(
            &["check", "--config", path.to_str().unwrap_or("")],
            None,
            None,
            &[],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        let want = format!("{}: {field}", path.display());
        if o.status.code() != Some(1) || !err.lines().any(|l| l.starts_with(&want)) {
            failures.push(format!(
                "{line}: exit {:?}, want {want:?}:\n{err}",
                o.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
