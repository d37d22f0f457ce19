//! Least-privilege keys: `scope: read | write` and `apis: [core, metadata]`,
//! checked for one request (SPEC "Scoped keys").
//!
//! A request meets the check in two steps:
//!
//! 1. [`KeyScope::check_head`] on the request head, for every authenticated
//!    request: the key's `apis` against the route's upstream, then, for
//!    `scope: read`, the method (REST: `GET`/`HEAD`; GraphQL: `GET`/`POST`)
//!    and every way a GraphQL request could carry something unchecked
//!    (media type, content coding, `query` in a POST's URL, size). It
//!    answers [`Next::Forward`] (stream the body unchanged: unscoped keys
//!    and REST) or [`Next::CheckBody`] (a read key on a GraphQL route).
//! 2. For [`Next::CheckBody`]: [`buffer`] the body (at most [`MAX_BODY`]
//!    bytes), then [`check_graphql`] the exact bytes that will be forwarded.
//!
//! The document check ([`document::classify`], cached by SHA-256 in
//! [`VerdictCache`]) parses with `apollo-parser` and allows a document only
//! when every operation in it is a `query` or a `subscription`.
//!
//! A leaf module: std and external crates only. A refusal is a typed
//! [`Refusal`]: status, public message, code, log outcome; its `Display` is
//! the log detail (never the document, the body or the query string).

mod buffer;
pub mod document;
mod json;
mod params;
#[cfg(test)]
mod tests;

use http::request::Parts;
use http::{HeaderMap, Method, StatusCode, header};

pub use buffer::{BufferError, buffer};
pub use document::{DocVerdict, VerdictCache};

/// The largest GraphQL request body a `scope: read` key may send (SPEC: 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// What a key may do. `Write` (the default) is everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    Read,
    #[default]
    Write,
}

impl Scope {
    /// The config spelling: `read` or `write`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// One of Twenty's two APIs, named like the upstream that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/rest`, `/graphql`: the `core` upstream.
    Core,
    /// `/rest/metadata`, `/metadata`: the `metadata` upstream.
    Metadata,
}

impl Api {
    /// The config spelling, which is also the upstream's name.
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "core" => Some(Api::Core),
            "metadata" => Some(Api::Metadata),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Core => "core",
            Api::Metadata => "metadata",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Api::Core => 1,
            Api::Metadata => 2,
        }
    }
}

/// A set of [`Api`]s. [`ApiSet::ALL`] (the default) also allows routes to
/// upstreams other than `core` and `metadata`; a restricted set does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSet(u8);

impl ApiSet {
    /// No restriction: every route, whatever its upstream.
    pub const ALL: ApiSet = ApiSet(u8::MAX);
    pub const EMPTY: ApiSet = ApiSet(0);

    pub fn with(self, api: Api) -> ApiSet {
        ApiSet(self.0 | api.bit())
    }

    pub fn contains(self, api: Api) -> bool {
        self.0 & api.bit() != 0
    }

    pub fn is_all(self) -> bool {
        self == ApiSet::ALL
    }

    /// Whether a route to the upstream named `upstream` is within the set.
    pub fn allows_upstream(self, upstream: &str) -> bool {
        self.is_all() || Api::parse(upstream).is_some_and(|api| self.contains(api))
    }
}

impl Default for ApiSet {
    fn default() -> Self {
        ApiSet::ALL
    }
}

impl FromIterator<Api> for ApiSet {
    fn from_iter<I: IntoIterator<Item = Api>>(iter: I) -> Self {
        iter.into_iter().fold(ApiSet::EMPTY, ApiSet::with)
    }
}

/// How a route's requests are checked for a read key: by method only, or
/// as GraphQL documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Rest,
    GraphQl,
}

impl RouteKind {
    /// GraphQL when the first path segment is exactly `graphql` or
    /// `metadata` (the same rule as the error shape), else REST.
    pub fn for_path(path: &str) -> RouteKind {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if first == "graphql" || first == "metadata" {
            RouteKind::GraphQl
        } else {
            RouteKind::Rest
        }
    }
}

