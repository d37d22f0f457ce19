//! Certificates for tenants' custom domains from an ACME CA (RFC 8555).
//!
//! # Layout
//!
//! - [`settings`] — the `acme:` block and its validation (no CA contact).
//! - [`manager`] — [`Manager`]: given the configured names (at start and on
//!   every reload) it loads stored certificates, orders the missing ones in
//!   the background a few at a time, renews, and backs off on failure.
//! - [`order`] — one ACME order for one name: TLS-ALPN-01 first, HTTP-01 when
//!   TLS-ALPN-01 validation failed and an HTTP listener exists.
//! - [`challenge`] — [`Challenges`]: the answers the listeners give while an
//!   order is pending (HTTP-01 tokens, TLS-ALPN-01 certificates).
//! - [`certs`] — [`Certificates`]: the issued certificates the TLS layer
//!   reads per handshake, and the wait for a name's first one.
//! - [`store`] — [`Store`]: where the account and certificates persist
//!   ([`FileStore`]: files under `storage`).
//! - [`redis_store`] — [`RedisStore`]: with `cluster`, the account, the
//!   certificates, the pending challenge answers and a per-name order lock
//!   shared by the gateways through Redis (a [`FileStore`] copy kept).
//! - [`client`] — the HTTPS client instant-acme talks through (`ca_roots`).
//! - [`metrics`] — `gateway_acme_orders_total`,
//!   `gateway_certificate_expiry_timestamp_seconds`.
//! - [`service`] — [`Acme`]: what the gateway holds for its whole life: the
//!   manager of the current settings (rebuilt when they change), and the
//!   certificate source and challenge answers the listeners read.
//!
//! The TLS layer's part: answer a ClientHello that offers only `acme-tls/1`
//! ([`challenge::is_acme_tls_alpn`]) with [`Acme::tls_alpn01_config`] and
//! end the connection after the handshake; let a handshake for a name whose
//! first certificate is being ordered wait ([`Acme::first_certificate`]);
//! serve [`Certificates`] as a [`crate::tls::CertSource`]. The HTTP
//! listener's part: answer `GET /.well-known/acme-challenge/<token>`
//! ([`challenge::http01_token`]) with [`Acme::http01`].

pub mod certs;
pub mod challenge;
pub mod client;
pub mod manager;
pub mod metrics;
pub mod order;
pub mod redis_store;
pub mod service;
pub mod settings;
pub mod store;

pub use certs::{Certificates, Issued};
pub use challenge::Challenges;
pub use manager::{Manager, ManagerError, Options, Phase, Shared, Status};
pub use metrics::AcmeMetrics;
pub use redis_store::RedisStore;
pub use service::Acme;
pub use settings::{Settings, ValidSettings};
pub use store::{ChallengeKey, FileStore, Store, StoreError, StoredCert};

/// Whether `name` may be ordered over HTTP-01/TLS-ALPN-01 and used as a
/// storage key: a lowercase DNS name of at least two labels, no wildcard, no
/// IP address, no trailing dot. (Also what keeps a name safe as a file name.)
pub fn is_orderable_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 || !name.contains('.') {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    // An all-numeric last label would make it an IPv4 address.
    let tld_ok = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && tld_ok
}

#[cfg(test)]
mod tests {
    use super::is_orderable_name;

    #[test]
    fn orderable_names() {
        for ok in [
            "crm.acme.test",
            "a.b",
            "x-1.example.com",
            "xn--bcher-kva.example",
        ] {
            assert!(is_orderable_name(ok), "{ok}");
        }
        for bad in [
            "",
            "localhost",
            "*.acme.test",
            "CRM.acme.test",
            "crm.acme.test.",
            "..",
            "a..b",
            "../etc",
            "a/b.test",
            "127.0.0.1",
            "-a.test",
            "a-.test",
            "a_b.test",
        ] {
            assert!(!is_orderable_name(bad), "{bad}");
        }
    }
}
