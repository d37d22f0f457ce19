//! Property tests of the read-only GraphQL check (`scope`):
//!
//! - no panic, whatever the bytes of a body, a query string or a document;
//! - a document holding a `mutation` operation is never allowed for a read
//!   key, whatever surrounds it (queries, subscriptions, fragments, aliases,
//!   directives, comments, strings, commas, BOMs, CR line ends) and
//!   whichever operation `operationName` names, through the JSON POST and
//!   the GET paths;
//! - the same documents without their mutations are allowed (so the
//!   generator really produces documents that parse).
//!
//! Failures are shrunk and persisted under `proptest-regressions/`.

use http::Request;
use http::request::Parts;
use proptest::prelude::*;
use twenty_gateway::error::Forbidden;
use twenty_gateway::scope::{
    DocVerdict, KeyScope, Next, Refusal, RouteKind, Scope, VerdictCache, check_graphql, document,
};

const READ: KeyScope = KeyScope {
    scope: Scope::Read,
    apis: twenty_gateway::scope::ApiSet::ALL,
};

fn pt_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/scope_fuzz.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

fn parts(method: &str, uri: &str) -> Option<Parts> {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(())
        .ok()?;
    Some(req.into_parts().0)
}

/// The read key's whole check of a JSON POST to /graphql.
fn check_post(cache: &VerdictCache, body: &[u8]) -> Result<(), Refusal> {
    let parts = parts("POST", "/graphql").expect("static request");
    assert_eq!(
        READ.check_head("core", RouteKind::GraphQl, &parts),
        Ok(Next::CheckBody)
    );
    check_graphql(cache, &parts, body)
}

/// The read key's whole check of a GET to /graphql with this query string
/// (None when `http` refuses the URI first).
fn check_get(cache: &VerdictCache, query_string: &str) -> Option<Result<(), Refusal>> {
    let parts = parts("GET", &format!("/graphql?{query_string}"))?;
    Some(
        READ.check_head("core", RouteKind::GraphQl, &parts)
            .and_then(|_| check_graphql(cache, &parts, b"")),
    )
}

// ---- a generator of GraphQL documents, token by token

/// What may stand between two tokens: GraphQL's ignored tokens.
fn sep() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            " ",
            " ",
            " ",
            "\n",
            "\t",
            ",",
            "\r\n",
            "\r",
            "\u{feff}",
            " # mutation { deleteAll }\n",
            "#{\"query\"\r",
            "# \"\"\" mutation\n",
        ]),
        1..3,
    )
    .prop_map(|v| v.concat())
}

fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a",
        "people",
        "mutation",
        "query",
        "subscription",
        "fragment",
        "on",
        "true",
        "deleteOne",
        "_x1",
    ])
}

/// Fragment names: any name but `on`.
fn fragment_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["F", "mutation", "query", "subscription", "fragment"])
}

// (`prop::sample::select` and `any::<bool>()` rather than `prop_oneof!` and
// `prop::option::of`: those cost ~50 µs a draw unoptimised.)

/// `x` or nothing.
fn maybe<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    (any::<bool>(), s).prop_map(|(b, v)| b.then_some(v))
}

fn tokens(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| (*s).to_owned()).collect()
}

fn value() -> impl Strategy<Value = Vec<String>> {
    prop::sample::select(vec![
        tokens(&["1"]),
        tokens(&["\"mutation { x }\""]),
        tokens(&["\"\\\" } mutation { x } \\\"\""]),
        tokens(&["\"\"\" \\\"\"\" mutation { x } \"\"\""]),
        tokens(&["$v"]),
        tokens(&["mutation"]),
        tokens(&["query"]),
        tokens(&["[", "1", "2", "]"]),
        tokens(&["{", "a", ":", "\"}\"", "}"]),
    ])
}

fn directives() -> impl Strategy<Value = Vec<String>> {
    (0..3u8, value()).prop_map(|(n, v)| match n {
        0 => vec![],
        1 => tokens(&["@live"]),
        _ => {
            let mut t = tokens(&["@include", "(", "if", ":"]);
            t.extend(v);
            t.push(")".into());
            t
        }
    })
}

