//! TLS termination: ALPN, versions, certificate selection by SNI, 421, plain listener.

pub mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Certificates in order: `first.test` (served without SNI), `crm.acme.test` (exact),
/// `*.gw.test` (wildcard).
async fn three_cert_gateway(up: &Upstream) -> Gateway {
    let setup = GatewaySetup::new();
    setup.cert("first", &["first.test"]);
    setup.cert("acme", &["crm.acme.test"]);
    setup.cert("wild", &["*.gw.test"]);
    let mut conf = Conf::one(up);
    conf.certificates = vec![
        "{ cert: certs/first.crt, key: certs/first.key }".into(),
        "{ cert: certs/acme.crt, key: certs/acme.key }".into(),
        "{ cert: certs/wild.crt, key: certs/wild.key }".into(),
    ];
    conf.spawn_in(setup).await
}

#[tokio::test]
async fn alpn_h2_and_http11_both_serve_requests() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;

    let mut c = Conn::tls(gw.https(), &TlsOpts::h2("acme.gw.test"), "acme.gw.test").await;
    assert_eq!(
        c.tls.as_ref().unwrap().alpn.as_deref(),
        Some(&b"h2"[..]),
        "ALPN h2 negotiated"
    );
    let (r, id) = c
        .get_with_id("/rest/people", &[("authorization", &acme_auth())])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(gw.access_line(&id).await["protocol"], "HTTP/2");

    let mut c = Conn::tls(gw.https(), &TlsOpts::h1("acme.gw.test"), "acme.gw.test").await;
    assert_eq!(
        c.tls.as_ref().unwrap().alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "ALPN http/1.1 negotiated"
    );
    let (r, id) = c
        .get_with_id("/rest/people", &[("authorization", &acme_auth())])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(gw.access_line(&id).await["protocol"], "HTTP/1.1");

    // A client that offers both gets one of them, and a client offering no ALPN gets HTTP/1.1.
    let c = Conn::tls(
        gw.https(),
        &TlsOpts::h1("acme.gw.test").alpn(&[b"h2", b"http/1.1"]),
        "acme.gw.test",
    )
    .await;
    assert!(
        c.tls.as_ref().unwrap().alpn.is_some(),
        "an ALPN protocol is chosen"
    );
    let mut c = Conn::tls(
        gw.https(),
        &TlsOpts::h1("acme.gw.test").alpn(&[]),
        "acme.gw.test",
    )
    .await;
    let r = c
        .get("/rest/people", &[("authorization", &acme_auth())])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn tls12_and_tls13_both_work() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    for (v, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let opts = TlsOpts::h1("acme.gw.test").versions(&[v]).strict();
        let mut c = Conn::tls(gw.https(), &opts, "acme.gw.test").await;
        assert_eq!(c.tls.as_ref().unwrap().version, Some(want));
        let r = c
            .get("/rest/people", &[("authorization", &acme_auth())])
            .await;
        assert_eq!(r.status, 200, "{want:?}: {}", r.text());
    }
}

/// A ClientHello offering at most TLS 1.1 (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    // server_name extension for acme.gw.test
    let name = b"acme.gw.test";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut ext = vec![0x00, 0x00];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test]
async fn nothing_below_tls12_is_accepted() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).spawn().await;
    let mut s = tokio::net::TcpStream::connect(gw.https()).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within("server reply to a TLS 1.1 hello", s.read(&mut buf))
        .await
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "a TLS 1.1-only ClientHello must get an alert or a close, not a ServerHello; got {:02x?}",
        &buf[..n]
    );
}

#[tokio::test]
async fn certificate_is_chosen_by_sni_exact_and_wildcard() {
    let up = spawn_upstream("core").await;
    let gw = three_cert_gateway(&up).await;
    for (sni, want) in [
        ("crm.acme.test", "crm.acme.test"),
        ("acme.gw.test", "*.gw.test"),
        ("beta.gw.test", "*.gw.test"),
        ("first.test", "first.test"),
    ] {
        // strict: the client's own webpki check must accept the served cert for the SNI name
        let (_, info) = tls_connect(gw.https(), &TlsOpts::h1(sni).strict()).await;
        assert_eq!(info.dns_names(), vec![want.to_string()], "SNI {sni}");
    }
}

#[tokio::test]
async fn no_sni_and_unknown_sni_get_the_first_certificate() {
    let up = spawn_upstream("core").await;
    let gw = three_cert_gateway(&up).await;
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1("x").no_sni()).await;
    assert_eq!(info.dns_names(), vec!["first.test".to_string()], "no SNI");
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1("nobody.example.org")).await;
    assert_eq!(
        info.dns_names(),
        vec!["first.test".to_string()],
        "unknown SNI"
    );
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h2("a.b.gw.test")).await;
    assert_eq!(
        info.dns_names(),
        vec!["first.test".to_string()],
        "wildcard covers one label only"
    );
}

