//! [`RedisStore`]: the ACME state gateways share through the `cluster`
//! Redis (or Redis Cluster), with a local [`FileStore`] copy of the account
//! and the certificates.
//!
//! Keys (`P` = `cluster.prefix`), one key per command so Redis Cluster needs
//! no hash tags:
//!
//! ```text
//! P acme:account:<sha256(directory)[..8] hex>  account credentials (JSON)
//! P acme:cert:<name>                           private key, then chain (PEM)
//! P acme:lock:<name>                           order lock: random owner, PX ttl
//! P acme:http-01:<token>                       key authorization, PX 15 min
//! P acme:tls-alpn-01:<name>                    key authorization, PX 15 min
//! ```
//!
//! No key name holds a secret: names and ACME HTTP-01 tokens are public (the
//! CA fetches the token over plain HTTP); the directory URL is hashed.
//!
//! The local copy (write-through): every certificate and account read from
//! or written to Redis is also kept under `acme.storage`, so a gateway that
//! restarts while Redis is down serves its certificates at once. Reads take
//! whichever copy expires later and bring the other side up to date, so a
//! certificate saved while Redis was down reaches Redis (and the others)
//! once it is back, and a Redis that lost its data is refilled.
//!
//! Redis failing or slow: every call is bounded (background calls by
//! [`BACKGROUND_TIMEOUT`] or `cluster.timeout` if longer, the CA's challenge
//! lookups by `cluster.timeout`), and fails at once while the limiter's probe
//! knows Redis is down or for [`REST_AFTER_FAILURE`] after a call found it
//! unreachable. Reads then answer from the local copy; writes go to the local
//! copy only (and reach Redis with a later read); the manager orders without
//! the lock.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use dashmap::DashMap;

use super::certs::Issued;
use super::store::{
    ChallengeKey, FileStore, Store, StoreError, StoredCert, account_id, join_cert, split_cert_file,
};
use crate::cluster::{self, Command, CommandError};

/// Lowest bound on a background call (the limiter's `cluster.timeout` is
/// tuned for requests and may be a few milliseconds).
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a published challenge answer lives if the order never withdraws
/// it (the gateway died): longer than an order's validation can take.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(15 * 60);
/// How long calls fail at once after one failed.
pub const REST_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// Deletes the lock only if it still holds this owner's value: an expired
/// lock another gateway took since is left alone.
const UNLOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// The ACME [`Store`] shared through Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    redis: cluster::Shared,
    local: FileStore,
    prefix: String,
    background: Duration,
    lookup: Duration,
    unlock: redis::Script,
    /// name → the owner value of a lock this store holds.
    held: DashMap<String, String>,
    /// After a failed call, calls fail at once until then (so a start or
    /// reload with many names and an unreachable Redis waits once, not
    /// once per name).
    resting_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("local", &self.inner.local.root())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Over `redis` (its prefix and timeout), keeping a copy in `local`.
    pub fn new(redis: cluster::Shared, local: FileStore) -> Self {
        let settings = redis.settings();
        RedisStore {
            inner: Arc::new(Inner {
                prefix: settings.prefix.clone(),
                background: settings.timeout.max(BACKGROUND_TIMEOUT),
                lookup: settings.timeout,
                redis,
                local,
                unlock: redis::Script::new(UNLOCK),
                held: DashMap::new(),
                resting_until: Mutex::new(None),
            }),
        }
    }

    /// The local copy.
    pub fn local(&self) -> &FileStore {
        &self.inner.local
    }

    fn key(&self, kind: &str, id: &str) -> String {
        key(&self.inner.prefix, kind, id)
    }

    fn challenge_key(&self, key: &ChallengeKey) -> String {
        match key {
            ChallengeKey::Http01 { token } => self.key("http-01", token),
            ChallengeKey::TlsAlpn01 { name } => self.key("tls-alpn-01", name),
        }
    }

    /// Every Redis call: bounded by `timeout`, refused at once while
    /// resting after a failure.
    async fn call<T: redis::FromRedisValue>(
        &self,
        action: &'static str,
        cmd: Command<'_>,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        let resting = || {
            self.inner
                .resting_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if resting().is_some_and(|until| Instant::now() < until) {
            return Err(shared_error(action, CommandError::Down));
        }
        let result = self.inner.redis.command(cmd, timeout).await;
        // Not reachable (an error reply is Redis answering: no rest).
        let unreachable = match &result {
            Ok(_) => false,
            Err(CommandError::Timeout(_) | CommandError::Down) => true,
            Err(CommandError::Redis(e)) => {
                e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped()
            }
        };
        if unreachable {
            *resting() = Some(Instant::now() + REST_AFTER_FAILURE);
        }
        result.map_err(|e| shared_error(action, e))
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        action: &'static str,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        self.call(action, Command::Cmd(cmd), timeout).await
    }

    async fn get(&self, action: &'static str, key: &str) -> Result<Option<String>, StoreError> {
        self.run(action, redis::cmd("GET").arg(key), self.inner.background)
            .await
    }

    async fn set(&self, action: &'static str, key: &str, value: &str) -> Result<(), StoreError> {
        self.run(
            action,
            redis::cmd("SET").arg(key).arg(value),
            self.inner.background,
        )
        .await
    }
}

