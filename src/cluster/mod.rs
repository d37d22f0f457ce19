//! Several gateways, one quota: rate limits and the auth-failure brake
//! shared through Redis (or Redis Cluster).
//!
//! - [`settings`]: the `cluster:` block and its validation (no Redis contact).
//! - [`script`]: governor's GCRA as one Lua script, Redis `TIME` its only
//!   clock; key names (hash-tagged per tenant, quota in the name, never a
//!   token).
//! - [`metrics`]: `gateway_redis_*` and `gateway_ratelimit_fallback_total`.
//! - [`Shared`] (here): one multiplexed connection, every request's wait
//!   bounded by `timeout`, refusals remembered locally until their
//!   `Retry-After`, and the up/down state: after [`FAILURES_TO_DOWN`]
//!   failed calls in a row Redis is not asked per request any more; a
//!   background task pings it until it answers, then sharing resumes.
//! - `drive` (here): requests do not call Redis themselves; they queue
//!   their keys and one task sends everything queued as one script call
//!   (one per Redis Cluster slot), with at most `CALLS_IN_FLIGHT` calls
//!   in flight. One request alone goes out at once; under load the calls
//!   carry many requests each, so Redis's per-call cost (the client's
//!   command encoding and reply parsing here, the script start on Redis)
//!   is paid per batch, not per request.
//!
//! Every method answers [`Answer::Shared`] (what Redis decided, or a local
//! memory of it) or [`Answer::Unavailable`]; the caller applies
//! `on_unavailable`.

pub mod metrics;
pub mod script;
pub mod settings;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::{mpsc, oneshot};

pub use metrics::{ErrorKind, RedisMetrics};
pub use settings::{RawSettings, Settings, Target, validate};

use crate::base::deadlines::Deadlines;
use crate::ratelimit::{
    Decision, LimitEntry, OnUnavailable, Owner, Rate, SharedChecked, SharedFuture, SharedLimits,
    SharedRequest, Unavailable,
};

use script::{Entry, Keys, Reply};

/// Failed calls in a row that mark Redis down.
pub const FAILURES_TO_DOWN: u32 = 3;
/// How often a down Redis is pinged.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Bound on one probe (connecting included).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on each local memory of refusals.
const MAX_REMEMBERED: usize = 100_000;
/// Script calls in flight at once (on the one multiplexed connection):
/// with two, a batch can be on its way while the previous one is still in
/// Redis, so a slow round trip idles neither the gateway nor Redis.
const CALLS_IN_FLIGHT: usize = 2;
/// Most requests in one script call (the script runs them one after the
/// other; this bounds how long Redis is busy with one call).
const MAX_BATCH: usize = 256;

/// What a call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// The shared state decided (Redis answered, or a refusal it gave
    /// earlier still holds).
    Shared(T),
    /// Redis could not answer within `timeout`, or is down: apply
    /// `on_unavailable`. Counted in `gateway_ratelimit_fallback_total`.
    Unavailable,
}

/// The limits of one authenticated request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits<'a> {
    pub tenant: &'a str,
    /// The key's id and its quota, if it has one.
    pub key: Option<(&'a str, Rate)>,
    /// The tenant's shared cap, if it has one.
    pub tenant_quota: Option<Rate>,
    /// The client address and `auth_failures_per_ip`, if the brake is on.
    pub brake: Option<(IpAddr, Rate)>,
}

/// The shared decisions for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    /// The client is braked for this long: no limiter was checked.
    pub braked: Option<Duration>,
    /// The key's limiter, if it has one (checked first).
    pub key: Option<Decision>,
    /// The tenant's limiter, if it has one and the key's allowed.
    pub tenant: Option<Decision>,
    /// Redis `TIME` (since the Unix epoch) the script decided at; `None`
    /// when a local memory of an earlier refusal answered.
    pub at: Option<Duration>,
}

