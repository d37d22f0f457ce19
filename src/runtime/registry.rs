//! The state that outlives a config generation, in one place: limiter state
//! by (owner, quota), the auth-failure brake, the per-IP limit of open
//! routes, upstream connection pools by server. A new snapshot takes what it needs from here (so a reload keeps
//! bursts spent and connections warm); what no installed snapshot uses is
//! dropped after the swap.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;

use crate::ratelimit::{AuthBrake, LimitEntry, LimiterRegistry, Owner, PerIp, Rate};
use crate::upstream::{Target, Upstream, UpstreamClient};

pub struct Registry {
    limiters: LimiterRegistry,
    brake: Mutex<Option<Arc<AuthBrake>>>,
    anonymous: Mutex<Option<Arc<PerIp>>>,
    upstream: UpstreamClient,
}

/// What one generation took from the registry.
#[derive(Default)]
pub struct Used {
    limits: HashSet<(Owner, Rate)>,
    servers: HashSet<Authority>,
    brake: bool,
    anonymous: bool,
}

/// The state in `slot` if it was made for `rate`, else a fresh one (kept).
fn reuse<T>(
    slot: &Mutex<Option<Arc<T>>>,
    rate: Rate,
    rate_of: impl Fn(&T) -> Rate,
    make: impl FnOnce(Rate) -> T,
) -> Arc<T> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    match &*slot {
        Some(t) if rate_of(t) == rate => t.clone(),
        _ => {
            let t = Arc::new(make(rate));
            *slot = Some(t.clone());
            t
        }
    }
}

fn take<T>(slot: &Mutex<Option<Arc<T>>>) -> Option<Arc<T>> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Registry {
    pub fn new(connect_timeout: Duration) -> Self {
        Registry {
            limiters: LimiterRegistry::default(),
            brake: Mutex::new(None),
            anonymous: Mutex::new(None),
            upstream: UpstreamClient::new(connect_timeout),
        }
    }

    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// The limit of `owner` at `rate`: the same state as before if the quota
    /// did not change, else a fresh one.
    pub fn limit(&self, owner: Owner, rate: Rate, used: &mut Used) -> LimitEntry {
        used.limits.insert((owner.clone(), rate));
        LimitEntry {
            local: self.limiters.get_or_create(owner.clone(), rate),
            owner,
            rate,
        }
    }

    /// `upstream` as requests use it: the pool of each of its servers.
    pub fn target(&self, upstream: &Upstream, used: &mut Used) -> Arc<Target> {
        let servers = upstream
            .servers
            .iter()
            .map(|s| {
                used.servers.insert(s.authority.clone());
                self.upstream.pool(&s.authority)
            })
            .collect();
        Arc::new(Target {
            name: upstream.name.clone(),
            servers,
        })
    }

    /// The brake at `rate`: the running one if its rate did not change.
    pub fn brake(&self, rate: Rate, used: &mut Used) -> Arc<AuthBrake> {
        used.brake = true;
        reuse(&self.brake, rate, AuthBrake::rate, AuthBrake::new)
    }

    /// The `limits.anonymous_per_ip` limit at `rate`: the running one if its
    /// rate did not change.
    pub fn anonymous(&self, rate: Rate, used: &mut Used) -> Arc<PerIp> {
        used.anonymous = true;
        reuse(&self.anonymous, rate, PerIp::rate, |r| {
            PerIp::new(r, "anonymous_per_ip")
        })
    }

    /// Drop what the installed generation does not use.
    pub fn retain(&self, used: &Used) {
        self.limiters.retain(&used.limits);
        self.upstream.retain(&used.servers);
        if !used.brake {
            *self.brake.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if !used.anonymous {
            *self.anonymous.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Periodic upkeep: forget idle auth-failure counters, close idle
    /// upstream connections past their time.
    pub fn housekeeping(&self) {
        if let Some(brake) = take(&self.brake) {
            brake.housekeeping();
        }
        if let Some(anonymous) = take(&self.anonymous) {
            anonymous.housekeeping();
        }
        self.upstream.prune_idle();
    }

    /// Number of limiters held (tests and metrics).
    pub fn limiters(&self) -> usize {
        self.limiters.len()
    }
}
