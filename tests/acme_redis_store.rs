//! The ACME store shared through Redis ([`RedisStore`]) against a real
//! `redis-server` (and a real Redis Cluster): the order lock, the account,
//! certificates and challenge answers across two stores (two gateways),
//! the local copy, Redis down; and a manager that waits for the certificate
//! of the gateway holding a name's lock instead of ordering it.

mod redis_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_support::{RedisCluster, RedisServer};
use twenty_gateway::acme::{
    ChallengeKey, FileStore, Manager, Options, Phase, RedisStore, Settings, Shared, Store,
    StoredCert,
};
use twenty_gateway::cluster::{self, RedisMetrics, Target};
use twenty_gateway::ratelimit::OnUnavailable;

const NAME: &str = "crm.delta.test";
const PREFIX: &str = "tgw-test:";
const DIRECTORY: &str = "https://ca.test/dir?secret=1";

fn settings(redis: Target) -> cluster::Settings {
    cluster::Settings {
        redis,
        prefix: PREFIX.into(),
        timeout: Duration::from_millis(200),
        on_unavailable: OnUnavailable::Local,
    }
}

/// A store over `redis` with its own local directory (one gateway).
fn store(redis: Target, dir: &Path) -> RedisStore {
    let shared = cluster::Shared::start(settings(redis), Arc::new(RedisMetrics::new()))
        .expect("cluster client");
    RedisStore::new(shared, FileStore::open(dir).expect("local store"))
}

/// Two gateways' stores over one Redis.
fn two(redis: Target) -> (RedisStore, RedisStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = store(redis.clone(), &dir.path().join("a"));
    let b = store(redis, &dir.path().join("b"));
    (a, b, dir)
}

/// A self-signed certificate for `name` valid until `year`-01-01.
fn cert(name: &str, year: i32) -> StoredCert {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let cert = params.self_signed(&key).expect("self-signed");
    StoredCert {
        key_pem: key.serialize_pem(),
        chain_pem: cert.pem(),
    }
}

/// Poll `f` until it is true (up to 10 s).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "{what} within 10s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lock_is_exclusive_and_compare_and_delete(a: &RedisStore, b: &RedisStore) {
    let long = Duration::from_secs(60);
    assert!(a.lock_order(NAME, long).await.unwrap());
    assert!(!b.lock_order(NAME, long).await.unwrap(), "held by a");
    assert!(!a.lock_order(NAME, long).await.unwrap(), "not reentrant");
    // Releasing a lock one does not hold does nothing.
    b.unlock_order(NAME).await.unwrap();
    assert!(!b.lock_order(NAME, long).await.unwrap(), "still a's");
    a.unlock_order(NAME).await.unwrap();
    assert!(b.lock_order(NAME, long).await.unwrap(), "a released it");
    b.unlock_order(NAME).await.unwrap();
}

#[tokio::test]
async fn the_order_lock_is_exclusive_expires_and_is_freed_only_by_its_holder() {
    let redis = RedisServer::tcp();
    let (a, b, _dir) = two(Target::Single(redis.url()));
    lock_is_exclusive_and_compare_and_delete(&a, &b).await;

    // a crashes mid-order: its lock expires and b takes it.
    assert!(
        a.lock_order(NAME, Duration::from_millis(300))
            .await
            .unwrap()
    );
    let key = format!("{PREFIX}acme:lock:{NAME}");
    let ttl: i64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 300, "{ttl}");
    eventually("the expired lock taken", async || {
        b.lock_order(NAME, Duration::from_secs(60)).await.unwrap()
    })
    .await;
    // a's late release (compare-and-delete) leaves b's lock alone.
    let owner_b = redis.cli(&["GET", &key]);
    a.unlock_order(NAME).await.unwrap();
    assert_eq!(redis.cli(&["GET", &key]), owner_b);
    assert!(!a.lock_order(NAME, Duration::from_secs(60)).await.unwrap());
    b.unlock_order(NAME).await.unwrap();
    assert_eq!(redis.cli(&["EXISTS", &key]).trim(), "0");

    // A store dropped mid-order (its manager replaced) releases its locks.
    assert!(a.lock_order(NAME, Duration::from_secs(60)).await.unwrap());
    drop(a);
    eventually("the dropped store's lock released", async || {
        redis.cli(&["EXISTS", &key]).trim() == "0"
    })
    .await;
}