/// The Redis-backed limiter state of one `cluster` setting. Cheap to clone;
/// the background probe ends when the last clone is dropped.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    keys: Keys,
    conn: ArcSwap<Conn>,
    script: redis::Script,
    /// To [`drive`]: the requests waiting for a script call.
    jobs: mpsc::UnboundedSender<Job>,
    up: AtomicBool,
    failures_in_a_row: AtomicU32,
    /// Key and anonymous limiters that refused: Redis key → allowed again at.
    refused: Deadlines<String>,
    /// Braked clients: block key → blocked until.
    blocked: Deadlines<String>,
    metrics: Arc<RedisMetrics>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Why the connection could not be set up (bad TLS setup, bad URL).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Redis client: {0}")]
pub struct StartError(String);

impl Shared {
    /// Sets up the (lazy) connection and the background probe. Needs a Tokio
    /// runtime; does not wait for Redis: an unreachable Redis is found
    /// out by the first probe or calls.
    pub fn start(settings: Settings, metrics: Arc<RedisMetrics>) -> Result<Shared, StartError> {
        let conn = connect(&settings)?;
        let (jobs, queue) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            jobs,
            keys: Keys::new(settings.prefix.clone(), settings.redis.is_cluster()),
            settings,
            conn: ArcSwap::from_pointee(conn),
            script: redis::Script::new(script::LUA),
            up: AtomicBool::new(true),
            failures_in_a_row: AtomicU32::new(0),
            refused: Deadlines::default(),
            blocked: Deadlines::default(),
            metrics,
        });
        inner.metrics.up.set(1);
        tokio::spawn(probe(Arc::downgrade(&inner)));
        tokio::spawn(drive(queue, Arc::downgrade(&inner)));
        Ok(Shared { inner })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn on_unavailable(&self) -> OnUnavailable {
        self.inner.settings.on_unavailable
    }

    /// Forget refusals and blocks that have ended (they are also dropped
    /// when looked up, and the maps are bounded).
    pub fn housekeeping(&self) {
        self.inner.refused.prune();
        self.inner.blocked.prune();
    }

    /// Whether requests are decided by Redis (false: by the fallback).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Brake, key limiter, tenant limiter, in one script call (none if a
    /// local memory of an earlier refusal answers).
    pub async fn check_request(&self, req: &RequestLimits<'_>) -> Answer<Checked> {
        let keys = &self.inner.keys;
        self.check_named(
            req.brake.map(|(ip, q)| keys.block(req.tenant, ip, &q)),
            req.key.map(|(id, q)| (keys.key(req.tenant, id, &q), q)),
            req.tenant_quota.map(|q| (keys.tenant(req.tenant, &q), q)),
        )
        .await
    }

    /// [`Shared::check_request`] with the key names built.
    async fn check_named(
        &self,
        block_key: Option<String>,
        key: Option<(String, Rate)>,
        tenant: Option<(String, Rate)>,
    ) -> Answer<Checked> {
        let inner = &*self.inner;
        if let Some(left) = block_key.as_deref().and_then(|k| inner.blocked.left(k)) {
            return Answer::Shared(Checked {
                braked: Some(left),
                ..Checked::default()
            });
        }
        if let Some((name, q)) = &key
            && let Some(wait) = inner.refused.left(name)
        {
            return Answer::Shared(Checked {
                key: Some(Decision::denied(*q, wait)),
                ..Checked::default()
            });
        }
        if block_key.is_none() && key.is_none() && tenant.is_none() {
            return Answer::Shared(Checked::default());
        }

        let Answer::Shared((entry, reply)) =
            self.call(Entry::check(block_key, [key, tenant])).await
        else {
            return Answer::Unavailable;
        };
        let mut checked = Checked {
            at: Some(reply.now),
            ..Checked::default()
        };
        if let Some(left) = reply.blocked {
            if let Some(b) = entry.block {
                inner.blocked.insert_bounded(b, left, MAX_REMEMBERED);
            }
            checked.braked = Some(left);
            return Answer::Shared(checked);
        }
        let [key, tenant] = entry.limiters;
        let mut decisions = reply.decisions.into_iter();
        if let Some((name, _)) = key {
            let d = decisions.next().flatten();
            if let Some(Decision::Denied { retry_after, .. }) = d {
                inner
                    .refused
                    .insert_bounded(name, retry_after, MAX_REMEMBERED);
            }
            checked.key = d;
        }
        if tenant.is_some() {
            checked.tenant = decisions.next().flatten();
        }
        Answer::Shared(checked)
    }

    /// Counts one failed key check from `ip`; `Some(block)` when the client
    /// is braked (now or already).
    pub async fn record_auth_failure(
        &self,
        tenant: &str,
        ip: IpAddr,
        quota: Rate,
    ) -> Answer<Option<Duration>> {
        let inner = &*self.inner;
        let block = inner.keys.block(tenant, ip, &quota);
        if let Some(left) = inner.blocked.left(&block) {
            return Answer::Shared(Some(left));
        }
        let failures = inner.keys.failures(tenant, ip, &quota);
        let Answer::Shared((entry, reply)) =
            self.call(Entry::failure(block, failures, quota)).await
        else {
            return Answer::Unavailable;
        };
        if let (Some(left), Some(block)) = (reply.blocked, entry.block) {
            inner.blocked.insert_bounded(block, left, MAX_REMEMBERED);
        }
        Answer::Shared(reply.blocked)
    }

    /// Whether `ip` is braked, from what this gateway has learnt from Redis
    /// (no Redis call): for requests that would otherwise not ask it.
    pub fn known_blocked(&self, tenant: &str, ip: IpAddr, quota: Rate) -> Option<Duration> {
        let inner = &*self.inner;
        // Usually nobody is braked: no key name to build (formatting the
        // address and the quota was ~7 % of a request's instructions).
        if inner.blocked.is_empty() {
            return None;
        }
        inner.blocked.left(&inner.keys.block(tenant, ip, &quota))
    }

    /// `limits.anonymous_per_ip` for a request on a route without a key.
    pub async fn check_anonymous(&self, ip: IpAddr, quota: Rate) -> Answer<Decision> {
        let inner = &*self.inner;
        let name = inner.keys.anonymous(ip, &quota);
        if let Some(wait) = inner.refused.left(&name) {
            return Answer::Shared(Decision::denied(quota, wait));
        }
        let Answer::Shared((entry, reply)) = self
            .call(Entry::check(None, [Some((name, quota)), None]))
            .await
        else {
            return Answer::Unavailable;
        };
        let ([Some((name, _)), _], [Some(d), _]) = (entry.limiters, reply.decisions) else {
            return Answer::Unavailable;
        };
        if let Decision::Denied { retry_after, .. } = d {
            inner
                .refused
                .insert_bounded(name, retry_after, MAX_REMEMBERED);
        }
        Answer::Shared(d)
    }

    /// Queues `entry` for [`drive`]'s next script call and waits for its
    /// answer, which comes within `timeout` (the call answers each request
    /// it carries by that request's deadline: one timer per call, not per
    /// request); [`Answer::Unavailable`] (counted as a fallback) when Redis
    /// is down or did not answer in time. Failed calls, not requests, count
    /// towards "down". The entry comes back with the answer (its key names
    /// are needed to remember refusals).
    async fn call(&self, entry: Entry) -> Answer<(Entry, Reply)> {
        let inner = &*self.inner;
        if !inner.up.load(Ordering::Acquire) {
            inner.metrics.fallback.inc();
            return Answer::Unavailable;
        }
        let (done, answer) = oneshot::channel();
        let job = Job {
            entry,
            deadline: tokio::time::Instant::now() + inner.settings.timeout,
            done: Some(done),
        };
        if inner.jobs.send(job).is_ok()
            && let Ok(answered) = answer.await
        {
            return Answer::Shared(answered);
        }
        // The answer channel was dropped: not answered in time, the call
        // failed (counted there), or the driver has gone (shutdown).
        inner.metrics.fallback.inc();
        Answer::Unavailable
    }
}