/// `[alias:] name [(arg: value)] [directives]`
fn field_head() -> impl Strategy<Value = Vec<String>> {
    (
        maybe(name()),
        name(),
        maybe((name(), value())),
        directives(),
    )
        .prop_map(|(alias, n, arg, dirs)| {
            let mut t = Vec::new();
            if let Some(a) = alias {
                t.extend([a.to_owned(), ":".to_owned()]);
            }
            t.push(n.to_owned());
            if let Some((arg, v)) = arg {
                t.extend(["(".to_owned(), arg.to_owned(), ":".to_owned()]);
                t.extend(v);
                t.push(")".to_owned());
            }
            t.extend(dirs);
            t
        })
}

fn braces(inner: Vec<Vec<String>>) -> Vec<String> {
    let mut t = vec!["{".to_owned()];
    t.extend(inner.into_iter().flatten());
    t.push("}".to_owned());
    t
}

fn selection_set(depth: u32) -> BoxedStrategy<Vec<String>> {
    let spread = (fragment_name(), directives()).prop_map(|(f, d)| {
        let mut t = vec!["...".to_owned(), f.to_owned()];
        t.extend(d);
        t
    });
    if depth == 0 {
        return prop::collection::vec(prop_oneof![3 => field_head(), 1 => spread], 1..4)
            .prop_map(braces)
            .boxed();
    }
    let nested = (field_head(), selection_set(depth - 1)).prop_map(|(mut h, s)| {
        h.extend(s);
        h
    });
    let inline = (
        any::<bool>().prop_map(|on| if on { tokens(&["on", "Query"]) } else { vec![] }),
        directives(),
        selection_set(depth - 1),
    )
        .prop_map(|(on, d, s)| {
            let mut t = vec!["...".to_owned()];
            t.extend(on);
            t.extend(d);
            t.extend(s);
            t
        });
    prop::collection::vec(
        prop_oneof![3 => field_head(), 2 => nested, 1 => spread, 1 => inline],
        1..4,
    )
    .prop_map(braces)
    .boxed()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Query,
    Shorthand,
    Subscription,
    Fragment,
    Mutation,
}

/// One definition's tokens, and the operation name if it has one.
fn definition(kind: Kind) -> impl Strategy<Value = (Vec<String>, Option<&'static str>)> {
    (
        maybe(name()),
        fragment_name(),
        any::<bool>(),
        directives(),
        selection_set(2),
    )
        .prop_map(move |(op_name, frag, vars, dirs, set)| {
            let mut t = Vec::new();
            let keyword = match kind {
                Kind::Shorthand => {
                    return (set, None);
                }
                Kind::Fragment => {
                    t.extend(["fragment", frag, "on", "Query"].map(String::from));
                    t.extend(dirs);
                    t.extend(set);
                    return (t, None);
                }
                Kind::Query => "query",
                Kind::Subscription => "subscription",
                Kind::Mutation => "mutation",
            };
            t.push(keyword.to_owned());
            if let Some(n) = op_name {
                t.push(n.to_owned());
            }
            if vars {
                t.extend(["(", "$v", ":", "Int", "=", "1", ")"].map(String::from));
            }
            t.extend(dirs);
            t.extend(set);
            (t, op_name)
        })
}

fn any_definition(
    with_mutations: bool,
) -> BoxedStrategy<(Kind, Vec<String>, Option<&'static str>)> {
    let mut kinds = vec![
        Kind::Query,
        Kind::Shorthand,
        Kind::Subscription,
        Kind::Fragment,
    ];
    if with_mutations {
        kinds.push(Kind::Mutation);
    }
    prop::sample::select(kinds)
        .prop_flat_map(|k| definition(k).prop_map(move |(t, n)| (k, t, n)))
        .boxed()
}

/// Joins tokens with generated separators (there is always at least one).
///
/// apollo-parser 0.8 refuses a comma between an alias and its `:` and
/// right after `...`, which GraphQL allows (commas are ignored tokens):
/// such documents are refused (400), never let through, so the generator
/// leaves those commas out to keep its documents parseable.
fn join(tokens: &[String], seps: &[String]) -> String {
    let mut doc = String::new();
    let mut prev = "";
    for (i, t) in tokens.iter().enumerate() {
        let sep = &seps[i % seps.len()];
        if t == ":" || prev == "..." {
            doc.push_str(&sep.replace(',', " "));
        } else {
            doc.push_str(sep);
        }
        doc.push_str(t);
        prev = t;
    }
    doc.push_str(&seps[tokens.len() % seps.len()]);
    doc
}

