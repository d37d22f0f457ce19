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

    c.bench_function("scope/classify 3 KiB (parse, cache miss)", |b| {
        b.iter(|| document::classify(black_box(&query)))
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
