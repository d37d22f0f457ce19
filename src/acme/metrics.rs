//! The ACME view of the gateway's metrics: `gateway_acme_orders_total` and
//! `gateway_certificate_expiry_timestamp_seconds` (declared and registered
//! in [`crate::metrics::Metrics`]). `name` labels are names from the config,
//! so cardinality is bounded by the config.

use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::certs::unix;
use crate::metrics::{CertLabels, Metrics, ResultLabels};

/// Cheap to clone: clones share their values.
#[derive(Clone, Debug, Default)]
pub struct AcmeMetrics {
    pub orders: Family<ResultLabels, Counter>,
    pub expiry: Family<CertLabels, Gauge>,
}

impl AcmeMetrics {
    /// The families the gateway's registry exposes.
    pub fn of(metrics: &Metrics) -> Self {
        AcmeMetrics {
            orders: metrics.acme_orders.clone(),
            expiry: metrics.certificate_expiry.clone(),
        }
    }

    /// Register standalone (a manager without the gateway's metrics).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_acme_orders",
            "ACME orders placed, by result (issued, failed)",
            self.orders.clone(),
        );
        registry.register(
            "gateway_certificate_expiry_timestamp_seconds",
            "Expiry (not_after, Unix seconds) of each certificate served, by name",
            self.expiry.clone(),
        );
    }

    pub fn order_issued(&self) {
        self.orders
            .get_or_create(&ResultLabels { result: "issued" })
            .inc();
    }

    pub fn order_failed(&self) {
        self.orders
            .get_or_create(&ResultLabels { result: "failed" })
            .inc();
    }

    /// Record `name`'s certificate expiry (ACME and file certificates alike).
    pub fn set_expiry(&self, name: &str, not_after: SystemTime) {
        self.expiry
            .get_or_create(&CertLabels {
                name: name.to_string(),
            })
            .set(unix(not_after));
    }

    /// `name` is no longer served.
    pub fn remove_expiry(&self, name: &str) {
        self.expiry.remove(&CertLabels {
            name: name.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn exposition() {
        let metrics = AcmeMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.order_issued();
        metrics.order_failed();
        metrics.order_failed();
        metrics.set_expiry("a.test", UNIX_EPOCH + Duration::from_secs(1_900_000_000));
        metrics.set_expiry("b.test", UNIX_EPOCH + Duration::from_secs(1));
        metrics.remove_expiry("b.test");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("gateway_acme_orders_total{result=\"issued\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_acme_orders_total{result=\"failed\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "gateway_certificate_expiry_timestamp_seconds{name=\"a.test\"} 1900000000\n"
            ),
            "{out}"
        );
        assert!(!out.contains("b.test"), "{out}");
    }

    #[test]
    fn shares_the_gateway_families() {
        let gateway = Metrics::new();
        AcmeMetrics::of(&gateway).order_issued();
        assert_eq!(
            gateway
                .acme_orders
                .get_or_create(&ResultLabels { result: "issued" })
                .get(),
            1
        );
    }
}
