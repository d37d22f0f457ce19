//! Live operations, reload side (issue 3): revocation by SIGHUP and by file watch on already
//! open HTTP/1.1 keep-alive and HTTP/2 connections, invalid files keep the old config serving,
//! limiter state across reloads, new tenant + certificate, expiry without a reload.
//!
//! Synchronisation is on the gateway's own events (`"event":"reload"` / `"reload_failed"` log
//! lines, `POST /reload` answers, access lines); the only sleep waits for a key's expiry
//! instant, which is the event under test.

pub mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;

const TOKEN_GAMMA: &str = "tgw_test_gamma_ci_0123456789abcdef";
const TOKEN_GHOST: &str = "tgw_test_ghost_0123456789abcdef";
/// SPEC: "The file watch notices an edit within 5 seconds".
const WATCH_DEADLINE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// `"event":"reload"` with the given trigger (`SIGHUP`, `file_watch`, `admin`).
fn reload_event(trigger: &'static str) -> impl Fn(&LogLine) -> bool {
    move |m| str_field(m, "event") == Some("reload") && str_field(m, "trigger") == Some(trigger)
}

async fn generation(gw: &Gateway) -> f64 {
    let t = gw.metrics_text().await;
    sample(&t, "gateway_config_generation")
        .unwrap_or_else(|| panic!("gateway_config_generation missing:\n{t}"))
}

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    let series = format!("gateway_config_reloads_total{{result=\"{result}\"}}");
    metric(&gw.metrics_text().await, &series)
}

/// GET /rest/people with `token` and a fresh request id; (response, request id).
async fn get_people(c: &mut Conn, token: &str) -> (Resp, String) {
    c.get_with_id("/rest/people", &[("authorization", &bearer(token))])
        .await
}

/// One HTTP/1.1 keep-alive and one HTTP/2 connection to acme.gw.test, each having served a
/// 200 with [`TOKEN_ACME`].
async fn open_h1_and_h2(gw: &Gateway) -> Vec<Conn> {
    let mut out = Vec::new();
    for mut c in [gw.h1("acme.gw.test").await, gw.h2("acme.gw.test").await] {
        let (r, id) = get_people(&mut c, TOKEN_ACME).await;
        assert_eq!(r.status, 200, "before the reload: {}", r.text());
        assert_eq!(gw.outcome(&id).await, "ok");
        out.push(c);
    }
    assert!(
        !out[0].is_h2() && out[1].is_h2(),
        "one h1 and one h2 connection"
    );
    out
}

fn protocol_of(c: &Conn) -> &'static str {
    if c.is_h2() { "HTTP/2" } else { "HTTP/1.1" }
}

/// The next request with [`TOKEN_ACME`] on each of these (same, already open) connections is a
/// 401 logged as `revoked_key`, and never reaches the upstream.
async fn assert_revoked_on(gw: &Gateway, up: &Upstream, conns: &mut [Conn]) {
    let forwarded = up.requests().len();
    for c in conns.iter_mut() {
        let proto = protocol_of(c);
        let (r, id) = get_people(c, TOKEN_ACME).await;
        assert_rest_error(&r, 401, "UNAUTHENTICATED");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some(r#"Bearer realm="twenty-gateway", error="invalid_token""#)
        );
        let line = gw.access_line(&id).await;
        assert_eq!(line["outcome"], "revoked_key", "{proto}: {line:?}");
        assert_eq!(line["key_id"], "acme-ci", "{proto}: {line:?}");
        assert_eq!(
            line["protocol"], proto,
            "served on the open connection: {line:?}"
        );
    }
    assert_eq!(
        up.requests().len(),
        forwarded,
        "a revoked key's request must not be forwarded"
    );
}

fn revoked_conf(conf: &Conf) -> String {
    conf.clone()
        .keys(&format!(
            "keys:\n{}{}",
            key_yaml("acme-ci", "acme", TOKEN_ACME, "revoked: true"),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        ))
        .render()
}

