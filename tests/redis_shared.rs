//! Limits shared through a real Redis (TCP, unix socket) and a real
//! 3-master Redis Cluster: several `Shared` instances stand for several
//! gateways.

mod redis_support;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use prometheus_client::registry::Registry;
use twenty_gateway::cluster::{
    Answer, Checked, RawSettings, RedisMetrics, RequestLimits, Settings, Shared, Target,
};
use twenty_gateway::ratelimit::{Decision, Limiter, OnUnavailable, Rate as Quota};

use redis_support::{RedisCluster, RedisServer};

const HOUR: Duration = Duration::from_secs(3600);
/// Generous per-call timeout: the machine running the tests is busy.
const TEST_TIMEOUT: Duration = Duration::from_millis(500);

fn quota(requests: u32, per: Duration, burst: u32) -> Quota {
    Quota {
        requests: NonZeroU32::new(requests).expect("nonzero"),
        per,
        burst: NonZeroU32::new(burst).expect("nonzero"),
    }
}

fn settings(redis: Target, timeout: Duration) -> Settings {
    let mut s = twenty_gateway::cluster::validate(&RawSettings {
        redis: Some(twenty_gateway::cluster::settings::RawRedis::One(
            "redis://127.0.0.1".into(),
        )),
        prefix: Some("test-gw:".into()),
        ..RawSettings::default()
    })
    .expect("valid settings");
    s.redis = redis;
    s.timeout = timeout;
    s
}

struct Gateway {
    shared: Shared,
    registry: Registry,
}

impl Gateway {
    fn start(redis: Target, timeout: Duration) -> Gateway {
        let metrics = Arc::new(RedisMetrics::new());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let shared = Shared::start(settings(redis, timeout), metrics).expect("start");
        Gateway { shared, registry }
    }

    fn metrics_text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }

    /// The value of the first sample line starting with `prefix`.
    fn metric(&self, prefix: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

async fn check(shared: &Shared, limits: &RequestLimits<'_>) -> Checked {
    match shared.check_request(limits).await {
        Answer::Shared(c) => c,
        Answer::Unavailable => panic!("Redis unavailable"),
    }
}

fn key_only<'a>(tenant: &'a str, key: &'a str, q: Quota) -> RequestLimits<'a> {
    RequestLimits {
        tenant,
        key: Some((key, q)),
        tenant_quota: None,
        brake: None,
    }
}

/// N gateways, one quota: alternating between two instances, a burst of
/// 10 gives 10 in total, with the `RateLimit` numbers of one limiter.
async fn two_gateways_share(redis: Target, evalsha_calls: impl Fn() -> u64) {
    let a = Gateway::start(redis.clone(), TEST_TIMEOUT);
    let b = Gateway::start(redis, TEST_TIMEOUT);
    let q = quota(10, HOUR, 10);
    let limits = key_only("acme", "ci", q);
    let mut allowed = 0;
    for i in 0..14u32 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let c = check(&gw.shared, &limits).await;
        match c.key.expect("key checked") {
            Decision::Allowed { remaining, reset } => {
                assert_eq!(remaining, 9 - i, "call {i}");
                // one cell = 360 s
                assert_eq!(reset, 360 * u64::from(i + 1), "call {i}");
                allowed += 1;
            }
            Decision::Denied { retry_after, reset } => {
                assert!(i >= 10, "call {i} denied");
                assert!(retry_after <= Duration::from_secs(360) && retry_after > Duration::ZERO);
                assert_eq!(reset, 3600);
            }
        }
        assert_eq!(c.tenant, None);
    }
    assert_eq!(allowed, 10, "10 in total across both gateways, not 20");

    // Both have been refused once by Redis: from now on they answer
    // locally until Retry-After, without a Redis call.
    let before = evalsha_calls();
    for gw in [&a, &b, &a, &b] {
        let c = check(&gw.shared, &limits).await;
        assert!(!c.key.expect("key").is_allowed());
        assert_eq!(c.at, None, "answered from local memory");
    }
    assert_eq!(evalsha_calls(), before, "no Redis call for a refused key");
    assert_eq!(a.metric("gateway_redis_up "), 1.0);
    // a asked Redis for calls 0, 2, .., 10; call 12 it answered itself.
    assert_eq!(a.metric("gateway_redis_duration_seconds_count "), 6.0);
    assert_eq!(a.metric("gateway_ratelimit_fallback_total "), 0.0);
}

