//! The brute-force brake: counts failed key checks per client IP and, past
//! the limit, refuses every authenticated request from that IP for a while.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};

use super::Rate;
use super::local::quota;

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
