//! Rate limiting: GCRA per key and per tenant, the auth-failure brake per
//! client IP, and the draft-11 `RateLimit`/`RateLimit-Policy` fields.
//!
//! - [`local`]: the gateway's own limiters (governor) and the registry that
//!   carries their state across reloads.
//! - [`brake`]: failed authentications per client IP; [`per_ip`]: a bounded
//!   GCRA per client address (the brake's counts, `limits.anonymous_per_ip`).
//! - The seam for limits shared by several gateways: [`SharedLimits`], an
//!   async backend (Redis) the pipeline asks instead of the local limiters
//!   when one is configured. Whichever answers, the decision has the same
//!   shape ([`Decision`]), so the `RateLimit` fields and `Retry-After` are
//!   the same.

pub mod brake;
pub mod local;
pub mod per_ip;

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use brake::AuthBrake;
pub use local::{Limiter, LimiterRegistry, Owner};
pub use per_ip::PerIp;

/// A GCRA quota: `requests` per `per`, with `burst` cells of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub requests: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

impl Rate {
    /// Time for one cell to replenish.
    pub fn interval(&self) -> Duration {
        self.per / self.requests.get()
    }

    /// The window in whole seconds for `RateLimit-Policy` (`w`), at least 1.
    pub fn window_secs(&self) -> u64 {
        let secs = self.per.as_secs() + u64::from(self.per.subsec_nanos() > 0);
        secs.max(1)
    }
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

    /// Allowed with `remaining` cells left: full again once the used ones
    /// have replenished, one interval each.
    pub fn allowed(rate: Rate, remaining: u32) -> Decision {
        let used = rate.burst.get().saturating_sub(remaining);
        Decision::Allowed {
            remaining,
            reset: ceil_secs(rate.interval() * used),
        }
    }

    /// Refused for `wait`: empty now, one cell after `wait`, the rest one
    /// interval each.
    pub fn denied(rate: Rate, wait: Duration) -> Decision {
        let full = wait + rate.interval() * rate.burst.get().saturating_sub(1);
        Decision::Denied {
            retry_after: wait,
            reset: ceil_secs(full),
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// One limit a request is checked against: whose it is, its quota, and the
/// gateway's own state for it (used alone, or as the fallback of a shared
/// backend).
pub struct LimitEntry {
    pub owner: Owner,
    pub rate: Rate,
    pub local: Arc<Limiter>,
    /// A shared backend's name for this limit (without its own prefix),
    /// built on first use and kept for the life of this config generation:
    /// names do not have to be formatted per request.
    pub shared_name: OnceLock<Box<str>>,
}

/// The decisions for one request: the key's limiter, then the tenant's
/// (`None`: no such limit, or not checked because the key's refused).
pub type Checked = [Option<Decision>; 2];

/// Check the key's limit, then the tenant's only if the key's allowed: a
/// refused request must not use the tenant's quota.
pub fn check_local(key: Option<&LimitEntry>, tenant: Option<&LimitEntry>) -> Checked {
    let k = key.map(|l| l.local.check());
    let t = match k {
        Some(Decision::Denied { .. }) => None,
        _ => tenant.map(|l| l.local.check()),
    };
    [k, t]
}

/// The first refusal in `checked`, if any: its retry-after.
pub fn denied(checked: &Checked) -> Option<Duration> {
    checked.iter().flatten().find_map(|d| match d {
        Decision::Denied { retry_after, .. } => Some(*retry_after),
        Decision::Allowed { .. } => None,
    })
}

/// A backend shared by several gateways could not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What decides while the shared backend cannot answer (`cluster.on_unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// This gateway's own limiters and brake, as without sharing.
    Local,
    /// No limits and no brake.
    Allow,
    /// 503 to requests with a valid key.
    Deny,
}

impl OnUnavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Local => "local",
            OnUnavailable::Allow => "allow",
            OnUnavailable::Deny => "deny",
        }
    }
}