/// One request waiting for [`drive`]'s script call.
struct Job {
    entry: Entry,
    /// Answered by then, whatever Redis does.
    deadline: tokio::time::Instant,
    /// `None` once answered; dropped unanswered, it tells the request
    /// Redis did not decide (the fallback applies).
    done: Option<oneshot::Sender<(Entry, Reply)>>,
}

/// The one task that talks to Redis for the limiters: takes every request
/// queued (at most [`MAX_BATCH`]) and sends them as one script call per
/// Redis Cluster slot (a task that hands each request its answer), while
/// fewer than [`CALLS_IN_FLIGHT`] are in flight; otherwise it waits for one
/// to end and requests queue meanwhile. A request alone is sent at once;
/// under load each call carries what queued while the others were in
/// flight. Ends when the [`Shared`] is dropped.
async fn drive(mut queue: mpsc::UnboundedReceiver<Job>, inner: Weak<Inner>) {
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= CALLS_IN_FLIGHT {
            in_flight.join_next().await;
            continue;
        }
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        if queue.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        let Some(inner) = inner.upgrade() else { return };
        // Requests that have gone (the client left) are not sent; those
        // whose time ran out while they queued are answered now.
        let now = tokio::time::Instant::now();
        jobs.retain(|j| j.deadline > now && j.done.as_ref().is_some_and(|d| !d.is_closed()));
        if !jobs.is_empty() {
            in_flight.spawn(async move { inner.send(jobs).await });
        }
    }
}