// ---------------------------------------------------------------------------------------------
// 1. file edit + SIGHUP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sighup_revokes_key_on_open_h1_and_h2_connections() {
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up).with_admin();
    let gw = conf.spawn().await;
    let mut conns = open_h1_and_h2(&gw).await;
    let gen0 = generation(&gw).await;

    let start = gw.stdout.line_count();
    gw.rewrite_config_in_place(&revoked_conf(&conf));
    gw.signal("HUP");
    // The trigger must be the signal (the file watch would also reload this edit, later).
    let ev = gw
        .wait_log_after(start, "reload by SIGHUP", reload_event("SIGHUP"))
        .await;
    assert!(
        ev["generation"].as_f64().unwrap_or(0.0) > gen0,
        "reload event carries a new generation (was {gen0}): {ev:?}"
    );
    assert_eq!(ev["keys"], 2, "reload event counts keys: {ev:?}");
    assert_eq!(ev["tenants"], 2, "reload event counts tenants: {ev:?}");

    assert_revoked_on(&gw, &up, &mut conns).await;

    // A new connection sees it too, and the other tenant's key is untouched.
    let mut c = gw.h1("acme.gw.test").await;
    let (r, id) = get_people(&mut c, TOKEN_ACME).await;
    assert_eq!(r.status, 401);
    assert_eq!(gw.outcome(&id).await, "revoked_key");
    let mut b = gw.h2("beta.gw.test").await;
    assert_eq!(get_people(&mut b, TOKEN_BETA).await.0.status, 200);
}

// ---------------------------------------------------------------------------------------------
// 2. file watch, no signal
// ---------------------------------------------------------------------------------------------

async fn file_watch_revokes(in_place: bool) {
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up).with_admin();
    let gw = conf.spawn().await;
    let mut conns = open_h1_and_h2(&gw).await;

    let start = gw.stdout.line_count();
    let t0 = Instant::now();
    if in_place {
        gw.rewrite_config_in_place(&revoked_conf(&conf));
    } else {
        // temp file in the same directory + rename(2) over the config (editors, `sed -i`)
        gw.replace_config(&revoked_conf(&conf));
    }
    let ev = gw
        .wait_log_after(
            start,
            "reload by the file watch",
            reload_event("file_watch"),
        )
        .await;
    let took = t0.elapsed();
    assert!(
        took < WATCH_DEADLINE,
        "the file watch noticed the edit after {took:?} (SPEC: within 5 s): {ev:?}"
    );
    assert_revoked_on(&gw, &up, &mut conns).await;
}

#[tokio::test]
async fn file_watch_in_place_write_revokes_key_on_open_connections() {
    file_watch_revokes(true).await;
}

#[tokio::test]
async fn file_watch_rename_replacement_revokes_key_on_open_connections() {
    file_watch_revokes(false).await;
}

