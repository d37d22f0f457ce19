//! The one-worker runtime (`--workers 1` / `GATEWAY_WORKERS=1`, what the
//! benchmark pins to one core) serves the same gateway: h1 and h2 on one
//! thread, reload included. The other suites run the multi-thread runtime.

mod common;

use common::*;

#[tokio::test]
async fn one_worker_serves_h1_h2_and_reloads() {
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up).with_admin();
    let gw = conf
        .spawn_in(GatewaySetup::new().env("GATEWAY_WORKERS", "1"))
        .await;
    let auth = [("authorization", format!("Bearer {TOKEN_ACME}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let mut h1 = gw.h1("acme.gw.test").await;
    let mut h2 = gw.h2("acme.gw.test").await;
    for _ in 0..3 {
        assert_eq!(h1.get("/rest/people", &auth).await.status, 200);
        assert_eq!(h2.get("/rest/people", &auth).await.status, 200);
    }
    assert_eq!(h2.get("/rest/people", &[]).await.status, 401);
    assert_eq!(up.requests().len(), 6);

    // Revoke through the admin listener: the same open connections see it.
    let yaml = conf
        .clone()
        .keys(&format!(
            "keys:\n{}",
            key_yaml("acme-ci", "acme", TOKEN_ACME, "revoked: true")
        ))
        .render();
    gw.setup.write_config(&yaml);
    let start = gw.stdout.len();
    let (status, _body) = admin_post(gw.admin(), "/reload").await;
    assert_eq!(status, 200, "{_body}");
    gw.wait_event_after(start, |e| e == "reload").await;
    let r = h1.get("/rest/people", &auth).await;
    assert_eq!(r.status, 401);
    assert_eq!(gw.outcome(&r.request_id()).await, "revoked_key");
    assert_eq!(h2.get("/rest/people", &auth).await.status, 401);
}

async fn admin_post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("admin write");
    let mut out = Vec::new();
    within("admin response", s.read_to_end(&mut out))
        .await
        .expect("admin read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
