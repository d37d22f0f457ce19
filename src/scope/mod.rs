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
//! A step module: it imports only the error leaf. A refusal is a typed
//! [`Refusal`], which becomes the [`GatewayError`] whose row in the error
//! table gives the status, code, outcome and public message.

mod buffer;
pub mod document;
mod json;
mod params;
#[cfg(test)]
mod tests;

use http::request::Parts;
use http::{HeaderMap, Method, header};

use crate::error::{BadGraphQl, BadRequest, ErrorShape, Forbidden, GatewayError, UnsupportedMedia};

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
    /// GraphQL when the first path segment is `graphql` or `metadata` —
    /// the rule of the error shape ([`ErrorShape::for_path`]: any case,
    /// `;parameters` ignored) — else REST.
    pub fn for_path(path: &str) -> RouteKind {
        match ErrorShape::for_path(path) {
            ErrorShape::GraphQl => RouteKind::GraphQl,
            ErrorShape::Rest => RouteKind::Rest,
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
            return Err(Forbidden::Api.into());
        }
        if self.scope == Scope::Write {
            return Ok(Next::Forward);
        }
        if METHOD_OVERRIDES
            .iter()
            .any(|h| req.headers.contains_key(*h))
        {
            return Err(Forbidden::MethodOverride.into());
        }
        match kind {
            RouteKind::Rest => match req.method {
                Method::GET | Method::HEAD => Ok(Next::Forward),
                _ => Err(Forbidden::Method.into()),
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
        return Err(Forbidden::Upgrade.into());
    }
    match req.method {
        // GET: the document is in the URL; the body must be empty, which
        // check_graphql sees once the (normally empty) body is buffered.
        Method::GET => {}
        Method::POST => {
            if params::has_query(req.uri.query()) {
                return Err(BadGraphQl::QueryInUrl.into());
            }
            if !identity_coding(&req.headers) {
                return Err(UnsupportedMedia::ContentEncoding.into());
            }
            if !json_content_type(&req.headers) {
                return Err(UnsupportedMedia::ContentType.into());
            }
        }
        _ => return Err(Forbidden::Method.into()),
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
            return Err(BadGraphQl::BodyOnGet.into());
        }
        let query = params::graphql_query(req.uri.query())?;
        cache.verdict(&query)
    };
    match verdict {
        DocVerdict::ReadOnly => Ok(()),
        DocVerdict::Writes => Err(Forbidden::Mutation.into()),
        DocVerdict::Invalid => Err(BadGraphQl::InvalidDocument.into()),
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

/// Why the check refused a request: the reasons of [`GatewayError`]'s
/// scope rows, comparable in tests. `Display` (through [`GatewayError`]) is
/// the log detail, never the document, the body or the query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403 `FORBIDDEN`, outcome `scope_denied`.
    Forbidden(Forbidden),
    /// 400 `BAD_REQUEST`.
    BadRequest(BadGraphQl),
    /// 415 `UNSUPPORTED_MEDIA_TYPE`.
    UnsupportedMedia(UnsupportedMedia),
    /// 413: the body is over [`MAX_BODY`].
    TooLarge,
    /// 400: the body could not be read as plain data (trailers).
    Framing,
}

impl From<Forbidden> for Refusal {
    fn from(why: Forbidden) -> Self {
        Refusal::Forbidden(why)
    }
}

impl From<BadGraphQl> for Refusal {
    fn from(why: BadGraphQl) -> Self {
        Refusal::BadRequest(why)
    }
}

impl From<UnsupportedMedia> for Refusal {
    fn from(why: UnsupportedMedia) -> Self {
        Refusal::UnsupportedMedia(why)
    }
}

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Forbidden(why) => GatewayError::Forbidden(why),
            Refusal::BadRequest(why) => GatewayError::BadRequest(BadRequest::GraphQl(why)),
            Refusal::UnsupportedMedia(why) => GatewayError::UnsupportedMediaType(why),
            Refusal::TooLarge => GatewayError::GraphQlTooLarge,
            Refusal::Framing => GatewayError::BadRequest(BadRequest::Framing),
        }
    }
}