fn assert_keys_are_bounded(keys: &[(String, i64)]) {
    assert!(!keys.is_empty());
    for (k, ttl) in keys {
        assert!(k.starts_with("test-gw:"), "{k}");
        assert!(*ttl > 0, "{k} has no expiry ({ttl})");
    }
}

#[tokio::test]
async fn two_gateways_share_one_key_quota() {
    let server = RedisServer::tcp();
    two_gateways_share(Target::Single(server.url()), || server.calls("evalsha")).await;
    let keys = server.keys_with_ttl();
    assert_keys_are_bounded(&keys);
    assert_eq!(
        keys.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["test-gw:{t:acme}:k:ci:q10p3600000000000b10"]
    );
}

#[tokio::test]
async fn two_gateways_share_over_a_unix_socket() {
    let server = RedisServer::unix();
    two_gateways_share(Target::Single(server.url()), || server.calls("evalsha")).await;
}

/// Requests that arrive while script calls are in flight go to Redis
/// together in the next call, and the script decides them in order: 40
/// requests on two keys (burst 10 each) in at most three calls, 10 allowed
/// per key with the countdown of one limiter.
#[tokio::test]
async fn concurrent_requests_share_script_calls() {
    let server = RedisServer::tcp();
    let gw = Gateway::start(Target::Single(server.url()), Duration::from_secs(10));
    let q = quota(10, HOUR, 10);
    // Connected, script loaded.
    check(&gw.shared, &key_only("acme", "warm-up", q)).await;
    let before = server.calls("evalsha");
    // Redis holds every command for a second: the first call waits in it,
    // every other request queues behind it.
    server.cli(&["CLIENT", "PAUSE", "1000"]);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..40 {
        let shared = gw.shared.clone();
        let key = if i % 2 == 0 { "ci" } else { "ops" };
        requests.spawn(async move {
            let c = check(&shared, &key_only("acme", key, q)).await;
            (key, c.key.expect("key checked"))
        });
    }
    let answers = requests.join_all().await;
    // Two calls in flight at most: the first (stuck in Redis), maybe a
    // second as the requests arrive, then everyone else together.
    let calls = server.calls("evalsha") - before;
    assert!(
        (1..=3).contains(&calls),
        "{calls} script calls for 40 requests"
    );
    assert_eq!(
        gw.metric("gateway_redis_duration_seconds_count "),
        1.0 + calls as f64
    );
    for key in ["ci", "ops"] {
        let mut remaining: Vec<u32> = answers
            .iter()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, d)| match d {
                Decision::Allowed { remaining, .. } => Some(*remaining),
                Decision::Denied { .. } => None,
            })
            .collect();
        remaining.sort_unstable();
        assert_eq!(remaining, (0..10).collect::<Vec<_>>(), "{key}");
    }
    // A call reads each key once and writes it once at its end: what it
    // stored is what its last request saw. Another gateway's next request
    // for either key is refused by Redis (ten cells taken, not one).
    let other = Gateway::start(Target::Single(server.url()), TEST_TIMEOUT);
    for key in ["ci", "ops"] {
        let c = check(&other.shared, &key_only("acme", key, q)).await;
        assert!(c.at.is_some(), "asked Redis");
        assert!(!c.key.expect("key").is_allowed(), "{key}");
    }
}

