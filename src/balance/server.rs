//! One server's state, shared by every config generation that lists it:
//! requests in flight, health, its metric handles and its check task.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::health::{Change, CheckSettings, Health, Outcome, Policy};
use super::metrics::ServerLabels;
use super::url::ServerUrl;

pub struct Server {
    upstream: Arc<str>,
    url: ServerUrl,
    /// Requests picked and not yet finished.
    outstanding: AtomicUsize,
    /// Mirrors `health` for the request path, which reads it lock-free.
    healthy: AtomicBool,
    /// Healthy with no strike: a success has nothing to update.
    clean: AtomicBool,
    health: Mutex<Health>,
    changes: watch::Sender<bool>,
    pub(crate) labels: ServerLabels,
    healthy_gauge: Gauge,
    requests: Counter,
    pub(crate) checker: Mutex<Option<Checker>>,
}

impl Server {
    pub(crate) fn new(
        upstream: Arc<str>,
        url: ServerUrl,
        policy: Policy,
        labels: ServerLabels,
        (healthy_gauge, requests): (Gauge, Counter),
    ) -> Self {
        healthy_gauge.set(1);
        Server {
            upstream,
            url,
            outstanding: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            clean: AtomicBool::new(true),
            health: Mutex::new(Health::new(policy)),
            changes: watch::Sender::new(true),
            labels,
            healthy_gauge,
            requests,
            checker: Mutex::new(None),
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn url(&self) -> &ServerUrl {
        &self.url
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// An active check task runs for it.
    pub fn is_checked(&self) -> bool {
        self.checker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(Checker::is_running)
    }

    /// The health flag as it changes (`true` = healthy).
    pub fn watch_health(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }

    /// Passive health: what became of a request (or a connection attempt).
    pub fn report(&self, outcome: Outcome) {
        if outcome == Outcome::Success && self.clean.load(Ordering::Relaxed) {
            return;
        }
        self.report_at(outcome, Instant::now());
    }

    /// [`Self::report`] at a given time (tests drive the clock).
    pub fn report_at(&self, outcome: Outcome, now: Instant) {
        let mut health = self.health();
        let change = health.on_request(outcome, now);
        self.settle(health, change, || match outcome {
            Outcome::ConnectFailure => "requests failed in a row, the last to connect",
            Outcome::Timeout => "requests failed in a row, the last by timing out",
            Outcome::Success => "a request was answered",
        });
    }

    /// Active health: a check's result, with why it failed.
    pub(crate) fn on_check(&self, result: Result<(), String>, now: Instant) {
        let mut health = self.health();
        let change = health.on_check(result.is_ok(), now);
        let reason = match &result {
            Ok(()) => "health checks passed",
            Err(e) => e.as_str(),
        };
        self.settle(health, change, || reason);
    }

    pub(crate) fn set_policy(&self, policy: Policy) {
        self.health().set_policy(policy);
    }

    /// May a request go here now? `now` is taken only for a server that is
    /// down (its passive wait may be over).
    pub(crate) fn eligible(&self, now: &mut impl FnMut() -> Instant) -> bool {
        self.is_healthy() || self.health().eligible(now())
    }

    pub(crate) fn begin(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.requests.inc();
    }

    pub(crate) fn end(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish the state `health` holds (under its lock, so two transitions
    /// cannot publish out of order); log a transition once it is released.
    fn settle<'a>(
        &self,
        health: MutexGuard<'_, Health>,
        change: Option<Change>,
        reason: impl FnOnce() -> &'a str,
    ) {
        let healthy = health.healthy();
        self.healthy.store(healthy, Ordering::Relaxed);
        self.clean.store(health.clean(), Ordering::Relaxed);
        let Some(change) = change else { return };
        self.healthy_gauge.set(i64::from(healthy));
        self.changes.send_replace(healthy);
        drop(health);
        let (upstream, server, reason) = (&*self.upstream, self.url.as_str(), reason());
        match change {
            Change::Down => tracing::warn!(
                event = "upstream_server_down",
                upstream,
                server,
                reason,
                "upstream server taken out of rotation"
            ),
            Change::Up => tracing::info!(
                event = "upstream_server_up",
                upstream,
                server,
                reason,
                "upstream server back in rotation"
            ),
        }
    }
}

/// A running check task (see `check`); dropping it stops the task.
pub struct Checker {
    pub settings: CheckSettings,
    task: JoinHandle<()>,
}

impl Checker {
    pub(crate) fn new(settings: CheckSettings, task: JoinHandle<()>) -> Self {
        Checker { settings, task }
    }

    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("upstream", &self.upstream)
            .field("url", &self.url)
            .field("outstanding", &self.outstanding())
            .field("healthy", &self.is_healthy())
            .finish()
    }
}
