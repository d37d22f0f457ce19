//! Servers outlive config generations: the registry holds each server's
//! state by (upstream name, URL as written), and a reload's [`Build`] hands
//! the new pools the same state for every server still listed.
//!
//! Why that key: metrics and events name a server by both, so one state is
//! one series; the same address under two upstream names (core and
//! metadata on one Twenty) may carry different checks; and a tenant's
//! override of `core` that lists a server of the default `core` is the same
//! server under the same name, so it shares its state and its count of
//! requests in flight.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};

use super::check;
use super::connect::TlsClient;
use super::health::{CheckSettings, HealthCheck, Policy};
use super::metrics::{BalanceMetrics, ServerLabels};
use super::pool::ServerPool;
use super::server::Server;
use super::url::{Scheme, ServerUrl};

type Key = (Arc<str>, Arc<str>);

/// What the config says of one upstream that is a pool.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub servers: Vec<ServerUrl>,
    pub health_check: Option<HealthCheck>,
    /// Required when a server is `https://`.
    pub tls: Option<TlsClient>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("no servers")]
    Empty,
    #[error("{server} is listed twice")]
    Duplicate { server: String },
    #[error("{server} is an https server but no TLS client was given")]
    NoTlsClient { server: String },
    #[error(
        "{server} of upstream {upstream} is listed elsewhere under the same name with another health_check or ca"
    )]
    Conflict { upstream: String, server: String },
}

/// Cheap to clone: clones share the servers.
#[derive(Clone, Default)]
pub struct Registry(Arc<Inner>);

#[derive(Default)]
struct Inner {
    servers: Mutex<HashMap<Key, Arc<Server>>>,
    metrics: BalanceMetrics,
}

impl Registry {
    pub fn new(metrics: BalanceMetrics) -> Self {
        Registry(Arc::new(Inner {
            servers: Mutex::default(),
            metrics,
        }))
    }

    pub fn metrics(&self) -> &BalanceMetrics {
        &self.0.metrics
    }

    /// Start the pools of a new config generation. Reloads are serialised
    /// by the caller: one build at a time.
    pub fn build(&self) -> Build {
        Build {
            registry: self.clone(),
            next: HashMap::new(),
        }
    }

    fn servers(&self) -> MutexGuard<'_, HashMap<Key, Arc<Server>>> {
        self.0.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `server` of `upstream`, if a committed generation lists it.
    pub fn get(&self, upstream: &str, server: &str) -> Option<Arc<Server>> {
        self.servers()
            .get(&(Arc::from(upstream), Arc::from(server)))
            .cloned()
    }
}

/// A config generation's pools under construction. Nothing changes for the
/// running generation until [`Build::commit`]; dropped without it, the
/// build leaves no trace.
pub struct Build {
    registry: Registry,
    next: HashMap<Key, Listed>,
}

/// A server as this generation lists it.
struct Listed {
    server: Arc<Server>,
    checks: Option<CheckSettings>,
    tls: Option<TlsClient>,
}

impl Build {
    /// The pool for `spec` under the name `upstream`: known servers keep
    /// their state, new ones start healthy.
    pub fn pool(&mut self, upstream: &str, spec: &PoolSpec) -> Result<Arc<ServerPool>, BuildError> {
        if spec.servers.is_empty() {
            return Err(BuildError::Empty);
        }
        let upstream: Arc<str> = upstream.into();
        let settings = spec.health_check.as_ref().map(|check| CheckSettings {
            check: check.clone(),
            tls: spec.tls.clone(),
        });
        let mut servers: Vec<Arc<Server>> = Vec::with_capacity(spec.servers.len());
        for url in &spec.servers {
            let named = || url.as_str().to_owned();
            if servers.iter().any(|s| s.url().as_str() == url.as_str()) {
                return Err(BuildError::Duplicate { server: named() });
            }
            if url.scheme() == Scheme::Https && spec.tls.is_none() {
                return Err(BuildError::NoTlsClient { server: named() });
            }
            let key = (upstream.clone(), Arc::<str>::from(url.as_str()));
            let server = match self.next.entry(key) {
                Entry::Occupied(e) => {
                    let listed = e.get();
                    if listed.checks != settings || listed.tls != spec.tls {
                        return Err(BuildError::Conflict {
                            upstream: upstream.to_string(),
                            server: named(),
                        });
                    }
                    listed.server.clone()
                }
                Entry::Vacant(e) => {
                    let existing = self.registry.servers().get(e.key()).cloned();
                    let server = existing.unwrap_or_else(|| {
                        let labels = ServerLabels {
                            upstream: upstream.to_string(),
                            server: url.as_str().to_owned(),
                        };
                        let handles = self.registry.metrics().handles(&labels);
                        Arc::new(Server::new(
                            upstream.clone(),
                            url.clone(),
                            Policy::new(spec.health_check.as_ref()),
                            labels,
                            handles,
                        ))
                    });
                    e.insert(Listed {
                        server: server.clone(),
                        checks: settings.clone(),
                        tls: spec.tls.clone(),
                    });
                    server
                }
            };
            servers.push(server);
        }
        Ok(Arc::new(ServerPool::new(
            upstream,
            servers,
            spec.tls.clone(),
        )))
    }

