//! TLS termination: certificates ([`LoadedCert`], loaded at validation so a
//! bad file fails the reload, not traffic), the per-config [`CertStore`],
//! and in [`resolver`] the SNI resolver that asks the certificate sources on
//! every handshake.

pub mod resolver;

pub use resolver::{CertSource, Certificates, server_config};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} contains no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM certificate chain: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path} contains no usable PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("key {key} does not match certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{path} has no DNS subject alternative names to serve")]
    NoNames { path: PathBuf },
}

/// A certificate chain with its signing key and the names it covers.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Lowercase SAN DNS names; wildcards keep their `*.` prefix.
    pub names: Vec<String>,
    /// Where it came from: a file, or `acme:<name>`.
    pub source: PathBuf,
    /// The leaf's validity.
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .field("source", &self.source)
            .finish()
    }
}

/// What is wrong with a PEM chain and key (without their file names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemError {
    NoCertificate,
    BadCertificate(String),
    BadKey(String),
    Mismatch,
    NoNames,
}

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemError::NoCertificate => f.write_str("no PEM certificate"),
            PemError::BadCertificate(r) => write!(f, "not a PEM certificate chain: {r}"),
            PemError::BadKey(r) => write!(f, "no usable PEM private key: {r}"),
            PemError::Mismatch => f.write_str("the private key does not match the certificate"),
            PemError::NoNames => f.write_str("no DNS subject alternative names to serve"),
        }
    }
}

impl LoadedCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| CertError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let cert = || cert_path.to_path_buf();
        Self::from_pem(&cert_pem, &key_pem, cert()).map_err(|e| match e {
            PemError::NoCertificate => CertError::NoCertificate { path: cert() },
            PemError::BadCertificate(reason) => CertError::BadCertificate {
                path: cert(),
                reason,
            },
            PemError::BadKey(reason) => CertError::BadKey {
                path: key_path.to_path_buf(),
                reason,
            },
            PemError::Mismatch => CertError::Mismatch {
                cert: cert(),
                key: key_path.to_path_buf(),
            },
            PemError::NoNames => CertError::NoNames { path: cert() },
        })
    }

    /// Parse a PEM chain (leaf first) and its private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], source: PathBuf) -> Result<Self, PemError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PemError::BadCertificate(e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(PemError::NoCertificate);
        };
        let leaf = parse_leaf(leaf).map_err(PemError::BadCertificate)?;
        if leaf.names.is_empty() {
            return Err(PemError::NoNames);
        }
        let key_der =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| PemError::BadKey(e.to_string()))?;
        let signer = aws_lc_rs::sign::any_supported_type(&key_der)
            .map_err(|e| PemError::BadKey(e.to_string()))?;
        let key = CertifiedKey::new(chain, signer);
        match key.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => return Err(PemError::Mismatch),
        }
        Ok(LoadedCert {
            key: Arc::new(key),
            names: leaf.names,
            source,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }

    /// Whether this certificate is valid for `host` (normalised): an exact SAN
    /// or a wildcard covering exactly one label.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => n == host,
        })
    }
}

/// An SNI name as the stores index it: lowercase, no trailing dot.
pub fn normalize_sni(sni: &str) -> String {
    sni.trim_end_matches('.').to_ascii_lowercase()
}

struct Leaf {
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
}

fn parse_leaf(leaf: &CertificateDer<'_>) -> Result<Leaf, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let GeneralName::DNSName(n) = gn {
                names.push(n.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap_or(UNIX_EPOCH)
    };
    Ok(Leaf {
        names,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// All certificates of one config, indexed for SNI selection.
#[derive(Debug, Default)]
pub struct CertStore {
    certs: Vec<Arc<LoadedCert>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` indexed by `example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertStore {
    pub fn new(certs: Vec<LoadedCert>) -> Self {
        let mut store = CertStore::default();
        for (i, cert) in certs.into_iter().enumerate() {
            for name in &cert.names {
                // First certificate listing a name wins, like the config order.
                match name.strip_prefix("*.") {
                    Some(parent) => store.wildcard.entry(parent.to_string()).or_insert(i),
                    None => store.exact.entry(name.clone()).or_insert(i),
                };
            }
            store.certs.push(Arc::new(cert));
        }
        store
    }

    /// The certificate whose SAN names `name` (normalised): exact, then
    /// wildcard.
    pub fn find(&self, name: &str) -> Option<&Arc<LoadedCert>> {
        self.exact
            .get(name)
            .or_else(|| {
                name.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .and_then(|i| self.certs.get(*i))
    }

    /// The first configured certificate: for clients that send no SNI or
    /// one no certificate covers.
    pub fn default_cert(&self) -> Option<&Arc<LoadedCert>> {
        self.certs.first()
    }

    /// The certificate for an SNI name: exact SAN, then wildcard, then the
    /// first certificate (also for clients that send no SNI).
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<LoadedCert>> {
        sni.map(normalize_sni)
            .and_then(|s| self.find(&s))
            .or_else(|| self.default_cert())
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// The certificates in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedCert>> {
        self.certs.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}
