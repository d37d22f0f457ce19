//! The brute-force brake: counts failed key checks per client IP and, past
//! the limit, refuses every authenticated request from that IP for a while.

use std::net::IpAddr;
use std::time::Duration;

use super::Rate;
use super::per_ip::{MAX_TRACKED, PerIp, bucket};
use crate::base::deadlines::Deadlines;

/// The brute-force brake: counts failed key checks per client IP and, past
/// the limit, refuses every authenticated request from that IP for a while.
pub struct AuthBrake {
    failures: PerIp,
    /// Usually empty: every authenticated request then skips the lookup
    /// (a hash and a shard lock).
    blocked: Deadlines<IpAddr>,
}

impl AuthBrake {
    pub fn new(rate: Rate) -> Self {
        Self::with_cap(rate, MAX_TRACKED)
    }

    /// Tracking at most `cap` client addresses (tests: a flood past the cap
    /// without 100,000 requests).
    pub(crate) fn with_cap(rate: Rate, cap: usize) -> Self {
        AuthBrake {
            failures: PerIp::with_cap(rate, "auth_brake_reset", cap),
            blocked: Deadlines::default(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.failures.rate()
    }

    /// Remaining block time for this client, if it is braked.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        // Nobody braked (the usual case): no hashing, no shard lock.
        self.blocked.left(&bucket(ip))
    }

    /// Count one failed attempt; returns the block time if this one tipped
    /// the client over the limit.
    pub fn record_failure(&self, ip: IpAddr) -> Option<Duration> {
        let wait = self.failures.check(ip).err()?;
        if self.blocked.len() >= self.failures.cap() {
            self.blocked.prune();
        }
        self.blocked.insert(bucket(ip), wait);
        Some(wait)
    }

    /// Client addresses whose failures are counted now (tests).
    pub fn tracked(&self) -> usize {
        self.failures.tracked()
    }

    /// Forget fully replenished counters and expired blocks.
    pub fn housekeeping(&self) {
        self.failures.housekeeping();
        self.blocked.prune();
    }
}