#[tokio::test]
async fn account_and_certificates_round_trip_with_a_local_copy() {
    let redis = RedisServer::tcp();
    let (a, b, _dir) = two(Target::Single(redis.url()));

    // The account a created is b's.
    assert_eq!(b.load_account(DIRECTORY).await.unwrap(), None);
    a.save_account(DIRECTORY, "{\"id\":\"a\"}").await.unwrap();
    assert_eq!(
        b.load_account(DIRECTORY).await.unwrap().as_deref(),
        Some("{\"id\":\"a\"}")
    );
    assert_eq!(
        b.local().load_account(DIRECTORY).await.unwrap().as_deref(),
        Some("{\"id\":\"a\"}"),
        "kept locally"
    );

    // The certificate a obtained is b's, and kept in b's local copy.
    let first = cert(NAME, 2090);
    a.save_cert(NAME, &first).await.unwrap();
    assert_eq!(b.load_cert(NAME).await.unwrap(), Some(first.clone()));
    assert_eq!(
        b.local().load_cert(NAME).await.unwrap(),
        Some(first.clone())
    );

    // A later certificate saved locally only (Redis was down) wins and is
    // shared on the next read; an older one does not replace it.
    let later = cert(NAME, 2095);
    b.local().save_cert(NAME, &later).await.unwrap();
    assert_eq!(b.load_cert(NAME).await.unwrap(), Some(later.clone()));
    assert_eq!(a.load_cert(NAME).await.unwrap(), Some(later.clone()));
    let older = cert(NAME, 2080);
    a.local().save_cert(NAME, &older).await.unwrap();
    assert_eq!(a.load_cert(NAME).await.unwrap(), Some(later.clone()));
    assert_eq!(a.local().load_cert(NAME).await.unwrap(), Some(later));

    // Key names: under the prefix, no directory URL, no secret.
    let mut keys: Vec<String> = redis
        .cli(&["KEYS", "*"])
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].starts_with(&format!("{PREFIX}acme:account:")));
    assert_eq!(keys[0].len(), PREFIX.len() + "acme:account:".len() + 16);
    assert_eq!(keys[1], format!("{PREFIX}acme:cert:{NAME}"));
}

#[tokio::test]
async fn challenge_answers_are_shared_until_withdrawn() {
    let redis = RedisServer::tcp();
    let (a, b, _dir) = two(Target::Single(redis.url()));
    let http = ChallengeKey::Http01 {
        token: "tok-EN_1".into(),
    };
    let alpn = ChallengeKey::TlsAlpn01 { name: NAME.into() };
    for key in [&http, &alpn] {
        assert_eq!(b.get_challenge(key).await.unwrap(), None);
        a.put_challenge(key, "tok-EN_1.thumb").await.unwrap();
        assert_eq!(
            b.get_challenge(key).await.unwrap().as_deref(),
            Some("tok-EN_1.thumb")
        );
    }
    // A gateway that dies mid-order leaves answers that expire.
    for (key, ttl) in redis.keys_with_ttl() {
        assert!(key.starts_with(&format!("{PREFIX}acme:")), "{key}");
        assert!(ttl > 0 && ttl <= 15 * 60 * 1000, "{key}: {ttl} ms");
    }
    for key in [&http, &alpn] {
        a.remove_challenge(key).await.unwrap();
        assert_eq!(b.get_challenge(key).await.unwrap(), None);
    }
}