/// The limits of one authenticated request, for a shared backend.
pub struct SharedRequest<'a> {
    /// The tenant's name (Redis Cluster keeps a request's state in its slot).
    pub tenant: &'a str,
    pub key: Option<&'a LimitEntry>,
    pub tenant_limit: Option<&'a LimitEntry>,
    /// The client address and `auth_failures_per_ip`, when the brake is on.
    pub brake: Option<(IpAddr, Rate)>,
}

/// A shared backend's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedChecked {
    /// The client is braked for this long; no limiter was checked.
    Braked(Duration),
    /// The key's and the tenant's decisions, as [`check_local`] gives them.
    Limits(Checked),
}

pub type SharedFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Unavailable>> + Send + 'a>>;

/// Limits and the brake shared by a fleet of gateways (Redis). The pipeline
/// asks it instead of the local limiters when one is configured; it answers
/// within its own timeout, and `Unavailable` makes the caller apply
/// [`SharedLimits::on_unavailable`].
pub trait SharedLimits: Send + Sync {
    fn on_unavailable(&self) -> OnUnavailable;

    /// The brake, then the key's limit, then the tenant's if the key's
    /// allowed: one round trip.
    fn check<'a>(&'a self, req: SharedRequest<'a>) -> SharedFuture<'a, SharedChecked>;

    /// Count one failed key check from `ip`; `Some(block)` when the client
    /// is braked (now or already).
    fn record_failure<'a>(
        &'a self,
        tenant: &'a str,
        ip: IpAddr,
        rate: Rate,
    ) -> SharedFuture<'a, Option<Duration>>;

    /// A block the backend reported earlier and that still holds (no
    /// round trip): for requests refused before their key is checked.
    fn known_blocked(&self, tenant: &str, ip: IpAddr, rate: Rate) -> Option<Duration>;

    /// `limits.anonymous_per_ip`: one request on a route without a key.
    fn check_anonymous<'a>(&'a self, ip: IpAddr, rate: Rate) -> SharedFuture<'a, Decision>;
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
    use std::collections::HashSet;
    use std::net::IpAddr;

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::error::retry_after_secs;

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

    /// A flood of distinct addresses past the brake's cap (here 1,000 rather
    /// than 100,000; tests/hostile.rs floods the binary): memory stays
    /// bounded, every flooding address gets its own budget, a client braked
    /// before the flood is still braked after it, and a fresh client still
    /// gets its tries.
    #[test]
    fn brake_stays_bounded_past_its_cap_and_still_brakes_per_client() {
        let cap = 1000;
        let brake = AuthBrake::with_cap(rate(3, Duration::from_secs(3600), 3), cap);
        let v4 = |k: u32| IpAddr::from(k.to_be_bytes());
        let a = v4(0x0a00_0001);
        for _ in 0..3 {
            assert!(brake.record_failure(a).is_none());
        }
        assert!(brake.record_failure(a).is_some(), "the 4th failure brakes");
        for k in 0..1200u32 {
            let ip = v4(0x0b00_0000 + k);
            assert!(
                brake.record_failure(ip).is_none(),
                "{ip}: its first failure"
            );
            assert!(brake.tracked() <= cap, "{} tracked", brake.tracked());
            assert!(brake.blocked_for(ip).is_none());
        }
        assert!(
            brake.tracked() < cap,
            "the counts were forgotten once, at the cap"
        );
        assert!(
            brake.blocked_for(a).is_some(),
            "still braked after the flood"
        );
        let c = v4(0x0a00_0003);
        for _ in 0..3 {
            assert!(brake.record_failure(c).is_none());
        }
        assert!(brake.record_failure(c).is_some());
    }

    #[test]
    fn window_rounds_up() {
        let r = Rate {
            requests: NonZeroU32::MIN,
            per: Duration::from_millis(1500),
            burst: NonZeroU32::MIN,
        };
        assert_eq!(r.window_secs(), 2);
    }
}