#[tokio::test]
async fn host_not_covered_by_served_cert_is_421_when_sni_was_sent() {
    let up = spawn_upstream("core").await;
    let gw = three_cert_gateway(&up).await;
    let a = acme_auth();

    // SNI crm.acme.test → exact cert; Host acme.gw.test is not on it.
    let mut c = Conn::h1(gw.https(), "crm.acme.test").await;
    let (r, id) = c
        .get_with_id(
            "/rest/people",
            &[("host", "acme.gw.test"), ("authorization", &a)],
        )
        .await;
    assert_rest_error(&r, 421, "MISDIRECTED_REQUEST");
    assert_eq!(gw.outcome(&id).await, "misdirected");

    // same over HTTP/2 with :authority
    let mut c = Conn::h2(gw.https(), "crm.acme.test").await;
    let (r, _) = c
        .get_with_id(
            "/graphql",
            &[("host", "acme.gw.test"), ("authorization", &a)],
        )
        .await;
    assert_graphql_error(&r, 421, "MISDIRECTED_REQUEST");
    // on the same connection, the covered name still works
    let r = c.get("/rest/people", &[("authorization", &a)]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let got = up.wait_requests(1).await;
    assert_eq!(
        got.len(),
        1,
        "misdirected requests must not reach the upstream: {got:#?}"
    );

    // 421 comes before the host lookup: an unknown host on a mismatching connection is 421
    let mut c = Conn::h1(gw.https(), "crm.acme.test").await;
    let r = c
        .get(
            "/rest/people",
            &[("host", "nobody.gw.test"), ("authorization", &a)],
        )
        .await;
    assert_eq!(r.status, 421, "{}", r.text());
}

#[tokio::test]
async fn request_target_400_comes_before_421() {
    let up = spawn_upstream("core").await;
    let gw = three_cert_gateway(&up).await;
    let r = raw_tls_request(
        gw.https(),
        Some("crm.acme.test"),
        b"GET /rest/../x HTTP/1.1\r\nHost: acme.gw.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_rest_error(&r, 400, "BAD_REQUEST");
}

#[tokio::test]
async fn h2_connection_reuse_for_another_covered_name_uses_the_host_tenant() {
    let up = spawn_upstream("core").await;
    let gw = three_cert_gateway(&up).await;
    // SNI acme.gw.test → *.gw.test; the same connection is reused for beta.gw.test.
    let mut c = Conn::h2(gw.https(), "acme.gw.test").await;
    let (r, id) = c
        .get_with_id(
            "/rest/people",
            &[
                ("host", "beta.gw.test"),
                ("authorization", &bearer(TOKEN_BETA)),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.request_with_id(&id).await;
    assert_eq!(
        got.header("x-gateway-tenant"),
        Some("beta"),
        "tenant from :authority, not SNI"
    );
    // the key is checked against the host's tenant: acme's key on beta's host is 403
    let (r, id) = c
        .get_with_id(
            "/rest/people",
            &[("host", "beta.gw.test"), ("authorization", &acme_auth())],
        )
        .await;
    assert_rest_error(&r, 403, "FORBIDDEN");
    assert_eq!(gw.outcome(&id).await, "wrong_tenant");
}

#[tokio::test]
async fn without_sni_there_is_no_421() {
    let up = spawn_upstream("core").await;
    let gw = three_cert_gateway(&up).await;
    let mut c = Conn::tls(gw.https(), &TlsOpts::h1("x").no_sni(), "acme.gw.test").await;
    assert_eq!(
        c.tls.as_ref().unwrap().dns_names(),
        vec!["first.test".to_string()]
    );
    let r = c
        .get("/rest/people", &[("authorization", &acme_auth())])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut c = Conn::tls(gw.https(), &TlsOpts::h2("x").no_sni(), "crm.acme.test").await;
    let r = c
        .get("/rest/people", &[("authorization", &acme_auth())])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn plain_http_listener_serves_requests() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_http().spawn().await;
    let mut c = Conn::plain(gw.http(), "acme.gw.test").await;
    let (r, id) = c
        .get_with_id("/rest/people", &[("authorization", &acme_auth())])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.request_with_id(&id).await;
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(got.header("x-gateway-tenant"), Some("acme"));
    let line = gw.access_line(&id).await;
    assert_eq!(line["tenant"], "acme");
    // and the TLS listener still works alongside it
    let mut c = gw.h1("crm.acme.test").await;
    let r = c
        .get("/rest/people", &[("authorization", &acme_auth())])
        .await;
    assert_eq!(r.status, 200);
}
