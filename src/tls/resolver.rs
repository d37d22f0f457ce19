//! The SNI resolver and the server's rustls config. The resolver never knows
//! where a certificate came from: it asks [`Certificates`], which asks the
//! config's files and every [`CertSource`].

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

use super::{CertStore, LoadedCert, normalize_sni};

/// Where the SNI resolver finds a certificate besides the config's files.
/// A source can change at any time without a config reload (ACME adds the
/// certificate of a tenant's domain when it is issued).
pub trait CertSource: Send + Sync {
    /// The certificate for `name` (normalised SNI), if this source has one.
    fn lookup(&self, name: &str) -> Option<Arc<LoadedCert>>;
}

/// Every certificate the gateway can serve: the config's files (swapped in
/// by each reload), then the other sources in order, then the first file
/// certificate as the default.
pub struct Certificates {
    files: ArcSwap<CertStore>,
    sources: Vec<Arc<dyn CertSource>>,
}

impl Certificates {
    pub fn new(files: CertStore, sources: Vec<Arc<dyn CertSource>>) -> Self {
        Certificates {
            files: ArcSwap::from_pointee(files),
            sources,
        }
    }

    /// Replace the file certificates (a reload).
    pub fn set_files(&self, files: CertStore) {
        self.files.store(Arc::new(files));
    }

    /// How many certificates the config's files gave.
    pub fn file_count(&self) -> usize {
        self.files.load().len()
    }

    /// The certificate to serve for `sni`.
    pub fn select(&self, sni: Option<&str>) -> Option<Arc<LoadedCert>> {
        let files = self.files.load();
        if let Some(name) = sni.map(normalize_sni) {
            if let Some(c) = files.find(&name) {
                return Some(c.clone());
            }
            if let Some(c) = self.sources.iter().find_map(|s| s.lookup(&name)) {
                return Some(c);
            }
        }
        files.default_cert().cloned()
    }
}

/// rustls certificate resolver asking [`Certificates`] on every handshake.
pub struct SniResolver {
    certs: Arc<Certificates>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs
            .select(hello.server_name())
            .map(|c| c.key.clone())
    }
}

/// Server cipher-suite preference (Mozilla's "intermediate" order): AES-128-GCM
/// first. Its TLS 1.3 key schedule runs on SHA-256, which has hardware support
/// (SHA-NI); the provider's default AES-256-GCM-SHA384 spends ~16 % of a
/// new-connection workload in software SHA-512 (profiled), and AES-128 also
/// moves bulk data with fewer rounds. All suites are AEAD with forward secrecy.
static CIPHER_SUITES: &[rustls::SupportedCipherSuite] = {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    &[
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
};

/// The server's rustls config: TLS 1.2 and 1.3 only, ALPN h2 + http/1.1,
/// stateless session tickets so returning clients skip the full handshake.
pub fn server_config(certs: Arc<Certificates>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..aws_lc_rs::default_provider()
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    // One ticket is enough to resume; rustls' default of two doubles the
    // ticket work on every full handshake.
    config.send_tls13_tickets = 1;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
