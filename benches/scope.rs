//! What a `scope: read` key's GraphQL request costs (`cargo bench --bench
//! scope`): a ~3 KiB Twenty-style query, parsed (a cache miss) against the
//! cached verdict (SHA-256 + map), and the whole body check (JSON walk +
//! verdict) both ways; and the head check of an unscoped key, which is all
//! such a key pays. Buffering the body is not included (it is a copy of at
//! most 64 KiB, usually none: one frame is kept as is).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http::request::Parts;
use twenty_gateway::scope::{
    ApiSet, KeyScope, RouteKind, Scope, VerdictCache, check_graphql, document,
};

/// A query shaped like the ones Twenty's front end sends: variables,
/// fragments, aliases, directives, connection edges.
fn query_3k() -> String {
    let mut q = String::from(
        "query FindManyPeople($filter: PersonFilterInput, $orderBy: [PersonOrderByInput], \
         $lastCursor: String, $limit: Int, $withCompany: Boolean = true) {\n\
         people(filter: $filter, orderBy: $orderBy, first: $limit, after: $lastCursor) {\n\
           edges {\n  node {\n    ...PersonFields\n    company @include(if: $withCompany) { ...CompanyFields }\n\
             favorites { edges { node { id position workspaceMemberId } } }\n\
             attachments { edges { node { id name fullPath type createdAt } } }\n  }\n  cursor\n}\n\
           pageInfo { hasNextPage hasPreviousPage startCursor endCursor }\n  totalCount\n}\n}\n",
    );
    q.push_str(
        "fragment PersonFields on Person {\n  __typename\n  id\n  createdAt\n  updatedAt\n  deletedAt\n\
         name { firstName lastName }\n  emails { primaryEmail additionalEmails }\n\
         phones { primaryPhoneNumber primaryPhoneCountryCode primaryPhoneCallingCode additionalPhones }\n\
         linkedinLink { primaryLinkUrl primaryLinkLabel secondaryLinks }\n\
         xLink { primaryLinkUrl primaryLinkLabel secondaryLinks }\n  jobTitle\n  city\n  avatarUrl\n  position\n\
         createdBy { source workspaceMemberId name context }\n  companyId\n}\n",
    );
    q.push_str(
        "fragment CompanyFields on Company {\n  __typename\n  id\n  name\n\
         domainName { primaryLinkUrl primaryLinkLabel secondaryLinks }\n  employees\n\
         annualRecurringRevenue { amountMicros currencyCode }\n  idealCustomerProfile\n\
         address { addressStreet1 addressStreet2 addressCity addressState addressCountry addressPostcode addressLat addressLng }\n\
         accountOwner { id name { firstName lastName } userEmail avatarUrl colorScheme locale }\n\
         linkedinLink { primaryLinkUrl primaryLinkLabel secondaryLinks }\n  position\n  createdAt\n  updatedAt\n}\n",
    );
    // Pad with more aliased selections to ~3 KiB, as big pages do.
    let mut i = 0;
    while q.len() < 3 * 1024 {
        q.push_str(&format!(
            "query Extra{i} {{ c{i}: companies(first: 5) {{ edges {{ node {{ id name employees }} }} }} }}\n"
        ));
        i += 1;
    }
    q
}

/// A document near the 64 KiB limit (the worst case a miss can cost).
fn query_60k() -> String {
    let mut q = query_3k();
    let mut i = 1000;
    while q.len() < 60 * 1024 {
        q.push_str(&format!(
            "query Extra{i} {{ c{i}: companies(first: 5) {{ edges {{ node {{ id name employees }} }} }} }}\n"
        ));
        i += 1;
    }
    q
}

/// CPU time this thread has run, from the scheduler (ns); wall-clock
/// numbers on a shared machine mostly measure the neighbours.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Mean CPU time of `f` over `n` calls, printed next to criterion's wall
/// times.
fn cpu_per_call(name: &str, n: u32, mut f: impl FnMut()) {
    f();
    let (Some(start), t) = (thread_cpu_ns(), std::time::Instant::now()) else {
        return;
    };
    for _ in 0..n {
        f();
    }
    let wall = t.elapsed().as_nanos() as f64 / f64::from(n);
    if let Some(end) = thread_cpu_ns() {
        let cpu = (end - start) as f64 / f64::from(n);
        println!(
            "cpu {name}: {:.2} µs per call (wall {:.2} µs)",
            cpu / 1000.0,
            wall / 1000.0
        );
    }
}