// ---------------------------------------------------------------------------------------------
// 3. an invalid file changes nothing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_config_is_refused_with_paths_and_old_config_keeps_serving() {
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up).with_admin();
    let gw = conf.spawn().await;
    let mut conns = open_h1_and_h2(&gw).await;
    let errors0 = reloads(&gw, "error").await;
    let gen0 = generation(&gw).await;

    // keys[0] names an unknown tenant; the same file also revokes acme-ci, which must not
    // take effect either (all or nothing).
    let bad = conf.clone().keys(&format!(
        "keys:\n{}{}{}",
        key_yaml("ghost", "nosuch", TOKEN_GHOST, ""),
        key_yaml("acme-ci", "acme", TOKEN_ACME, "revoked: true"),
        key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
    ));
    let start = gw.stdout.line_count();
    gw.replace_config(&bad.render());
    let r = gw.admin_reload().await;
    assert_eq!(
        r.status,
        400,
        "POST /reload of an invalid file: {}",
        r.text()
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let j = r.json();
    assert_eq!(j["status"], "error", "{j}");
    assert!(
        j["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("gateway.yaml")),
        "names the file: {j}"
    );
    let errors = j["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("errors array: {j}"));
    let e = errors
        .iter()
        .find(|e| e["path"] == "keys[0].tenant")
        .unwrap_or_else(|| panic!("an error with path keys[0].tenant: {j}"));
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("nosuch")),
        "the message names the unknown tenant: {e}"
    );

    // logged as reload_failed (trigger admin) with the error and its path
    let ev = gw
        .wait_log_after(start, "reload_failed from POST /reload", |m| {
            str_field(m, "event") == Some("reload_failed")
                && str_field(m, "trigger") == Some("admin")
        })
        .await;
    let logged = serde_json::to_string(&ev).unwrap();
    assert!(
        logged.contains("keys[0].tenant") && logged.contains("nosuch"),
        "reload_failed carries the error with its path: {logged}"
    );

    // the old config keeps serving: same open connections, and a new one
    for c in conns.iter_mut() {
        let (r, id) = get_people(c, TOKEN_ACME).await;
        assert_eq!(
            r.status,
            200,
            "{}: old key after a refused reload: {}",
            protocol_of(c),
            r.text()
        );
        assert_eq!(gw.outcome(&id).await, "ok");
    }
    let mut c = gw.h1("acme.gw.test").await;
    assert_eq!(get_people(&mut c, TOKEN_ACME).await.0.status, 200);
    let mut c = gw.h1("acme.gw.test").await;
    assert_eq!(
        get_people(&mut c, TOKEN_GHOST).await.0.status,
        401,
        "nothing of the refused file applies"
    );

    let errors1 = reloads(&gw, "error").await;
    assert!(
        errors1 > errors0,
        "gateway_config_reloads_total{{result=\"error\"}} went up ({errors0} -> {errors1})"
    );
    assert_eq!(
        generation(&gw).await,
        gen0,
        "config generation unchanged by a refused reload"
    );
}

#[tokio::test]
async fn reload_with_a_misspelt_field_is_refused() {
    // `revokd: true` must not be silently ignored (it would look like a revocation that
    // never happened): the file is refused and the old config keeps serving.
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up).with_admin();
    let gw = conf.spawn().await;
    let mut conns = open_h1_and_h2(&gw).await;
    let typo = conf.clone().keys(&format!(
        "keys:\n{}{}",
        key_yaml("acme-ci", "acme", TOKEN_ACME, "revokd: true"),
        key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
    ));
    gw.replace_config(&typo.render());
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 400, "{}", r.text());
    let j = r.json();
    assert_eq!(j["status"], "error", "{j}");
    assert!(
        j["errors"]
            .as_array()
            .is_some_and(|v| v.iter().any(|e| e.to_string().contains("revokd"))),
        "the error names the unknown field: {j}"
    );
    for c in conns.iter_mut() {
        assert_eq!(get_people(c, TOKEN_ACME).await.0.status, 200);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. limiter state across reloads
// ---------------------------------------------------------------------------------------------

fn acme_rate_keys(rate: &str) -> String {
    format!(
        "keys:\n{}{}",
        key_yaml("acme-ci", "acme", TOKEN_ACME, &format!("rate: {rate}")),
        key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
    )
}

#[tokio::test]
async fn reload_keeps_spent_burst_and_a_changed_quota_starts_fresh() {
    let up = spawn_upstream("core").await;
    let conf = Conf::one(&up)
        .with_admin()
        .keys(&acme_rate_keys("{ requests: 1, per: 1h, burst: 2 }"));
    let gw = conf.spawn().await;
    let mut c = gw.h1("acme.gw.test").await;
    for i in 0..2 {
        let (r, _) = get_people(&mut c, TOKEN_ACME).await;
        assert_eq!(r.status, 200, "request {i} within the burst: {}", r.text());
    }
    let (r, id) = get_people(&mut c, TOKEN_ACME).await;
    assert_rest_error(&r, 429, "RATE_LIMITED");
    assert_eq!(gw.outcome(&id).await, "rate_limited");

    // An unrelated change (a new tenant): the key's quota is unchanged, so is its state.
    let unrelated = conf.clone().tenants(&format!(
        "{DEFAULT_TENANTS}  - name: gamma\n    subdomain: gamma\n"
    ));
    gw.replace_config(&unrelated.render());
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["tenants"],
        3,
        "the new file is in use: {}",
        r.text()
    );
    for mut conn in [c, gw.h2("acme.gw.test").await] {
        let (r, id) = get_people(&mut conn, TOKEN_ACME).await;
        assert_rest_error(&r, 429, "RATE_LIMITED");
        assert_eq!(
            gw.outcome(&id).await,
            "rate_limited",
            "{}: a reload must not hand out a fresh burst",
            protocol_of(&conn)
        );
    }

    // The key's quota changes: a fresh limiter from the next request on.
    let changed = unrelated
        .clone()
        .keys(&acme_rate_keys("{ requests: 1, per: 1h, burst: 3 }"));
    gw.replace_config(&changed.render());
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut c = gw.h1("acme.gw.test").await;
    let (r, id) = get_people(&mut c, TOKEN_ACME).await;
    assert_eq!(r.status, 200, "changed quota, fresh limiter: {}", r.text());
    assert_eq!(gw.outcome(&id).await, "ok");
    let rl = parse_sf_list(&r.header("ratelimit").expect("RateLimit header"));
    assert_eq!(
        rl["key"]["r"], "2",
        "fresh burst of 3, one used: {:?}",
        r.headers
    );
    let policy = parse_sf_list(&r.header("ratelimit-policy").expect("RateLimit-Policy"));
    assert_eq!(policy["key"]["q"], "1");
    assert_eq!(policy["key"]["w"], "3600");
}

