//! The verdict table: every allowed and every refused case of SPEC "Scoped
//! keys", run through the head check, the bounded buffer and the body check
//! the way the pipeline runs them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use http_body_util::Full;

use super::*;

const READ: KeyScope = KeyScope {
    scope: Scope::Read,
    apis: ApiSet::ALL,
};
const WRITE: KeyScope = KeyScope {
    scope: Scope::Write,
    apis: ApiSet::ALL,
};
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

struct Case {
    name: String,
    key: KeyScope,
    method: &'static str,
    uri: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    want: Result<(), Refusal>,
}

fn case(
    name: &str,
    key: KeyScope,
    method: &'static str,
    uri: &str,
    headers: &[(&'static str, &'static str)],
    body: impl Into<Vec<u8>>,
    want: Result<(), Refusal>,
) -> Case {
    Case {
        name: name.to_owned(),
        key,
        method,
        uri: uri.to_owned(),
        headers: headers.to_vec(),
        body: body.into(),
        want,
    }
}

/// A read key's JSON POST to /graphql.
fn post(name: &str, body: &str, want: Result<(), Refusal>) -> Case {
    case(name, READ, "POST", "/graphql", JSON, body, want)
}

/// A read key's JSON POST of `{"query": <document>}`.
fn doc(name: &str, document: &str, want: Result<(), Refusal>) -> Case {
    let body = serde_json::json!({ "query": document }).to_string();
    post(name, &body, want)
}

/// A read key's GET to /graphql with this query string.
fn get(name: &str, query_string: &str, want: Result<(), Refusal>) -> Case {
    case(
        name,
        READ,
        "GET",
        &format!("/graphql?{query_string}"),
        &[],
        "",
        want,
    )
}

fn upstream_of(path: &str) -> &'static str {
    if path.starts_with("/metadata") || path.starts_with("/rest/metadata") {
        "metadata"
    } else {
        "core"
    }
}

/// What the pipeline does: head check, then (for CheckBody) buffer and
/// check the exact bytes.
async fn run(cache: &VerdictCache, c: &Case) -> Result<(), Refusal> {
    let mut b = Request::builder().method(c.method).uri(c.uri.as_str());
    for (k, v) in &c.headers {
        b = b.header(*k, *v);
    }
    let (parts, ()) = b.body(()).expect("test request").into_parts();
    let kind = RouteKind::for_path(parts.uri.path());
    match c
        .key
        .check_head(upstream_of(parts.uri.path()), kind, &parts)?
    {
        Next::Forward => Ok(()),
        Next::CheckBody => {
            let body = Full::new(Bytes::from(c.body.clone()));
            let bytes = buffer(body, MAX_BODY).await.map_err(|e| match e {
                BufferError::TooLarge => Refusal::TooLarge,
                BufferError::Trailers => Refusal::Framing,
                BufferError::Body(e) => match e {},
            })?;
            assert_eq!(bytes, c.body, "{}: buffered bytes differ", c.name);
            check_graphql(cache, &parts, &bytes)
        }
    }
}

fn no(why: impl Into<Refusal>) -> Result<(), Refusal> {
    Err(why.into())
}

fn nested(depth: usize) -> String {
    format!("{}{}", "{ a ".repeat(depth), "} ".repeat(depth))
}

