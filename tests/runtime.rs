//! The one-worker runtime (`--workers 1` / `GATEWAY_WORKERS=1`, what the
//! benchmark pins to one core) is tokio's current-thread runtime — no worker
//! threads at all — and serves the same gateway: h1 and h2 on one thread,
//! reload included. The other suites run the multi-thread runtime.

pub mod common;

use common::*;

#[tokio::test]
async fn one_worker_serves_h1_h2_and_reloads() {
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up).with_admin();
    let gw = conf
        .spawn_in(GatewaySetup::new().env("GATEWAY_WORKERS", "1"))
        .await;
    // Current-thread: the main thread drives everything, no runtime workers
    // (the multi-thread runtime with 2 workers, for contrast, has 2).
    assert_eq!(runtime_workers(gw.pid()), 0);
    let two = conf
        .clone()
        .spawn_in(GatewaySetup::new().env("GATEWAY_WORKERS", "2"))
        .await;
    assert_eq!(runtime_workers(two.pid()), 2);
    drop(two);

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
    let start = gw.stdout.line_count();
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.wait_event_after(start, |e| e == "reload").await;
    let r = h1.get("/rest/people", &auth).await;
    assert_eq!(r.status, 401);
    assert_eq!(gw.outcome(&r.request_id()).await, "revoked_key");
    assert_eq!(h2.get("/rest/people", &auth).await.status, 401);
}

/// Threads of the process named like tokio's runtime workers (`tokio-rt-worker`; the
/// blocking pool uses the same name, but nothing has used it yet when this is called).
fn runtime_workers(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("tokio-r"))
        .count()
}
