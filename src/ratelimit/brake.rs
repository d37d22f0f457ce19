//! The brute-force brake: counts failed key checks per client IP and, past
//! the limit, refuses every authenticated request from that IP for a while.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::Rate;
use super::per_ip::{MAX_TRACKED, PerIp, bucket};

/// The brute-force brake: counts failed key checks per client IP and, past
/// the limit, refuses every authenticated request from that IP for a while.
pub struct AuthBrake {
    failures: PerIp,
    blocked: DashMap<IpAddr, Instant>,
    /// Set before the first block: until then every authenticated request
    /// skips the lookup in `blocked` (a hash and a shard lock).
    ever_blocked: AtomicBool,
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
            blocked: DashMap::new(),
            ever_blocked: AtomicBool::new(false),
        }
    }

    pub fn rate(&self) -> Rate {
        self.failures.rate()
    }

    /// Remaining block time for this client, if it is braked.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        if !self.ever_blocked.load(Ordering::Acquire) {
            return None;
        }
        let ip = bucket(ip);
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
        let wait = self.failures.check(ip).err()?;
        if self.blocked.len() >= self.failures.cap() {
            let now = Instant::now();
            self.blocked.retain(|_, u| *u > now);
        }
        self.ever_blocked.store(true, Ordering::Release);
        self.blocked.insert(bucket(ip), Instant::now() + wait);
        Some(wait)
    }

    /// Client addresses whose failures are counted now (tests).
    pub fn tracked(&self) -> usize {
        self.failures.tracked()
    }

    /// Forget fully replenished counters and expired blocks.
    pub fn housekeeping(&self) {
        self.failures.housekeeping();
        let now = Instant::now();
        self.blocked.retain(|_, u| *u > now);
    }
}
