//! What the upstream sees, streaming both ways, upstream failures, pooling, smuggling.

pub mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_but_connection_cannot_remove_protected_ones() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let id = rid();
    let req = format!(
        "GET /rest/people HTTP/1.1\r\n\
         Host: acme.gw.test\r\n\
         Authorization: Bearer {TOKEN_ACME}\r\n\
         Connection: keep-alive, X-Custom-Hop, Authorization, X-Forwarded-For, Host, X-Gateway-Tenant, X-Gateway-Key-Id, X-Request-Id, X-Forwarded-Proto\r\n\
         X-Custom-Hop: drop-me\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: foo/1\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Request-Id: {id}\r\n\
         X-Keep: yes\r\n\
         \r\n"
    );
    let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    c.write(req.as_bytes()).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let got = up.request_with_id(&id).await;
    for h in [
        "connection",
        "x-custom-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !got.has(h),
            "hop-by-hop {h} reached the upstream: {:?}",
            got.headers
        );
    }
    assert_eq!(
        got.header_all("authorization"),
        vec![acme_auth().as_str()],
        "Connection cannot remove Authorization"
    );
    assert_eq!(
        got.header_all("host"),
        vec!["acme.gw.test"],
        "Connection cannot remove Host"
    );
    assert_eq!(
        got.header_all("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"],
        "Connection cannot remove X-Forwarded-For"
    );
    assert_eq!(got.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(got.header_all("x-gateway-tenant"), vec!["acme"]);
    assert_eq!(got.header_all("x-gateway-key-id"), vec!["acme-ci"]);
    assert_eq!(got.header_all("x-request-id"), vec![id.as_str()]);
    assert_eq!(got.header("x-keep"), Some("yes"), "end-to-end headers pass");
}