/// A document with at least one mutation operation, an operation name of a
/// non-mutation operation in it (what `operationName` would name to hide
/// the mutation), and the same document without its mutations.
#[derive(Debug)]
struct Doc {
    with_mutation: String,
    decoy_name: Option<&'static str>,
    without_mutation: String,
    has_read_operation: bool,
}

fn doc() -> impl Strategy<Value = Doc> {
    (
        prop::collection::vec(any_definition(true), 0..4),
        definition(Kind::Mutation),
        any::<prop::sample::Index>(),
        prop::collection::vec(sep(), 1..8),
    )
        .prop_map(|(mut defs, (m, m_name), at, seps)| {
            let i = at.index(defs.len() + 1);
            defs.insert(i, (Kind::Mutation, m, m_name));
            let all: Vec<String> = defs.iter().flat_map(|(_, t, _)| t.clone()).collect();
            let reads: Vec<_> = defs
                .iter()
                .filter(|(k, _, _)| *k != Kind::Mutation)
                .collect();
            let rest: Vec<String> = reads.iter().flat_map(|(_, t, _)| t.clone()).collect();
            Doc {
                with_mutation: join(&all, &seps),
                decoy_name: reads.iter().find_map(|(_, _, n)| *n),
                without_mutation: join(&rest, &seps),
                has_read_operation: reads.iter().any(|(k, _, _)| *k != Kind::Fragment),
            }
        })
}

fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

proptest! {
    #![proptest_config(pt_config(500))]

    #[test]
    fn no_document_with_a_mutation_is_allowed(d in doc()) {
        let cache = VerdictCache::new(64);
        prop_assert_eq!(document::classify(&d.with_mutation), DocVerdict::Writes, "{:?}", d.with_mutation);

        let body = serde_json::json!({ "query": d.with_mutation, "operationName": d.decoy_name });
        let body = serde_json::to_vec(&body).expect("JSON");
        prop_assert_eq!(check_post(&cache, &body), Err(Refusal::Forbidden(Forbidden::Mutation)));

        let mut qs = format!("query={}", url_encode(&d.with_mutation));
        if let Some(n) = d.decoy_name {
            qs.push_str("&operationName=");
            qs.push_str(n);
        }
        prop_assert_eq!(check_get(&cache, &qs), Some(Err(Refusal::Forbidden(Forbidden::Mutation))));

        // The same document less its mutations is read-only (or, with no
        // operation left, not executable): the generator makes real documents.
        let want = if d.has_read_operation { DocVerdict::ReadOnly } else { DocVerdict::Invalid };
        prop_assert_eq!(document::classify(&d.without_mutation), want, "{:?}", d.without_mutation);
    }
}

proptest! {
    #![proptest_config(pt_config(1000))]

    #[test]
    fn arbitrary_body_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let cache = VerdictCache::new(64);
        let _ = check_post(&cache, &body);
    }

    #[test]
    fn json_shaped_body_never_panics(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                "{", "}", "[", "]", ",", ":",
                "\"query\"", "\"\\u0071uery\"", "\"variables\"",
                "\"{ a }\"", "\"mutation { x }\"", "null", "1e999",
                "\"\\ud800\"", " ",
            ]),
            0..40,
        )
    ) {
        let cache = VerdictCache::new(64);
        let _ = check_post(&cache, parts.concat().as_bytes());
    }

    #[test]
    fn arbitrary_query_string_never_panics(qs in "[a-zA-Z%0-9+&=;{}()\\[\\]?#$\"' ]{0,200}") {
        let cache = VerdictCache::new(64);
        let _ = check_get(&cache, &qs);
    }

    #[test]
    fn arbitrary_document_never_panics(doc in "\\PC{0,300}") {
        let _ = document::classify(&doc);
    }

    #[test]
    fn damaged_document_never_panics(
        d in doc(),
        cut in any::<prop::sample::Index>(),
        insert in prop::sample::select(vec!["{", "}", "\"", "\"\"\"", "\\", "#", "(", "$", "...", "@", "\u{0}", "é"]),
    ) {
        let s = &d.with_mutation;
        let mut at = cut.index(s.len() + 1);
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        let damaged = format!("{}{}{}", &s[..at], insert, &s[at..]);
        let _ = document::classify(&damaged);
        let _ = document::classify(&s[..at]);
    }
}
