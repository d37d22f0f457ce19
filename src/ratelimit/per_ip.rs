//! A GCRA limit per client address, with bounded memory: the auth-failure
//! brake counts guesses with it, and `limits.anonymous_per_ip` counts
//! requests on routes without a gateway key.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

use super::Rate;
use super::local::quota;

/// Upper bound on tracked client addresses; past it the state is forgotten
/// rather than grown without end (see [`PerIp::check`]).
pub const MAX_TRACKED: usize = 100_000;

/// IPv6 clients usually own a whole /64: count them by it, or one client
/// gets 2^64 fresh budgets. IPv4-mapped addresses count as IPv4.
pub fn bucket(ip: IpAddr) -> IpAddr {
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

pub struct PerIp {
    rate: Rate,
    /// The event logged when it fills up and forgets its counts.
    reset_event: &'static str,
    /// Swapped for an empty one when a flood of addresses fills it.
    cells: ArcSwap<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses tracked at most: [`MAX_TRACKED`] (tests use fewer).
    cap: usize,
}

impl PerIp {
    pub fn new(rate: Rate, reset_event: &'static str) -> Self {
        Self::with_cap(rate, reset_event, MAX_TRACKED)
    }

    /// Tracking at most `cap` addresses (tests: a flood past the cap without
    /// 100,000 requests).
    pub(crate) fn with_cap(rate: Rate, reset_event: &'static str, cap: usize) -> Self {
        PerIp {
            rate,
            reset_event,
            cells: ArcSwap::from_pointee(RateLimiter::dashmap(quota(rate))),
            cap,
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Count one event for `ip` (bucketed); `Err(wait)` if it is over the
    /// limit, with the time until the next one is allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = bucket(ip);
        let cells = self.cells.load();
        if cells.len() >= self.cap {
            cells.retain_recent();
            if cells.len() >= self.cap {
                // A flood of distinct addresses: memory stays bounded; the
                // limit forgets old counts rather than growing without end.
                tracing::warn!(
                    event = self.reset_event,
                    tracked = cells.len(),
                    "per-client limit full; forgetting counts"
                );
                self.cells
                    .store(Arc::new(RateLimiter::dashmap(quota(self.rate))));
            }
        }
        self.cells
            .load()
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forget fully replenished counters.
    pub fn housekeeping(&self) {
        let cells = self.cells.load();
        cells.retain_recent();
        cells.shrink_to_fit();
    }

    /// Addresses tracked now (tests).
    pub fn tracked(&self) -> usize {
        self.cells.load().len()
    }
}