#[tokio::test]
async fn forwarded_headers_are_set() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let a = acme_auth();

    let mut c = gw.h1("acme.gw.test").await;
    let (r, id) = c
        .get_with_id("/rest/people", &[("authorization", &a)])
        .await;
    assert_eq!(r.status, 200);
    let got = up.request_with_id(&id).await;
    assert_eq!(got.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(got.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(got.header_all("x-forwarded-host"), vec!["acme.gw.test"]);
    assert_eq!(got.header_all("host"), vec!["acme.gw.test"]);

    // client-sent values: XFF appended to, the others replaced; host kept as received
    let id = rid();
    let r = c
        .get(
            "/rest/people",
            &[
                ("host", "ACME.gw.test:8443"),
                ("authorization", &a),
                ("x-request-id", &id),
                ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "evil.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.request_with_id(&id).await;
    assert_eq!(
        got.header_all("x-forwarded-for"),
        vec!["198.51.100.1, 203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(got.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(
        got.header_all("x-forwarded-host"),
        vec!["ACME.gw.test:8443"]
    );
    assert_eq!(got.header_all("host"), vec!["ACME.gw.test:8443"]);
    // without trusted proxies the log believes the TCP peer, not X-Forwarded-For
    assert_eq!(gw.access_line(&id).await["client_ip"], "127.0.0.1");

    // HTTP/2: Host upstream is the :authority
    let mut c = gw.h2("crm.acme.test").await;
    let (r, id) = c
        .get_with_id("/rest/people", &[("authorization", &a)])
        .await;
    assert_eq!(r.status, 200);
    let got = up.request_with_id(&id).await;
    assert_eq!(got.header_all("host"), vec!["crm.acme.test"]);
    assert_eq!(got.header_all("x-forwarded-host"), vec!["crm.acme.test"]);
    assert_eq!(
        got.version,
        http::Version::HTTP_11,
        "upstream speaks HTTP/1.1"
    );
}

#[tokio::test]
async fn trusted_proxies_make_the_forwarded_client_ip_count() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .extra("trusted_proxies: [127.0.0.0/8]")
        .spawn()
        .await;
    let mut c = gw.h1("acme.gw.test").await;
    let id = rid();
    let r = c
        .get(
            "/rest/people",
            &[
                ("authorization", &acme_auth()),
                ("x-request-id", &id),
                ("x-forwarded-for", "198.51.100.7, 203.0.113.9, 127.0.0.5"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.access_line(&id).await["client_ip"],
        "203.0.113.9",
        "right-most untrusted address"
    );
    let got = up.request_with_id(&id).await;
    let xff = got.header("x-forwarded-for").unwrap();
    assert!(
        xff.starts_with("198.51.100.7, 203.0.113.9, 127.0.0.5"),
        "existing chain kept: {xff}"
    );
}

#[tokio::test]
async fn request_id_kept_if_sane_else_replaced_and_always_echoed() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let a = acme_auth();
    let exactly_128 = "r".repeat(128);
    let sane = ["abc-123", "Req_ID.with~punct:/=+!", exactly_128.as_str()];
    let long = "x".repeat(200);
    let insane = [long.as_str(), "has space", "r".repeat(129).leak() as &str];
    let mut c = gw.h1("acme.gw.test").await;
    for id in sane {
        let r = c
            .get(
                "/rest/people",
                &[("authorization", &a), ("x-request-id", id)],
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.request_id(), id, "sane id echoed");
        let got = up.request_with_id(id).await;
        assert_eq!(got.header_all("x-request-id"), vec![id]);
        assert_eq!(gw.access_line(id).await["request_id"], id);
    }
    for id in insane {
        let r = c
            .get(
                "/rest/people",
                &[("authorization", &a), ("x-request-id", id)],
            )
            .await;
        assert_eq!(r.status, 200);
        let echoed = r.request_id();
        assert_ne!(echoed, id, "insane id must be replaced");
        assert!(
            !echoed.is_empty()
                && echoed.len() <= 128
                && echoed.bytes().all(|b| b.is_ascii_graphic()),
            "generated id is sane: {echoed:?}"
        );
        let got = up.request_with_id(&echoed).await;
        assert_eq!(
            got.header_all("x-request-id"),
            vec![echoed.as_str()],
            "upstream gets the replacement only"
        );
        assert_eq!(gw.access_line(&echoed).await["request_id"], echoed.as_str());
    }
    // none sent: generated, unique, echoed, forwarded
    let r1 = c.get("/rest/people", &[("authorization", &a)]).await;
    let r2 = c.get("/rest/people", &[("authorization", &a)]).await;
    assert_ne!(r1.request_id(), r2.request_id(), "generated ids are unique");
    up.request_with_id(&r1.request_id()).await;
    // also on gateway errors
    let r = c.get("/rest/people", &[("x-request-id", "err-id-1")]).await;
    assert_eq!(r.request_id(), "err-id-1");
}

#[tokio::test]
async fn client_copies_of_gateway_headers_are_dropped() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .routes("  - { prefix: /rest, upstream: core }\n  - { prefix: /public, upstream: core, auth: false }\n")
        .spawn()
        .await;
    let a = acme_auth();
    let spoof: [(&str, &str); 4] = [
        ("x-gateway-tenant", "beta"),
        ("x-gateway-key-id", "root"),
        ("x-gateway-key-id", "admin"),
        ("X-Gateway-Tenant", "evil"),
    ];
    for path in ["/rest/people", "/public/info"] {
        let mut c = gw.h1("acme.gw.test").await;
        let id = rid();
        let mut h = spoof.to_vec();
        h.push(("authorization", &a));
        h.push(("x-request-id", &id));
        let r = c.get(path, &h).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let got = up.request_with_id(&id).await;
        assert_eq!(got.header_all("x-gateway-tenant"), vec!["acme"], "{path}");
        let kid = got.header_all("x-gateway-key-id");
        assert!(
            !kid.iter().any(|v| *v == "root" || *v == "admin"),
            "{path}: client's key id leaked: {kid:?}"
        );
        if path == "/rest/people" {
            assert_eq!(kid, vec!["acme-ci"]);
        }
    }
    // over HTTP/2 too
    let mut c = gw.h2("acme.gw.test").await;
    let id = rid();
    let mut h = spoof.to_vec();
    h.push(("authorization", &a));
    h.push(("x-request-id", &id));
    c.get("/rest/people", &h).await;
    let got = up.request_with_id(&id).await;
    assert_eq!(got.header_all("x-gateway-tenant"), vec!["acme"]);
    assert_eq!(got.header_all("x-gateway-key-id"), vec!["acme-ci"]);
}

#[tokio::test]
async fn upstream_token_env_and_file_replace_authorization() {
    let up = spawn_upstream("core").await;
    let setup = GatewaySetup::new().env("TGW_TEST_TWENTY_KEY", "twenty-secret-from-env");
    setup.file("secrets/twenty.key", "twenty-secret-from-file\n");
    let gw = Conf::one(&up)
        .tenants(
            "tenants:
  - name: acme
    subdomain: acme
    upstream_token_env: TGW_TEST_TWENTY_KEY
  - name: beta
    subdomain: beta
    upstream_token_file: secrets/twenty.key
  - name: gamma
    subdomain: gamma
",
        )
        .keys(&format!(
            "keys:\n{}{}{}",
            key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
            key_yaml("gamma-ci", "gamma", "tgw_test_gamma", ""),
        ))
        .spawn_in(setup)
        .await;
    for (host, token, want) in [
        (
            "acme.gw.test",
            TOKEN_ACME,
            "Bearer twenty-secret-from-env".to_string(),
        ),
        (
            "beta.gw.test",
            TOKEN_BETA,
            "Bearer twenty-secret-from-file".to_string(),
        ),
        ("gamma.gw.test", "tgw_test_gamma", bearer("tgw_test_gamma")),
    ] {
        let mut c = gw.h1(host).await;
        let (r, id) = c
            .get_with_id("/rest/people", &[("authorization", &bearer(token))])
            .await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        let got = up.request_with_id(&id).await;
        assert_eq!(
            got.header_all("authorization"),
            vec![want.as_str()],
            "{host}"
        );
        if host != "gamma.gw.test" {
            assert!(
                !got.headers.iter().any(|(_, v)| v.contains(token)),
                "{host}: the client's gateway token must not reach Twenty: {:?}",
                got.headers
            );
        }
    }
    let out = gw.all_output();
    assert!(
        !out.contains("twenty-secret-from-env") && !out.contains("twenty-secret-from-file"),
        "upstream tokens in logs:\n{out}"
    );
}

async fn big_body_streams(h2: bool) {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let mut c = gw.conn(h2, "acme.gw.test").await;
    let id = rid();
    let req = c.build(
        Method::GET,
        "/rest/files/_big",
        &[("authorization", &acme_auth()), ("x-request-id", &id)],
        empty(),
    );
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The upstream has produced 64 KiB and is parked on the gate: bytes must already flow.
    let first = next_data(&mut body)
        .await
        .expect("first bytes arrive before the upstream finishes");
    assert!(!first.is_empty());
    assert_eq!(up.gates().big.available_permits(), 0, "gate still closed");
    let mut received: Vec<u8> = first.to_vec();
    up.gates().big.add_permits(1);
    while let Some(d) = next_data(&mut body).await {
        received.extend_from_slice(&d);
    }
    assert_eq!(received.len(), BIG_LEN, "whole body");
    let bad = received
        .iter()
        .enumerate()
        .position(|(i, b)| *b != big_byte(i));
    assert_eq!(bad, None, "body bytes intact");
    let line = gw.access_line(&id).await;
    let bytes_out = line["bytes_out"].as_u64().expect("bytes_out number");
    assert!(
        bytes_out >= BIG_LEN as u64,
        "bytes_out {bytes_out} counts the streamed body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_response_streams_over_http1() {
    big_body_streams(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_response_streams_over_http2() {
    big_body_streams(true).await;
}

async fn sse_event_by_event(h2: bool) {
    let up = spawn_upstream("metadata").await;
    let gw = Conf::one(&up).spawn().await;
    let mut c = gw.conn(h2, "acme.gw.test").await;
    let req = c.build(
        Method::GET,
        "/metadata/_sse",
        &[
            ("authorization", &acme_auth()),
            ("accept", "text/event-stream"),
        ],
        empty(),
    );
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body();
    let mut seen = String::new();
    for i in 1..=3 {
        if i > 1 {
            up.gates().sse.add_permits(1);
        }
        while !seen.contains(&format!("data: event-{i}\n\n")) {
            let d = next_data(&mut body)
                .await
                .unwrap_or_else(|| panic!("stream ended before event {i}; got {seen:?}"));
            seen.push_str(&String::from_utf8_lossy(&d));
        }
        assert!(
            !seen.contains(&format!("event-{}", i + 1)),
            "event {} cannot exist yet",
            i + 1
        );
    }
    assert_eq!(
        next_data(&mut body).await,
        None,
        "stream ends after the last event"
    );
    assert_eq!(
        seen,
        "id: 1\ndata: event-1\n\nid: 2\ndata: event-2\n\nid: 3\ndata: event-3\n\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_delivered_event_by_event_over_http1() {
    sse_event_by_event(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_delivered_event_by_event_over_http2() {
    sse_event_by_event(true).await;
}

async fn upload_streams(h2: bool) {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let mut c = gw.conn(h2, "acme.gw.test").await;
    let id = rid();
    let (tx, body) = chan_body(4);
    let req = c.build(
        Method::POST,
        "/rest/upload",
        &[("authorization", &acme_auth()), ("x-request-id", &id)],
        body,
    );
    let pending = tokio::spawn(async move { collect(c.send(req).await).await });
    tx.send(Bytes::from(vec![b'a'; 16 * 1024])).await.unwrap();
    // The upstream sees the first part while the client still holds the rest.
    up.wait_for("first 16 KiB of the upload", |v| {
        v.iter().any(|r| {
            r.header("x-request-id") == Some(id.as_str())
                && r.body.len() >= 16 * 1024
                && !r.complete
        })
    })
    .await;
    tx.send(Bytes::from(vec![b'b'; 16 * 1024])).await.unwrap();
    drop(tx);
    let r = within("upload response", pending).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 32 * 1024);
    let got = up.request_with_id(&id).await;
    assert!(got.complete);
    assert_eq!(got.body.len(), 32 * 1024);
    assert!(
        got.body[..16 * 1024].iter().all(|b| *b == b'a')
            && got.body[16 * 1024..].iter().all(|b| *b == b'b')
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_over_http1() {
    upload_streams(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_over_http2() {
    upload_streams(true).await;
}

#[tokio::test]
async fn methods_bodies_and_response_headers_pass_through() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    for m in [Method::POST, Method::PATCH, Method::PUT, Method::DELETE] {
        let id = rid();
        let r = c
            .request(
                m.clone(),
                "/rest/people/1",
                &[
                    ("authorization", &acme_auth()),
                    ("x-request-id", &id),
                    ("content-type", "application/json"),
                ],
                r#"{"name":"x"}"#,
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-upstream").as_deref(),
            Some("core"),
            "upstream response headers reach the client"
        );
        assert_eq!(r.request_id(), id);
        let got = up.request_with_id(&id).await;
        assert_eq!(got.method, m.as_str());
        assert_eq!(got.body, br#"{"name":"x"}"#);
        assert_eq!(got.header("content-type"), Some("application/json"));
    }
}

async fn body_limit_gateway(up: &Upstream) -> Gateway {
    Conf::one(up).limit("max_request_body: 1KiB").spawn().await
}

#[tokio::test]
async fn body_over_max_request_body_is_413_with_content_length() {
    let up = spawn_upstream("core").await;
    let gw = body_limit_gateway(&up).await;
    let mut c = gw.h1("acme.gw.test").await;
    let id = rid();
    let r = c
        .request(
            Method::POST,
            "/rest/people",
            &[("authorization", &acme_auth()), ("x-request-id", &id)],
            vec![b'x'; 2048],
        )
        .await;
    assert_rest_error(&r, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(gw.outcome(&id).await, "payload_too_large");
    assert!(
        up.requests().is_empty(),
        "a declared-too-large body is refused before forwarding"
    );
    // exactly at the limit is fine
    let mut c = gw.h1("acme.gw.test").await;
    let r = c
        .request(
            Method::POST,
            "/rest/people",
            &[("authorization", &acme_auth())],
            vec![b'x'; 1024],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 1024);
    // GraphQL shape on /graphql
    let mut c = gw.h2("acme.gw.test").await;
    let r = c
        .request(
            Method::POST,
            "/graphql",
            &[("authorization", &acme_auth()), ("content-length", "4096")],
            vec![b'x'; 4096],
        )
        .await;
    assert_graphql_error(&r, 413, "PAYLOAD_TOO_LARGE");
}

/// A body refused before it was read (413 on its announced length): the
/// gateway goes on reading and dropping what the client still sends after
/// the answer, so the client reads the 413 and then a clean close. Closing
/// with unread bytes would send a TCP reset, which can destroy the answer
/// in the client's buffer and fails the client's next write.
#[tokio::test]
async fn refused_body_is_drained_after_the_answer_not_reset() {
    let up = spawn_upstream("core").await;
    let gw = body_limit_gateway(&up).await;
    let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    let head = format!(
        "POST /rest/people HTTP/1.1\r\nhost: acme.gw.test\r\nauthorization: {}\r\n\
         content-length: 1048576\r\n\r\n",
        acme_auth()
    );
    c.write(head.as_bytes()).await;
    c.write(&vec![b'x'; 64 * 1024]).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 413);
    // The gateway's close: its close_notify + FIN right after the answer.
    let end = c.read_some(Duration::from_secs(10)).await;
    assert!(
        matches!(&end, Ok(v) if v.is_empty()),
        "want EOF, got {end:?}"
    );
    // The client still sends the rest of the body it announced, as clients
    // that do not read while writing do; a closed socket would answer the
    // first piece with a reset and fail the next write.
    for i in 0..8 {
        let more = c.write_result(&vec![b'x'; 64 * 1024]).await;
        assert!(
            more.is_ok(),
            "write {i}: the gateway reset the connection: {more:?}"
        );
    }
    assert!(up.requests().is_empty());
}

async fn chunked_413(h2: bool) {
    let up = spawn_upstream("core").await;
    let gw = body_limit_gateway(&up).await;
    let mut c = gw.conn(h2, "acme.gw.test").await;
    let id = rid();
    let (tx, body) = chan_body(8);
    let req = c.build(
        Method::POST,
        "/rest/people",
        &[("authorization", &acme_auth()), ("x-request-id", &id)],
        body,
    );
    let pending = tokio::spawn(async move { collect(c.send(req).await).await });
    for _ in 0..4 {
        if tx.send(Bytes::from(vec![b'y'; 700])).await.is_err() {
            break;
        }
    }
    drop(tx);
    let r = within("413 response", pending).await.unwrap();
    assert_rest_error(&r, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(gw.outcome(&id).await, "payload_too_large");
    assert!(
        up.requests().iter().all(|r| r.body.len() <= 1024),
        "upstream must never get more than max_request_body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_limit_is_413_over_http1() {
    chunked_413(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_over_limit_is_413_over_http2() {
    chunked_413(true).await;
}

#[tokio::test]
async fn closed_upstream_port_is_502() {
    let dead = closed_port_url().await;
    let gw = Conf::new(&dead, &dead).spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let (r, id) = c
        .get_with_id("/rest/people", &[("authorization", &acme_auth())])
        .await;
    assert_rest_error(&r, 502, "BAD_GATEWAY");
    let line = gw.access_line(&id).await;
    assert_eq!(line["outcome"], "upstream_error");
    assert_eq!(line["upstream"], "core");
    let r = c.get("/graphql", &[("authorization", &acme_auth())]).await;
    assert_graphql_error(&r, 502, "BAD_GATEWAY");
}

#[tokio::test]
async fn no_response_head_within_upstream_timeout_is_504() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .limit("upstream_timeout: 300ms")
        .spawn()
        .await;
    let mut c = gw.h1("acme.gw.test").await;
    let id = rid();
    let t = Instant::now();
    let r = c
        .get(
            "/rest/_hang",
            &[("authorization", &acme_auth()), ("x-request-id", &id)],
        )
        .await;
    let elapsed = t.elapsed();
    assert_rest_error(&r, 504, "GATEWAY_TIMEOUT");
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    assert_eq!(gw.outcome(&id).await, "upstream_timeout");
    up.request_with_id(&id).await; // it was forwarded; the upstream just never answered
}

#[tokio::test]
async fn long_stream_after_head_is_not_cut_by_upstream_timeout() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up)
        .limit("upstream_timeout: 300ms")
        .spawn()
        .await;
    let mut c = gw.h1("acme.gw.test").await;
    let id = rid();
    let req = c.build(
        Method::GET,
        "/rest/_slow",
        &[("authorization", &acme_auth()), ("x-request-id", &id)],
        empty(),
    );
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = next_data(&mut body).await.expect("first part");
    assert_eq!(&first[..], b"first-part;");
    // Let upstream_timeout pass for the stream: a request sent after it, whose head never
    // comes, gets its 504 only after the stream's own upstream_timeout has run out too.
    let mut later = gw.h1("acme.gw.test").await;
    let (r, late_id) = later
        .get_with_id("/rest/_hang", &[("authorization", &acme_auth())])
        .await;
    assert_rest_error(&r, 504, "GATEWAY_TIMEOUT");
    assert_eq!(gw.outcome(&late_id).await, "upstream_timeout");
    up.gates().slow.add_permits(1);
    let mut rest = Vec::new();
    while let Some(d) = next_data(&mut body).await {
        rest.extend_from_slice(&d);
    }
    assert_eq!(
        rest, b"second-part",
        "stream completes after its upstream_timeout has passed"
    );
    let line = gw.access_line(&id).await;
    assert_eq!(line["outcome"], "ok");
    assert_eq!(line["status"], 200);
}

/// How many upstream connections (client ports) carried these requests.
fn upstream_connections(got: &[Recorded]) -> usize {
    let mut ports: Vec<u16> = got.iter().map(|r| r.peer.port()).collect();
    ports.sort();
    ports.dedup();
    ports.len()
}

async fn kept_alive(h2: bool) {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let mut c = gw.conn(h2, "acme.gw.test").await;
    let n = 10;
    for _ in 0..n {
        let r = c
            .get("/rest/people", &[("authorization", &acme_auth())])
            .await;
        assert_eq!(r.status, 200);
    }
    let used = upstream_connections(&up.wait_requests(n).await);
    assert_eq!(
        used, 1,
        "{n} sequential requests, each read to the end, used {used} upstream connections"
    );
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_over_http1() {
    kept_alive(false).await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_over_http2() {
    kept_alive(true).await;
}

/// A chunked response (no Content-Length, as streamed JSON from Node often is) read to its end
/// also leaves its upstream connection reusable.
#[tokio::test]
async fn upstream_connections_are_kept_alive_after_chunked_responses() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let n = 5;
    up.gates().slow.add_permits(n);
    let mut c = gw.h1("acme.gw.test").await;
    for _ in 0..n {
        let r = c
            .get("/rest/files/_slow", &[("authorization", &acme_auth())])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "first-part;second-part");
    }
    let used = upstream_connections(&up.wait_requests(n).await);
    assert_eq!(
        used, 1,
        "{n} sequential chunked responses used {used} upstream connections"
    );
}

/// A reload installs a new snapshot but not a new upstream pool: the warm connection carries the
/// next request (the pool is looked up by address when the config is installed).
#[tokio::test]
async fn a_reload_keeps_the_warm_upstream_connection() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_admin().spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    let token = acme_auth();
    let auth = [("authorization", token.as_str())];
    for _ in 0..2 {
        assert_eq!(c.get("/rest/people", &auth).await.status, 200);
    }
    let before: Vec<u16> = up
        .wait_requests(2)
        .await
        .iter()
        .map(|r| r.peer.port())
        .collect();
    assert_eq!(
        before[0], before[1],
        "the second request reused the pooled connection"
    );

    let start = gw.stdout.line_count();
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.wait_event_after(start, |e| e == "reload").await;
    assert_eq!(
        metric(&gw.metrics_text().await, "gateway_config_generation "),
        2.0,
        "a new snapshot was installed"
    );

    assert_eq!(c.get("/rest/people", &auth).await.status, 200);
    let after = up.wait_requests(3).await[2].peer.port();
    assert_eq!(
        after, before[1],
        "a new pool after the reload opened a new connection"
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_forwarded_ambiguously() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let req = format!(
        "POST /rest/people HTTP/1.1\r\nHost: acme.gw.test\r\nAuthorization: Bearer {TOKEN_ACME}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    c.write(req.as_bytes()).await;
    let r = c.read_response().await;
    if r.status != 400 {
        // normalised: then the upstream saw one framing only, and the connection is closed
        let got = up.wait_requests(1).await;
        let g = &got[0];
        assert!(
            !(g.has("content-length") && g.has("transfer-encoding")),
            "ambiguous framing forwarded: {:?}",
            g.headers
        );
        assert_eq!(g.body, b"hello");
        assert!(
            c.closed().await,
            "connection must be closed after a normalised CL+TE request"
        );
    }
}

#[tokio::test]
async fn conflicting_content_lengths_and_unknown_codings_are_400() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let cases = [
        "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "Content-Length: 5, 6\r\n\r\nhello!",
        "Transfer-Encoding: foo\r\n\r\nhello",
        "Transfer-Encoding: chunked, foo\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for extra in cases {
        let req = format!(
            "POST /rest/people HTTP/1.1\r\nHost: acme.gw.test\r\nAuthorization: Bearer {TOKEN_ACME}\r\n{extra}"
        );
        let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
        c.write(req.as_bytes()).await;
        let r = c.try_read_response().await;
        let status = r.as_ref().map(|r| r.status);
        assert_eq!(status, Some(400), "{extra:?}");
    }
    assert!(
        up.requests().is_empty(),
        "nothing forwarded: {:#?}",
        up.requests()
    );
}

#[tokio::test]
async fn malformed_framing_errors_are_json() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let req = format!(
        "POST /rest/people HTTP/1.1\r\nHost: acme.gw.test\r\nAuthorization: Bearer {TOKEN_ACME}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    );
    let mut c = RawConn::tls(gw.https(), Some("acme.gw.test")).await;
    c.write(req.as_bytes()).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 400);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "SPEC: every gateway error is JSON, also for malformed requests; got headers {:?} body {:?}",
        r.headers,
        String::from_utf8_lossy(&r.body)
    );
    assert_raw_rest_error(&r, 400, "BAD_REQUEST");
}
