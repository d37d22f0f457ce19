//! Prometheus metrics (prometheus-client), served on the admin listener.
//!
//! Labels are tenants, routes, outcomes and upstream names from the config —
//! never anything a client controls (no paths, no hosts, no key material),
//! so cardinality stays bounded by the config.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::access_log::AccessRecord;
use crate::error::Outcome;

/// A config-derived label value (tenant, route, upstream); empty when the
/// request never got that far.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Option<Arc<str>>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.0.as_deref().unwrap_or(""))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: Name,
    pub route: Name,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Name,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A certificate by the name it is served for (a configured name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub name: String,
}

/// The outcomes `gateway_auth_failures_total` counts.
const AUTH_FAILURES: [Outcome; 6] = [
    Outcome::InvalidKey,
    Outcome::ExpiredKey,
    Outcome::RevokedKey,
    Outcome::MissingKey,
    Outcome::WrongTenant,
    Outcome::AuthThrottled,
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One tenant route's `gateway_requests_total` counters, one per status
/// class, each looked up in the family on first use. A snapshot holds one
/// per tenant and route, so a request adds to its counter without hashing
/// the label set (~0.9k instructions a request, `bench/callgrind.sh`). The
/// handles share their values with the family: a reload that makes new ones
/// continues the same series.
#[derive(Debug, Default)]
pub struct RouteCounters([OnceLock<Counter>; 5]);

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Histogram,
    pub auth_failures: Family<OutcomeLabels, Counter>,
    /// `auth_failures`' counter of each outcome, looked up on first use
    /// (the label set is fixed: no hashing per refused request).
    auth_failure_counters: [OnceLock<Counter>; AUTH_FAILURES.len()],
    pub rate_limited: Family<TenantLabels, Counter>,
    pub scope_denied: Family<TenantLabels, Counter>,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_generation: Gauge,
    pub open_connections: Gauge,
    pub parked_connections: Gauge,
    pub tls_handshakes: Family<ResultLabels, Counter>,
    pub connections_refused: Counter,
    pub access_log_dropped: Counter<u64, AtomicU64>,
    /// ACME orders by result (`issued`, `failed`).
    pub acme_orders: Family<ResultLabels, Counter>,
    /// `not_after` of every certificate served (files and ACME).
    pub certificate_expiry: Family<CertLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            // 0.5 ms … ~16 s
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            auth_failures: Family::default(),
            auth_failure_counters: Default::default(),
            rate_limited: Family::default(),
            scope_denied: Family::default(),
            upstream_errors: Family::default(),
            config_reloads: Family::default(),
            config_generation: Gauge::default(),
            open_connections: Gauge::default(),
            parked_connections: Gauge::default(),
            tls_handshakes: Family::default(),
            connections_refused: Counter::default(),
            access_log_dropped: Counter::default(),
            acme_orders: Family::default(),
            certificate_expiry: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "gateway_requests",
            "Requests by tenant, route and status class",
            m.requests.clone(),
        );
        registry.register(
            "gateway_request_duration_seconds",
            "Time from request head to the end of the response body",
            m.duration.clone(),
        );
        registry.register(
            "gateway_auth_failures",
            "Refused authentication attempts by outcome",
            m.auth_failures.clone(),
        );
        registry.register(
            "gateway_rate_limited",
            "Requests refused by a key or tenant rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "gateway_scope_denied",
            "Requests refused (403) by a key's scope or apis",
            m.scope_denied.clone(),
        );
        registry.register(
            "gateway_upstream_errors",
            "Failed upstream exchanges by upstream and kind (connect, reset, timeout, body)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "gateway_config_reloads",
            "Config reloads by result (ok, error)",
            m.config_reloads.clone(),
        );
        registry.register(
            "gateway_config_generation",
            "Generation of the config snapshot in use (1 at start, +1 per applied reload)",
            m.config_generation.clone(),
        );
        registry.register(
            "gateway_open_connections",
            "Client connections currently open",
            m.open_connections.clone(),
        );
        registry.register(
            "gateway_parked_connections",
            "Idle HTTP/1.1 keep-alive connections waiting without request buffers",
            m.parked_connections.clone(),
        );
        registry.register(
            "gateway_tls_handshakes",
            "TLS handshakes by result (ok, error, timeout)",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "gateway_connections_refused",
            "Connections closed at accept because max_connections was reached",
            m.connections_refused.clone(),
        );
        registry.register(
            "gateway_access_log_dropped",
            "Access-log lines dropped because stdout could not keep up",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "gateway_acme_orders",
            "ACME orders placed, by result (issued, failed)",
            m.acme_orders.clone(),
        );
        registry.register(
            "gateway_certificate_expiry_timestamp_seconds",
            "Expiry (not_after, Unix seconds) of each certificate served, by name",
            m.certificate_expiry.clone(),
        );
        Metrics { registry, ..m }
    }

    /// For metrics owned by a step (`cluster`'s Redis metrics): registered
    /// once, when the gateway is built.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Account for one finished request. `route` holds the request counters
    /// of the tenant and route it reached, when it got that far.
    pub fn observe(&self, r: &AccessRecord, route: Option<&RouteCounters>) {
        let class = match r.status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let labels = || RequestLabels {
            tenant: Name(r.tenant.cloned()),
            route: Name(r.route.cloned()),
            status_class: STATUS_CLASSES[class],
        };
        match route {
            Some(c) => c.0[class]
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
        self.duration.observe(r.start.elapsed().as_secs_f64());
        match r.outcome {
            Outcome::InvalidKey
            | Outcome::ExpiredKey
            | Outcome::RevokedKey
            | Outcome::MissingKey
            | Outcome::WrongTenant
            | Outcome::AuthThrottled => {
                let outcome = r.outcome.as_str();
                match AUTH_FAILURES.iter().position(|o| *o == r.outcome) {
                    Some(i) => self.auth_failure_counters[i]
                        .get_or_init(|| {
                            self.auth_failures
                                .get_or_create(&OutcomeLabels { outcome })
                                .clone()
                        })
                        .inc(),
                    None => self
                        .auth_failures
                        .get_or_create(&OutcomeLabels { outcome })
                        .inc(),
                };
            }
            Outcome::RateLimited => {
                self.rate_limited
                    .get_or_create(&TenantLabels {
                        tenant: Name(r.tenant.cloned()),
                    })
                    .inc();
            }
            Outcome::ScopeDenied => {
                self.scope_denied
                    .get_or_create(&TenantLabels {
                        tenant: Name(r.tenant.cloned()),
                    })
                    .inc();
            }
            Outcome::UpstreamError | Outcome::UpstreamTimeout => {
                self.upstream_errors
                    .get_or_create(&UpstreamLabels {
                        upstream: Name(r.upstream.cloned()),
                        kind: r.error_kind.map_or("other", |k| k.as_str()),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub fn handshake(&self, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self, dropped_log_lines: u64) -> String {
        let seen = self.access_log_dropped.get();
        if dropped_log_lines > seen {
            self.access_log_dropped.inc_by(dropped_log_lines - seen);
        }
        let mut out = String::with_capacity(4096);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Keeps `gateway_open_connections` right however a connection ends.
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    pub fn new(g: &Gauge) -> Self {
        g.inc();
        ConnectionGuard(g.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    struct Names {
        id: http::HeaderValue,
        tenant: Arc<str>,
        route: Arc<str>,
    }

    fn names() -> Names {
        Names {
            id: http::HeaderValue::from_static("id"),
            tenant: "acme".into(),
            route: "/rest".into(),
        }
    }

    fn record(n: &Names, status: u16) -> AccessRecord<'_> {
        AccessRecord {
            request_id: &n.id,
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            method: &http::Method::GET,
            host: None,
            path: "",
            route: Some(&n.route),
            tenant: Some(&n.tenant),
            key_id: None,
            status,
            outcome: Outcome::Ok,
            upstream: None,
            start: Instant::now(),
            upstream_ms: None,
            bytes_out: 0,
            protocol: "HTTP/1.1",
            user_agent: None,
            error: None,
            error_kind: None,
        }
    }

    fn count(text: &str, class: &str) -> Option<String> {
        let series = format!(
            "gateway_requests_total{{tenant=\"acme\",route=\"/rest\",status_class=\"{class}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series).map(str::to_string))
    }

    #[test]
    fn cached_route_counters_add_to_the_same_series_as_the_family() {
        let m = Metrics::new();
        let n = names();
        let record = |status| record(&n, status);
        let first = RouteCounters::default();
        m.observe(&record(200), Some(&first));
        m.observe(&record(200), Some(&first));
        m.observe(&record(200), None);
        // A reload's fresh cache continues the series.
        let after_reload = RouteCounters::default();
        m.observe(&record(200), Some(&after_reload));
        m.observe(&record(503), Some(&after_reload));
        let text = m.encode(0);
        assert_eq!(count(&text, "2xx").as_deref(), Some("4"), "{text}");
        assert_eq!(count(&text, "5xx").as_deref(), Some("1"), "{text}");
        assert_eq!(
            count(&text, "4xx"),
            None,
            "no series before its first request"
        );
    }
}