// ---------------------------------------------------------------------------------------------
// 5. new tenant + new certificate
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn reload_adds_tenant_with_its_own_certificate() {
    let up = spawn_upstream("core").await;
    let setup = GatewaySetup::new();
    let new_cert = setup.cert("new", &["new.example"]);
    let conf = Conf::one(&up).with_admin();
    let gw = conf.spawn_in(setup).await;
    let default_sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();

    // Before: SNI new.example is covered by no certificate → the first (default) one, and a
    // request for that host on such a connection is misdirected.
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1("new.example")).await;
    assert_eq!(info.dns_names(), default_sans, "default certificate before");
    assert!(
        tls_connect_result(gw.https(), &TlsOpts::h1("new.example").strict())
            .await
            .is_err(),
        "no certificate for new.example before the reload"
    );
    let mut before = Conn::tls(gw.https(), &TlsOpts::h1("new.example"), "new.example").await;
    let (r, id) = get_people(&mut before, TOKEN_GAMMA).await;
    assert!(
        r.status == 421 || r.status == 404,
        "new.example before the reload: {} {}",
        r.status,
        r.text()
    );
    assert!(
        ["misdirected", "unknown_host"].contains(&gw.outcome(&id).await.as_str()),
        "outcome before the reload"
    );

    let mut next = conf
        .clone()
        .tenants(&format!(
            "{DEFAULT_TENANTS}  - name: gamma\n    domains: [new.example]\n"
        ))
        .keys(&format!(
            "keys:\n{}{}{}",
            key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
            key_yaml("gamma-ci", "gamma", TOKEN_GAMMA, ""),
        ));
    next.certificates
        .push("{ cert: certs/new.crt, key: certs/new.key }".into());
    gw.replace_config(&next.render());
    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());

    // After: the handshake for new.example gets the new certificate (full webpki check).
    for opts in [
        TlsOpts::h1("new.example").strict(),
        TlsOpts::h2("new.example").strict(),
    ] {
        let mut c = Conn::tls(gw.https(), &opts, "new.example").await;
        let info = c.tls.clone().unwrap();
        assert_eq!(info.dns_names(), vec!["new.example".to_string()]);
        assert_eq!(info.leaf, new_cert.der, "the new certificate is served");
        let (r, id) = get_people(&mut c, TOKEN_GAMMA).await;
        assert_eq!(
            r.status,
            200,
            "{:?}: routed after reload: {}",
            opts.alpn,
            r.text()
        );
        assert_eq!(r.json()["upstream"], "core", "answered by the upstream");
        let line = gw.access_line(&id).await;
        assert_eq!(line["tenant"], "gamma", "{line:?}");
        assert_eq!(line["outcome"], "ok", "{line:?}");
        let got = up.request_with_id(&id).await;
        assert_eq!(got.header("x-gateway-tenant"), Some("gamma"));
    }
    // The old names are still served by the default certificate.
    let (_, info) = tls_connect(gw.https(), &TlsOpts::h1("acme.gw.test").strict()).await;
    assert_eq!(info.dns_names(), default_sans);
}

