//! New-connection cost of the listener's handshake path: rustls'
//! `TlsAcceptor::accept` (the path before ACME) against
//! `listener::handshake` (ClientHello read first for `acme-tls/1` and the
//! first-certificate wait), with ACME off and on. Full TLS 1.3 handshakes
//! over an in-memory pipe, client included, on one thread; rounds
//! alternate the paths and the medians are printed. `cargo bench --bench
//! handshake`. A benchmark, not a test: it asserts nothing about time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use twenty_gateway::access_log::{AccessLog, LogFormat};
use twenty_gateway::config;
use twenty_gateway::listener::{Handshake, handshake};
use twenty_gateway::runtime::Gateway;

const PER_ROUND: u32 = 300;
const ROUNDS: usize = 9;

fn gateway(acme: bool) -> (tempfile::TempDir, Arc<Gateway>) {
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/certs");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut y = format!(
        "listen: {{ https: 127.0.0.1:0 }}\n\
         tls: {{ certificates: [ {{ cert: {certs}/localhost.crt, key: {certs}/localhost.key }} ] }}\n\
         base_domains: [localhost]\n\
         upstreams: {{ core: http://127.0.0.1:3000, metadata: http://127.0.0.1:3000 }}\n\
         tenants:\n  - {{ name: t, subdomain: t, domains: [crm.t.test] }}\n"
    );
    if acme {
        // Never reached: the orders fail in the background, the handshakes
        // below are for a file certificate's name.
        y.push_str("acme: { directory: \"https://127.0.0.1:9/dir\", storage: acme }\n");
    }
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, y).expect("write config");
    let config = config::load(&path).expect("config");
    let gw = Gateway::new(config, AccessLog::new(LogFormat::Json, std::io::sink()));
    (dir, gw)
}

fn client() -> Arc<rustls::ClientConfig> {
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/dev-ca.crt");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Accept,
    Listener,
}

async fn round(gw: &Gateway, client: &Arc<rustls::ClientConfig>, path: Path) -> Duration {
    let server = twenty_gateway::tls::server_config(gw.certs.clone()).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let start = Instant::now();
    for _ in 0..PER_ROUND {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").expect("name");
        let client = connector.connect(name, c);
        let server = async {
            match path {
                Path::Accept => acceptor.accept(s).await.is_ok(),
                Path::Listener => matches!(
                    handshake(gw, s, server.clone(), Duration::from_secs(10)).await,
                    Handshake::Ready(_)
                ),
            }
        };
        let (c, ok) = tokio::join!(client, server);
        assert!(c.is_ok() && ok, "handshake failed");
    }
    start.elapsed() / PER_ROUND
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = client();
        for acme in [false, true] {
            let (_dir, gw) = gateway(acme);
            gw.apply_acme().await;
            // Warm-up.
            round(&gw, &client, Path::Accept).await;
            round(&gw, &client, Path::Listener).await;
            let (mut a, mut l) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                a.push(round(&gw, &client, Path::Accept).await);
                l.push(round(&gw, &client, Path::Listener).await);
            }
            let (a, l) = (median(a), median(l));
            println!(
                "acme {}: TlsAcceptor::accept {:>7.1} µs/handshake, listener::handshake {:>7.1} µs/handshake ({:+.1} %), client included",
                if acme { "on " } else { "off" },
                a.as_secs_f64() * 1e6,
                l.as_secs_f64() * 1e6,
                (l.as_secs_f64() / a.as_secs_f64() - 1.0) * 100.0
            );
        }
    });
}
