//! [`Acme`]: the gateway's ACME state for its whole life. The certificate
//! map and the challenge answers outlive any one [`Manager`]: a reload that
//! changes the `acme` settings replaces the manager, and the certificates
//! keep being served while the new one takes over.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::sign::CertifiedKey;

use super::manager::{Manager, ManagerError, Options, Phase, Shared};
use super::metrics::AcmeMetrics;
use super::redis_store::RedisStore;
use super::settings::ValidSettings;
use super::store::{ChallengeKey, FileStore, Store};
use crate::cluster;
use crate::tls::CertSource;

/// What the running manager was built from.
type Running = (ValidSettings, Options, Option<cluster::Settings>);

pub struct Acme {
    shared: Shared,
    /// The running manager, for the handshake path.
    manager: ArcSwapOption<Manager>,
    /// What the running manager was built from; serialises `configure`.
    running: tokio::sync::Mutex<Option<Running>>,
}

impl Acme {
    pub fn new(metrics: AcmeMetrics) -> Self {
        Acme {
            shared: Shared {
                metrics,
                ..Shared::default()
            },
            manager: ArcSwapOption::empty(),
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// The issued certificates, for `tls::Certificates`.
    pub fn source(&self) -> Arc<dyn CertSource> {
        self.shared.certs.clone()
    }

    /// Apply the config (at start and after every reload): `settings` `None`
    /// stops ACME; otherwise `names` (tenant domains no file certificate
    /// covers) are the managed set, and with `cluster` the state is shared
    /// with the other gateways through its Redis ([`RedisStore`]). A manager
    /// is built when any of these settings change; if that fails, the
    /// previous one keeps running.
    pub async fn configure(
        &self,
        settings: Option<&ValidSettings>,
        options: Options,
        names: Vec<String>,
        cluster: Option<&cluster::Shared>,
    ) -> Result<(), ManagerError> {
        let mut running = self.running.lock().await;
        let Some(settings) = settings else {
            *running = None;
            self.manager.store(None);
            self.forget_all_but(&[]);
            return Ok(());
        };
        let cluster_settings = cluster.map(|c| c.settings().clone());
        let changed = running
            .as_ref()
            .is_none_or(|(s, o, c)| s != settings || *o != options || *c != cluster_settings);
        if changed {
            let local = FileStore::open(&settings.storage)?;
            let store: Arc<dyn Store> = match cluster {
                Some(redis) => Arc::new(RedisStore::new(redis.clone(), local)),
                None => Arc::new(local),
            };
            let manager = Manager::new(
                settings.clone(),
                options.clone(),
                store,
                self.shared.clone(),
            )?;
            // Dropping the old manager stops its orders; its certificates
            // stay in the shared map until the new one replaces them.
            self.manager.store(Some(Arc::new(manager)));
            *running = Some((settings.clone(), options, cluster_settings));
        }
        if let Some(manager) = self.manager.load_full() {
            for name in manager.set_names(names.iter().cloned()).await {
                tracing::warn!(
                    event = "acme_name_refused",
                    name,
                    "not a name ACME can certify; skipped"
                );
            }
        }
        self.forget_all_but(&names);
        Ok(())
    }

    /// Stop serving (and exporting the expiry of) names not in `keep`.
    fn forget_all_but(&self, keep: &[String]) {
        for name in self.shared.certs.retain(|n| keep.iter().any(|k| k == n)) {
            self.shared.metrics.remove_expiry(&name);
        }
    }

    /// The answer to `GET /.well-known/acme-challenge/<token>`.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.shared.challenges.http01(token)
    }

    /// The config to finish a TLS-ALPN-01 handshake for `name` with; `None`:
    /// no validation pending, refuse the handshake.
    pub fn tls_alpn01_config(&self, name: &str) -> Option<Arc<ServerConfig>> {
        self.shared.challenges.tls_alpn01_server_config(name)
    }

    /// The shared store, if the running manager has one.
    fn shared_store(&self) -> Option<Arc<dyn Store>> {
        let manager = self.manager.load_full()?;
        let store = manager.store();
        store.is_shared().then(|| store.clone())
    }

    /// An answer another gateway published for its order; `None` when there
    /// is none, no shared store, or Redis failed (logged: the CA gets no
    /// answer from this gateway, never a stalled connection).
    async fn shared_answer(&self, key: ChallengeKey) -> Option<String> {
        let store = self.shared_store()?;
        match store.get_challenge(&key).await {
            Ok(answer) => answer,
            Err(e) => {
                let challenge = match &key {
                    ChallengeKey::Http01 { .. } => "http-01",
                    ChallengeKey::TlsAlpn01 { .. } => "tls-alpn-01",
                };
                tracing::warn!(event = "acme_challenge_lookup_failed", challenge, error = %e, "cannot look up a shared challenge answer");
                None
            }
        }
    }

    /// [`Acme::http01`], else the answer another gateway sharing the store
    /// published (one Redis read bounded by `cluster.timeout`).
    pub async fn http01_answer(&self, token: &str) -> Option<String> {
        if let Some(answer) = self.http01(token) {
            return Some(answer);
        }
        self.shared_answer(ChallengeKey::Http01 {
            token: token.to_string(),
        })
        .await
    }

    /// [`Acme::tls_alpn01_config`], else a challenge certificate built from
    /// the key authorization another gateway sharing the store published
    /// (one Redis read bounded by `cluster.timeout`).
    pub async fn tls_alpn01_answer(&self, name: &str) -> Option<Arc<ServerConfig>> {
        if let Some(config) = self.tls_alpn01_config(name) {
            return Some(config);
        }
        let key_authorization = self
            .shared_answer(ChallengeKey::TlsAlpn01 {
                name: name.to_string(),
            })
            .await?;
        self.shared
            .challenges
            .shared_tls_alpn01_config(name, &key_authorization)
            .inspect_err(|e| {
                tracing::warn!(event = "acme_error", name, error = %e, "cannot build a TLS-ALPN-01 answer")
            })
            .ok()
    }

    /// Whether a handshake for `name` (normalised) should wait: the name is
    /// managed, has no certificate yet, and one is being ordered. Cheap: two
    /// map lookups, nothing when ACME is off.
    pub fn awaits_first(&self, name: &str) -> bool {
        let guard = self.manager.load();
        let Some(manager) = guard.as_ref() else {
            return false;
        };
        self.shared.certs.get(name).is_none()
            && manager
                .phase(name)
                .is_some_and(|p| matches!(p, Phase::Loading | Phase::Ordering))
    }

    /// Wait up to `timeout` for `name`'s first certificate.
    pub async fn first_certificate(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Option<Arc<CertifiedKey>> {
        let manager = self.manager.load_full()?;
        manager.first_certificate(name, timeout).await
    }

    /// The running manager (tests and diagnostics).
    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.manager.load_full()
    }
}