/// Failures from one client in one script call count one after the other:
/// the one that trips the brake is seen by the rest of the call, a key
/// check from the same client included.
#[tokio::test]
async fn failures_in_one_call_trip_the_brake_once() {
    let server = RedisServer::tcp();
    let gw = Gateway::start(Target::Single(server.url()), Duration::from_secs(10));
    let brake = quota(3, HOUR, 3);
    let ip: IpAddr = "192.0.2.7".parse().expect("ip");
    let limits = RequestLimits {
        brake: Some((ip, brake)),
        ..key_only("acme", "ci", brake)
    };
    check(&gw.shared, &key_only("acme", "warm-up", brake)).await;
    let before = server.calls("evalsha");
    server.cli(&["CLIENT", "PAUSE", "1000"]);
    let mut failures = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let shared = gw.shared.clone();
        failures.spawn(async move {
            match shared.record_auth_failure("acme", ip, brake).await {
                Answer::Shared(blocked) => blocked,
                Answer::Unavailable => panic!("Redis unavailable"),
            }
        });
    }
    // Queued after the failures (tasks start in order): in the same call
    // as the last of them, behind the one that trips the brake.
    let shared = gw.shared.clone();
    let late_check = tokio::spawn(async move { check(&shared, &limits).await });
    let blocked = failures.join_all().await;
    let late_check = late_check.await.expect("check task");
    let calls = server.calls("evalsha") - before;
    assert!(calls <= 3, "{calls} calls for 9 requests");
    assert_eq!(
        blocked.iter().filter(|b| b.is_none()).count(),
        3,
        "three failures allowed, the rest braked: {blocked:?}"
    );
    assert!(late_check.braked.is_some(), "{late_check:?}");
    assert!(late_check.at.is_some(), "braked by Redis, not by memory");
    // The block is in Redis: another gateway's request is braked.
    let other = Gateway::start(Target::Single(server.url()), TEST_TIMEOUT);
    let c = check(&other.shared, &limits).await;
    assert!(c.braked.is_some(), "{c:?}");
}

/// A Redis that holds every command (as a stuck or overloaded one does):
/// each request is answered within `timeout` of its arrival, including
/// the ones that queued behind a call already in flight.
#[tokio::test]
async fn a_stuck_redis_costs_each_request_at_most_the_timeout() {
    let server = RedisServer::tcp();
    let timeout = Duration::from_millis(200);
    let gw = Gateway::start(Target::Single(server.url()), timeout);
    let q = quota(10, HOUR, 10);
    check(&gw.shared, &key_only("acme", "warm-up", q)).await;
    server.cli(&["CLIENT", "PAUSE", "4000"]);
    let mut requests = tokio::task::JoinSet::new();
    for wave in 0..3u64 {
        for i in 0..5 {
            let shared = gw.shared.clone();
            requests.spawn(async move {
                // Waves 1 and 2 arrive while wave 0's call is in flight.
                tokio::time::sleep(Duration::from_millis(70 * wave)).await;
                let started = Instant::now();
                let key = format!("k{i}");
                let answer = shared.check_request(&key_only("acme", &key, q)).await;
                (answer, started.elapsed())
            });
        }
    }
    for (answer, waited) in requests.join_all().await {
        assert_eq!(answer, Answer::Unavailable);
        assert!(
            waited < timeout + Duration::from_millis(700),
            "waited {waited:?} for a Redis that holds commands 4 s"
        );
    }
    assert_eq!(gw.metric("gateway_ratelimit_fallback_total "), 15.0);
    // Failed calls are counted, not the requests they carried.
    let errors = gw.metric("gateway_redis_errors_total{kind=\"timeout\"} ");
    assert!((1.0..15.0).contains(&errors), "{errors} timeouts");
}

