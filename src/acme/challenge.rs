//! Pending challenge answers, as the listeners give them to the CA.
//!
//! - HTTP-01 (RFC 8555 §8.3): `GET /.well-known/acme-challenge/<token>` on
//!   port 80 (`listen.http`) answers the key authorization.
//! - TLS-ALPN-01 (RFC 8737): a ClientHello offering only `acme-tls/1` for the
//!   name gets a self-signed certificate for it carrying the critical
//!   acmeIdentifier extension (SHA-256 of the key authorization); the
//!   connection ends after the handshake.

use std::sync::Arc;

use dashmap::DashMap;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use sha2::{Digest, Sha256};

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Whether a ClientHello is a TLS-ALPN-01 validation: it offers exactly one
/// protocol, `acme-tls/1` (RFC 8737 §3).
pub fn is_acme_tls_alpn(hello: &ClientHello<'_>) -> bool {
    offers_only_acme_tls(hello.alpn())
}

fn offers_only_acme_tls<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    let Some(mut protocols) = alpn else {
        return false;
    };
    protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
}

/// The token of an HTTP-01 request path, if it is one.
pub fn http01_token(path: &str) -> Option<&str> {
    path.strip_prefix(HTTP01_PREFIX).filter(|t| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// A TLS-ALPN-01 answer: the challenge certificate and a server config that
/// serves only it, with ALPN `acme-tls/1`.
#[derive(Debug)]
pub struct TlsAlpnAnswer {
    pub key: Arc<CertifiedKey>,
    pub config: Arc<ServerConfig>,
}

/// Answers for the challenges of orders in progress.
#[derive(Debug, Default)]
pub struct Challenges {
    /// HTTP-01 token → key authorization.
    http01: DashMap<String, String>,
    /// TLS-ALPN-01 name → challenge certificate.
    tls_alpn01: DashMap<String, Arc<TlsAlpnAnswer>>,
    /// Challenge certificates built from answers another gateway shared:
    /// name → (SHA-256 of the key authorization, answer). Bounded by
    /// [`MAX_SHARED_ANSWERS`].
    shared_tls_alpn01: DashMap<String, (Vec<u8>, Arc<TlsAlpnAnswer>)>,
}

/// Bound on the cache of challenge certificates built for other gateways'
/// orders (cleared when full).
const MAX_SHARED_ANSWERS: usize = 256;

impl Challenges {
    /// The body to answer `GET /.well-known/acme-challenge/<token>` with.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.get(token).map(|v| v.clone())
    }

    /// The challenge certificate for `name`, if a TLS-ALPN-01 validation of
    /// it is pending.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01.get(name).map(|a| a.key.clone())
    }

    /// The server config to finish a TLS-ALPN-01 handshake for `name` with
    /// (after [`is_acme_tls_alpn`] said yes); `None`: refuse the handshake.
    pub fn tls_alpn01_server_config(&self, name: &str) -> Option<Arc<ServerConfig>> {
        self.tls_alpn01.get(name).map(|a| a.config.clone())
    }

    pub(crate) fn add_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub(crate) fn remove_http01(&self, token: &str) {
        self.http01.remove(token);
    }

    pub(crate) fn add_tls_alpn01(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let answer = tls_alpn01_answer(name, digest)?;
        self.tls_alpn01.insert(name.to_string(), Arc::new(answer));
        Ok(())
    }

    pub(crate) fn remove_tls_alpn01(&self, name: &str) {
        self.tls_alpn01.remove(name);
    }

    /// The server config answering a TLS-ALPN-01 validation of `name` with
    /// `key_authorization`, published by the gateway that placed the order:
    /// the same certificate shape as the local path. Built once per key
    /// authorization.
    pub fn shared_tls_alpn01_config(
        &self,
        name: &str,
        key_authorization: &str,
    ) -> Result<Arc<ServerConfig>, String> {
        let digest = Sha256::digest(key_authorization.as_bytes()).to_vec();
        if let Some(entry) = self.shared_tls_alpn01.get(name)
            && entry.0 == digest
        {
            return Ok(entry.1.config.clone());
        }
        let answer = Arc::new(tls_alpn01_answer(name, &digest)?);
        if self.shared_tls_alpn01.len() >= MAX_SHARED_ANSWERS {
            self.shared_tls_alpn01.clear();
        }
        self.shared_tls_alpn01
            .insert(name.to_string(), (digest, answer.clone()));
        Ok(answer.config.clone())
    }

    /// Nothing pending (tests: every order cleaned up after itself).
    pub fn is_empty(&self) -> bool {
        self.http01.is_empty() && self.tls_alpn01.is_empty()
    }
}

