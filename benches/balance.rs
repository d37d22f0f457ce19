//! Cost of choosing a server: `ServerPool::pick` + a success report + the
//! guard's drop, for pools of 1, 2 and 4 healthy servers, and for 4 with
//! one down. `cargo bench --bench balance`. Prints numbers, asserts nothing.

use criterion::{Criterion, criterion_group, criterion_main};
use twenty_gateway::balance::{Outcome, PoolSpec, Registry, ServerUrl};

fn pool_of(registry: &Registry, n: usize) -> std::sync::Arc<twenty_gateway::balance::ServerPool> {
    let spec = PoolSpec {
        servers: (0..n)
            .map(|i| ServerUrl::parse(&format!("http://10.0.0.{i}:3000")))
            .collect::<Result<_, _>>()
            .expect("bench URLs"),
        health_check: None,
        tls: None,
    };
    let mut build = registry.build();
    let pool = build.pool("core", &spec).expect("bench pool");
    build.commit();
    pool
}

fn pick(c: &mut Criterion) {
    for n in [1, 2, 4] {
        let registry = Registry::default();
        let pool = pool_of(&registry, n);
        c.bench_function(&format!("pick_report_drop/{n}_servers"), |b| {
            b.iter(|| {
                let p = pool.pick();
                p.report(Outcome::Success);
                p
            })
        });
    }
    let registry = Registry::default();
    let pool = pool_of(&registry, 4);
    for _ in 0..3 {
        pool.servers()[0].report(Outcome::ConnectFailure);
    }
    c.bench_function("pick_report_drop/4_servers_1_down", |b| {
        b.iter(|| {
            let p = pool.pick();
            p.report(Outcome::Success);
            p
        })
    });
}

criterion_group!(benches, pick);
criterion_main!(benches);
