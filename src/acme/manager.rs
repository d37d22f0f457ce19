//! The ACME manager: one background task per configured name.
//!
//! A name's task loads its stored certificate, sleeps until the certificate
//! is due for renewal (a third of its lifetime left, or a point in the CA's
//! ARI window), then orders — at most [`Options::concurrency`] orders at
//! once across names, one per name. A failed order is retried after
//! `backoff_base · 2^(failures-1)`, capped at `backoff_cap`; the current
//! certificate keeps being served until a new one is installed. Only names
//! given to [`Manager::set_names`] are ever ordered.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use instant_acme::{Account, AccountCredentials, CertificateIdentifier, NewAccount};
use rand::Rng;
use rustls::pki_types::Der;
use rustls::sign::CertifiedKey;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::certs::{Certificates, Issued};
use super::challenge::Challenges;
use super::client::AcmeHttp;
use super::metrics::AcmeMetrics;
use super::order::{self, Ctx, Failure, Method};
use super::settings::ValidSettings;
use super::store::{FileStore, Store, StoreError};

/// Tuning that is not part of the config (tests shorten the times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Orders in flight at once, across names.
    pub concurrency: usize,
    /// Validate with TLS-ALPN-01 (the HTTPS listener answers `acme-tls/1`).
    pub tls_alpn01: bool,
    /// Validate with HTTP-01 (there is an HTTP listener): first choice when
    /// TLS-ALPN-01 is off, the retry when TLS-ALPN-01 validation failed.
    pub http01: bool,
    /// Wait after the first failure; doubles with each further failure.
    pub backoff_base: Duration,
    /// Longest wait between two attempts for one name.
    pub backoff_cap: Duration,
    /// How long to poll the CA for validation, and again for issuance.
    pub poll_timeout: Duration,
    /// Bound on one whole attempt (account, order, fallback, download).
    pub order_timeout: Duration,
    /// Longest sleep before a name's task looks again (the store may hold a
    /// newer certificate; the CA's ARI window may have moved).
    pub recheck: Duration,
    /// With a shared store: how often a name's stored certificate is read
    /// again (another gateway may have renewed it).
    pub shared_refresh: Duration,
    /// With a shared store, while another gateway holds a name's order
    /// lock: the first wait before looking for its certificate; doubles
    /// with each look, up to `shared_refresh`.
    pub peer_poll: Duration,
}

/// How much longer than `order_timeout` an order lock lives: the lock is
/// released when the attempt ends, and expires this long after it could
/// have ended if its holder died.
pub const LOCK_MARGIN: Duration = Duration::from_secs(60);

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 3,
            tls_alpn01: true,
            http01: false,
            backoff_base: Duration::from_secs(60),
            backoff_cap: Duration::from_secs(24 * 3600),
            poll_timeout: Duration::from_secs(120),
            order_timeout: Duration::from_secs(600),
            recheck: Duration::from_secs(6 * 3600),
            shared_refresh: Duration::from_secs(60),
            peer_poll: Duration::from_millis(500),
        }
    }
}

impl Options {
    /// The wait after `failures` consecutive failures (≥ 1).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_cap)
            .min(self.backoff_cap)
    }

    /// The wait before the `looks`-th (from 0) look for the certificate of
    /// a name another gateway is ordering.
    pub fn peer_wait(&self, looks: u32) -> Duration {
        let factor = 1u32.checked_shl(looks).unwrap_or(u32::MAX);
        self.peer_poll
            .checked_mul(factor)
            .unwrap_or(self.shared_refresh)
            .min(self.shared_refresh.max(self.peer_poll))
    }

    fn methods(&self) -> Vec<Method> {
        let mut methods = Vec::with_capacity(2);
        if self.tls_alpn01 {
            methods.push(Method::TlsAlpn01);
        }
        if self.http01 {
            methods.push(Method::Http01);
        }
        methods
    }
}

