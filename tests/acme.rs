//! The ACME manager against a real CA (pebble + pebble-challtestsrv), with
//! real TLS and HTTP listeners for the CA to validate against.

mod acme_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use acme_support::pebble::{Pebble, PebbleConfig, free_port};
use acme_support::{Events, ISSUE_TIMEOUT, bind, handshake, serial, serve_http01, serve_tls};
use prometheus_client::registry::Registry;
use twenty_gateway::acme::{AcmeMetrics, Manager, Options, Phase, Settings, Shared};

fn start_manager(
    directory: &str,
    ca_roots: Option<&Path>,
    storage: &Path,
    options: Options,
) -> (Arc<Manager>, AcmeMetrics) {
    let settings = Settings {
        directory: directory.to_string(),
        contact: vec!["mailto:ops@acme.test".into()],
        storage: storage.to_path_buf(),
        ca_roots: ca_roots.map(Path::to_path_buf),
    }
    .validate()
    .expect("valid settings");
    let metrics = AcmeMetrics::default();
    let shared = Shared {
        metrics: metrics.clone(),
        ..Shared::default()
    };
    let manager = Manager::with_file_store(settings, options, shared).expect("manager");
    (Arc::new(manager), metrics)
}

/// A running pebble, a storage directory, and a manager using both.
struct Env {
    pebble: Pebble,
    storage: tempfile::TempDir,
    manager: Arc<Manager>,
    metrics: AcmeMetrics,
}

impl Env {
    fn start(config: PebbleConfig, options: Options) -> Env {
        let pebble = Pebble::start(config);
        let storage = tempfile::tempdir().expect("tempdir");
        let (manager, metrics) = start_manager(
            &pebble.directory,
            Some(&pebble.ca_roots),
            &storage.path().join("acme"),
            options,
        );
        Env {
            pebble,
            storage,
            manager,
            metrics,
        }
    }

    /// Like [`Env::start`], with pebble validating TLS-ALPN-01 against a TLS
    /// listener serving the manager (`config.tls_port` is set here); HTTP-01
    /// goes nowhere unless `config.http_port` says otherwise.
    async fn with_tls_listener(mut config: PebbleConfig, options: Options) -> (Env, u16) {
        let (listener, port) = bind().await;
        config.tls_port = port;
        if config.http_port == 0 {
            config.http_port = free_port();
        }
        let env = Env::start(config, options);
        serve_tls(listener, env.manager.clone());
        (env, port)
    }

    /// The manager's storage directory.
    fn storage(&self) -> std::path::PathBuf {
        self.storage.path().join("acme")
    }
}