impl Inner {
    /// One script call for `jobs`; in Redis Cluster one per hash slot (a
    /// script's keys must share one), in parallel.
    async fn send(self: Arc<Self>, mut jobs: Vec<Job>) {
        if !self.keys.cluster {
            return self.round(&mut jobs).await;
        }
        jobs.sort_by(|a, b| a.entry.slot_part().cmp(b.entry.slot_part()));
        let mut calls = tokio::task::JoinSet::new();
        while !jobs.is_empty() {
            let part = jobs[0].entry.slot_part();
            let n = jobs
                .iter()
                .take_while(|j| j.entry.slot_part() == part)
                .count();
            let mut group: Vec<Job> = jobs.drain(..n).collect();
            let inner = Arc::clone(&self);
            calls.spawn(async move { inner.round(&mut group).await });
        }
        calls.join_all().await;
    }

    /// One script call for `jobs` (keys in one slot). Each request is
    /// answered by its own deadline (each waits at most `timeout` from its
    /// arrival, the time it queued behind calls in flight included): while
    /// the call runs, requests whose deadline passes get "no answer", and
    /// the call itself is given up at the latest deadline. A failed call
    /// counts once towards "down", however many requests it carried.
    async fn round(&self, jobs: &mut Vec<Job>) {
        let (Some(first), Some(last)) = (
            jobs.iter().map(|j| j.deadline).min(),
            jobs.iter().map(|j| j.deadline).max(),
        ) else {
            return;
        };
        // ~120 bytes of names and numbers per request.
        let mut cmd = redis::Cmd::with_capacity(2 + 16 * jobs.len(), 64 + 160 * jobs.len());
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(jobs.iter().map(|j| j.entry.keys().count()).sum::<usize>());
        for j in jobs.iter() {
            for k in j.entry.keys() {
                cmd.arg(k);
            }
        }
        script::write_args(jobs.iter().map(|j| &j.entry), &mut cmd);
        let conn = Conn::clone(&self.conn.load());
        let started = Instant::now();
        let call = tokio::time::timeout_at(last, async {
            match conn {
                Conn::Single(mut c) => eval(&cmd, &self.script, &mut c).await,
                Conn::Cluster(mut c) => eval(&cmd, &self.script, &mut c).await,
            }
        });
        tokio::pin!(call);
        let next_deadline = tokio::time::sleep_until(first);
        tokio::pin!(next_deadline);
        let mut waiting = true;
        let result = loop {
            tokio::select! {
                result = &mut call => break result,
                () = &mut next_deadline, if waiting => {
                    let now = tokio::time::Instant::now();
                    for job in jobs.iter_mut().filter(|j| j.deadline <= now) {
                        job.done = None;
                    }
                    match jobs.iter().filter(|j| j.done.is_some()).map(|j| j.deadline).min() {
                        Some(next) => next_deadline.as_mut().reset(next),
                        None => waiting = false,
                    }
                }
            }
        };
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let (kind, reason) = match result {
            Ok(Ok(v)) => match script::decode(&v, jobs.iter().map(|j| &j.entry)) {
                Some(replies) => {
                    self.failures_in_a_row.store(0, Ordering::Relaxed);
                    for (mut job, reply) in jobs.drain(..).zip(replies) {
                        if let Some(done) = job.done.take() {
                            let _ = done.send((job.entry, reply));
                        }
                    }
                    return;
                }
                None => (ErrorKind::Response, "unexpected script reply".to_string()),
            },
            Ok(Err(e)) => (classify(&e), e.to_string()),
            Err(_) => (
                ErrorKind::Timeout,
                format!("no answer within {} ms", self.settings.timeout.as_millis()),
            ),
        };
        self.failed(kind, &reason);
        // Unanswered: the requests fall back.
        jobs.clear();
    }
}

