//! A real ACME CA for tests: Debian's `pebble` with `pebble-challtestsrv` as
//! its DNS server (every name resolves to 127.0.0.1), both on free ports,
//! killed when the [`Pebble`] is dropped.
//!
//! The package ships no listener certificate, so one is made here (rcgen):
//! [`Pebble::ca_roots`] is the PEM to trust for the directory.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What pebble validates against and how it issues.
#[derive(Debug, Clone, Default)]
pub struct PebbleConfig {
    /// Port pebble connects to for HTTP-01 (your HTTP listener).
    pub http_port: u16,
    /// Port pebble connects to for TLS-ALPN-01 (your TLS listener).
    pub tls_port: u16,
    /// Lifetime of issued certificates; pebble's default (5 years) if `None`.
    pub validity: Option<Duration>,
    /// Names pebble refuses to issue for.
    pub blocklist: Vec<String>,
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Pebble {
    pub directory: String,
    /// PEM file of the root that signed pebble's listener certificate.
    pub ca_roots: PathBuf,
    pub management: SocketAddr,
    listener_roots: Arc<rustls::RootCertStore>,
    dir: tempfile::TempDir,
    // Pebble first: it resolves through the DNS server.
    _pebble: ChildGuard,
    _dns: ChildGuard,
}

/// A port free for both TCP and UDP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind tcp");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_listening(what: &str, addr: SocketAddr, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {addr} after 20s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Pebble {
    pub fn start(config: PebbleConfig) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, cert_pem, key_pem) = listener_certificate();
        let ca_roots = dir.path().join("pebble-ca.pem");
        std::fs::write(&ca_roots, &ca_pem).expect("write ca");
        std::fs::write(dir.path().join("cert.pem"), cert_pem).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), key_pem).expect("write key");

        let dns_port = free_port();
        let dns_mgmt = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let dns_log = dir.path().join("challtestsrv.log");
        let mut dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &dns_mgmt.to_string()])
            .stdout(log_file(&dns_log))
            .stderr(log_file(&dns_log))
            .spawn()
            .expect("spawn pebble-challtestsrv (apt-get install pebble)");
        wait_listening("pebble-challtestsrv", dns_mgmt, &mut dns, &dns_log);
        let dns = ChildGuard(dns);

        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let management = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut pebble_config = serde_json::json!({
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": config.http_port,
            "tlsPort": config.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": config.blocklist,
        });
        if let Some(validity) = config.validity {
            pebble_config["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec(&serde_json::json!({ "pebble": pebble_config })).expect("json"),
        )
        .expect("write pebble config");
        let log = dir.path().join("pebble.log");
        let mut pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .args(["-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .expect("spawn pebble (apt-get install pebble)");
        wait_listening("pebble", listen, &mut pebble, &log);
        wait_listening("pebble management", management, &mut pebble, &log);

        let mut listener_roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
            let c: CertificateDer<'static> = c.expect("pem");
            listener_roots.add(c).expect("root");
        }
        Pebble {
            directory: format!("https://{listen}/dir"),
            ca_roots,
            management,
            listener_roots: Arc::new(listener_roots),
            dir,
            _pebble: ChildGuard(pebble),
            _dns: dns,
        }
    }

    /// Pebble's output so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The root pebble issues under (regenerated on every start).
    pub async fn issuing_root(&self) -> CertificateDer<'static> {
        let pem = self.management_get("/roots/0").await;
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .expect("pebble root is PEM")
    }

    async fn management_get(&self, path: &str) -> String {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(self.listener_roots.clone())
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.management)
            .await
            .expect("connect pebble management");
        let name = ServerName::IpAddress(self.management.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .expect("TLS to pebble management");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.management
        );
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        // Go closes without close_notify sometimes: keep what arrived.
        let _ = tls.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        body.to_string()
    }
}

fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
        .into()
}

/// A CA and a certificate it signed for `localhost`/127.0.0.1, all PEM.
fn listener_certificate() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pebble listener test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("ca");

    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("leaf");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}
