//! The running gateway: one swappable [`Snapshot`] of everything a request
//! needs, compiled from a [`Config`] into entries the pipeline uses directly
//! (no index arithmetic per request), and one [`Registry`] of the state that
//! outlives a config generation (limiters, the brake, upstream pools,
//! certificates). [`reload`] builds and swaps snapshots.

pub mod registry;
pub mod reload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::HeaderValue;
use std::path::PathBuf;

use self::registry::{Registry, Used};
use crate::access_log::AccessLog;
use crate::acme::{self, Acme, AcmeMetrics};
use crate::auth::{Key, KeyTable};
use crate::balance::BalanceMetrics;
use crate::cluster::RedisMetrics;
use crate::config::{Config, Tenant};
use crate::host::{HostTable, TenantId};
use crate::metrics::{Metrics, RouteCounters};
use crate::ratelimit::{AuthBrake, LimitEntry, Owner, PerIp, SharedLimits, policy_field};
use crate::route::{Route, RouteTable};
use crate::tls::{CertStore, Certificates};
use crate::upstream::Target;

/// A tenant as requests use it.
pub struct TenantEntry {
    pub id: TenantId,
    pub tenant: Tenant,
    /// The tenant's aggregate limit, if it sets `rate`.
    pub limit: Option<LimitEntry>,
    /// The routes with this tenant's upstream for each.
    pub routes: RouteTable<RouteEntry>,
}

/// A route of one tenant: where it goes and its request counters.
pub struct RouteEntry {
    pub route: Route,
    pub target: Arc<Target>,
    pub counters: Arc<RouteCounters>,
}

/// A key as requests use it.
pub struct KeyEntry {
    pub key: Key,
    /// The key's limit, if it has a rate.
    pub limit: Option<LimitEntry>,
    /// The precomputed `RateLimit-Policy` value.
    pub policy: Option<HeaderValue>,
}

impl std::borrow::Borrow<Key> for KeyEntry {
    fn borrow(&self) -> &Key {
        &self.key
    }
}

/// One immutable, consistent world: a request loads it once at its start.
pub struct Snapshot {
    pub config: Config,
    pub generation: u64,
    pub hosts: HostTable<Arc<TenantEntry>>,
    pub tenants: Vec<Arc<TenantEntry>>,
    pub keys: KeyTable<KeyEntry>,
    pub brake: Option<Arc<AuthBrake>>,
    /// Limits and brake shared through Redis (`cluster`); `None`: local only.
    pub shared: Option<Arc<dyn SharedLimits>>,
    /// `limits.anonymous_per_ip`: requests on routes without a gateway key.
    pub anonymous: Option<Arc<PerIp>>,
}

impl Snapshot {
    /// The tenant serving `host` (normalised).
    pub fn tenant(&self, host: &str) -> Option<&Arc<TenantEntry>> {
        self.hosts.lookup(host)
    }
}

/// Everything shared by listeners, connections and requests.
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub certs: Arc<Certificates>,
    /// ACME for tenant domains: one of the certificate sources, the
    /// challenge answers, the orders.
    pub acme: Acme,
    /// Names of the file certificates in the expiry metric.
    file_cert_names: std::sync::Mutex<Vec<String>>,
    pub access_log: AccessLog,
    pub metrics: Metrics,
    pub config_path: PathBuf,
    /// True while listeners accept with a valid config (`/readyz`).
    pub ready: AtomicBool,
    generation: AtomicU64,
    /// Serialises reloads so building and pruning shared state never
    /// interleave.
    pub reload_lock: tokio::sync::Mutex<()>,
}

