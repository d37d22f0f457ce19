//! Rate limiting: GCRA per key and per tenant (governor), the auth-failure
//! brake per client IP, and the draft-11 `RateLimit`/`RateLimit-Policy` fields.
//!
//! Limiter *state* lives in [`LimiterRegistry`], outside the config snapshot,
//! keyed by (owner, quota): a reload that keeps a key's quota hands the new
//! snapshot the very same limiter, so nobody gets a fresh burst.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::Rate;

fn quota(rate: Rate) -> Quota {
    // `parse_rate` guarantees a non-zero interval.
    Quota::with_period(rate.interval())
        .unwrap_or_else(|| Quota::per_second(rate.requests))
        .allow_burst(rate.burst)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// One GCRA limiter with a known quota.
pub struct Limiter<C: Clock = DefaultClock> {
    rate: Rate,
    gcra: RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
}

/// The result of one check, with what the `RateLimit` field reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `remaining` requests could be sent now; full again in `reset` seconds.
    Allowed { remaining: u32, reset: u64 },
    /// Denied; the next request is allowed after `retry_after`.
    Denied { retry_after: Duration, reset: u64 },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

impl Limiter<DefaultClock> {
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> Limiter<C> {
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        Limiter {
            rate,
            gcra: RateLimiter::direct_with_clock(quota(rate), clock)
                .with_middleware::<StateInformationMiddleware>(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    pub fn check(&self) -> Decision {
        let interval = self.rate.interval();
        let burst = self.rate.burst.get();
        match self.gcra.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let used = burst.saturating_sub(remaining);
                Decision::Allowed {
                    remaining,
                    reset: ceil_secs(interval * used),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.gcra.clock().now());
                // Empty now: one cell after `wait`, the rest one interval each.
                let full = wait + interval * burst.saturating_sub(1);
                Decision::Denied {
                    retry_after: wait,
                    reset: ceil_secs(full),
                }
            }
        }
    }
}

/// Retry-After: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

/// Which limit a limiter enforces; part of the registry key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Key(Arc<str>),
    Tenant(Arc<str>),
}

/// Limiter state shared across config generations.
#[derive(Default)]
pub struct LimiterRegistry {
    limiters: DashMap<(Owner, Rate), Arc<Limiter>>,
}

impl LimiterRegistry {
    /// The limiter for `owner` at `rate`: the existing one if the quota did
    /// not change, else a fresh one.
    pub fn get_or_create(&self, owner: Owner, rate: Rate) -> Arc<Limiter> {
        self.limiters
            .entry((owner, rate))
            .or_insert_with(|| Arc::new(Limiter::new(rate)))
            .clone()
    }

    /// Drop every limiter the current config no longer uses (removed keys,
    /// changed quotas).
    pub fn retain(&self, used: &HashSet<(Owner, Rate)>) {
        self.limiters.retain(|k, _| used.contains(k));
    }

    pub fn len(&self) -> usize {
        self.limiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }
}

/// Upper bound on tracked client addresses; past it the oldest state is
/// dropped (see [`AuthBrake::record_failure`]).
const BRAKE_MAX_TRACKED: usize = 100_000;

/// The brute-force brake: counts failed key checks per client IP and, past
/// the limit, refuses every authenticated request from that IP for a while.
pub struct AuthBrake {
    rate: Rate,
    /// Swapped for an empty one when a flood of addresses fills it.
    failures: arc_swap::ArcSwap<governor::DefaultKeyedRateLimiter<IpAddr>>,
    blocked: DashMap<IpAddr, Instant>,
}

impl AuthBrake {
    pub fn new(rate: Rate) -> Self {
        AuthBrake {
            rate,
            failures: arc_swap::ArcSwap::from_pointee(RateLimiter::dashmap(quota(rate))),
            blocked: DashMap::new(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// IPv6 clients usually own a whole /64: count them by it, or one client
    /// gets 2^64 fresh budgets.
    fn bucket(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
        }
    }

    /// Remaining block time for this client, if it is braked.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let ip = Self::bucket(ip);
        let until = *self.blocked.get(&ip)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            self.blocked.remove_if(&ip, |_, u| *u <= now);
            None
        }
    }

    /// Count one failed attempt; returns the block time if this one tipped
    /// the client over the limit.
    pub fn record_failure(&self, ip: IpAddr) -> Option<Duration> {
        let ip = Self::bucket(ip);
        let failures = self.failures.load();
        if failures.len() >= BRAKE_MAX_TRACKED {
            failures.retain_recent();
            if failures.len() >= BRAKE_MAX_TRACKED {
                // A flood of distinct addresses: memory stays bounded; the
                // brake forgets old counts rather than growing without end.
                tracing::warn!(
                    event = "auth_brake_reset",
                    tracked = failures.len(),
                    "auth-failure brake full; forgetting failure counts"
                );
                self.failures
                    .store(std::sync::Arc::new(RateLimiter::dashmap(quota(self.rate))));
            }
        }
        match self.failures.load().check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                if self.blocked.len() >= BRAKE_MAX_TRACKED {
                    let now = Instant::now();
                    self.blocked.retain(|_, u| *u > now);
                }
                self.blocked.insert(ip, Instant::now() + wait);
                Some(wait)
            }
        }
    }

    /// Forget fully replenished counters and expired blocks.
    pub fn housekeeping(&self) {
        let failures = self.failures.load();
        failures.retain_recent();
        failures.shrink_to_fit();
        let now = Instant::now();
        self.blocked.retain(|_, u| *u > now);
    }
}