// ---------------------------------------------------------------------------------------------
// 6. expiry without a reload
// ---------------------------------------------------------------------------------------------

/// A key that expires while the gateway runs is refused from then on — on the connections that
/// used it, with no reload. Its `expires` (RFC 3339 with milliseconds) is a moment after the
/// start: long enough for the setup to see the key work, short enough not to wait long; on a
/// machine too slow for that, the gateway is started again with a longer moment. The rule
/// itself, on a clock: `auth::tests::a_key_expires_at_its_instant_without_a_new_table`.
#[tokio::test]
async fn key_expiring_while_running_is_refused_without_reload() {
    let up = spawn_upstream("core").await;
    let mut margin = Duration::from_millis(1500);
    let (gw, mut conns, expires, stamp) = loop {
        let expires = SystemTime::now() + margin;
        let stamp = humantime::format_rfc3339_millis(expires).to_string();
        let conf = Conf::one(&up).with_admin().keys(&format!(
            "keys:\n{}{}",
            key_yaml("acme-ci", "acme", TOKEN_ACME, &format!("expires: {stamp}")),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        ));
        let gw = conf.spawn().await;
        let mut conns = Vec::new();
        for mut c in [gw.h1("acme.gw.test").await, gw.h2("acme.gw.test").await] {
            let (r, id) = get_people(&mut c, TOKEN_ACME).await;
            if SystemTime::now() >= expires {
                break; // answered after the expiry: cannot tell which side it was checked on
            }
            assert_eq!(r.status, 200, "before {stamp}: {}", r.text());
            assert_eq!(gw.outcome(&id).await, "ok");
            conns.push(c);
        }
        if conns.len() == 2 && SystemTime::now() < expires {
            break (gw, conns, expires, stamp);
        }
        assert!(
            margin < Duration::from_secs(30),
            "setup took over {margin:?}"
        );
        margin *= 3;
    };
    let gen0 = generation(&gw).await;
    let ok0 = reloads(&gw, "ok").await;

    // The expiry instant is the event under test: sleep until just past it.
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(50)).await;

    for c in conns.iter_mut() {
        let (r, id) = get_people(c, TOKEN_ACME).await;
        assert_rest_error(&r, 401, "UNAUTHENTICATED");
        assert_eq!(
            gw.outcome(&id).await,
            "expired_key",
            "{} after {stamp}",
            protocol_of(c)
        );
    }
    let mut b = gw.h1("beta.gw.test").await;
    assert_eq!(get_people(&mut b, TOKEN_BETA).await.0.status, 200);

    // No reload happened.
    assert_eq!(generation(&gw).await, gen0, "config generation unchanged");
    assert_eq!(reloads(&gw, "ok").await, ok0, "no reload counted");
    assert!(
        !gw.json_lines()
            .iter()
            .any(|m| str_field(m, "event").is_some_and(|e| e.starts_with("reload"))),
        "no reload event logged:\n{}",
        gw.all_output()
    );
}
