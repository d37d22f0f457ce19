//! Reload edge cases not covered by `live_reload.rs`: SIGHUP as soon as the gateway says it is
//! listening, and a reload that changes which certificate is served first.

pub mod common;

use common::*;

/// An event name that means "a reload succeeded".
fn is_reload_ok(e: &str) -> bool {
    e.contains("reload") && !e.contains("fail") && !e.contains("error") && !e.contains("ignored")
}

#[tokio::test]
async fn sighup_reloads() {
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up).with_admin();
    let gw = conf.spawn().await;
    let start = gw.stdout.line_count();
    // Sent as soon as the `listening` lines appear: if the SIGHUP handler were installed only
    // later, the default action of SIGHUP would kill the process here.
    gw.signal("HUP");
    gw.wait_event_after(start, is_reload_ok).await;
    let mut c = gw.h1("acme.gw.test").await;
    assert_eq!(
        c.get("/rest/people", &[("authorization", &bearer(TOKEN_ACME))])
            .await
            .status,
        200,
        "still serving after SIGHUP"
    );
}

#[tokio::test]
async fn reload_swaps_certificates_for_new_connections() {
    let up = spawn_upstream("core").await;
    let setup = GatewaySetup::new();
    setup.cert("one", &["one.test"]);
    setup.cert("two", &["two.test"]);
    let mut conf = Conf::one(&up).with_admin();
    conf.certificates = vec!["{ cert: certs/one.crt, key: certs/one.key }".into()];
    let gw = conf.spawn_in(setup).await;
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1("x").no_sni()).await;
    assert_eq!(info.dns_names(), vec!["one.test".to_string()]);
    conf.certificates = vec![
        "{ cert: certs/two.crt, key: certs/two.key }".into(),
        "{ cert: certs/one.crt, key: certs/one.key }".into(),
    ];
    gw.replace_config(&conf.render());
    assert_eq!(gw.admin_reload().await.status, 200);
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1("x").no_sni()).await;
    assert_eq!(
        info.dns_names(),
        vec!["two.test".to_string()],
        "new first certificate served"
    );
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1("one.test").strict()).await;
    assert_eq!(info.dns_names(), vec!["one.test".to_string()]);
}