/// A call carries an old request and a fresh one: the old one gets "no
/// answer" at its deadline, and the call keeps waiting for the fresh one
/// (an old request in a batch must not fail the others with it).
#[tokio::test]
async fn a_late_request_does_not_fail_its_batch() {
    let server = RedisServer::tcp();
    let timeout = Duration::from_secs(3);
    let gw = Gateway::start(Target::Single(server.url()), timeout);
    let q = quota(10, HOUR, 10);
    check(&gw.shared, &key_only("acme", "warm-up", q)).await;
    // Redis holds every command for 4.3 s. The timeline (s): 0 and 0.15 two
    // requests, each in its own call, fill both calls in flight (deadlines
    // 3, 3.15); 0.6 "old" queues (deadline 3.6); 2 "fresh" queues (5); 3
    // the first call gives up and old and fresh go out in one call; 3.6
    // old's deadline; 4.3 Redis answers, before fresh's deadline. The waits
    // age requests: time is the feature.
    server.cli(&["CLIENT", "PAUSE", "4300"]);
    let mut requests = tokio::task::JoinSet::new();
    for (name, delay_ms) in [("a1", 0), ("a2", 150), ("old", 600), ("fresh", 2000)] {
        let shared = gw.shared.clone();
        requests.spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let started = Instant::now();
            let answer = shared.check_request(&key_only("acme", name, q)).await;
            (name, answer, started.elapsed())
        });
    }
    for (name, answer, waited) in requests.join_all().await {
        assert!(
            waited <= timeout + Duration::from_millis(500),
            "{name} waited {waited:?}"
        );
        match name {
            "fresh" => {
                let Answer::Shared(c) = answer else {
                    panic!("fresh request failed with the old one ({waited:?})")
                };
                assert!(c.key.expect("key").is_allowed());
            }
            _ => assert_eq!(answer, Answer::Unavailable, "{name}"),
        }
    }
    // Two calls timed out (not three requests); Redis stays up.
    assert_eq!(
        gw.metric("gateway_redis_errors_total{kind=\"timeout\"} "),
        2.0
    );
    assert_eq!(gw.metric("gateway_redis_up "), 1.0);
    assert_eq!(gw.metric("gateway_ratelimit_fallback_total "), 3.0);
}

#[tokio::test]
async fn redis_cluster_shares_key_tenant_and_brake() {
    let cluster = RedisCluster::start();
    let target = Target::Cluster(cluster.urls());
    two_gateways_share(target.clone(), || cluster.calls("evalsha")).await;

    // Key, tenant and brake keys of one request in one script call: they
    // must share a slot, for many tenants spread over the three masters.
    let a = Gateway::start(target.clone(), TEST_TIMEOUT);
    let b = Gateway::start(target, TEST_TIMEOUT);
    let ip: IpAddr = "192.0.2.7".parse().expect("ip");
    let brake = quota(2, HOUR, 2);
    for t in 0..12 {
        let tenant = format!("tenant-{t}");
        let limits = RequestLimits {
            tenant: &tenant,
            key: Some(("k", quota(5, HOUR, 5))),
            tenant_quota: Some(quota(3, HOUR, 3)),
            brake: Some((ip, brake)),
        };
        let mut tenant_allowed = 0;
        for i in 0..4 {
            let gw = if i % 2 == 0 { &a } else { &b };
            let c = check(&gw.shared, &limits).await;
            assert!(c.key.expect("key").is_allowed());
            if c.tenant.expect("tenant").is_allowed() {
                tenant_allowed += 1;
            }
        }
        assert_eq!(tenant_allowed, 3, "{tenant}");
    }
    // The brake, kept per tenant and client address in cluster mode.
    for _ in 0..2 {
        assert_eq!(
            a.shared.record_auth_failure("tenant-0", ip, brake).await,
            Answer::Shared(None)
        );
    }
    let Answer::Shared(Some(block)) = b.shared.record_auth_failure("tenant-0", ip, brake).await
    else {
        panic!("third failure in the hour brakes")
    };
    assert!(block > Duration::from_secs(1700) && block <= Duration::from_secs(1800));
    let limits = RequestLimits {
        tenant: "tenant-0",
        key: Some(("k", quota(5, HOUR, 5))),
        tenant_quota: None,
        brake: Some((ip, brake)),
    };
    let c = check(&a.shared, &limits).await;
    assert!(c.braked.is_some() && c.key.is_none(), "{c:?}");

    // Concurrent requests of many tenants: one script call per slot, never
    // keys of two slots in one (Redis would refuse it with CROSSSLOT).
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..48 {
        let shared = a.shared.clone();
        requests.spawn(async move {
            let tenant = format!("busy-{}", i % 8);
            let limits = RequestLimits {
                tenant: &tenant,
                key: Some(("k", quota(100, HOUR, 100))),
                tenant_quota: Some(quota(4, HOUR, 4)),
                brake: Some((ip, brake)),
            };
            let c = check(&shared, &limits).await;
            (tenant, c.tenant.expect("tenant checked").is_allowed())
        });
    }
    let answers = requests.join_all().await;
    for t in 0..8 {
        let tenant = format!("busy-{t}");
        let allowed = answers.iter().filter(|(n, ok)| *n == tenant && *ok).count();
        assert_eq!(allowed, 4, "{tenant}");
    }
    assert_keys_are_bounded(&cluster.keys_with_ttl());
}

