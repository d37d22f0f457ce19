//! The per-request pure functions, in request order: target check, host →
//! tenant, path → route, key lookup (SHA-256 + map, 100,000 keys), limiter
//! check, request header rewriting. `cargo bench --bench hot_path`.

use std::fmt::Write;
use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};
use sha2::{Digest, Sha256};
use twenty_gateway::auth::authenticate;
use twenty_gateway::config::{self, Rate};
use twenty_gateway::host::normalize_host;
use twenty_gateway::ratelimit::Limiter;
use twenty_gateway::target::check_path;
use twenty_gateway::upstream::{Forwarding, rewrite_request};

fn config_with_keys(n: usize) -> config::Config {
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/certs");
    let mut y = format!(
        "listen: {{ https: 127.0.0.1:0 }}\n\
         tls: {{ certificates: [ {{ cert: {certs}/localhost.crt, key: {certs}/localhost.key }} ] }}\n\
         base_domains: [localhost]\n\
         upstreams: {{ core: http://127.0.0.1:3000, metadata: http://127.0.0.1:3001 }}\n\
         tenants:\n"
    );
    for t in 0..100 {
        let _ = writeln!(
            y,
            "  - {{ name: t{t}, subdomain: t{t}, domains: [crm.t{t}.test] }}"
        );
    }
    y.push_str("keys:\n");
    for k in 0..n {
        let hash = hex::encode(Sha256::digest(format!("token-{k}")));
        let _ = writeln!(
            y,
            "  - {{ id: key-{k}, tenant: t{}, sha256: {hash} }}",
            k % 100
        );
    }
    config::parse(&y, std::path::Path::new("bench.yaml")).expect("valid bench config")
}

fn bench(c: &mut Criterion) {
    let cfg = config_with_keys(100_000);

    c.bench_function("target/check_path", |b| {
        b.iter(|| check_path(black_box("/rest/metadata/objects/1234-abcd")))
    });
    c.bench_function("host/normalize+lookup subdomain", |b| {
        b.iter(|| {
            let h = normalize_host(black_box("T42.localhost:8443")).unwrap_or_default();
            cfg.hosts.lookup(&h)
        })
    });
    c.bench_function("host/normalize+lookup custom domain", |b| {
        b.iter(|| {
            let h = normalize_host(black_box("crm.t42.test")).unwrap_or_default();
            cfg.hosts.lookup(&h)
        })
    });
    c.bench_function("route/lookup", |b| {
        b.iter(|| cfg.routes.lookup(black_box("/rest/metadata/objects")))
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer token-4242"),
    );
    let tenant = 42; // key-4242 belongs to t42
    c.bench_function("auth/sha256+lookup (100k keys)", |b| {
        b.iter(|| authenticate(&cfg.keys, black_box(&headers), tenant, SystemTime::now()).is_ok())
    });
    let limiter = Limiter::new(Rate {
        requests: NonZeroU32::new(100_000_000).unwrap_or(NonZeroU32::MIN),
        per: Duration::from_secs(1),
        burst: NonZeroU32::new(100_000_000).unwrap_or(NonZeroU32::MIN),
    });
    c.bench_function("ratelimit/check", |b| b.iter(|| limiter.check()));

    let host = HeaderValue::from_static("acme.localhost");
    let rid = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let client_ip: IpAddr = "192.0.2.7".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let client_ip_header = twenty_gateway::proxy::peer_header(client_ip);
    c.bench_function("upstream/rewrite_request", |b| {
        b.iter_batched(
            || {
                let (parts, ()) = Request::builder()
                    .uri("/rest/people?limit=10")
                    .header("host", "acme.localhost")
                    .header("authorization", "Bearer token-4242")
                    .header("user-agent", "bench/1.0")
                    .header("accept", "application/json")
                    .header("connection", "keep-alive")
                    .body(())
                    .unwrap_or_default()
                    .into_parts();
                parts
            },
            |mut parts| {
                let _ = rewrite_request(
                    &mut parts,
                    &Forwarding {
                        client_ip,
                        client_ip_header: Some(&client_ip_header),
                        proto: "https",
                        host: &host,
                        request_id: &rid,
                        tenant: &cfg.tenants[0].header,
                        key_id: cfg.keys.iter().next().map(|k| &k.header),
                        authorization: None,
                        websocket: false,
                    },
                );
                parts
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