/// What the pipeline does after [`KeyScope::check_head`] allowed the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing more to check: stream the body as for any key.
    Forward,
    /// Buffer the body ([`buffer`], at most [`MAX_BODY`]) and pass it to
    /// [`check_graphql`]; forward exactly those bytes.
    CheckBody,
}

/// A key's scope and APIs. The default is unscoped (write, all APIs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyScope {
    pub scope: Scope,
    pub apis: ApiSet,
}

/// Headers some frameworks honour to turn a `GET` or `POST` into another
/// method. Twenty does not use them today; a read key never gets to try.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl KeyScope {
    /// A key with no restriction at all: its requests are never buffered.
    pub fn is_unscoped(&self) -> bool {
        self.scope == Scope::Write && self.apis.is_all()
    }

    /// The check on the request head. `upstream` is the route's upstream
    /// name; `kind` usually [`RouteKind::for_path`] of the request path.
    pub fn check_head(
        &self,
        upstream: &str,
        kind: RouteKind,
        req: &Parts,
    ) -> Result<Next, Refusal> {
        if !self.apis.allows_upstream(upstream) {
            return Err(Refusal::ApiNotAllowed);
        }
        if self.scope == Scope::Write {
            return Ok(Next::Forward);
        }
        if METHOD_OVERRIDES
            .iter()
            .any(|h| req.headers.contains_key(*h))
        {
            return Err(Refusal::MethodOverride);
        }
        match kind {
            RouteKind::Rest => match req.method {
                Method::GET | Method::HEAD => Ok(Next::Forward),
                _ => Err(Refusal::Method),
            },
            RouteKind::GraphQl => graphql_head(req),
        }
    }
}

/// The head of a read key's GraphQL request: everything that can be refused
/// before reading a byte of the body.
fn graphql_head(req: &Parts) -> Result<Next, Refusal> {
    // A WebSocket (graphql-ws) carries operations in frames we never see.
    if req.headers.contains_key(header::UPGRADE) {
        return Err(Refusal::Upgrade);
    }
    match req.method {
        // GET: the document is in the URL; the body must be empty, which
        // check_graphql sees once the (normally empty) body is buffered.
        Method::GET => {}
        Method::POST => {
            if params::has_query(req.uri.query()) {
                return Err(Refusal::QueryInUrl);
            }
            if !identity_coding(&req.headers) {
                return Err(Refusal::ContentEncoding);
            }
            if !json_content_type(&req.headers) {
                return Err(Refusal::ContentType);
            }
        }
        _ => return Err(Refusal::Method),
    }
    if announced_length(&req.headers).is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Refusal::TooLarge);
    }
    Ok(Next::CheckBody)
}

/// The check on a read key's buffered GraphQL request body (after
/// [`KeyScope::check_head`] answered [`Next::CheckBody`]).
pub fn check_graphql(cache: &VerdictCache, req: &Parts, body: &[u8]) -> Result<(), Refusal> {
    if body.len() > MAX_BODY {
        return Err(Refusal::TooLarge);
    }
    let verdict = if req.method == Method::POST {
        let query = json::graphql_query(body)?;
        cache.verdict(&query)
    } else {
        if !body.is_empty() {
            return Err(Refusal::BodyOnGet);
        }
        let query = params::graphql_query(req.uri.query())?;
        cache.verdict(&query)
    };
    match verdict {
        DocVerdict::ReadOnly => Ok(()),
        DocVerdict::Writes => Err(Refusal::Mutation),
        DocVerdict::Invalid => Err(Refusal::InvalidDocument),
    }
}

/// No `Content-Encoding`, or exactly one saying `identity`.
fn identity_coding(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"),
        (Some(_), Some(_)) => false,
    }
}

/// Exactly one `Content-Type`, `application/json` (any case), parameters
/// allowed except a `charset` other than UTF-8.
fn json_content_type(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if !name.trim().eq_ignore_ascii_case("charset") {
            return true;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
    })
}