#[tokio::test]
async fn decisions_equal_the_local_limiter() {
    let server = RedisServer::tcp();
    let gw = Gateway::start(Target::Single(server.url()), TEST_TIMEOUT);
    // Intervals that are not whole microseconds (1s/3, 1s/7), bursts > 1.
    let key_q = quota(21, Duration::from_secs(1), 3);
    let tenant_q = quota(14, Duration::from_secs(2), 4);
    let limits = RequestLimits {
        tenant: "acme",
        key: Some(("ci", key_q)),
        tenant_quota: Some(tenant_q),
        brake: None,
    };
    let clock = FakeRelativeClock::default();
    // The gateway's own limiter, on a clock that follows Redis's.
    let key_l = Limiter::with_clock(key_q, clock.clone());
    let tenant_l = Limiter::with_clock(tenant_q, clock.clone());
    let (mut base, mut clock_at) = (None, Duration::ZERO);
    let (mut allowed, mut key_denied, mut tenant_denied, mut remembered) = (0, 0, 0, 0);
    let mut seed = 0x2545_f491_u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let c = check(&gw.shared, &limits).await;
        let Some(at) = c.at else {
            // Answered from local memory of a refusal: the Redis state (and
            // governor's, which a refusal does not change) stays as it was.
            assert!(!c.key.expect("key").is_allowed());
            remembered += 1;
            continue;
        };
        let since = at - *base.get_or_insert(at);
        clock.advance(since - clock_at);
        clock_at = since;
        let want_key = key_l.check();
        let want_tenant = want_key.is_allowed().then(|| tenant_l.check());
        assert_eq!(
            (c.key, c.tenant),
            (Some(want_key), want_tenant),
            "at {since:?}"
        );
        match (want_key.is_allowed(), want_tenant.map(|d| d.is_allowed())) {
            (false, _) => key_denied += 1,
            (true, Some(false)) => tenant_denied += 1,
            _ => allowed += 1,
        }
        // 0–40 ms apart: faster than both rates on average.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(seed % 40)).await;
    }
    assert!(
        allowed >= 5 && key_denied >= 2 && tenant_denied >= 2,
        "allowed {allowed}, key denied {key_denied}, tenant denied {tenant_denied}, remembered {remembered}"
    );
}

/// A week-long quota: backlogs and waits of 10^14 ns and more, which Lua
/// would print in exponent form, come back exact (not as a reply the
/// gateway cannot read, which would make Redis look down).
#[tokio::test]
async fn week_long_quotas_are_exact() {
    let server = RedisServer::tcp();
    let gw = Gateway::start(Target::Single(server.url()), TEST_TIMEOUT);
    let week = Duration::from_secs(7 * 24 * 3600);
    let q = quota(1, week, 2);
    let limits = key_only("acme", "weekly", q);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let c = check(&gw.shared, &limits).await;
        assert!(c.at.is_some(), "answered by Redis");
        seen.push(c.key.expect("key checked"));
    }
    let first_reset = 604_800;
    assert_eq!(
        &seen[..2],
        &[
            Decision::Allowed {
                remaining: 1,
                reset: first_reset
            },
            Decision::Allowed {
                remaining: 0,
                reset: 2 * first_reset
            },
        ],
        "the second saw a backlog of one week (6.048e14 ns)"
    );
    let Decision::Denied { retry_after, .. } = seen[2] else {
        panic!("third allowed: {:?}", seen[2]);
    };
    assert!(
        retry_after <= week && retry_after > week - Duration::from_secs(60),
        "{retry_after:?}"
    );
    assert_eq!(gw.metric("gateway_ratelimit_fallback_total "), 0.0);
    assert_eq!(gw.metric("gateway_redis_up "), 1.0);
}

