//! The Redis metrics. Made once per process and handed to every
//! [`super::Shared`] (a reload that changes `cluster` keeps the series).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a Redis call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No answer within `timeout`.
    Timeout,
    /// Could not connect, or the connection broke.
    Connect,
    /// Redis answered with an error (or an answer we could not read).
    Response,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Response => "response",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone)]
pub struct RedisMetrics {
    /// `gateway_redis_up`: 1 while limits are shared, 0 while the fallback decides.
    pub up: Gauge,
    /// `gateway_redis_errors_total{kind}`: failed calls made for requests.
    pub errors: Family<KindLabels, Counter>,
    /// `gateway_redis_duration_seconds`: every call made for a request.
    pub duration: Histogram,
    /// `gateway_ratelimit_fallback_total`: requests decided by `on_unavailable`.
    pub fallback: Counter,
}

impl Default for RedisMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisMetrics {
    pub fn new() -> Self {
        RedisMetrics {
            up: Gauge::default(),
            errors: Family::default(),
            // 0.1 ms … ~3.3 s
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            fallback: Counter::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_redis_up",
            "1 while rate limits are shared through Redis, 0 while Redis is considered down",
            self.up.clone(),
        );
        registry.register(
            "gateway_redis_errors",
            "Failed Redis calls by kind (timeout, connect, response)",
            self.errors.clone(),
        );
        registry.register(
            "gateway_redis_duration_seconds",
            "Duration of Redis calls made for requests",
            self.duration.clone(),
        );
        registry.register(
            "gateway_ratelimit_fallback",
            "Requests whose limits were decided by on_unavailable instead of Redis",
            self.fallback.clone(),
        );
    }

    pub(super) fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }
}
