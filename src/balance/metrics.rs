//! `gateway_upstream_server_healthy{upstream,server}` and
//! `gateway_upstream_requests_total{upstream,server}`. Label values come
//! from the config only (upstream names, server URLs as written).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub upstream: String,
    /// The server's URL as written in the config.
    pub server: String,
}

/// The families; each server holds its own handles, so a request adds to
/// its counter without hashing labels; a server no config lists any more
/// leaves both.
#[derive(Clone, Debug, Default)]
pub struct BalanceMetrics {
    pub healthy: Family<ServerLabels, Gauge>,
    pub requests: Family<ServerLabels, Counter>,
}

impl BalanceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_upstream_server_healthy",
            "1 while an upstream server is healthy, 0 while it is skipped",
            self.healthy.clone(),
        );
        registry.register(
            "gateway_upstream_requests",
            "Requests sent to each upstream server (failover attempts included, health checks not)",
            self.requests.clone(),
        );
    }

    /// The handles of one server's series (created at 0).
    pub(crate) fn handles(&self, labels: &ServerLabels) -> (Gauge, Counter) {
        (
            self.healthy.get_or_create(labels).clone(),
            self.requests.get_or_create(labels).clone(),
        )
    }

    pub(crate) fn forget(&self, labels: &ServerLabels) {
        self.healthy.remove(labels);
        self.requests.remove(labels);
    }
}