/// A backlog past 2^63 ns (a quota whose tau is larger still) is capped,
/// not wrapped into a negative number (which reads as a refusal); a value
/// the script did not write (Lua reads "inf", "nan" and fractions as
/// numbers) counts as no state, not as an endless backlog.
#[tokio::test]
async fn huge_and_foreign_stored_values_are_safe() {
    let server = RedisServer::tcp();
    let gw = Gateway::start(Target::Single(server.url()), TEST_TIMEOUT);
    // t = 1 h, tau = 1 h × 2,999,999 ≈ 1.08e19 ns.
    let q = quota(1, HOUR, 3_000_000);
    let time = server.cli(&["TIME"]);
    let now_s: u64 = time
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("TIME");
    // Stored: now + 9.3e18 ns, as the script writes instants.
    let stored = format!("{}000000000", now_s + 9_300_000_000);
    server.cli(&[
        "SET",
        "test-gw:{t:acme}:k:big:q1p3600000000000b3000000",
        &stored,
        "EX",
        "600",
    ]);
    let c = check(&gw.shared, &key_only("acme", "big", q)).await;
    assert!(c.at.is_some(), "answered by Redis");
    assert!(
        c.key.expect("key").is_allowed(),
        "a 9.3e18 ns backlog is below tau: {c:?}"
    );
    let small = quota(10, HOUR, 10);
    // A second from now plus 1.5 ns: read as is, a fractional backlog.
    let fraction = format!("{}0000001.5", now_s + 1);
    for (key, junk) in [
        ("inf", "inf000000000"),
        ("nan", "nan000000000"),
        ("half", fraction.as_str()),
    ] {
        let name = format!("test-gw:{{t:acme}}:k:{key}:q10p3600000000000b10");
        server.cli(&["SET", &name, junk, "EX", "600"]);
        let c = check(&gw.shared, &key_only("acme", key, small)).await;
        assert_eq!(
            c.key,
            Some(Decision::Allowed {
                remaining: 9,
                reset: 360
            }),
            "{junk}"
        );
    }
}

#[tokio::test]
async fn brake_and_anonymous_budget_are_shared() {
    let server = RedisServer::tcp();
    let a = Gateway::start(Target::Single(server.url()), TEST_TIMEOUT);
    let b = Gateway::start(Target::Single(server.url()), TEST_TIMEOUT);
    // Two addresses of one IPv6 /64 are one client.
    let ip1: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
    let ip2: IpAddr = "2001:db8:1:2::ffff".parse().expect("ip");
    let brake = quota(3, HOUR, 3);
    for (gw, ip) in [(&a, ip1), (&b, ip2), (&a, ip2)] {
        assert_eq!(
            gw.shared.record_auth_failure("acme", ip, brake).await,
            Answer::Shared(None)
        );
    }
    let Answer::Shared(Some(block)) = b.shared.record_auth_failure("acme", ip1, brake).await else {
        panic!("the fourth failure brakes")
    };
    assert!(block > Duration::from_secs(1100) && block <= Duration::from_secs(1200));
    // Outside cluster mode the brake is per address, whatever the tenant.
    let limits = RequestLimits {
        tenant: "other",
        key: Some(("k", quota(5, HOUR, 5))),
        tenant_quota: None,
        brake: Some((ip2, brake)),
    };
    let c = check(&a.shared, &limits).await;
    assert!(c.braked.is_some() && c.key.is_none(), "{c:?}");
    assert!(a.shared.known_blocked("acme", ip1, brake).is_some());
    let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
    assert!(
        check(
            &a.shared,
            &RequestLimits {
                brake: Some((other, brake)),
                ..limits
            }
        )
        .await
        .braked
        .is_none()
    );

    let anon = quota(5, HOUR, 5);
    let mut allowed = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        match gw.shared.check_anonymous(ip1, anon).await {
            Answer::Shared(d) if d.is_allowed() => allowed += 1,
            Answer::Shared(_) => {}
            Answer::Unavailable => panic!("unavailable"),
        }
    }
    assert_eq!(allowed, 5);
    assert_keys_are_bounded(&server.keys_with_ttl());
}

