//! What a request knows about itself: its connection ([`ConnInfo`]) and its
//! typed context ([`RequestCtx`]), which the pipeline's steps fill in and the
//! logging phase reads once at the end ([`RequestCtx::record`]) for the access
//! log and the metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Version};
use ipnet::IpNet;

use crate::access_log::AccessRecord;
use crate::base::headers::X_FORWARDED_FOR;
use crate::error::{FailureKind, GatewayError, Outcome};
use crate::host::HostMemo;
use crate::metrics::RouteCounters;
use crate::tls::LoadedCert;

/// What a connection knows about itself, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as a header value, made once per connection: the
    /// `X-Forwarded-For` of every request that arrives without one.
    pub peer_header: HeaderValue,
    pub tls: Option<TlsInfo>,
    pub activity: Activity,
    /// The connection's first host, normalised ([`HostMemo`]).
    pub host: HostMemo,
}

#[derive(Debug)]
pub struct TlsInfo {
    pub sni: Option<String>,
    /// The certificate served on this connection (for 421).
    pub cert: Option<Arc<LoadedCert>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: Option<TlsInfo>) -> Self {
        ConnInfo {
            peer,
            peer_header: peer_header(peer.ip()),
            tls,
            activity: Activity::default(),
            host: HostMemo::default(),
        }
    }
}

/// An address as a header value (digits, dots, colons, hex: always valid).
pub fn peer_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Requests in flight on a connection, when that last changed (for
/// `idle_timeout`), and what parking needs to know: whether a byte has been
/// read since the last request finished.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` of the last start or finish.
    last_change_ms: AtomicU64,
    /// Reads that returned bytes (one writer: the connection's I/O).
    reads: AtomicU64,
    /// `reads` when the last request finished; `u64::MAX` before the first.
    reads_at_finish: AtomicU64,
    /// The next graceful close hands the socket back instead of closing it.
    pub parking: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            reads_at_finish: AtomicU64::new(u64::MAX),
            parking: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// A connection opened at `opened` and unchanged since, with `in_flight`
    /// requests and, if `finished_one`, a request finished and nothing read
    /// since (for the idle clock's tests).
    #[cfg(test)]
    pub(crate) fn at(opened: Instant, in_flight: usize, finished_one: bool) -> Self {
        let a = Activity {
            opened,
            ..Activity::default()
        };
        a.in_flight.store(in_flight, Ordering::Relaxed);
        if finished_one {
            a.reads_at_finish.store(0, Ordering::Relaxed);
        }
        a
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Relaxed);
    }
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }
    pub fn finished(&self) {
        self.reads_at_finish
            .store(self.reads.load(Ordering::Relaxed), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }
    /// When the connection became idle, or `None` while requests are in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let ms = self.last_change_ms.load(Ordering::Relaxed);
        Some(self.opened + Duration::from_millis(ms))
    }
    pub fn read_bytes(&self) {
        // Single writer: a plain load + store, no locked instruction.
        let n = self.reads.load(Ordering::Relaxed);
        self.reads.store(n.wrapping_add(1), Ordering::Relaxed);
    }
    /// Between requests: one has finished and nothing was read since.
    pub fn between_requests(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.reads.load(Ordering::Relaxed) == self.reads_at_finish.load(Ordering::Relaxed)
    }
}

/// Why a request failed, as the log and metrics report it.
#[derive(Debug, Default)]
pub struct Failure {
    /// For the log's `error`: what went wrong, for operators (never a secret).
    pub detail: Option<String>,
    /// For upstream failures: how (the metric's `kind`).
    pub kind: Option<FailureKind>,
}

/// Per-request state, created when the request arrives and filled in by the
/// pipeline's steps; the access-log line and the metrics are derived from it
/// once, when the response is over.
#[derive(Debug)]
pub struct RequestCtx {
    /// Also the `X-Request-Id` response header.
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub method: Method,
    /// Path only, and only when the access log is on.
    pub path: String,
    pub protocol: &'static str,
    pub user_agent: Option<String>,
    pub start: Instant,
    pub host: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    pub upstream_ms: Option<f64>,
    /// 0 until a response exists.
    pub status: u16,
    pub outcome: Outcome,
    pub bytes_out: u64,
    pub failure: Failure,
    /// `RateLimit-Policy` and `RateLimit` for the response, once checked.
    pub rate_headers: Option<(HeaderValue, HeaderValue)>,
    /// The request counters of the tenant route, once the pipeline knows it.
    pub counters: Option<Arc<RouteCounters>>,
}

impl RequestCtx {
    pub fn new(
        request_id: HeaderValue,
        client_ip: IpAddr,
        method: Method,
        path: String,
        protocol: &'static str,
        start: Instant,
    ) -> Self {
        RequestCtx {
            request_id,
            client_ip,
            method,
            path,
            protocol,
            user_agent: None,
            start,
            host: None,
            tenant: None,
            route: None,
            upstream: None,
            key_id: None,
            upstream_ms: None,
            status: 0,
            outcome: Outcome::Ok,
            bytes_out: 0,
            failure: Failure::default(),
            rate_headers: None,
            counters: None,
        }
    }

    /// The request failed with `e`: its outcome, kind and, when `logged`
    /// (only the access log shows it), its detail (a detail a step already
    /// gave is kept). Formatting the detail is most of what a refusal costs
    /// beyond its JSON body: ~0.4k instructions and an allocation.
    pub fn fail(&mut self, e: &GatewayError, logged: bool) {
        self.outcome = e.outcome();
        self.failure.kind = e.failure_kind();
        if logged && self.failure.detail.is_none() {
            self.failure.detail = Some(e.detail());
        }
    }

    /// The access-log view of this request.
    pub fn record(&self) -> AccessRecord<'_> {
        AccessRecord {
            request_id: &self.request_id,
            client_ip: self.client_ip,
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            route: self.route.as_ref(),
            tenant: self.tenant.as_ref(),
            key_id: self.key_id.as_ref(),
            status: self.status,
            outcome: self.outcome,
            upstream: self.upstream.as_ref(),
            start: self.start,
            upstream_ms: self.upstream_ms,
            bytes_out: self.bytes_out,
            protocol: self.protocol,
            user_agent: self.user_agent.as_deref(),
            error: self.failure.detail.as_deref(),
            error_kind: self.failure.kind,
        }
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy —
/// then the right-most `X-Forwarded-For` entry that is not one.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if !is_trusted(&ip) => return ip,
            Ok(_) => continue,
            // Garbage in the chain: stop believing it.
            Err(_) => return peer,
        }
    }
    peer
}

pub fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_from_trusted_chain() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.0.0.2"),
        );
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(lb, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        assert_eq!(client_ip(lb, &h, &[]), lb);
    }
}
