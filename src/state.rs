//! The running gateway's shared state: one swappable [`Snapshot`] of
//! everything a request needs, plus the state that must outlive a snapshot
//! (limiters, the upstream pool, the log writer).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::metrics::{Metrics, RouteCounters};
use crate::proxy::ratelimit::{AuthBrake, Limiter, LimiterRegistry, Owner, policy_field};
use crate::proxy::upstream::{Pool, UpstreamClient};

/// A tenant's route as requests use it: the upstream's connection pool
/// (shared with every route and generation naming that address) and the
/// route's request counters.
pub struct TenantRoute {
    pub pool: Arc<Pool>,
    pub counters: Arc<RouteCounters>,
}

/// One immutable, consistent world: a request loads it once at its start.
pub struct Snapshot {
    pub config: Config,
    pub generation: u64,
    /// Per key (same index as `config.keys.keys`): its limiter, if it has a rate.
    pub key_limiters: Vec<Option<Arc<Limiter>>>,
    /// Per key: the precomputed `RateLimit-Policy` value.
    pub key_policies: Vec<Option<HeaderValue>>,
    /// Per tenant: the aggregate limiter, if the tenant sets `rate`.
    pub tenant_limiters: Vec<Option<Arc<Limiter>>>,
    /// `[tenant][route]` (same indexes as `Tenant::route_upstreams`): what a
    /// request routed there uses besides the config.
    pub routes: Vec<Vec<TenantRoute>>,
    pub brake: Option<Arc<AuthBrake>>,
}

/// Everything shared by listeners, connections and requests.
pub struct Gateway {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub limiters: LimiterRegistry,
    pub upstream: UpstreamClient,
    pub access_log: AccessLog,
    pub metrics: Metrics,
    pub config_path: PathBuf,
    /// True while listeners accept with a valid config (`/readyz`).
    pub ready: AtomicBool,
    generation: AtomicU64,
    /// Serialises reloads so building and pruning limiters never interleave.
    pub reload_lock: tokio::sync::Mutex<()>,
}

impl Gateway {
    pub fn new(config: Config, access_log: AccessLog) -> Arc<Self> {
        let upstream = UpstreamClient::new(&config.limits);
        let limiters = LimiterRegistry::default();
        let config_path = config.path.clone();
        let (snapshot, used) = build_snapshot(config, 1, &limiters, &upstream, None);
        limiters.retain(&used);
        let metrics = Metrics::new();
        metrics.config_generation.set(1);
        Arc::new(Gateway {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            limiters,
            upstream,
            access_log,
            metrics,
            config_path,
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Build a snapshot of `config` that reuses every unchanged limiter, swap
    /// it in atomically, then drop limiters nothing refers to any more.
    /// Callers hold `reload_lock`.
    pub fn install(&self, config: Config) -> Arc<Snapshot> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let old_brake = self.snapshot.load().brake.clone();
        let (snapshot, used) = build_snapshot(
            config,
            generation,
            &self.limiters,
            &self.upstream,
            old_brake,
        );
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        self.limiters.retain(&used);
        self.upstream
            .retain(snapshot.routes.iter().flatten().map(|r| &r.pool));
        snapshot
    }
}

fn build_snapshot(
    config: Config,
    generation: u64,
    registry: &LimiterRegistry,
    upstream: &UpstreamClient,
    old_brake: Option<Arc<AuthBrake>>,
) -> (Snapshot, HashSet<(Owner, crate::config::Rate)>) {
    let mut used = HashSet::new();
    let tenant_limiters: Vec<_> = config
        .tenants
        .iter()
        .map(|t| {
            t.rate.map(|r| {
                let owner = Owner::Tenant(t.name.clone());
                used.insert((owner.clone(), r));
                registry.get_or_create(owner, r)
            })
        })
        .collect();
    let mut key_limiters = Vec::with_capacity(config.keys.keys.len());
    let mut key_policies = Vec::with_capacity(config.keys.keys.len());
    for key in &config.keys.keys {
        key_limiters.push(key.rate.map(|r| {
            let owner = Owner::Key(key.id.clone());
            used.insert((owner.clone(), r));
            registry.get_or_create(owner, r)
        }));
        let tenant_rate = config.tenants.get(key.tenant).and_then(|t| t.rate);
        key_policies
            .push(policy_field(key.rate, tenant_rate).and_then(|s| HeaderValue::try_from(s).ok()));
    }
    let routes = config
        .tenants
        .iter()
        .map(|t| {
            t.route_upstreams
                .iter()
                .map(|u| TenantRoute {
                    pool: upstream.pool(&u.authority),
                    counters: Arc::default(),
                })
                .collect()
        })
        .collect();
    let brake = config
        .limits
        .auth_failures_per_ip
        .map(|rate| match old_brake {
            Some(b) if b.rate() == rate => b,
            _ => Arc::new(AuthBrake::new(rate)),
        });
    (
        Snapshot {
            config,
            generation,
            key_limiters,
            key_policies,
            tenant_limiters,
            routes,
            brake,
        },
        used,
    )
}