/// `"key";q=600;w=60, "tenant";q=100;w=60` for the limits that apply.
pub fn policy_field(key: Option<Rate>, tenant: Option<Rate>) -> Option<String> {
    let items: Vec<String> = [("key", key), ("tenant", tenant)]
        .into_iter()
        .filter_map(|(name, rate)| {
            rate.map(|r| format!("\"{name}\";q={};w={}", r.requests, r.window_secs()))
        })
        .collect();
    (!items.is_empty()).then(|| items.join(", "))
}

/// `"key";r=49;t=1, "tenant";r=..;t=..` for the limiters that were checked
/// (`None`: not checked). Built by hand: it is on every rate-limited
/// response, and `format!` cost several times as much.
pub fn state_field(items: &[(&str, Option<Decision>)]) -> String {
    let mut out = String::with_capacity(40 * items.len());
    let mut num = itoa::Buffer::new();
    for (name, d) in items.iter().filter_map(|(n, d)| d.map(|d| (n, d))) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let (r, t) = match d {
            Decision::Allowed { remaining, reset } => (u64::from(remaining), reset),
            Decision::Denied { reset, .. } => (0, reset),
        };
        out.push('"');
        out.push_str(name);
        out.push_str("\";r=");
        out.push_str(num.format(r));
        out.push_str(";t=");
        out.push_str(num.format(t));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn rate(requests: u32, per: Duration, burst: u32) -> Rate {
        Rate {
            requests: NonZeroU32::new(requests).unwrap(),
            per,
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn spec_example_first_response() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(rate(600, Duration::from_secs(60), 50), clock);
        assert_eq!(
            l.check(),
            Decision::Allowed {
                remaining: 49,
                reset: 1
            }
        );
        assert_eq!(
            state_field(&[("key", Some(l.check()))]),
            "\"key\";r=48;t=1".to_string()
        );
        assert_eq!(
            policy_field(Some(rate(600, Duration::from_secs(60), 50)), None).as_deref(),
            Some("\"key\";q=600;w=60")
        );
    }

    #[test]
    fn state_field_lists_checked_limiters_in_order_and_skips_the_rest() {
        let allowed = Decision::Allowed {
            remaining: 4_000_000_000,
            reset: 60,
        };
        let denied = Decision::Denied {
            retry_after: Duration::from_secs(3),
            reset: 3,
        };
        assert_eq!(
            state_field(&[("key", Some(allowed)), ("tenant", Some(denied))]),
            "\"key\";r=4000000000;t=60, \"tenant\";r=0;t=3"
        );
        assert_eq!(
            state_field(&[("key", None), ("tenant", Some(allowed))]),
            "\"tenant\";r=4000000000;t=60"
        );
        assert_eq!(state_field(&[("key", None), ("tenant", None)]), "");
    }

    #[test]
    fn denial_reports_retry_after_and_refills_with_time() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(rate(1, Duration::from_secs(10), 2), clock.clone());
        assert!(l.check().is_allowed());
        assert!(l.check().is_allowed());
        match l.check() {
            Decision::Denied { retry_after, reset } => {
                assert_eq!(retry_after_secs(retry_after), 10);
                assert_eq!(reset, 20);
            }
            d => panic!("expected denial, got {d:?}"),
        }
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            l.check(),
            Decision::Allowed {
                remaining: 0,
                reset: 20
            }
        );
        clock.advance(Duration::from_millis(19_999));
        assert!(l.check().is_allowed());
    }

    #[test]
    fn registry_keeps_state_when_quota_unchanged() {
        let reg = LimiterRegistry::default();
        let r = rate(1, Duration::from_secs(3600), 1);
        let a = reg.get_or_create(Owner::Key("k".into()), r);
        assert!(a.check().is_allowed());
        let b = reg.get_or_create(Owner::Key("k".into()), r);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!b.check().is_allowed());
        let changed = rate(2, Duration::from_secs(3600), 2);
        let c = reg.get_or_create(Owner::Key("k".into()), changed);
        assert!(c.check().is_allowed());
        let used: HashSet<_> = [(Owner::Key("k".into()), changed)].into_iter().collect();
        reg.retain(&used);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn brake_blocks_after_limit_and_buckets_ipv6() {
        let brake = AuthBrake::new(rate(2, Duration::from_secs(3600), 2));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(brake.record_failure(a).is_none());
        assert!(brake.record_failure(b).is_none());
        assert!(brake.record_failure(a).is_some());
        assert!(brake.blocked_for(b).is_some());
        assert!(brake.blocked_for("192.0.2.1".parse().unwrap()).is_none());
    }
}