/// `Content-Length` when present and a number (hyper refuses malformed or
/// conflicting ones before we get here).
fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why a request is refused. `Display` is the log detail; clients see
/// [`Refusal::public_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    // 403
    #[error("key's apis do not include this route's upstream")]
    ApiNotAllowed,
    #[error("read-only key: method not allowed on this route")]
    Method,
    #[error("read-only key: method-override header")]
    MethodOverride,
    #[error("read-only key: connection upgrade on a GraphQL route")]
    Upgrade,
    #[error("read-only key: document has a mutation operation")]
    Mutation,
    // 400
    #[error("GraphQL POST with query in the URL")]
    QueryInUrl,
    #[error("GraphQL GET with a request body")]
    BodyOnGet,
    #[error("GraphQL request body is a JSON array (batch)")]
    Batch,
    #[error("GraphQL request body is not a JSON object")]
    NotObject,
    #[error("GraphQL request body is not valid JSON")]
    InvalidJson,
    #[error("repeated JSON member name in GraphQL request body")]
    DuplicateMember,
    #[error("GraphQL request without a query string (persisted query?)")]
    MissingQuery,
    #[error("repeated query or operationName parameter")]
    DuplicateParam,
    #[error("GraphQL document does not parse (or has no operation)")]
    InvalidDocument,
    #[error("GraphQL request body with trailers")]
    Trailers,
    // 413
    #[error("GraphQL request body over 64 KiB")]
    TooLarge,
    // 415
    #[error("GraphQL POST not sent as application/json")]
    ContentType,
    #[error("GraphQL POST with a Content-Encoding other than identity")]
    ContentEncoding,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::ApiNotAllowed
            | Refusal::Method
            | Refusal::MethodOverride
            | Refusal::Upgrade
            | Refusal::Mutation => StatusCode::FORBIDDEN,
            Refusal::QueryInUrl
            | Refusal::BodyOnGet
            | Refusal::Batch
            | Refusal::NotObject
            | Refusal::InvalidJson
            | Refusal::DuplicateMember
            | Refusal::MissingQuery
            | Refusal::DuplicateParam
            | Refusal::InvalidDocument
            | Refusal::Trailers => StatusCode::BAD_REQUEST,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::ContentType | Refusal::ContentEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The error code of the JSON body (`error` / `extensions.code`).
    pub fn code(self) -> &'static str {
        match self.status() {
            StatusCode::FORBIDDEN => "FORBIDDEN",
            StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
            _ => "BAD_REQUEST",
        }
    }

    /// The access log's `outcome`.
    pub fn outcome(self) -> &'static str {
        match self.status() {
            StatusCode::FORBIDDEN => "scope_denied",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        }
    }

    /// What the client is told: short, and nothing it did not send.
    pub fn public_message(self) -> &'static str {
        match self {
            Refusal::ApiNotAllowed => "This API key may not use this API",
            Refusal::Method | Refusal::MethodOverride | Refusal::Upgrade => {
                "This API key is read-only"
            }
            Refusal::Mutation => "This API key is read-only: mutations are not allowed",
            Refusal::QueryInUrl => "A GraphQL POST must carry its query in the body only",
            Refusal::BodyOnGet => "A GraphQL GET must not carry a body",
            Refusal::Batch => "Batched GraphQL requests are not allowed for this API key",
            Refusal::NotObject => "A GraphQL request body must be one JSON object",
            Refusal::InvalidJson => "Invalid JSON in request body",
            Refusal::DuplicateMember => "Repeated JSON member name in request body",
            Refusal::MissingQuery => "A GraphQL request must carry a query string",
            Refusal::DuplicateParam => "Repeated query or operationName parameter",
            Refusal::InvalidDocument => "Invalid GraphQL document",
            Refusal::Trailers => "Malformed request",
            Refusal::TooLarge => "GraphQL request body larger than 64 KiB",
            Refusal::ContentType => "GraphQL requests must be sent as application/json",
            Refusal::ContentEncoding => "Content-Encoding is not supported for this API key",
        }
    }
}