#[tokio::test]
async fn redis_down_gives_errors_in_bounded_time_and_the_local_copy() {
    let mut redis = RedisServer::tcp();
    let (a, _b, _dir) = two(Target::Single(redis.url()));
    let stored = cert(NAME, 2090);
    a.save_cert(NAME, &stored).await.unwrap();
    a.save_account(DIRECTORY, "{}").await.unwrap();
    redis.kill();

    let bound = Duration::from_secs(3);
    let t = Instant::now();
    assert!(a.lock_order(NAME, Duration::from_secs(60)).await.is_err());
    assert!(
        a.get_challenge(&ChallengeKey::TlsAlpn01 { name: NAME.into() })
            .await
            .is_err()
    );
    assert!(
        a.put_challenge(&ChallengeKey::TlsAlpn01 { name: NAME.into() }, "x")
            .await
            .is_err()
    );
    // Reads answer from the local copy; writes go to it.
    assert_eq!(a.load_cert(NAME).await.unwrap(), Some(stored));
    assert_eq!(
        a.load_account(DIRECTORY).await.unwrap().as_deref(),
        Some("{}")
    );
    let later = cert(NAME, 2095);
    a.save_cert(NAME, &later).await.unwrap();
    assert_eq!(
        a.local().load_cert(NAME).await.unwrap(),
        Some(later.clone())
    );
    // One failed call, then the store rests: the rest fail at once.
    let took = t.elapsed();
    assert!(took < bound, "{took:?}");

    // Back up: the certificate saved meanwhile reaches Redis on a read.
    redis.restart();
    let key = format!("{PREFIX}acme:cert:{NAME}");
    eventually("the local certificate shared again", async || {
        let _ = a.load_cert(NAME).await;
        redis.cli(&["GET", &key]).contains(later.chain_pem.trim())
    })
    .await;
}

#[tokio::test]
async fn a_redis_cluster_shares_the_lock_certificates_and_answers() {
    let redis = RedisCluster::start();
    let (a, b, _dir) = two(Target::Cluster(redis.urls()));
    lock_is_exclusive_and_compare_and_delete(&a, &b).await;
    let stored = cert(NAME, 2090);
    a.save_cert(NAME, &stored).await.unwrap();
    assert_eq!(b.load_cert(NAME).await.unwrap(), Some(stored));
    a.save_account(DIRECTORY, "{}").await.unwrap();
    assert!(b.load_account(DIRECTORY).await.unwrap().is_some());
    let key = ChallengeKey::Http01 {
        token: "tok".into(),
    };
    a.put_challenge(&key, "tok.thumb").await.unwrap();
    assert_eq!(
        b.get_challenge(&key).await.unwrap().as_deref(),
        Some("tok.thumb")
    );
}

/// A manager over `store` whose CA is not there: any order it placed would
/// fail (and count in its status).
fn manager(store: RedisStore, storage: &Path, options: Options) -> Manager {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let settings = Settings {
        directory: format!("https://127.0.0.1:{port}/dir"),
        contact: vec![],
        storage: storage.to_path_buf(),
        ca_roots: None,
    }
    .validate()
    .expect("settings");
    Manager::new(settings, options, Arc::new(store), Shared::default()).expect("manager")
}

#[tokio::test]
async fn a_gateway_takes_the_certificate_of_the_one_holding_the_lock() {
    let redis = RedisServer::tcp();
    let (a, b, dir) = two(Target::Single(redis.url()));
    let options = Options {
        peer_poll: Duration::from_millis(50),
        shared_refresh: Duration::from_millis(200),
        ..Options::default()
    };
    let gw_b = manager(b, &dir.path().join("b"), options);

    // Gateway a is ordering the name: b waits for its certificate.
    assert!(a.lock_order(NAME, Duration::from_secs(60)).await.unwrap());
    gw_b.set_names([NAME.to_string()]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw_b.phase(NAME), Some(Phase::Ordering));
    let first = cert(NAME, 2090);
    a.save_cert(NAME, &first).await.unwrap();
    a.unlock_order(NAME).await.unwrap();
    let served = gw_b
        .first_certificate(NAME, Duration::from_secs(10))
        .await
        .expect("a's certificate served by b");
    assert_eq!(
        served.cert[0].as_ref(),
        rustls::pki_types::pem::PemObject::from_pem_slice(first.chain_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .expect("pem")
    );
    let status = gw_b.status(NAME).expect("managed");
    assert_eq!(status.failures, 0, "b never ordered: {status:?}");
    assert!(matches!(status.phase, Phase::Waiting { .. }), "{status:?}");

    // a renews: b serves the renewal within its refresh period.
    let renewed = cert(NAME, 2095);
    a.save_cert(NAME, &renewed).await.unwrap();
    let first_not_after = gw_b
        .certificates()
        .issued(NAME)
        .expect("issued")
        .not_after();
    eventually("the renewal picked up", async || {
        gw_b.certificates()
            .issued(NAME)
            .is_some_and(|i| i.not_after() > first_not_after)
    })
    .await;
    assert_eq!(gw_b.status(NAME).expect("managed").failures, 0);
}