/// Where a name stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Reading its stored certificate.
    Loading,
    /// Waiting for an order slot, or ordering.
    Ordering,
    /// Has a valid certificate; renews at `renew_at`.
    Waiting { renew_at: SystemTime },
    /// The last attempt failed; the next one is in `retry_in`.
    Backoff { retry_in: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub phase: Phase,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// The last failure's problem detail.
    pub last_error: Option<String>,
    /// Expiry of the certificate being served, if any.
    pub not_after: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("acme.storage: {0}")]
    Storage(#[from] StoreError),
    #[error("acme: cannot build the HTTPS client: {0}")]
    Tls(#[from] rustls::Error),
}

/// What managers share with the TLS and HTTP layers, and with the next
/// manager when the `acme` settings change.
#[derive(Clone, Debug, Default)]
pub struct Shared {
    pub certs: Arc<Certificates>,
    pub challenges: Arc<Challenges>,
    pub metrics: AcmeMetrics,
}

/// Orders and renews certificates for the configured names. Dropping it
/// stops every background task.
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ValidSettings,
    options: Options,
    http: AcmeHttp,
    store: Arc<dyn Store>,
    challenges: Arc<Challenges>,
    certs: Arc<Certificates>,
    metrics: AcmeMetrics,
    account: tokio::sync::Mutex<AccountSlot>,
    /// Whether the CA offers ARI: unknown until asked.
    ari: Mutex<Option<bool>>,
    slots: Semaphore,
    names: DashMap<String, NameState>,
    /// Bumped on every status change; first-certificate waiters re-check.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct AccountSlot {
    account: Option<Account>,
    /// The CA forgot the stored account: create a new one.
    stale: bool,
}

struct NameState {
    status: Status,
    task: Option<JoinHandle<()>>,
}

impl Manager {
    /// A manager over `store`. Nothing is ordered until [`Manager::set_names`].
    pub fn new(
        settings: ValidSettings,
        options: Options,
        store: Arc<dyn Store>,
        shared: Shared,
    ) -> Result<Self, ManagerError> {
        let http = AcmeHttp::new(settings.ca_roots.as_deref())?;
        let slots = Semaphore::new(options.concurrency.max(1));
        Ok(Manager {
            inner: Arc::new(Inner {
                settings,
                options,
                http,
                store,
                challenges: shared.challenges,
                certs: shared.certs,
                metrics: shared.metrics,
                account: Default::default(),
                ari: Mutex::new(None),
                slots,
                names: DashMap::new(),
                changed: watch::Sender::new(0),
            }),
        })
    }

    /// A manager storing under `settings.storage` (created 0700).
    pub fn with_file_store(
        settings: ValidSettings,
        options: Options,
        shared: Shared,
    ) -> Result<Self, ManagerError> {
        let store = Arc::new(FileStore::open(&settings.storage)?);
        Self::new(settings, options, store, shared)
    }

    /// The issued certificates, for the TLS layer.
    pub fn certificates(&self) -> &Arc<Certificates> {
        &self.inner.certs
    }