/// EVALSHA, loading the script first if Redis does not have it (after a
/// restart, a failover, a `SCRIPT FLUSH`).
async fn eval(
    cmd: &redis::Cmd,
    script: &redis::Script,
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<Vec<u8>> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        result => result,
    }
}

/// Why a call made outside the limiter path ([`Shared::command`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Known down (the probe has not seen it answer since): not asked.
    #[error("Redis is down")]
    Down,
    #[error("no answer from Redis within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl Shared {
    /// One command or script for another user of the connection (ACME's
    /// store), bounded by `timeout`. Fails at once while Redis is known down.
    /// Does not count in the limiter's metrics nor move its up/down state
    /// (the limiter's calls and the probe do that).
    pub async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: Command<'_>,
        timeout: Duration,
    ) -> Result<T, CommandError> {
        let inner = &*self.inner;
        if !inner.up.load(Ordering::Acquire) {
            return Err(CommandError::Down);
        }
        let conn = Conn::clone(&inner.conn.load());
        let call = async {
            match (conn, cmd) {
                (Conn::Single(mut c), Command::Cmd(cmd)) => cmd.query_async(&mut c).await,
                (Conn::Cluster(mut c), Command::Cmd(cmd)) => cmd.query_async(&mut c).await,
                (Conn::Single(mut c), Command::Script(inv)) => inv.invoke_async(&mut c).await,
                (Conn::Cluster(mut c), Command::Script(inv)) => inv.invoke_async(&mut c).await,
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CommandError::Timeout(timeout)),
        }
    }
}

/// What [`Shared::command`] sends.
pub enum Command<'a> {
    Cmd(&'a redis::Cmd),
    Script(&'a redis::ScriptInvocation<'a>),
}

/// The pipeline's seam: the same decisions, in the shapes the local
/// limiters give.
impl SharedLimits for Shared {
    fn on_unavailable(&self) -> OnUnavailable {
        self.inner.settings.on_unavailable
    }

    fn check<'a>(&'a self, req: SharedRequest<'a>) -> SharedFuture<'a, SharedChecked> {
        Box::pin(async move {
            let keys = &self.inner.keys;
            // Names cached in the config's limit entries.
            let named = |l: &LimitEntry, build: &dyn Fn() -> String| {
                let suffix = l.shared_name.get_or_init(|| build().into_boxed_str());
                (keys.with_prefix(suffix), l.rate)
            };
            let key = req.key.map(|l| {
                named(l, &|| match &l.owner {
                    Owner::Key(id) | Owner::Tenant(id) => {
                        script::key_suffix(req.tenant, id, &l.rate)
                    }
                })
            });
            let tenant = req
                .tenant_limit
                .map(|l| named(l, &|| script::tenant_suffix(req.tenant, &l.rate)));
            let block = req.brake.map(|(ip, q)| keys.block(req.tenant, ip, &q));
            match self.check_named(block, key, tenant).await {
                Answer::Shared(Checked {
                    braked: Some(left), ..
                }) => Ok(SharedChecked::Braked(left)),
                Answer::Shared(c) => Ok(SharedChecked::Limits([c.key, c.tenant])),
                Answer::Unavailable => Err(Unavailable),
            }
        })
    }