    /// Make this generation's servers the registry's: policies and checks
    /// as configured now; servers no longer listed are forgotten (their
    /// checks stop, their series leave the metrics). In-flight requests
    /// keep the state they hold until they end.
    pub fn commit(mut self) {
        let next = std::mem::take(&mut self.next);
        let mut current = self.registry.servers();
        for (key, server) in current.iter() {
            if !next.contains_key(key) {
                take_checker(server);
                self.registry.metrics().forget(&server.labels);
            }
        }
        current.clear();
        for (key, Listed { server, checks, .. }) in next {
            server.set_policy(Policy::new(checks.as_ref().map(|s| &s.check)));
            let mut checker = server.checker.lock().unwrap_or_else(|e| e.into_inner());
            let running = checker.as_ref().map(|c| &c.settings);
            if running != checks.as_ref() {
                *checker = None;
                if let Some(settings) = checks {
                    *checker = check::spawn(&server, settings);
                    if checker.is_none() {
                        tracing::error!(
                            upstream = server.upstream(),
                            server = server.url().as_str(),
                            "no async runtime: active health checks not started"
                        );
                    }
                }
            }
            drop(checker);
            current.insert(key, server);
        }
    }
}

fn take_checker(server: &Server) {
    let checker = server
        .checker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    drop(checker);
}

impl Drop for Build {
    fn drop(&mut self) {
        // Not committed: the series of servers it created go again.
        let current = self.registry.servers();
        for (key, listed) in &self.next {
            if !current.contains_key(key) {
                self.registry.metrics().forget(&listed.server.labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::balance::Outcome;

    fn spec(urls: &[&str]) -> PoolSpec {
        PoolSpec {
            servers: urls.iter().map(|u| ServerUrl::parse(u).unwrap()).collect(),
            health_check: None,
            tls: None,
        }
    }

    /// The `{upstream="core", server}` series: (healthy, requests), if present.
    fn series(registry: &Registry, server: &str) -> Option<(i64, u64)> {
        let labels = ServerLabels {
            upstream: "core".into(),
            server: server.into(),
        };
        let m = registry.metrics();
        let healthy = m.healthy.get(&labels).map(|g| g.get());
        let requests = m.requests.get(&labels).map(|c| c.get());
        healthy.zip(requests)
    }

    const A: &str = "http://10.0.0.1:3000";
    const B: &str = "http://10.0.0.2:3000";
    const C: &str = "http://10.0.0.3:3000";

    #[test]
    fn a_reload_keeps_the_state_of_servers_still_listed() {
        let registry = Registry::default();
        let mut build = registry.build();
        let old = build.pool("core", &spec(&[A, B])).unwrap();
        build.commit();
        let a = old.servers()[0].clone();
        let held = (0..)
            .map(|_| old.pick())
            .find(|p| Arc::ptr_eq(p.server(), &a));
        for _ in 0..3 {
            a.report_at(Outcome::ConnectFailure, Instant::now());
        }
        assert!(!a.is_healthy());

        let mut build = registry.build();
        let new = build.pool("core", &spec(&[C, A])).unwrap();
        build.commit();
        assert!(Arc::ptr_eq(&new.servers()[1], &a));
        assert!(!new.servers()[1].is_healthy());
        assert!(new.servers()[0].is_healthy());
        assert!(registry.get("core", B).is_none());
        assert!(registry.get("core", A).is_some());
        // A request picked under the old generation still counts there.
        assert_eq!(new.servers()[1].outstanding(), 1);
        drop(held);
        assert_eq!(new.servers()[1].outstanding(), 0);

        assert_eq!(series(&registry, A), Some((0, 1)));
        assert_eq!(series(&registry, C), Some((1, 0)));
        assert_eq!(series(&registry, B), None);
    }

    #[test]
    fn an_abandoned_build_changes_nothing() {
        let registry = Registry::default();
        let mut build = registry.build();
        build.pool("core", &spec(&[A])).unwrap();
        build.commit();
        let mut build = registry.build();
        build.pool("core", &spec(&[B])).unwrap();
        drop(build);
        assert!(registry.get("core", A).is_some());
        assert!(registry.get("core", B).is_none());
        assert_eq!(series(&registry, B), None);
    }

    #[test]
    fn one_name_one_state() {
        let registry = Registry::default();
        let mut build = registry.build();
        let core = build.pool("core", &spec(&[A, B])).unwrap();
        // A tenant's override of `core` sharing a server: the same state.
        let tenant = build.pool("core", &spec(&[B])).unwrap();
        // The same address as another upstream: its own state.
        let metadata = build.pool("metadata", &spec(&[A])).unwrap();
        assert!(Arc::ptr_eq(&core.servers()[1], &tenant.servers()[0]));
        assert!(!Arc::ptr_eq(&core.servers()[0], &metadata.servers()[0]));
        let mut checked = spec(&[B]);
        checked.health_check = Some(HealthCheck {
            path: http::uri::PathAndQuery::from_static("/healthz"),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_after: NonZeroU32::MIN,
            healthy_after: NonZeroU32::MIN,
        });
        assert_eq!(
            build.pool("core", &checked).unwrap_err(),
            BuildError::Conflict {
                upstream: "core".into(),
                server: B.into()
            }
        );
        build.commit();
    }

    #[test]
    fn refuses_what_cannot_be_a_pool() {
        let registry = Registry::default();
        let mut build = registry.build();
        assert_eq!(
            build.pool("core", &spec(&[])).unwrap_err(),
            BuildError::Empty
        );
        assert_eq!(
            build.pool("core", &spec(&[A, A])).unwrap_err(),
            BuildError::Duplicate { server: A.into() }
        );
        assert_eq!(
            build
                .pool("core", &spec(&["https://twenty.internal"]))
                .unwrap_err(),
            BuildError::NoTlsClient {
                server: "https://twenty.internal".into()
            }
        );
    }
}
