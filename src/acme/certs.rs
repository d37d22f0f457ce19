//! The certificates the ACME manager issued, as the TLS layer reads them.
//!
//! One [`DashMap`] lookup per handshake; a new certificate replaces the old
//! one in place, so a renewal never leaves a gap.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use rustls::sign::CertifiedKey;

use super::store::StoredCert;
use crate::tls::{CertSource, LoadedCert};

/// An issued certificate ready to serve.
#[derive(Debug)]
pub struct Issued {
    /// As the SNI resolver serves it (`source`: `acme:<name>`).
    pub cert: Arc<LoadedCert>,
    /// ARI identifier parts of the leaf: the DER `keyIdentifier` of its
    /// Authority Key Identifier (absent when the CA sets none) and its DER
    /// serial number.
    pub(crate) aki: Option<Vec<u8>>,
    pub(crate) serial: Vec<u8>,
}

impl Issued {
    /// Parse a stored key and chain; the leaf must name `name`.
    pub fn parse(name: &str, stored: &StoredCert) -> Result<Issued, String> {
        let cert = LoadedCert::from_pem(
            stored.chain_pem.as_bytes(),
            stored.key_pem.as_bytes(),
            PathBuf::from(format!("acme:{name}")),
        )
        .map_err(|e| e.to_string())?;
        if !cert.names.iter().any(|n| n == name) {
            return Err(format!("leaf certificate does not name {name}"));
        }
        let (_, leaf) = x509_parser::parse_x509_certificate(cert.key.cert[0].as_ref())
            .map_err(|e| format!("leaf certificate does not parse: {e}"))?;
        let aki = leaf
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        let serial = leaf.tbs_certificate.raw_serial().to_vec();
        Ok(Issued {
            cert: Arc::new(cert),
            aki,
            serial,
        })
    }

    pub fn not_before(&self) -> SystemTime {
        self.cert.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.cert.not_after
    }

    /// When to renew by default: when a third of the lifetime is left.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after()
            .duration_since(self.not_before())
            .unwrap_or_default();
        self.not_after() - lifetime / 3
    }
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Issued certificates by name, shared by the manager (writer) and the TLS
/// layer (reader).
#[derive(Debug, Default)]
pub struct Certificates {
    by_name: DashMap<String, Arc<Issued>>,
}

impl Certificates {
    /// The certificate to serve for `name` (lowercase, no trailing dot).
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.by_name.get(name).map(|i| i.cert.key.clone())
    }

    pub fn issued(&self, name: &str) -> Option<Arc<Issued>> {
        self.by_name.get(name).map(|i| i.clone())
    }

    pub(crate) fn install(&self, name: &str, issued: Arc<Issued>) {
        self.by_name.insert(name.to_string(), issued);
    }

    pub(crate) fn remove(&self, name: &str) {
        self.by_name.remove(name);
    }

    /// Forget every name `keep` refuses; returns the forgotten names.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut gone = Vec::new();
        self.by_name.retain(|name, _| {
            let k = keep(name);
            if !k {
                gone.push(name.clone());
            }
            k
        });
        gone
    }

    /// Names with a certificate.
    pub fn names(&self) -> Vec<String> {
        self.by_name.iter().map(|e| e.key().clone()).collect()
    }
}

impl CertSource for Certificates {
    fn lookup(&self, name: &str) -> Option<Arc<LoadedCert>> {
        self.by_name.get(name).map(|i| i.cert.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// A self-signed certificate for `name` valid from `not_before` for
    /// `lifetime`.
    pub(crate) fn self_signed(
        name: &str,
        not_before: SystemTime,
        lifetime: Duration,
    ) -> StoredCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_before = not_before.into();
        params.not_after = (not_before + lifetime).into();
        let cert = params.self_signed(&key).unwrap();
        StoredCert {
            key_pem: key.serialize_pem(),
            chain_pem: cert.pem(),
        }
    }

    #[test]
    fn parse_checks_name_and_key_and_reads_validity() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let stored = self_signed("a.test", start, Duration::from_secs(90 * 86400));
        let issued = Issued::parse("a.test", &stored).unwrap();
        assert_eq!(issued.not_before(), start);
        assert_eq!(issued.not_after(), start + Duration::from_secs(90 * 86400));
        // A third of 90 days left: day 60.
        assert_eq!(issued.renew_at(), start + Duration::from_secs(60 * 86400));

        let e = Issued::parse("b.test", &stored).unwrap_err();
        assert!(e.contains("does not name b.test"), "{e}");

        let other = self_signed("a.test", start, Duration::from_secs(60));
        let mismatched = StoredCert {
            key_pem: other.key_pem,
            chain_pem: stored.chain_pem,
        };
        let e = Issued::parse("a.test", &mismatched).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }
}