/// A manager replaced (reload) or stopped mid-order: release its locks so
/// that the next one need not wait for them to expire.
impl Drop for Inner {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let held: Vec<(String, String)> = self
            .held
            .iter()
            .map(|e| (key(&self.prefix, "lock", e.key()), e.value().clone()))
            .collect();
        let (redis, script, timeout) = (self.redis.clone(), self.unlock.clone(), self.background);
        runtime.spawn(async move {
            for (key, owner) in held {
                let mut inv = script.prepare_invoke();
                inv.key(&key).arg(&owner);
                let _ = redis.command::<i64>(Command::Script(&inv), timeout).await;
            }
        });
    }
}

fn key(prefix: &str, kind: &str, id: &str) -> String {
    format!("{prefix}acme:{kind}:{id}")
}

fn shared_error(action: &'static str, e: CommandError) -> StoreError {
    StoreError::Shared {
        action,
        reason: e.to_string(),
    }
}

/// A Redis failure the store worked around with its local copy.
fn degraded(op: &'static str, name: &str, e: &StoreError) {
    tracing::warn!(event = "acme_redis_error", op, name, error = %e, "ACME state not shared for now; using the local copy");
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Expiry of a stored certificate; unusable ones sort first.
fn not_after(name: &str, cert: &StoredCert) -> SystemTime {
    Issued::parse(name, cert)
        .map(|i| i.not_after())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[async_trait]
impl Store for RedisStore {
    async fn load_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let key = self.key("account", &account_id(directory));
        let local = self.inner.local.load_account(directory).await;
        match self.get("read the ACME account", &key).await {
            Ok(Some(shared)) => {
                if local.as_ref().ok().and_then(Option::as_ref) != Some(&shared)
                    && let Err(e) = self.inner.local.save_account(directory, &shared).await
                {
                    tracing::warn!(event = "acme_store_error", error = %e, "cannot keep a local copy of the ACME account");
                }
                Ok(Some(shared))
            }
            Ok(None) => {
                // Made before sharing, or Redis lost it: share ours, unless
                // another gateway shared one meanwhile.
                if let Ok(Some(own)) = &local {
                    let cmd = redis::cmd("SET").arg(&key).arg(own).arg("NX").to_owned();
                    if let Err(e) = self
                        .run::<Option<String>>(
                            "share the ACME account",
                            &cmd,
                            self.inner.background,
                        )
                        .await
                    {
                        degraded("load_account", "", &e);
                    }
                }
                local
            }
            Err(e) => {
                degraded("load_account", "", &e);
                local
            }
        }
    }

    async fn save_account(&self, directory: &str, credentials: &str) -> Result<(), StoreError> {
        let key = self.key("account", &account_id(directory));
        self.inner
            .local
            .save_account(directory, credentials)
            .await?;
        // Stored locally: shared by a later read once Redis answers.
        if let Err(e) = self.set("store the ACME account", &key, credentials).await {
            degraded("save_account", "", &e);
        }
        Ok(())
    }

    async fn load_cert(&self, name: &str) -> Result<Option<StoredCert>, StoreError> {
        let key = self.key("cert", name);
        let local = self.inner.local.load_cert(name).await;
        let shared = match self.get("read a certificate", &key).await {
            Ok(shared) => shared,
            Err(e) => {
                degraded("load_cert", name, &e);
                return local;
            }
        };
        let shared = match shared
            .map(|pem| split_cert_file(Path::new(&key), &pem))
            .transpose()
        {
            Ok(shared) => shared,
            Err(e) => {
                tracing::warn!(event = "acme_store_error", name, error = %e, "shared certificate unusable");
                None
            }
        };
        let local = match local {
            Ok(local) => local,
            Err(e) => {
                // The shared copy replaces a damaged local file.
                tracing::warn!(event = "acme_store_error", name, error = %e, "local certificate copy unusable");
                None
            }
        };
        // The copy that expires later wins; the other side is brought up
        // to date.
        let (cert, from_redis) = match (shared, local) {
            (None, None) => return Ok(None),
            (Some(s), Some(l)) if s == l => return Ok(Some(s)),
            (Some(s), Some(l)) if not_after(name, &s) > not_after(name, &l) => (s, true),
            (Some(s), None) => (s, true),
            (_, Some(l)) => (l, false),
        };
        if from_redis {
            if let Err(e) = self.inner.local.save_cert(name, &cert).await {
                tracing::warn!(event = "acme_store_error", name, error = %e, "cannot keep a local copy of the certificate");
            }
        } else if let Err(e) = self
            .set("share a certificate", &key, &join_cert(&cert))
            .await
        {
            // Saved while Redis was down, or Redis lost it: next time.
            degraded("load_cert", name, &e);
        }
        Ok(Some(cert))
    }

    async fn save_cert(&self, name: &str, cert: &StoredCert) -> Result<(), StoreError> {
        self.inner.local.save_cert(name, cert).await?;
        // Stored locally: shared by the next read (every minute) once Redis
        // answers.
        let key = self.key("cert", name);
        if let Err(e) = self
            .set("store a certificate", &key, &join_cert(cert))
            .await
        {
            degraded("save_cert", name, &e);
        }
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn lock_order(&self, name: &str, ttl: Duration) -> Result<bool, StoreError> {
        let owner = hex::encode(rand::random::<[u8; 16]>());
        let cmd = redis::cmd("SET")
            .arg(self.key("lock", name))
            .arg(&owner)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .to_owned();
        let taken: Option<String> = self
            .run("take the order lock", &cmd, self.inner.background)
            .await?;
        if taken.is_some() {
            self.inner.held.insert(name.to_string(), owner);
        }
        Ok(taken.is_some())
    }

    async fn unlock_order(&self, name: &str) -> Result<(), StoreError> {
        let Some((_, owner)) = self.inner.held.remove(name) else {
            return Ok(());
        };
        let key = self.key("lock", name);
        let mut inv = self.inner.unlock.prepare_invoke();
        inv.key(&key).arg(&owner);
        self.call::<i64>(
            "release the order lock",
            Command::Script(&inv),
            self.inner.background,
        )
        .await
        .map(drop)
    }

    async fn put_challenge(
        &self,
        key: &ChallengeKey,
        key_authorization: &str,
    ) -> Result<(), StoreError> {
        let cmd = redis::cmd("SET")
            .arg(self.challenge_key(key))
            .arg(key_authorization)
            .arg("PX")
            .arg(millis(CHALLENGE_TTL))
            .to_owned();
        self.run("publish a challenge answer", &cmd, self.inner.background)
            .await
    }

    async fn remove_challenge(&self, key: &ChallengeKey) -> Result<(), StoreError> {
        let cmd = redis::cmd("DEL").arg(self.challenge_key(key)).to_owned();
        self.run::<i64>("withdraw a challenge answer", &cmd, self.inner.background)
            .await
            .map(drop)
    }

    /// Bounded by `cluster.timeout`: the CA is waiting on the line.
    async fn get_challenge(&self, key: &ChallengeKey) -> Result<Option<String>, StoreError> {
        let cmd = redis::cmd("GET").arg(self.challenge_key(key)).to_owned();
        self.run("look up a challenge answer", &cmd, self.inner.lookup)
            .await
    }
}
