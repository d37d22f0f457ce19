//! The gateway's own GCRA limiters (governor), and the registry that keeps
//! their state across config generations, keyed by (owner, quota): a reload
//! that keeps a key's quota hands the new snapshot the very same limiter, so
//! nobody gets a fresh burst; a changed quota starts fresh.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{Decision, Rate};

pub(super) fn quota(rate: Rate) -> Quota {
    // `parse_rate` guarantees a non-zero interval.
    Quota::with_period(rate.interval())
        .unwrap_or_else(|| Quota::per_second(rate.requests))
        .allow_burst(rate.burst)
}

/// One GCRA limiter with a known quota.
pub struct Limiter<C: Clock = DefaultClock> {
    rate: Rate,
    gcra: RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
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
        match self.gcra.check() {
            Ok(state) => Decision::allowed(self.rate, state.remaining_burst_capacity()),
            Err(not_until) => {
                Decision::denied(self.rate, not_until.wait_time_from(self.gcra.clock().now()))
            }
        }
    }
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