/// The RFC 8737 certificate for `name` with `digest` = SHA-256 of the key
/// authorization, and a server config serving only it.
fn tls_alpn01_answer(name: &str, digest: &[u8]) -> Result<TlsAlpnAnswer, String> {
    let key_pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key_pair).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let signer = aws_lc_rs::sign::any_supported_type(&key_der).map_err(|e| e.to_string())?;
    let key = Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signer,
    ));
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(key.clone())));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    // Validation connections are one-shot: no resumption state to keep.
    config.send_tls13_tickets = 0;
    Ok(TlsAlpnAnswer {
        key,
        config: Arc::new(config),
    })
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lone_acme_tls_offer_is_a_validation() {
        let check = |p: Option<&[&[u8]]>| offers_only_acme_tls(p.map(|p| p.iter().copied()));
        assert!(check(Some(&[b"acme-tls/1"])));
        assert!(!check(None));
        assert!(!check(Some(&[])));
        assert!(!check(Some(&[b"h2"])));
        assert!(!check(Some(&[b"h2", b"acme-tls/1"])));
        assert!(!check(Some(&[b"acme-tls/1", b"h2"])));
    }

    #[test]
    fn http01_paths() {
        assert_eq!(
            http01_token("/.well-known/acme-challenge/abc-DEF_123"),
            Some("abc-DEF_123")
        );
        assert_eq!(http01_token("/.well-known/acme-challenge/"), None);
        assert_eq!(http01_token("/.well-known/acme-challenge/a/b"), None);
        assert_eq!(http01_token("/.well-known/acme-challenge/a?b"), None);
        assert_eq!(http01_token("/rest/x"), None);
    }

    #[test]
    fn tls_alpn01_certificate_carries_a_critical_acme_identifier() {
        let challenges = Challenges::default();
        let digest = [7u8; 32];
        challenges.add_tls_alpn01("a.test", &digest).unwrap();
        let key = challenges.tls_alpn01("a.test").unwrap();
        let config = challenges.tls_alpn01_server_config("a.test").unwrap();
        assert_eq!(config.alpn_protocols, vec![ACME_TLS_ALPN.to_vec()]);

        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let ext = cert
            .iter_extensions()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // OCTET STRING (0x04) of 32 bytes holding the digest.
        assert_eq!(ext.value[..2], [0x04, 32]);
        assert_eq!(ext.value[2..], digest);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            r#"[DNSName("a.test")]"#
        );

        challenges.remove_tls_alpn01("a.test");
        assert!(challenges.tls_alpn01_server_config("a.test").is_none());
        assert!(challenges.is_empty());
    }

    #[test]
    fn a_shared_key_authorization_gets_the_same_certificate_shape() {
        let challenges = Challenges::default();
        let config = challenges
            .shared_tls_alpn01_config("a.test", "tok.thumb")
            .unwrap();
        assert_eq!(config.alpn_protocols, vec![ACME_TLS_ALPN.to_vec()]);
        let entry = challenges.shared_tls_alpn01.get("a.test").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(entry.1.key.cert[0].as_ref()).unwrap();
        let ext = cert
            .iter_extensions()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert_eq!(ext.value[2..], Sha256::digest(b"tok.thumb")[..]);
        drop(entry);
        // Built once per key authorization; a new one replaces it.
        let again = challenges
            .shared_tls_alpn01_config("a.test", "tok.thumb")
            .unwrap();
        assert!(Arc::ptr_eq(&config, &again));
        let other = challenges
            .shared_tls_alpn01_config("a.test", "tok2.thumb")
            .unwrap();
        assert!(!Arc::ptr_eq(&config, &other));
        // Local answers are unaffected.
        assert!(challenges.is_empty());
    }
}