fn exposition(metrics: &AcmeMetrics) -> String {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Wait until `name`'s status satisfies `f` (status changes log nothing,
/// so this polls, with a deadline).
async fn wait_status(manager: &Manager, name: &str, what: &str, f: impl Fn(&Phase) -> bool) {
    let check = || manager.status(name).is_some_and(|s| f(&s.phase));
    if check() {
        return;
    }
    let deadline = tokio::time::Instant::now() + ISSUE_TIMEOUT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {what}: {:?}",
            manager.status(name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tls_alpn01_issues_and_a_restart_with_the_ca_gone_orders_nothing() {
    let (events, _guard) = Events::capture();
    let options = Options {
        http01: false,
        ..Options::default()
    };
    let (env, tls_port) = Env::with_tls_listener(PebbleConfig::default(), options.clone()).await;
    let storage = env.storage();
    let Env {
        pebble,
        storage: _tempdir,
        manager,
        metrics,
    } = env;

    let name = "crm.alpn.test";
    let refused = manager
        .set_names(vec![name.to_string(), "*.wild.test".to_string()])
        .await;
    assert_eq!(refused, ["*.wild.test"]);

    // A handshake right away waits for the first certificate.
    let root = pebble.issuing_root().await;
    let chain = handshake(local(tls_port), name, root.clone())
        .await
        .unwrap_or_else(|e| panic!("handshake for {name}: {e}\n{}", pebble.log()));
    assert!(chain.len() >= 2, "leaf and intermediate");

    let issued = events
        .wait_for("issued event", ISSUE_TIMEOUT, |e| {
            e.is("acme_certificate_issued", name)
        })
        .await;
    assert_eq!(issued.get("challenge"), Some("tls-alpn-01"));
    let started = events.matching(|e| e.get("event") == Some("acme_order_started"));
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].get("challenge"), Some("tls-alpn-01"));
    assert!(manager.challenges().is_empty(), "answers withdrawn");

    // Stored privately.
    assert_eq!(mode(&storage), 0o700);
    assert_eq!(mode(&storage.join("certs")), 0o700);
    let cert_file = storage.join("certs").join(format!("{name}.pem"));
    assert_eq!(mode(&cert_file), 0o600);
    let accounts: Vec<_> = std::fs::read_dir(&storage)
        .expect("storage")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(accounts.len(), 1);
    assert_eq!(mode(&accounts[0]), 0o600);

    let out = exposition(&metrics);
    assert!(
        out.contains("gateway_acme_orders_total{result=\"issued\"} 1\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "gateway_certificate_expiry_timestamp_seconds{{name=\"{name}\"}} "
        )),
        "{out}"
    );

    // An unknown SNI: no wait, no order, no certificate.
    let unknown = "unknown.alpn.test";
    let t = tokio::time::Instant::now();
    assert!(
        handshake(local(tls_port), unknown, root.clone())
            .await
            .is_err()
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(manager.status(unknown).is_none());
    assert!(
        events
            .matching(|e| e.get("name") == Some(unknown))
            .is_empty()
    );

    // A restart with the CA gone serves the stored certificate at once and
    // orders nothing.
    let directory = pebble.directory.clone();
    drop(pebble);
    drop(manager);
    let (restarted, _) = start_manager(&directory, None, &storage, options);
    let (tls_listener, tls_port) = bind().await;
    serve_tls(tls_listener, restarted.clone());
    let ordered_before = events
        .matching(|e| e.get("event") == Some("acme_order_started"))
        .len();
    restarted.set_names(vec![name.to_string()]).await;
    assert!(
        restarted.certificates().get(name).is_some(),
        "loaded by set_names"
    );
    let again = handshake(local(tls_port), name, root.clone())
        .await
        .expect("handshake after restart");
    assert_eq!(serial(&again), serial(&chain));
    wait_status(&restarted, name, "Waiting", |p| {
        matches!(p, Phase::Waiting { .. })
    })
    .await;
    let ordered_after = events
        .matching(|e| e.get("event") == Some("acme_order_started"))
        .len();
    assert_eq!(ordered_before, ordered_after, "{:#?}", events.all());
}

#[tokio::test]
async fn http01_is_used_when_tls_alpn01_validation_fails() {
    let (events, _guard) = Events::capture();
    let (http_listener, http_port) = bind().await;
    let env = Env::start(
        PebbleConfig {
            tls_port: free_port(), // nothing answers TLS-ALPN-01
            http_port,
            ..Default::default()
        },
        Options {
            tls_alpn01: true,
            http01: true,
            ..Options::default()
        },
    );
    let (pebble, manager, metrics) = (&env.pebble, env.manager.clone(), &env.metrics);
    serve_http01(http_listener, manager.challenges().clone());

    let name = "crm.http.test";
    manager.set_names(vec![name.to_string()]).await;
    events
        .wait_for("issued event", ISSUE_TIMEOUT, |e| {
            e.is("acme_certificate_issued", name)
        })
        .await;

    let trail: Vec<(String, String)> = events
        .matching(|e| e.get("name") == Some(name))
        .iter()
        .filter(|e| {
            e.get("event")
                .is_some_and(|ev| ev.starts_with("acme_order") || ev == "acme_certificate_issued")
        })
        .map(|e| {
            (
                e.get("event").unwrap_or_default().to_string(),
                e.get("challenge").unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected = [
        ("acme_order_started", "tls-alpn-01"),
        ("acme_order_failed", "tls-alpn-01"),
        ("acme_order_started", "http-01"),
        ("acme_certificate_issued", "http-01"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(trail, expected, "{}", pebble.log());
    let failed = events
        .matching(|e| e.is("acme_order_failed", name))
        .remove(0);
    assert_eq!(failed.get("next_challenge"), Some("http-01"));
    assert!(
        failed
            .get("problem")
            .is_some_and(|p| p.contains("urn:ietf:params:acme:error:")),
        "the CA's problem detail: {failed:?}"
    );

    let out = exposition(metrics);
    assert!(
        out.contains("gateway_acme_orders_total{result=\"issued\"} 1\n"),
        "{out}"
    );
    assert!(
        out.contains("gateway_acme_orders_total{result=\"failed\"} 1\n"),
        "{out}"
    );
    assert!(manager.challenges().is_empty());
    let status = manager.status(name).expect("managed");
    assert_eq!(status.failures, 0);
    assert!(status.not_after.is_some());
}

#[tokio::test]
async fn renewal_replaces_the_certificate_without_a_gap() {
    let (events, _guard) = Events::capture();
    // 15 s certificates: renewed with 5 s left.
    let (env, tls_port) = Env::with_tls_listener(
        PebbleConfig {
            validity: Some(Duration::from_secs(15)),
            ..Default::default()
        },
        Options::default(),
    )
    .await;
    let (pebble, manager) = (&env.pebble, env.manager.clone());
    let root = pebble.issuing_root().await;

    let name = "crm.renew.test";
    manager.set_names(vec![name.to_string()]).await;
    let first = handshake(local(tls_port), name, root.clone())
        .await
        .expect("first handshake");
    let first_serial = serial(&first);

    // Handshakes keep succeeding until and after the renewal lands.
    let mut handshakes = 0;
    let renewed = loop {
        if let Some(e) = events.matching(|e| e.is("acme_renewed", name)).pop() {
            break e;
        }
        let chain = handshake(local(tls_port), name, root.clone())
            .await
            .unwrap_or_else(|e| panic!("handshake {handshakes} failed: {e}"));
        handshakes += 1;
        assert!(handshakes < 2000, "no renewal: {:#?}", events.all());
        if serial(&chain) != first_serial {
            // Installed; the event follows at once.
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(renewed.get("previous_not_after").is_some());
    let after = handshake(local(tls_port), name, root.clone())
        .await
        .expect("handshake after renewal");
    assert_ne!(serial(&after), first_serial);
    assert!(handshakes > 0);

    // The stored certificate is the new one.
    let stored = std::fs::read_to_string(env.storage().join("certs").join(format!("{name}.pem")))
        .expect("stored");
    let stored_chain: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(stored.as_bytes())
        .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
        .expect("pem");
    assert_eq!(serial(&stored_chain), serial(&after));
}

#[tokio::test]
async fn a_dead_ca_is_retried_with_doubling_backoff() {
    let (events, _guard) = Events::capture();
    let storage = tempfile::tempdir().expect("tempdir");
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let (manager, metrics) = start_manager(
        &directory,
        None,
        storage.path(),
        Options {
            backoff_base: Duration::from_millis(50),
            ..Options::default()
        },
    );
    let name = "crm.dead.test";
    manager.set_names(vec![name.to_string()]).await;
    for n in 1..=3 {
        events
            .wait_for("failure", ISSUE_TIMEOUT, |e| {
                e.is("acme_order_failed", name) && e.get("failures") == Some(&n.to_string())
            })
            .await;
    }
    let failures = events.matching(|e| e.is("acme_order_failed", name));
    let waits: Vec<_> = failures
        .iter()
        .take(3)
        .map(|e| e.get("retry_in_s").unwrap_or_default().to_string())
        .collect();
    assert_eq!(waits, ["0.05", "0.1", "0.2"]);
    assert!(
        failures[0]
            .get("problem")
            .is_some_and(|p| p.to_lowercase().contains("connect")),
        "{:?}",
        failures[0]
    );
    let status = manager.status(name).expect("managed");
    assert!(status.failures >= 3);
    assert!(status.last_error.is_some());
    assert!(exposition(&metrics).contains("gateway_acme_orders_total{result=\"failed\"} "),);
    // Nothing to wait for while backing off: a handshake is not held up.
    // (With a 50 ms backoff the name may be ordering again; bound generously.)
    let t = tokio::time::Instant::now();
    assert!(
        manager
            .first_certificate(name, Duration::from_secs(30))
            .await
            .is_none()
    );
    assert!(t.elapsed() < Duration::from_secs(29));
}

#[tokio::test]
async fn a_refused_name_does_not_hold_up_the_others() {
    let (events, _guard) = Events::capture();
    let (env, _) = Env::with_tls_listener(
        PebbleConfig {
            blocklist: vec!["blocked.refuse.test".into()],
            ..Default::default()
        },
        Options {
            // One order at a time: the refused one must not keep the slot.
            concurrency: 1,
            backoff_base: Duration::from_secs(3600),
            ..Options::default()
        },
    )
    .await;
    let manager = env.manager.clone();
    let names = ["a.refuse.test", "blocked.refuse.test", "c.refuse.test"];
    manager.set_names(names.iter().map(|n| n.to_string())).await;
    for name in [names[0], names[2]] {
        events
            .wait_for("issued event", ISSUE_TIMEOUT, |e| {
                e.is("acme_certificate_issued", name)
            })
            .await;
    }
    let failed = events
        .wait_for("refusal", ISSUE_TIMEOUT, |e| {
            e.is("acme_order_failed", names[1])
        })
        .await;
    assert!(
        failed
            .get("problem")
            .is_some_and(|p| p.contains("rejectedIdentifier")),
        "{failed:?}"
    );
    let status = manager.status(names[1]).expect("managed");
    assert_eq!(
        status.phase,
        Phase::Backoff {
            retry_in: Duration::from_secs(3600)
        }
    );
    assert!(manager.certificates().get(names[1]).is_none());
}