impl Gateway {
    pub fn new(mut config: Config, access_log: AccessLog) -> Arc<Self> {
        let mut metrics = Metrics::new();
        let redis_metrics = Arc::new(RedisMetrics::new());
        redis_metrics.register(metrics.registry_mut());
        let balance_metrics = BalanceMetrics::default();
        balance_metrics.register(metrics.registry_mut());
        let registry = Registry::new(
            config.limits.connect_timeout,
            redis_metrics,
            balance_metrics,
        );
        metrics.config_generation.set(1);
        let acme = Acme::new(AcmeMetrics::of(&metrics));
        let file_cert_names = export_file_expiry(&metrics, &config.certs, &[]);
        let certs = Arc::new(Certificates::new(
            std::mem::take(&mut config.certs),
            vec![acme.source()],
        ));
        let config_path = config.path.clone();
        let mut used = Used::default();
        let snapshot = build_snapshot(config, 1, &registry, &mut used);
        registry.retain(used);
        Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            certs,
            acme,
            file_cert_names: std::sync::Mutex::new(file_cert_names),
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

    /// Build a snapshot of `config` that reuses all state still in use, swap
    /// it (and its certificates) in atomically, then drop the state nothing
    /// refers to any more. Callers hold `reload_lock`.
    pub fn install(&self, mut config: Config) -> Arc<Snapshot> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut names = self
                .file_cert_names
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *names = export_file_expiry(&self.metrics, &config.certs, &names);
        }
        self.certs.set_files(std::mem::take(&mut config.certs));
        let mut used = Used::default();
        let snapshot = Arc::new(build_snapshot(
            config,
            generation,
            &self.registry,
            &mut used,
        ));
        self.snapshot.store(snapshot.clone());
        self.registry.retain(used);
        snapshot
    }
}

impl Gateway {
    /// Tell ACME the current config's settings and names (at start and
    /// after every reload). Orders run in the background; a failure to start
    /// is logged and leaves the gateway serving.
    pub async fn apply_acme(&self) {
        let snap = self.current();
        let options = acme::Options {
            // HTTP-01 needs the CA to reach listen.http (on port 80).
            http01: snap.config.listen.http.is_some(),
            ..acme::Options::default()
        };
        let (settings, names) = match &snap.config.acme {
            Some(a) => (Some(&a.settings), a.names.clone()),
            None => (None, Vec::new()),
        };
        let cluster = self.registry.cluster();
        if let Err(e) = self
            .acme
            .configure(settings, options, names, cluster.as_ref())
            .await
        {
            tracing::error!(event = "acme_error", error = %e, "cannot run ACME; tenant domains get no certificates from it");
        }
    }
}

/// `gateway_certificate_expiry_timestamp_seconds` for the config's file
/// certificates, by each one's first DNS name; series of `previous` names no
/// longer present are removed. Returns the names now exported.
fn export_file_expiry(metrics: &Metrics, files: &CertStore, previous: &[String]) -> Vec<String> {
    let expiry = AcmeMetrics::of(metrics);
    let mut names = Vec::new();
    for cert in files.iter() {
        if let Some(name) = cert.names.first() {
            expiry.set_expiry(name, cert.not_after);
            names.push(name.clone());
        }
    }
    for gone in previous.iter().filter(|p| !names.contains(p)) {
        expiry.remove_expiry(gone);
    }
    names
}

/// Compile `config` into entries, taking shared state from `registry` and
/// noting in `used` what this generation holds.
fn build_snapshot(
    mut config: Config,
    generation: u64,
    registry: &Registry,
    used: &mut Used,
) -> Snapshot {
    let tenants: Vec<Arc<TenantEntry>> = std::mem::take(&mut config.tenants)
        .into_iter()
        .enumerate()
        .map(|(id, tenant)| {
            let limit = tenant
                .rate
                .map(|r| registry.limit(Owner::Tenant(tenant.name.clone()), r, used));
            let routes = tenant.routes.map(|_, tr| RouteEntry {
                route: tr.route.clone(),
                target: registry.target(&tr.upstream, used),
                counters: Arc::default(),
            });
            Arc::new(TenantEntry {
                id,
                tenant,
                limit,
                routes,
            })
        })
        .collect();
    let hosts = config.hosts.filter_map(|id| tenants.get(*id).cloned());
    let keys = config.keys.map(|key| {
        let tenant_rate = tenants.get(key.tenant).and_then(|t| t.tenant.rate);
        KeyEntry {
            key: key.clone(),
            limit: key
                .rate
                .map(|r| registry.limit(Owner::Key(key.id.clone()), r, used)),
            policy: policy_field(key.rate, tenant_rate).and_then(|s| HeaderValue::try_from(s).ok()),
        }
    });
    let brake = config
        .limits
        .auth_failures_per_ip
        .map(|rate| registry.brake(rate, used));
    let shared = config
        .cluster
        .as_ref()
        .and_then(|settings| registry.shared(settings, used));
    let anonymous = config
        .limits
        .anonymous_per_ip
        .map(|rate| registry.anonymous(rate, used));
    Snapshot {
        config,
        generation,
        hosts,
        tenants,
        keys,
        brake,
        shared,
        anonymous,
    }
}