    /// The pending challenge answers, for the listeners.
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.inner.challenges
    }

    /// Where the account and certificates persist (and, when shared, the
    /// other gateways' challenge answers).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Make `names` the managed set (at start and on every reload): stored
    /// certificates of new names are loaded (and served) before this
    /// returns; names without a valid one are ordered in the background;
    /// names no longer listed stop being renewed and served. Returns the
    /// names refused as not orderable (wildcards, IP addresses, …).
    pub async fn set_names(&self, names: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut wanted = Vec::new();
        let mut refused = Vec::new();
        for name in names {
            if super::is_orderable_name(&name) {
                wanted.push(name);
            } else {
                refused.push(name);
            }
        }
        wanted.sort();
        wanted.dedup();

        let (new, kept): (Vec<String>, Vec<String>) = {
            let map = &self.inner.names;
            map.retain(|name, state| {
                let keep = wanted.binary_search(name).is_ok();
                if !keep {
                    if let Some(task) = state.task.take() {
                        task.abort();
                    }
                    self.inner.certs.remove(name);
                    self.inner.metrics.remove_expiry(name);
                }
                keep
            });
            let mut new = Vec::new();
            let mut kept = Vec::new();
            for name in wanted {
                if map.contains_key(&name) {
                    kept.push(name);
                    continue;
                }
                let status = Status {
                    phase: Phase::Loading,
                    failures: 0,
                    last_error: None,
                    not_after: None,
                };
                map.insert(name.clone(), NameState { status, task: None });
                new.push(name);
            }
            (new, kept)
        };

        // A reload also picks up what other gateways renewed (in the
        // background: a slow Redis must not hold the reload up).
        if self.inner.store.is_shared() && !kept.is_empty() {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                for name in kept {
                    if inner.names.contains_key(&name) {
                        inner.refresh_from_store(&name).await;
                    }
                }
            });
        }

        for name in new {
            self.inner.refresh_from_store(&name).await;
            let task = tokio::spawn(self.inner.clone().run(name.clone()));
            match self.inner.names.get_mut(&name) {
                Some(mut state) => state.task = Some(task),
                // Removed by a concurrent set_names meanwhile.
                None => task.abort(),
            }
        }
        refused
    }

    /// Where `name` stands; `None` if it is not managed.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.inner.names.get(name).map(|s| s.status.clone())
    }

    /// Where `name` stands, without the rest of its status.
    pub fn phase(&self, name: &str) -> Option<Phase> {
        self.inner.names.get(name).map(|s| s.status.phase.clone())
    }

    /// `name`'s certificate; if it has none yet but is being ordered, wait
    /// for it up to `timeout`. `None` at once for a name not managed or
    /// waiting out a backoff.
    pub async fn first_certificate(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Option<Arc<CertifiedKey>> {
        let mut changed = self.inner.changed.subscribe();
        let wait = async {
            loop {
                changed.borrow_and_update();
                if let Some(key) = self.inner.certs.get(name) {
                    return Some(key);
                }
                match self.phase(name)? {
                    Phase::Loading | Phase::Ordering => {}
                    Phase::Waiting { .. } | Phase::Backoff { .. } => return None,
                }
                changed.changed().await.ok()?;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        for mut state in self.inner.names.iter_mut() {
            if let Some(task) = state.task.take() {
                task.abort();
            }
        }
    }
}

impl Inner {
    fn update(&self, name: &str, f: impl FnOnce(&mut Status)) {
        if let Some(mut state) = self.names.get_mut(name) {
            f(&mut state.status);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn set_phase(&self, name: &str, phase: Phase) {
        self.update(name, |s| s.phase = phase);
    }

    /// Serve `issued` for `name` from now on.
    fn install(&self, name: &str, issued: Arc<Issued>) {
        self.metrics.set_expiry(name, issued.not_after());
        let not_after = issued.not_after();
        self.certs.install(name, issued);
        self.update(name, |s| s.not_after = Some(not_after));
    }

    /// Install the stored certificate if it is valid and newer than the one
    /// served (another gateway sharing the store may have renewed it).
    /// Whether it was installed.
    async fn refresh_from_store(&self, name: &str) -> bool {
        let stored = match self.store.load_cert(name).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(event = "acme_store_error", name, error = %e, "cannot load the stored certificate");
                return false;
            }
        };
        let issued = match Issued::parse(name, &stored) {
            Ok(issued) => issued,
            Err(reason) => {
                tracing::warn!(event = "acme_store_error", name, error = %reason, "stored certificate unusable; ordering a new one");
                return false;
            }
        };
        if issued.not_after() <= SystemTime::now() {
            return false;
        }
        let newer = self
            .certs
            .issued(name)
            .is_none_or(|current| issued.not_after() > current.not_after());
        if newer {
            let renewal = self.certs.issued(name).is_some();
            let not_after = issued.not_after();
            self.install(name, Arc::new(issued));
            if self.store.is_shared() {
                tracing::info!(
                    event = "acme_certificate_loaded",
                    name,
                    not_after = %humantime::format_rfc3339_seconds(not_after),
                    renewal,
                    "certificate taken from the shared store"
                );
            }
        }
        newer
    }

    /// Sleep `total`; with a shared store, look for a newer certificate
    /// every `shared_refresh` meanwhile, and end early when one is served
    /// (the renewal time moved). Without one, look once at the end.
    async fn sleep_refreshing(&self, name: &str, total: Duration) {
        if !self.store.is_shared() {
            tokio::time::sleep(total).await;
            self.refresh_from_store(name).await;
            return;
        }
        let served = |certs: &Certificates| certs.issued(name).map(|i| i.not_after());
        let before = served(&self.certs);
        let until = tokio::time::Instant::now() + total;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(self.options.shared_refresh)).await;
            // Installed here, or by a reload's refresh meanwhile.
            if self.refresh_from_store(name).await || served(&self.certs) != before {
                return;
            }
        }
    }

    /// A name's life: load, wait until due, order, back off on failure.
    async fn run(self: Arc<Self>, name: String) {
        let mut failures = 0u32;
        // Looks for the certificate of another gateway's order, in a row.
        let mut peer_looks = 0u32;
        loop {
            let due = match self.certs.issued(&name) {
                Some(current) => self.renew_at(&current).await,
                None => SystemTime::now(),
            };
            if let Ok(wait) = due.duration_since(SystemTime::now())
                && !wait.is_zero()
            {
                peer_looks = 0;
                self.set_phase(&name, Phase::Waiting { renew_at: due });
                self.sleep_refreshing(&name, wait.min(self.options.recheck))
                    .await;
                continue;
            }

            self.set_phase(&name, Phase::Ordering);
            let Ok(slot) = self.slots.acquire().await else {
                return;
            };
            match self
                .store
                .lock_order(&name, self.options.order_timeout + LOCK_MARGIN)
                .await
            {
                Ok(true) => {
                    peer_looks = 0;
                    // Another gateway may have finished just before.
                    if self.store.is_shared() && self.refresh_from_store(&name).await {
                        if let Err(e) = self.store.unlock_order(&name).await {
                            tracing::warn!(event = "acme_store_error", name, error = %e, "cannot release the order lock");
                        }
                        continue;
                    }
                }
                Ok(false) => {
                    // Another gateway is ordering it: wait for its
                    // certificate (the phase stays `Ordering`, so first
                    // handshakes wait too). Its lock ends with its attempt,
                    // or expires if it died; then this gateway takes it.
                    drop(slot);
                    if peer_looks == 0 {
                        tracing::info!(
                            event = "acme_order_elsewhere",
                            name,
                            "another gateway is ordering this name; waiting for its certificate"
                        );
                    }
                    tokio::time::sleep(self.options.peer_wait(peer_looks)).await;
                    peer_looks = peer_looks.saturating_add(1);
                    self.refresh_from_store(&name).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(event = "acme_store_error", name, error = %e, "cannot take the order lock; ordering anyway");
                }
            }
            let retry_in = self.options.backoff(failures + 1);
            let attempt = tokio::time::timeout(
                self.options.order_timeout,
                self.attempt(&name, failures + 1, retry_in),
            )
            .await;
            if let Err(e) = self.store.unlock_order(&name).await {
                tracing::warn!(event = "acme_store_error", name, error = %e, "cannot release the order lock");
            }
            drop(slot);
            let failure = match attempt {
                Ok(Ok(())) => {
                    failures = 0;
                    self.update(&name, |s| {
                        s.failures = 0;
                        s.last_error = None;
                    });
                    continue;
                }
                Ok(Err(failure)) => failure.detail,
                Err(_) => {
                    let detail = format!(
                        "the order did not complete within {}s",
                        self.options.order_timeout.as_secs()
                    );
                    self.metrics.order_failed();
                    tracing::warn!(
                        event = "acme_order_failed",
                        name,
                        problem = %detail,
                        failures = failures + 1,
                        retry_in_s = retry_in.as_secs_f64(),
                        "ACME order failed"
                    );
                    detail
                }
            };
            failures += 1;
            self.update(&name, |s| {
                s.failures = failures;
                s.last_error = Some(failure);
                s.phase = Phase::Backoff { retry_in };
            });
            tokio::time::sleep(retry_in).await;
        }
    }

    /// One attempt: account, then an order per challenge method until one
    /// is issued (a TLS-ALPN-01 validation failure moves on to HTTP-01).
    /// Logs every order's start and end; `failures`/`retry_in` describe what
    /// happens if this attempt fails.
    async fn attempt(&self, name: &str, failures: u32, retry_in: Duration) -> Result<(), Failure> {
        let methods = self.options.methods();
        let current = self.certs.issued(name);
        let mut result = Err(Failure::local(
            "no challenge method enabled (no HTTPS or HTTP listener)".into(),
        ));
        for (i, &method) in methods.iter().enumerate() {
            tracing::info!(
                event = "acme_order_started",
                name,
                challenge = method.as_str(),
                renewal = current.is_some(),
                "ordering a certificate"
            );
            result = self.order(name, method, current.as_deref()).await;
            let failure = match &result {
                Ok(issued) => {
                    self.metrics.order_issued();
                    let not_after = humantime::format_rfc3339_seconds(issued.not_after());
                    match &current {
                        None => tracing::info!(
                            event = "acme_certificate_issued",
                            name,
                            challenge = method.as_str(),
                            not_after = %not_after,
                            "certificate issued"
                        ),
                        Some(old) => tracing::info!(
                            event = "acme_renewed",
                            name,
                            challenge = method.as_str(),
                            not_after = %not_after,
                            previous_not_after = %humantime::format_rfc3339_seconds(old.not_after()),
                            "certificate renewed"
                        ),
                    }
                    break;
                }
                Err(failure) => failure,
            };
            self.metrics.order_failed();
            let next = methods.get(i + 1).filter(|_| failure.validation);
            match next {
                Some(next) => tracing::warn!(
                    event = "acme_order_failed",
                    name,
                    challenge = method.as_str(),
                    problem = %failure.detail,
                    next_challenge = next.as_str(),
                    "ACME order failed; trying the next challenge type"
                ),
                None => tracing::warn!(
                    event = "acme_order_failed",
                    name,
                    challenge = method.as_str(),
                    problem = %failure.detail,
                    failures,
                    retry_in_s = retry_in.as_secs_f64(),
                    "ACME order failed"
                ),
            }
            if next.is_none() {
                break;
            }
        }
        let issued = result?;
        self.install(name, issued);
        Ok(())
    }

    /// One order with one method; the certificate is stored and parsed.
    async fn order(
        &self,
        name: &str,
        method: Method,
        current: Option<&Issued>,
    ) -> Result<Arc<Issued>, Failure> {
        let account = self.account().await?;
        let replaces = match (current, self.ari_known()) {
            (Some(current), Some(true)) => cert_id(current),
            _ => None,
        };
        let ctx = Ctx {
            account: &account,
            challenges: &self.challenges,
            store: self.store.as_ref(),
            poll_timeout: self.options.poll_timeout,
        };
        let stored = match order::order(&ctx, name, method, replaces).await {
            Ok(stored) => stored,
            Err(failure) => {
                if failure.account_gone() {
                    let mut slot = self.account.lock().await;
                    slot.account = None;
                    slot.stale = true;
                }
                return Err(failure);
            }
        };
        let issued = Issued::parse(name, &stored)
            .map_err(|e| Failure::local(format!("the CA issued an unusable certificate: {e}")))?;
        if let Err(e) = self.store.save_cert(name, &stored).await {
            // Serve it anyway; the next start orders again.
            tracing::error!(event = "acme_store_error", name, error = %e, "cannot store the issued certificate");
        }
        Ok(Arc::new(issued))
    }

    /// The ACME account: the stored one, or a new one (stored at once).
    async fn account(&self) -> Result<Account, Failure> {
        let mut slot = self.account.lock().await;
        if let Some(account) = &slot.account {
            return Ok(account.clone());
        }
        let directory = &self.settings.directory;
        let stored = match slot.stale {
            true => None,
            false => self
                .store
                .load_account(directory)
                .await
                .map_err(|e| Failure::local(e.to_string()))?,
        };
        let builder = Account::builder_with_http(Box::new(self.http.clone()));
        let account = match stored {
            Some(json) => {
                let credentials: AccountCredentials = serde_json::from_str(&json)
                    .map_err(|e| Failure::local(format!("stored ACME account is unusable: {e}")))?;
                builder
                    .from_credentials(credentials)
                    .await
                    .map_err(Failure::ca)?
            }
            None => {
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await
                    .map_err(Failure::ca)?;
                let json = serde_json::to_string(&credentials)
                    .map_err(|e| Failure::local(e.to_string()))?;
                self.store
                    .save_account(directory, &json)
                    .await
                    .map_err(|e| {
                        Failure::local(format!("cannot store the new ACME account: {e}"))
                    })?;
                tracing::info!(event = "acme_account_created", "ACME account created");
                account
            }
        };
        slot.account = Some(account.clone());
        slot.stale = false;
        Ok(account)
    }

    fn ari_known(&self) -> Option<bool> {
        *self.ari.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When to renew `current`: a random point in the CA's ARI window when
    /// it offers one (asked with the stored account only: no account is
    /// created just to ask), else when a third of its lifetime is left.
    async fn renew_at(&self, current: &Issued) -> SystemTime {
        let default = current.renew_at();
        if self.ari_known() == Some(false) {
            return default;
        }
        let Some(id) = cert_id(current) else {
            return default;
        };
        // Only with an account at hand or stored: never create one to ask.
        let has_account = self.account.lock().await.account.is_some()
            || matches!(
                self.store.load_account(&self.settings.directory).await,
                Ok(Some(_))
            );
        if !has_account {
            return default;
        }
        let Ok(account) = self.account().await else {
            return default;
        };
        match account.renewal_info(&id).await {
            Ok((info, _)) => {
                *self.ari.lock().unwrap_or_else(PoisonError::into_inner) = Some(true);
                let start = SystemTime::from(info.suggested_window.start);
                let end = SystemTime::from(info.suggested_window.end);
                pick_in_window(start, end).min(current.not_after())
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                *self.ari.lock().unwrap_or_else(PoisonError::into_inner) = Some(false);
                default
            }
            Err(_) => default,
        }
    }
}

/// A uniformly random point in `[start, end]` (RFC 9773 §4.2).
fn pick_in_window(start: SystemTime, end: SystemTime) -> SystemTime {
    let span = end.duration_since(start).unwrap_or_default();
    let offset = rand::rng().random_range(0..=span.as_secs());
    start + Duration::from_secs(offset)
}

/// The ARI identifier of a certificate (needs an Authority Key Identifier).
fn cert_id(issued: &Issued) -> Option<CertificateIdentifier<'static>> {
    let aki = issued.aki.as_deref()?;
    Some(
        CertificateIdentifier::new(Der::from_slice(aki), Der::from_slice(&issued.serial))
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let o = Options {
            backoff_base: Duration::from_secs(60),
            ..Options::default()
        };
        assert_eq!(o.backoff(1), Duration::from_secs(60));
        assert_eq!(o.backoff(2), Duration::from_secs(120));
        assert_eq!(o.backoff(5), Duration::from_secs(960));
        assert_eq!(o.backoff(12), Duration::from_secs(86400));
        assert_eq!(o.backoff(40), Duration::from_secs(86400));
        assert_eq!(o.backoff(u32::MAX), Duration::from_secs(86400));
    }

    #[test]
    fn peer_looks_back_off_up_to_the_refresh_period() {
        let o = Options::default();
        let waits: Vec<u64> = (0..9).map(|n| o.peer_wait(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(o.peer_wait(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn methods_follow_the_listeners() {
        let o = |tls_alpn01, http01| {
            Options {
                tls_alpn01,
                http01,
                ..Options::default()
            }
            .methods()
        };
        assert_eq!(o(true, true), [Method::TlsAlpn01, Method::Http01]);
        assert_eq!(o(true, false), [Method::TlsAlpn01]);
        assert_eq!(o(false, true), [Method::Http01]);
        assert!(o(false, false).is_empty());
    }

    #[test]
    fn window_point_is_inside() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let end = start + Duration::from_secs(10);
        for _ in 0..100 {
            let p = pick_in_window(start, end);
            assert!(p >= start && p <= end);
        }
        assert_eq!(pick_in_window(end, start), end);
    }
}