    fn record_failure<'a>(
        &'a self,
        tenant: &'a str,
        ip: IpAddr,
        rate: Rate,
    ) -> SharedFuture<'a, Option<Duration>> {
        Box::pin(async move {
            match self.record_auth_failure(tenant, ip, rate).await {
                Answer::Shared(blocked) => Ok(blocked),
                Answer::Unavailable => Err(Unavailable),
            }
        })
    }

    fn known_blocked(&self, tenant: &str, ip: IpAddr, rate: Rate) -> Option<Duration> {
        Shared::known_blocked(self, tenant, ip, rate)
    }

    fn check_anonymous<'a>(&'a self, ip: IpAddr, rate: Rate) -> SharedFuture<'a, Decision> {
        Box::pin(async move {
            match Shared::check_anonymous(self, ip, rate).await {
                Answer::Shared(d) => Ok(d),
                Answer::Unavailable => Err(Unavailable),
            }
        })
    }
}

impl Inner {
    fn failed(&self, kind: ErrorKind, reason: &str) {
        self.metrics.error(kind);
        let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= FAILURES_TO_DOWN && self.up.swap(false, Ordering::AcqRel) {
            self.metrics.up.set(0);
            tracing::warn!(
                event = "redis_down",
                redis = %self.settings.redis,
                kind = kind.as_str(),
                reason = reason,
                failures = in_a_row,
                on_unavailable = self.settings.on_unavailable.as_str(),
                "Redis is not answering; limits are decided by on_unavailable until it does"
            );
        }
    }

    fn mark_up(&self) {
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        if !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.up.set(1);
            tracing::info!(
                event = "redis_up",
                redis = %self.settings.redis,
                reason = "ping answered",
                "Redis answers again; limits are shared"
            );
        }
    }
}

/// While Redis is down: ping it every [`PROBE_INTERVAL`] (a fresh
/// connection after each failed ping, in case the old one is stuck) and
/// mark it up when it answers. Also warms the connection at start.
async fn probe(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if !first && inner.up.load(Ordering::Acquire) {
            continue;
        }
        let conn = Conn::clone(&inner.conn.load());
        let ping = tokio::time::timeout(PROBE_TIMEOUT, async {
            let cmd = redis::cmd("PING");
            match conn {
                Conn::Single(mut c) => cmd.query_async::<String>(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async::<String>(&mut c).await,
            }
        })
        .await;
        match ping {
            Ok(Ok(_)) => inner.mark_up(),
            failed => {
                let (kind, reason) = match failed {
                    Ok(Err(e)) => (classify(&e), e.to_string()),
                    _ => (ErrorKind::Timeout, "ping timed out".to_string()),
                };
                if first || inner.up.load(Ordering::Acquire) {
                    // The warm-up ping at start: Redis was never reachable.
                    inner
                        .failures_in_a_row
                        .store(FAILURES_TO_DOWN, Ordering::Relaxed);
                    inner.failed(kind, &reason);
                }
                match connect(&inner.settings) {
                    Ok(c) => inner.conn.store(Arc::new(c)),
                    Err(e) => tracing::warn!(event = "redis_client_error", error = %e),
                }
            }
        }
        first = false;
    }
}

fn connect(settings: &Settings) -> Result<Conn, StartError> {
    let err = |e: redis::RedisError| StartError(e.to_string());
    // redis-rs gives up on a reply after 500 ms by default: never before
    // our own timers (`timeout` for limiter calls, the probe's).
    let response_timeout = settings.timeout.max(PROBE_TIMEOUT);
    match &settings.redis {
        Target::Single(url) => {
            let client = redis::Client::open(url.as_str()).map_err(err)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(PROBE_TIMEOUT))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(1)
                .set_max_delay(PROBE_INTERVAL);
            ConnectionManager::new_lazy_with_config(client, config)
                .map(Conn::Single)
                .map_err(err)
        }
        Target::Cluster(nodes) => {
            let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(PROBE_TIMEOUT)
                .response_timeout(response_timeout)
                .retries(1)
                .build()
                .map_err(err)?;
            Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(PROBE_TIMEOUT)
                        .set_response_timeout(response_timeout),
                ),
            ))
        }
    }
}

fn classify(e: &redis::RedisError) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
    {
        ErrorKind::Connect
    } else {
        ErrorKind::Response
    }
}