#[tokio::test]
async fn a_reload_gets_no_fresh_burst_a_changed_quota_does() {
    let server = RedisServer::tcp();
    let target = Target::Single(server.url());
    let q = quota(3, HOUR, 3);
    let before = Gateway::start(target.clone(), TEST_TIMEOUT);
    for _ in 0..3 {
        assert!(
            check(&before.shared, &key_only("acme", "ci", q))
                .await
                .key
                .expect("key")
                .is_allowed()
        );
    }
    drop(before);
    // What a reload (or a restart) builds: a new instance, same quota.
    let after = Gateway::start(target, TEST_TIMEOUT);
    let c = check(&after.shared, &key_only("acme", "ci", q)).await;
    assert!(!c.key.expect("key").is_allowed());
    assert!(c.at.is_some(), "Redis decided");
    let changed = quota(4, HOUR, 4);
    let c = check(&after.shared, &key_only("acme", "ci", changed)).await;
    assert_eq!(
        c.key,
        Some(Decision::Allowed {
            remaining: 3,
            reset: 900
        })
    );
}

#[tokio::test]
async fn redis_down_falls_back_fast_then_shares_again() {
    let mut server = RedisServer::tcp();
    let target = Target::Single(server.url());
    let timeout = Duration::from_millis(100);
    let a = Gateway::start(target.clone(), timeout);
    let b = Gateway::start(target, timeout);
    let q = quota(10, HOUR, 10);
    let limits = key_only("acme", "ci", q);
    check(&a.shared, &limits).await;
    check(&b.shared, &limits).await;
    assert_eq!(a.shared.on_unavailable(), OnUnavailable::Local);

    server.kill();
    // Each call gives up within the timeout (generous bound) until three
    // in a row have failed; then Redis is not asked per request.
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(a.shared.check_request(&limits).await, Answer::Unavailable);
        assert!(started.elapsed() < timeout + Duration::from_secs(1));
    }
    assert!(!a.shared.is_up());
    assert_eq!(a.metric("gateway_redis_up "), 0.0);
    let calls = a.metric("gateway_redis_duration_seconds_count ");
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(a.shared.check_request(&limits).await, Answer::Unavailable);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no waiting while down"
    );
    assert_eq!(a.metric("gateway_redis_duration_seconds_count "), calls);
    assert_eq!(a.metric("gateway_ratelimit_fallback_total "), 53.0);
    let text = a.metrics_text();
    assert!(
        text.contains("gateway_redis_errors_total{kind=\"connect\"}")
            || text.contains("gateway_redis_errors_total{kind=\"timeout\"}"),
        "{text}"
    );

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !a.shared.is_up() {
        assert!(Instant::now() < deadline, "Redis not seen up again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.metric("gateway_redis_up "), 1.0);
    // Shared again (the restarted Redis kept nothing: a fresh quota of 10
    // for the fleet). b may still have to notice the restart itself.
    let mut allowed = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    while i < 14 {
        let gw = if i % 2 == 0 { &a } else { &b };
        match gw.shared.check_request(&limits).await {
            Answer::Shared(c) => {
                allowed += u32::from(c.key.expect("key").is_allowed());
                i += 1;
            }
            Answer::Unavailable => {
                assert!(Instant::now() < deadline, "b does not share again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(allowed, 10);
}

#[tokio::test]
async fn unreachable_at_start_is_down_until_it_answers() {
    let mut server = RedisServer::tcp();
    server.kill();
    let timeout = Duration::from_millis(100);
    let gw = Gateway::start(Target::Single(server.url()), timeout);
    let limits = key_only("acme", "ci", quota(10, HOUR, 10));
    // The warm-up probe or the first calls find it down; no call waits
    // much longer than the timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.shared.is_up() {
        assert!(Instant::now() < deadline, "never marked down");
        let started = Instant::now();
        assert_eq!(gw.shared.check_request(&limits).await, Answer::Unavailable);
        assert!(started.elapsed() < timeout + Duration::from_secs(1));
    }
    assert_eq!(gw.shared.check_request(&limits).await, Answer::Unavailable);
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw.shared.is_up() {
        assert!(Instant::now() < deadline, "Redis not seen up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = check(&gw.shared, &limits).await;
    assert!(c.key.expect("key").is_allowed() && c.at.is_some());
}