fn post_parts() -> Parts {
    Request::post("/graphql")
        .header("content-type", "application/json")
        .body(())
        .map(|r| r.into_parts().0)
        .unwrap_or_else(|_| Request::new(()).into_parts().0)
}

fn bench(c: &mut Criterion) {
    let query = query_3k();
    let body = serde_json::to_vec(&serde_json::json!({
        "query": query,
        "operationName": "FindManyPeople",
        "variables": { "limit": 60, "filter": { "name": { "firstName": { "ilike": "%a%" } } } },
    }))
    .unwrap_or_default();
    assert_eq!(
        document::classify(&query),
        twenty_gateway::scope::DocVerdict::ReadOnly
    );
    println!("query: {} bytes; body: {} bytes", query.len(), body.len());
    let large = query_60k();
    assert_eq!(
        document::classify(&large),
        twenty_gateway::scope::DocVerdict::ReadOnly
    );
    {
        let parts = post_parts();
        let warm = VerdictCache::default();
        let cold = VerdictCache::new(1);
        let other = format!("{query} ");
        let other_body =
            serde_json::to_vec(&serde_json::json!({ "query": other })).unwrap_or_default();
        let read = KeyScope {
            scope: Scope::Read,
            apis: ApiSet::ALL,
        };
        let mut flip = false;
        cpu_per_call("classify 3 KiB (parse)", 2000, || {
            black_box(document::classify(black_box(&query)));
        });
        cpu_per_call(
            &format!("classify {} KiB (parse)", large.len() / 1024),
            100,
            || {
                black_box(document::classify(black_box(&large)));
            },
        );
        cpu_per_call("verdict 3 KiB (cached)", 20_000, || {
            black_box(warm.verdict(black_box(&query)));
        });
        cpu_per_call(
            "check_head + check_graphql POST 3 KiB (cached)",
            20_000,
            || {
                let _ = black_box(read.check_head("core", RouteKind::GraphQl, &parts));
                let _ = black_box(check_graphql(&warm, &parts, black_box(&body)));
            },
        );
        cpu_per_call("check_head + check_graphql POST 3 KiB (miss)", 2000, || {
            flip = !flip;
            let b = if flip { &body } else { &other_body };
            let _ = black_box(check_graphql(&cold, &parts, black_box(b)));
        });
        cpu_per_call("check_head unscoped key", 1_000_000, || {
            let _ = black_box(KeyScope::default().check_head(
                black_box("core"),
                RouteKind::GraphQl,
                &parts,
            ));
        });
    }

    c.bench_function("scope/classify 3 KiB (parse, cache miss)", |b| {
        b.iter(|| document::classify(black_box(&query)))
    });
    c.bench_function("scope/classify 60 KiB (parse, cache miss)", |b| {
        b.iter(|| document::classify(black_box(&large)))
    });
    let cache = VerdictCache::default();
    c.bench_function("scope/verdict 3 KiB (cached)", |b| {
        b.iter(|| cache.verdict(black_box(&query)))
    });

    let parts = post_parts();
    c.bench_function("scope/check_graphql POST 3 KiB (cached)", |b| {
        b.iter(|| check_graphql(&cache, &parts, black_box(&body)))
    });
    // Capacity 1 and two documents taking turns: every call misses.
    let missing = VerdictCache::new(1);
    let other = serde_json::to_vec(&serde_json::json!({ "query": format!("{query} ") }))
        .unwrap_or_default();
    let mut flip = false;
    c.bench_function("scope/check_graphql POST 3 KiB (miss)", |b| {
        b.iter(|| {
            flip = !flip;
            check_graphql(&missing, &parts, if flip { &body } else { &other })
        })
    });

    let read = KeyScope {
        scope: Scope::Read,
        apis: ApiSet::ALL,
    };
    let unscoped = KeyScope::default();
    c.bench_function("scope/check_head unscoped key", |b| {
        b.iter(|| unscoped.check_head(black_box("core"), RouteKind::GraphQl, &parts))
    });
    c.bench_function("scope/check_head read key, GraphQL POST", |b| {
        b.iter(|| read.check_head(black_box("core"), RouteKind::GraphQl, &parts))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
