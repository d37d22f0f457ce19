//! Values: addresses, CIDRs, durations, sizes, rates, and the `limits`
//! block built from them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;

use super::{Collector, Limits};
use crate::config::raw::{RawConfig, RawRate};
use crate::ratelimit::Rate;

pub(super) fn validate_limits(c: &mut Collector, raw: &RawConfig) -> Limits {
    let l = &raw.limits;
    let dur = |c: &mut Collector, field: &str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(s) => parse_duration(c, &format!("limits.{field}"), s).unwrap_or(default),
    };
    let size = |c: &mut Collector, field: &str, v: &Option<String>, default: u64| match v {
        None => default,
        Some(s) => match parse_size(s) {
            Some(n) if n > 0 => n,
            _ => {
                c.err(
                    format!("limits.{field}"),
                    format!("{s:?} is not a size like 10MiB, 16KiB or 4096"),
                );
                default
            }
        },
    };
    let max_connections = match l.max_connections {
        None => 10_000,
        Some(0) => {
            c.err("limits.max_connections", "must be at least 1");
            10_000
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let h2_max_concurrent_streams = match l.h2_max_concurrent_streams {
        None => 100,
        Some(n) if (1..=u64::from(u32::MAX)).contains(&n) => n as u32,
        Some(_) => {
            c.err("limits.h2_max_concurrent_streams", "must be at least 1");
            100
        }
    };
    let max_header_bytes = size(c, "max_header_bytes", &l.max_header_bytes, 16 * 1024);
    if max_header_bytes < 1024 {
        c.err("limits.max_header_bytes", "must be at least 1KiB");
    }
    Limits {
        default_rate: l
            .default_rate
            .as_ref()
            .and_then(|r| parse_rate(c, "limits.default_rate", r)),
        auth_failures_per_ip: match &l.auth_failures_per_ip {
            Some(r) => parse_rate(c, "limits.auth_failures_per_ip", r),
            None => Some(per_minute(20)),
        },
        anonymous_per_ip: match &l.anonymous_per_ip {
            Some(r) => parse_rate(c, "limits.anonymous_per_ip", r),
            None => Some(per_minute(600)),
        },
        max_request_body: size(c, "max_request_body", &l.max_request_body, 10 << 20),
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        connect_timeout: dur(
            c,
            "connect_timeout",
            &l.connect_timeout,
            Duration::from_secs(5),
        ),
        upstream_timeout: dur(
            c,
            "upstream_timeout",
            &l.upstream_timeout,
            Duration::from_secs(60),
        ),
        idle_timeout: dur(c, "idle_timeout", &l.idle_timeout, Duration::from_secs(60)),
        header_read_timeout: dur(
            c,
            "header_read_timeout",
            &l.header_read_timeout,
            Duration::from_secs(10),
        ),
        max_connections,
        h2_max_concurrent_streams,
        shutdown_grace: dur(
            c,
            "shutdown_grace",
            &l.shutdown_grace,
            Duration::from_secs(30),
        ),
    }
}

/// `{requests: n, per: 1m}` (burst = n).
fn per_minute(n: u32) -> Rate {
    let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Rate {
        requests: n,
        per: Duration::from_secs(60),
        burst: n,
    }
}

pub(super) fn parse_addr(c: &mut Collector, field: &str, s: &str) -> SocketAddr {
    s.trim().parse().unwrap_or_else(|_| {
        c.err(
            field,
            format!("{s:?} is not an address like 0.0.0.0:8443 or [::]:8443"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

pub(super) fn parse_cidr(c: &mut Collector, field: &str, s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            c.err(
                field,
                format!("{s:?} is not a CIDR like 10.0.0.0/8 or an IP"),
            )
        })
        .ok()
}

/// Longest accepted duration: beyond it, deadline arithmetic (now + d)
/// can overflow, and no timeout or rate window needs more.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

pub(super) fn parse_duration(c: &mut Collector, field: &str, s: &str) -> Option<Duration> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d > MAX_DURATION => {
            c.err(
                field,
                format!("{s:?} is longer than the maximum of 366 days"),
            );
            None
        }
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            c.err(field, "must be longer than zero");
            None
        }
        Err(e) => {
            c.err(
                field,
                format!("{s:?} is not a duration like 500ms, 30s, 1m or 1h ({e})"),
            );
            None
        }
    }
}

/// `10MiB`, `16KiB`, `1GiB`, `512B` or a plain byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(super) fn parse_rate(c: &mut Collector, field: &str, r: &RawRate) -> Option<Rate> {
    let per = parse_duration(c, &format!("{field}.per"), &r.per)?;
    let requests = u32::try_from(r.requests).ok().and_then(NonZeroU32::new);
    let Some(requests) = requests else {
        c.err(
            format!("{field}.requests"),
            "must be between 1 and 4294967295",
        );
        return None;
    };
    let burst = match r.burst {
        None => requests,
        Some(b) => match u32::try_from(b).ok().and_then(NonZeroU32::new) {
            Some(b) => b,
            None => {
                c.err(format!("{field}.burst"), "must be between 1 and 4294967295");
                return None;
            }
        },
    };
    if (per / requests.get()).is_zero() {
        c.err(
            field,
            "rate too high: one request per less than a nanosecond",
        );
        return None;
    }
    Some(Rate {
        requests,
        per,
        burst,
    })
}