#[rustfmt::skip]
fn table() -> Vec<Case> {
    use BadGraphQl as B;
    use Forbidden as F;
    use UnsupportedMedia as U;
    let ok = Ok(());
    let core_only = KeyScope {
        scope: Scope::Write,
        apis: [Api::Core].into_iter().collect(),
    };
    let metadata_read = KeyScope {
        scope: Scope::Read,
        apis: [Api::Metadata].into_iter().collect(),
    };
    let big_doc = format!("{{ {} }}", "a ".repeat(40_000));
    let too_many_tokens = format!("{{ {} }}", "a ".repeat(16_000));
    vec![
        // ---- unscoped and write keys: never parsed, never refused here
        case("write POST mutation", WRITE, "POST", "/graphql", JSON, r#"{"query":"mutation { x }"}"#, ok),
        case("write multipart", WRITE, "POST", "/graphql", &[("content-type", "multipart/form-data; boundary=x")], "--x--", ok),
        case("write gzip", WRITE, "POST", "/graphql", &[("content-type", "application/json"), ("content-encoding", "gzip")], b"\x1f\x8b".to_vec(), ok),
        case("write DELETE rest", WRITE, "DELETE", "/rest/people/1", &[], "", ok),
        case("write batch", WRITE, "POST", "/graphql", JSON, r#"[{"query":"mutation{x}"}]"#, ok),
        // ---- apis
        case("core key on /rest", core_only, "DELETE", "/rest/people/1", &[], "", ok),
        case("core key on /graphql", core_only, "POST", "/graphql", JSON, r#"{"query":"mutation{x}"}"#, ok),
        case("core key on /rest/metadata", core_only, "GET", "/rest/metadata/objects", &[], "", no(F::Api)),
        case("core key on /metadata", core_only, "POST", "/metadata", JSON, r#"{"query":"{a}"}"#, no(F::Api)),
        case("metadata key on /graphql", metadata_read, "POST", "/graphql", JSON, r#"{"query":"{a}"}"#, no(F::Api)),
        case("metadata read key on /metadata", metadata_read, "POST", "/metadata", JSON, r#"{"query":"{ objects { id } }"}"#, ok),
        case("metadata read key mutation on /metadata", metadata_read, "POST", "/metadata", JSON, r#"{"query":"mutation { createOneObject { id } }"}"#, no(F::Mutation)),
        case("metadata read key GET /rest/metadata", metadata_read, "GET", "/rest/metadata/objects", &[], "", ok),
        // ---- REST, read key
        case("read GET rest", READ, "GET", "/rest/people", &[], "", ok),
        case("read HEAD rest", READ, "HEAD", "/rest/people", &[], "", ok),
        case("read POST rest", READ, "POST", "/rest/people", JSON, "{}", no(F::Method)),
        case("read POST rest duplicates (a read in Twenty)", READ, "POST", "/rest/people/duplicates", JSON, "{}", no(F::Method)),
        case("read PUT rest", READ, "PUT", "/rest/people/1", JSON, "{}", no(F::Method)),
        case("read PATCH rest", READ, "PATCH", "/rest/people/1", JSON, "{}", no(F::Method)),
        case("read DELETE rest", READ, "DELETE", "/rest/people/1", &[], "", no(F::Method)),
        case("read OPTIONS rest", READ, "OPTIONS", "/rest/people", &[], "", no(F::Method)),
        case("read GET rest method override", READ, "GET", "/rest/people/1", &[("x-http-method-override", "DELETE")], "", no(F::MethodOverride)),
        case("read GET rest x-http-method", READ, "GET", "/rest/people/1", &[("x-http-method", "DELETE")], "", no(F::MethodOverride)),
        case("read GET rest x-method-override", READ, "GET", "/rest/people/1", &[("x-method-override", "DELETE")], "", no(F::MethodOverride)),
        // ---- GraphQL methods, read key
        case("read HEAD graphql", READ, "HEAD", "/graphql?query=%7Ba%7D", &[], "", no(F::Method)),
        case("read PUT graphql", READ, "PUT", "/graphql", JSON, r#"{"query":"{a}"}"#, no(F::Method)),
        case("read OPTIONS graphql", READ, "OPTIONS", "/graphql", &[], "", no(F::Method)),
        case("read websocket graphql", READ, "GET", "/graphql?query=%7Ba%7D", &[("upgrade", "websocket"), ("connection", "upgrade")], "", no(F::Upgrade)),
        // ---- GraphQL documents allowed for a read key
        doc("shorthand query", "{ people { edges { node { id } } } }", ok),
        doc("named query", "query People { people { id } }", ok),
        doc("subscription", "subscription OnEvent { onDbEvent { id } }", ok),
        doc("two queries", "query A { a } query B { b }", ok),
        doc("query with fragment", "query { ...F } fragment F on Query { a }", ok),
        doc("fragment named mutation", "query { ...mutation } fragment mutation on Query { a }", ok),
        doc("query named mutation", "query mutation { a }", ok),
        doc("field named mutation", "{ mutation }", ok),
        doc("alias named mutation", "{ mutation: people { id } }", ok),
        doc("argument named mutation", "{ a(mutation: true) }", ok),
        doc("variable named mutation", "query ($mutation: Boolean) { a(x: $mutation) }", ok),
        doc("enum value mutation", "{ a(kind: mutation) }", ok),
        doc("mutation in a comment", "# mutation { deleteEverything }\n{ a }", ok),
        doc("mutation in a string", r#"{ a(s: "mutation { x }") }"#, ok),
        doc("mutation in a block string", r#"{ a(s: """ \""" mutation { x } """) }"#, ok),
        doc("directives", "query Q @live { a @include(if: true) ...F @skip(if: false) } fragment F on Query { b }", ok),
        doc("inline fragment", "{ ... on Query { a } ... @include(if: true) { b } }", ok),
        doc("commas and BOM", "\u{feff}{ a, b, c }", ok),
        doc("deep but within the limit", &nested(100), ok),
        post("operationName picks a query", r#"{"query":"query A { a } query B { b }","operationName":"A"}"#, ok),
        post("variables and extensions", r#"{"query":"query ($id: ID) { a(id: $id) }","variables":{"id":"1","o":{"x":[1,{"y":null}]}},"extensions":{}}"#, ok),
        post("query name written with a unicode escape", r#"{"\u0071uery":"{ a }"}"#, ok),
        post("document with JSON escapes", r#"{"query":"{ a(s: \"\\u00e9\") }\n"}"#, ok),
        case("charset utf-8", READ, "POST", "/graphql", &[("content-type", "application/json; charset=utf-8")], r#"{"query":"{a}"}"#, ok),
        case("charset quoted, media type in capitals", READ, "POST", "/graphql", &[("content-type", "Application/JSON;charset=\"UTF-8\"")], r#"{"query":"{a}"}"#, ok),
        case("other parameter", READ, "POST", "/graphql", &[("content-type", "application/json; foo=bar")], r#"{"query":"{a}"}"#, ok),
        case("identity coding", READ, "POST", "/graphql", &[("content-type", "application/json"), ("content-encoding", "identity")], r#"{"query":"{a}"}"#, ok),
        case("POST with another URL parameter", READ, "POST", "/graphql?x=1", JSON, r#"{"query":"{a}"}"#, ok),
        case("POST to /metadata", READ, "POST", "/metadata", JSON, r#"{"query":"{ objects { id } }"}"#, ok),
        get("GET percent-encoded", "query=%7B%20a%20%7D", ok),
        get("GET plus as space", "query=query+Q+%7B+a+%7D&operationName=Q", ok),
        get("GET with variables", "query=query%20(%24id%3A%20ID)%20%7B%20a(id%3A%20%24id)%20%7D&variables=%7B%22id%22%3A1%7D", ok),
        get("GET subscription", "query=subscription+%7B+a+%7D", ok),
        // ---- GraphQL documents refused for a read key
        doc("mutation", "mutation { deleteOnePerson(id: 1) { id } }", no(F::Mutation)),
        doc("anonymous mutation among queries", "query A { a } mutation { x }", no(F::Mutation)),
        post("mutation hidden behind operationName", r#"{"query":"query A { a } mutation B { x }","operationName":"A"}"#, no(F::Mutation)),
        post("operationName naming no operation", r#"{"query":"mutation B { x }","operationName":"A"}"#, no(F::Mutation)),
        doc("mutation spreading fragments", "mutation M { ...F } fragment F on Mutation { deleteEverything }", no(F::Mutation)),
        doc("mutation after fragments", "fragment F on Query { a } query { ...F } mutation { x }", no(F::Mutation)),
        doc("mutation with aliases", "mutation { q: deleteOnePerson(id: 1) { query: id } }", no(F::Mutation)),
        doc("mutation with directives", "mutation @skip(if: true) { x @include(if: false) }", no(F::Mutation)),
        doc("mutation wrapped in comments", "#c\nmutation#c\n{x}", no(F::Mutation)),
        doc("mutation after a comment ended by CR", "{ a } # c\rmutation { x }", no(F::Mutation)),
        doc("mutation after a BOM", "\u{feff}mutation { x }", no(F::Mutation)),
        doc("mutation with commas", ",,mutation,{x},", no(F::Mutation)),
        doc("mutation after a block string with an escaped triple quote", r#"{ a(s: """ \""" """) } mutation { x }"#, no(F::Mutation)),
        doc("backslash, then an escaped triple quote: unterminated", r#"{ a(s: """ \\""" ) } mutation { x }"#, no(B::InvalidDocument)),
        get("GET mutation", "query=mutation+%7B+x+%7D", no(F::Mutation)),
        get("GET mutation behind operationName", "query=query+A+%7B+a+%7D+mutation+B+%7B+x+%7D&operationName=A", no(F::Mutation)),
        get("GET percent-encoded parameter name", "%71uery=mutation+%7B+x+%7D", no(F::Mutation)),
        // ---- unparseable or not executable: 400
        doc("syntax error", "{ a", no(B::InvalidDocument)),
        doc("empty document", "", no(B::InvalidDocument)),
        doc("only comments", "# nothing", no(B::InvalidDocument)),
        doc("only a fragment", "fragment F on Query { a }", no(B::InvalidDocument)),
        doc("type definition", "type Query { a: Int }", no(B::InvalidDocument)),
        doc("query and a schema extension", "{ a } extend schema { mutation: M }", no(B::InvalidDocument)),
        doc("unknown operation keyword", "delete { a }", no(B::InvalidDocument)),
        doc("mutation with a syntax error", "mutation { x", no(B::InvalidDocument)),
        doc("unterminated string", r#"{ a(s: "x) }"#, no(B::InvalidDocument)),
        doc("NUL character", "{ a }\u{0}", no(B::InvalidDocument)),
        doc("lone surrogate escape", r#"{ a(s: "\ud800") }"#, no(B::InvalidDocument)),
        doc("nesting over the recursion limit", &nested(200), no(B::InvalidDocument)),
        doc("tokens over the token limit", &too_many_tokens, no(B::InvalidDocument)),
        // ---- the body: one JSON object, application/json, no coding
        post("batch", r#"[{"query":"{ a }"}]"#, no(B::Batch)),
        post("empty batch", "[]", no(B::Batch)),
        post("string body", r#""{ a }""#, no(B::NotObject)),
        post("number body", "42", no(B::NotObject)),
        post("null body", "null", no(B::NotObject)),
        post("empty body", "", no(B::InvalidJson)),
        post("truncated JSON", r#"{"query":"{ a }""#, no(B::InvalidJson)),
        post("trailing garbage", r#"{"query":"{ a }"} x"#, no(B::InvalidJson)),
        post("two JSON objects", r#"{"query":"{ a }"}{"query":"mutation { x }"}"#, no(B::InvalidJson)),
        post("JSON with a BOM", "\u{feff}{\"query\":\"{ a }\"}", no(B::InvalidJson)),
        post("single quotes", "{'query':'{ a }'}", no(B::InvalidJson)),
        post("lone surrogate in JSON", r#"{"query":"{ a(s: \"\ud800\") }"}"#, no(B::InvalidJson)),
        case("invalid UTF-8 in JSON", READ, "POST", "/graphql", JSON, b"{\"query\":\"{ a(s: \\\"\xff\\\") }\"}".to_vec(), no(B::InvalidJson)),
        post("JSON nested too deep", &format!( "{{\"query\":\"{{a}}\",\"v\":{}{}}}", "[".repeat(200), "]".repeat(200) ), no(B::InvalidJson)),
        post("persisted query hash", r#"{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"ecf4edb46db40b5132295c0291d62fb65d6759a9eedfa4d5d612dd5ec54a6b38"}}}"#, no(B::MissingQuery)),
        post("query null", r#"{"query":null}"#, no(B::MissingQuery)),
        post("query a number", r#"{"query":5}"#, no(B::MissingQuery)),
        post("query an object", r#"{"query":{"query":"{ a }"}}"#, no(B::MissingQuery)),
        post("empty object", "{}", no(B::MissingQuery)),
        post("duplicate query", r#"{"query":"{ a }","query":"mutation { x }"}"#, no(B::DuplicateMember)),
        post("duplicate query, escaped", r#"{"query":"mutation { x }","\u0071uery":"{ a }"}"#, no(B::DuplicateMember)),
        post("duplicate query, escaped first", r#"{"\u0071\u0075\u0065\u0072\u0079":"{ a }","query":"mutation { x }"}"#, no(B::DuplicateMember)),
        post("duplicate operationName", r#"{"query":"{ a }","operationName":"A","operationName":"B"}"#, no(B::DuplicateMember)),
        post("duplicate member in variables", r#"{"query":"{ a }","variables":{"x":1,"x":2}}"#, no(B::DuplicateMember)),
        post("duplicate member deep in extensions", r#"{"query":"{ a }","extensions":{"a":[{"b":{"c":1,"\u0063":2}}]}}"#, no(B::DuplicateMember)),
        post("duplicate member inside the query object", r#"{"query":{"a":1,"a":2}}"#, no(B::DuplicateMember)),
        case("multipart upload", READ, "POST", "/graphql", &[("content-type", "multipart/form-data; boundary=x")], "--x--", no(U::ContentType)),
        case("form", READ, "POST", "/graphql", &[("content-type", "application/x-www-form-urlencoded")], "query=mutation+%7Bx%7D", no(U::ContentType)),
        case("application/graphql", READ, "POST", "/graphql", &[("content-type", "application/graphql")], "mutation { x }", no(U::ContentType)),
        case("text/plain", READ, "POST", "/graphql", &[("content-type", "text/plain")], r#"{"query":"{a}"}"#, no(U::ContentType)),
        case("json suffix type", READ, "POST", "/graphql", &[("content-type", "application/graphql-response+json")], r#"{"query":"{a}"}"#, no(U::ContentType)),
        case("no content type", READ, "POST", "/graphql", &[], r#"{"query":"{a}"}"#, no(U::ContentType)),
        case("two content types", READ, "POST", "/graphql", &[("content-type", "application/json"), ("content-type", "multipart/form-data")], r#"{"query":"{a}"}"#, no(U::ContentType)),
        case("content type list", READ, "POST", "/graphql", &[("content-type", "application/json, multipart/form-data")], r#"{"query":"{a}"}"#, no(U::ContentType)),
        case("charset utf-16", READ, "POST", "/graphql", &[("content-type", "application/json; charset=utf-16")], r#"{"query":"{a}"}"#, no(U::ContentType)),
        case("gzip", READ, "POST", "/graphql", &[("content-type", "application/json"), ("content-encoding", "gzip")], b"\x1f\x8b".to_vec(), no(U::ContentEncoding)),
        case("identity then gzip", READ, "POST", "/graphql", &[("content-type", "application/json"), ("content-encoding", "identity, gzip")], r#"{"query":"{a}"}"#, no(U::ContentEncoding)),
        case("two codings", READ, "POST", "/graphql", &[("content-type", "application/json"), ("content-encoding", "identity"), ("content-encoding", "identity")], r#"{"query":"{a}"}"#, no(U::ContentEncoding)),
        case("POST with query in the URL", READ, "POST", "/graphql?query=%7Ba%7D", JSON, r#"{"query":"{a}"}"#, no(B::QueryInUrl)),
        case("POST with encoded query in the URL", READ, "POST", "/graphql?x=1&%71uery=", JSON, r#"{"query":"{a}"}"#, no(B::QueryInUrl)),
        case("body over 64 KiB, announced", READ, "POST", "/graphql", &[("content-type", "application/json"), ("content-length", "65537")], vec![b' '; 65537], no(Refusal::TooLarge)),
        post("body over 64 KiB, not announced", &format!("{{\"query\":\"{big_doc}\"}}"), no(Refusal::TooLarge)),
        // ---- GET
        get("GET repeated query", "query=%7Ba%7D&query=mutation+%7Bx%7D", no(B::DuplicateParam)),
        get("GET repeated query, one encoded", "query=%7Ba%7D&%71uery=mutation+%7Bx%7D", no(B::DuplicateParam)),
        get("GET repeated operationName", "query=%7Ba%7D&operationName=A&operationName=B", no(B::DuplicateParam)),
        get("GET no query", "operationName=A", no(B::MissingQuery)),
        get("GET persisted query", "extensions=%7B%22persistedQuery%22%3A%7B%7D%7D", no(B::MissingQuery)),
        case("GET no query string", READ, "GET", "/graphql", &[], "", no(B::MissingQuery)),
        get("GET empty query", "query=", no(B::InvalidDocument)),
        get("GET unparseable", "query=%7Ba", no(B::InvalidDocument)),
        case("GET with a body", READ, "GET", "/graphql?query=%7Ba%7D", JSON, r#"{"query":"mutation{x}"}"#, no(B::BodyOnGet)),
    ]
}

#[tokio::test]
async fn verdict_table() {
    let cache = VerdictCache::default();
    let mut failures = Vec::new();
    let cases = table();
    // Twice: the second round answers from the verdict cache.
    for round in 0..2 {
        for c in &cases {
            let got = run(&cache, c).await;
            if got != c.want {
                failures.push(format!(
                    "round {round}: {}: got {got:?}, want {:?}",
                    c.name, c.want
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn refusals_map_to_the_error_table() {
    let rows: Vec<_> = [
        Refusal::from(Forbidden::Mutation),
        BadGraphQl::DuplicateMember.into(),
        Refusal::TooLarge,
        UnsupportedMedia::ContentType.into(),
        Refusal::Framing,
    ]
    .into_iter()
    .map(|r| {
        let e = GatewayError::from(r);
        (e.status().as_u16(), e.code(), e.outcome().as_str())
    })
    .collect();
    assert_eq!(
        rows,
        [
            (403, "FORBIDDEN", "scope_denied"),
            (400, "BAD_REQUEST", "bad_request"),
            (413, "PAYLOAD_TOO_LARGE", "payload_too_large"),
            (415, "UNSUPPORTED_MEDIA_TYPE", "unsupported_media_type"),
            (400, "BAD_REQUEST", "bad_request"),
        ]
    );
}

#[test]
fn config_spellings() {
    assert_eq!(Scope::parse("read"), Some(Scope::Read));
    assert_eq!(Scope::parse("write"), Some(Scope::Write));
    assert_eq!(Scope::parse("Read"), None);
    assert_eq!(Api::parse("core"), Some(Api::Core));
    assert_eq!(Api::parse("metadata"), Some(Api::Metadata));
    assert_eq!(Api::parse("files"), None);
    let core: ApiSet = [Api::Core].into_iter().collect();
    assert!(core.allows_upstream("core"));
    assert!(!core.allows_upstream("metadata"));
    assert!(
        !core.allows_upstream("files"),
        "a restricted set fails closed"
    );
    assert!(ApiSet::ALL.allows_upstream("files"));
    assert!(KeyScope::default().is_unscoped());
    assert!(!READ.is_unscoped());
    assert_eq!(RouteKind::for_path("/graphql"), RouteKind::GraphQl);
    assert_eq!(RouteKind::for_path("/metadata/x"), RouteKind::GraphQl);
    assert_eq!(RouteKind::for_path("/rest/metadata"), RouteKind::Rest);
    assert_eq!(RouteKind::for_path("/graphqlx"), RouteKind::Rest);
    assert_eq!(RouteKind::for_path("/GraphQL"), RouteKind::GraphQl);
    assert_eq!(RouteKind::for_path("/metadata;v=1"), RouteKind::GraphQl);
}

#[test]
fn cache_is_bounded_and_keyed_by_document() {
    let cache = VerdictCache::new(3);
    assert_eq!(cache.verdict("{ a }"), DocVerdict::ReadOnly);
    assert_eq!(cache.verdict("mutation { a }"), DocVerdict::Writes);
    assert_eq!(cache.verdict("{ a"), DocVerdict::Invalid);
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.verdict("{ a }"), DocVerdict::ReadOnly);
    assert_eq!(cache.len(), 3, "a hit adds nothing");
    assert_eq!(cache.verdict("{ b }"), DocVerdict::ReadOnly);
    assert_eq!(cache.len(), 1, "full: cleared, then the new verdict");
    assert_eq!(cache.verdict("mutation { a }"), DocVerdict::Writes);
}

/// A body delivered frame by frame, counting the frames polled.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    polled: Arc<AtomicUsize>,
    hint: SizeHint,
}

impl Frames {
    fn new(chunks: &[&[u8]]) -> (Self, Arc<AtomicUsize>) {
        let polled = Arc::new(AtomicUsize::new(0));
        let frames = chunks
            .iter()
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect();
        (
            Frames {
                frames,
                polled: polled.clone(),
                hint: SizeHint::default(),
            },
            polled,
        )
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polled.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[tokio::test]
async fn buffer_joins_frames_exactly() {
    let (body, _) = Frames::new(&[b"{\"query\"", b"", b":\"{ a }\"", b"}"]);
    let got = buffer(body, 64).await.expect("within the limit");
    assert_eq!(&got[..], b"{\"query\":\"{ a }\"}");
    let (body, _) = Frames::new(&[b"one frame"]);
    assert_eq!(
        &buffer(body, 9).await.expect("exactly the limit")[..],
        b"one frame"
    );
    let (body, _) = Frames::new(&[]);
    assert!(buffer(body, 0).await.expect("empty").is_empty());
}

#[tokio::test]
async fn buffer_stops_reading_past_the_limit() {
    let (body, polled) = Frames::new(&[b"aaaa", b"bbbb", b"c", b"dddd", b"eeee"]);
    assert!(matches!(buffer(body, 8).await, Err(BufferError::TooLarge)));
    assert_eq!(
        polled.load(Ordering::Relaxed),
        3,
        "stopped at the frame past 8 bytes"
    );

    let (mut body, polled) = Frames::new(&[b"x"]);
    body.hint = SizeHint::with_exact(100);
    assert!(matches!(buffer(body, 8).await, Err(BufferError::TooLarge)));
    assert_eq!(
        polled.load(Ordering::Relaxed),
        0,
        "refused on the size hint"
    );
}

#[tokio::test]
async fn buffer_refuses_trailers() {
    let (mut body, _) = Frames::new(&[b"{}"]);
    body.frames
        .push_back(Frame::trailers(http::HeaderMap::new()));
    assert!(matches!(buffer(body, 64).await, Err(BufferError::Trailers)));
}
