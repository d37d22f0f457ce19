//! The state that outlives a config generation, in one place: limiter state
//! by (owner, quota), the auth-failure brake, the per-IP limit of open
//! routes, upstream servers (balancing and health) and their connection
//! pools, the GraphQL verdicts of scoped keys. A new snapshot takes what it
//! needs from here (so a reload keeps bursts spent and connections warm);
//! what no installed snapshot uses is dropped after the swap.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::balance::{self, BalanceMetrics};
use crate::cluster::{RedisMetrics, Settings, Shared};
use crate::ratelimit::{AuthBrake, LimitEntry, LimiterRegistry, Owner, PerIp, Rate, SharedLimits};
use crate::scope::VerdictCache;
use crate::upstream::client::ConnKey;
use crate::upstream::{Target, Upstream, UpstreamClient};

pub struct Registry {
    limiters: LimiterRegistry,
    brake: Mutex<Option<Arc<AuthBrake>>>,
    anonymous: Mutex<Option<Arc<PerIp>>>,
    upstream: UpstreamClient,
    servers: balance::Registry,
    /// The Redis connection of `cluster`, kept while its settings do not
    /// change (and with it the up/down state and the local memory of
    /// refusals).
    shared: Mutex<Option<Shared>>,
    redis_metrics: Arc<RedisMetrics>,
    /// GraphQL verdicts for `scope: read` keys, by document hash: a
    /// property of the document alone, so every generation shares them.
    verdicts: VerdictCache,
}

/// What one generation took from the registry.
#[derive(Default)]
pub struct Used {
    limits: HashSet<(Owner, Rate)>,
    connections: HashSet<ConnKey>,
    /// The generation's servers (balancing and health state), made the
    /// registry's when it is installed.
    servers: Option<balance::Build>,
    brake: bool,
    shared: bool,
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
    pub fn new(
        connect_timeout: Duration,
        redis_metrics: Arc<RedisMetrics>,
        servers: BalanceMetrics,
    ) -> Self {
        Registry {
            limiters: LimiterRegistry::default(),
            brake: Mutex::new(None),
            anonymous: Mutex::new(None),
            upstream: UpstreamClient::new(connect_timeout),
            servers: balance::Registry::new(servers),
            shared: Mutex::new(None),
            redis_metrics,
            verdicts: VerdictCache::default(),
        }
    }

    /// The limits shared through Redis for `settings`: the running
    /// connection if they did not change, else a new one (the old one closes
    /// when the last request using it is done). Needs the Tokio runtime.
    pub fn shared(&self, settings: &Settings, used: &mut Used) -> Option<Arc<dyn SharedLimits>> {
        used.shared = true;
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &*shared
            && s.settings() == settings
        {
            return Some(Arc::new(s.clone()));
        }
        match Shared::start(settings.clone(), self.redis_metrics.clone()) {
            Ok(s) => {
                *shared = Some(s.clone());
                Some(Arc::new(s))
            }
            Err(e) => {
                // Not expected (the URLs were validated): limits stay local.
                tracing::error!(event = "redis_client_error", error = %e, "limits are not shared");
                *shared = None;
                None
            }
        }
    }

    /// The running `cluster` connection, if the installed config has one
    /// (ACME shares its state through it).
    pub fn cluster(&self) -> Option<Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Per-server balancing and health state (tests and diagnostics).
    pub fn servers(&self) -> &balance::Registry {
        &self.servers
    }

    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    pub fn verdicts(&self) -> &VerdictCache {
        &self.verdicts
    }

    /// The limit of `owner` at `rate`: the same state as before if the quota
    /// did not change, else a fresh one.
    pub fn limit(&self, owner: Owner, rate: Rate, used: &mut Used) -> LimitEntry {
        used.limits.insert((owner.clone(), rate));
        LimitEntry {
            local: self.limiters.get_or_create(owner.clone(), rate),
            owner,
            rate,
            shared_name: std::sync::OnceLock::new(),
        }
    }

    /// `upstream` as requests use it: its servers with the state they had
    /// in the running generation (new ones start healthy), and the
    /// connection pool of each.
    pub fn target(&self, upstream: &Upstream, used: &mut Used) -> Arc<Target> {
        let build = used.servers.get_or_insert_with(|| self.servers.build());
        let servers = build
            .pool(&upstream.name, &upstream.pool)
            .inspect_err(|e| {
                tracing::error!(
                    upstream = &*upstream.name,
                    error = %e,
                    "validated upstream failed to build; its requests get 500"
                )
            })
            .ok();
        let conns = upstream
            .pool
            .servers
            .iter()
            .map(|url| {
                let (key, pool) = self.upstream.pool(url, upstream.pool.tls.as_ref());
                used.connections.insert(key);
                pool
            })
            .collect();
        Arc::new(Target {
            name: upstream.name.clone(),
            servers,
            conns,
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
            PerIp::new(r, "anonymous_limit_reset")
        })
    }

    /// Drop what the installed generation does not use; its servers'
    /// checks start (or change) now.
    pub fn retain(&self, used: Used) {
        self.limiters.retain(&used.limits);
        self.upstream.retain(&used.connections);
        match used.servers {
            Some(build) => build.commit(),
            None => self.servers.build().commit(),
        }
        if !used.brake {
            *self.brake.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if !used.shared {
            *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if !used.anonymous {
            *self.anonymous.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Periodic upkeep: forget idle auth-failure counters and ended Redis
    /// refusals, close idle upstream connections past their time.
    pub fn housekeeping(&self) {
        if let Some(brake) = take(&self.brake) {
            brake.housekeeping();
        }
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(shared) = shared {
            shared.housekeeping();
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
