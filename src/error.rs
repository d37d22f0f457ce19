//! One error type for everything the gateway answers itself, mapped to a
//! status, a Twenty-shaped JSON body and a log `outcome`.
//!
//! Clients get a short generic message; the detail (which check failed, the
//! upstream's error) goes to the log line only.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::base::json;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request target or request head was refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("request target is not an absolute path")]
    NotOriginForm,
    #[error("dot segment in path")]
    DotSegment,
    #[error("empty segment in path")]
    EmptySegment,
    #[error("encoded slash or backslash in path")]
    EncodedSeparator,
    #[error("backslash in path")]
    Backslash,
    #[error("NUL in path")]
    Nul,
    #[error("invalid percent-encoding in path")]
    BadPercentEncoding,
    #[error("path is not valid UTF-8 once decoded")]
    NotUtf8,
    #[error("missing Host")]
    MissingHost,
    #[error("malformed or ambiguous Host")]
    BadHost,
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    #[error("malformed request framing or body")]
    Framing,
    #[error("method not supported by the gateway")]
    Method,
    #[error("{0}")]
    GraphQl(BadGraphQl),
}

/// Why a `scope: read` key's GraphQL request was refused with 400: it could
/// carry something the check cannot see, or cannot be checked at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadGraphQl {
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
    #[error("GraphQL document does not parse or has no operation")]
    InvalidDocument,
}

/// Why a key's `scope` or `apis` refused a request (403, `scope_denied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("the key's apis do not include this route's upstream")]
    Api,
    #[error("read-only key: method not allowed on this route")]
    Method,
    #[error("read-only key: method-override header")]
    MethodOverride,
    #[error("read-only key: connection upgrade on a GraphQL route")]
    Upgrade,
    #[error("read-only key: the document has a mutation operation")]
    Mutation,
}

/// Why a `scope: read` key's GraphQL body was refused with 415.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedMedia {
    #[error("GraphQL POST not sent as application/json")]
    ContentType,
    #[error("GraphQL POST with a Content-Encoding other than identity")]
    ContentEncoding,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request: {0}")]
    BadRequest(BadRequest),
    #[error("host not covered by the certificate of this connection")]
    Misdirected,
    #[error("unknown host")]
    UnknownHost,
    #[error("no route for path")]
    NoRoute,
    #[error("no pending ACME HTTP-01 challenge with this token")]
    UnknownChallenge,
    #[error("missing API key")]
    MissingKey,
    #[error("missing or empty token query parameter on a twenty_token route")]
    MissingToken,
    #[error("invalid API key")]
    InvalidKey,
    #[error("expired API key")]
    ExpiredKey,
    #[error("revoked API key")]
    RevokedKey,
    #[error("API key of another tenant")]
    WrongTenant,
    #[error("scope: {0}")]
    Forbidden(Forbidden),
    #[error("scope: {0}")]
    UnsupportedMediaType(UnsupportedMedia),
    #[error("too many failed authentication attempts from this client")]
    AuthThrottled { retry_after: Duration },
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    #[error("shared rate limits unavailable (cluster.on_unavailable: deny)")]
    LimiterUnavailable,
    #[error("request body larger than max_request_body")]
    PayloadTooLarge,
    #[error("scope: GraphQL request body over 64 KiB")]
    GraphQlTooLarge,
    #[error("request body not received within upstream_timeout")]
    RequestTimeout,
    #[error("request header list larger than max_header_bytes")]
    HeadersTooLarge,
    #[error("request target longer than the HTTP/1 parser accepts")]
    UriTooLong,
    #[error("upstream {kind}")]
    Upstream {
        kind: UpstreamFailure,
        #[source]
        source: BoxError,
    },
    #[error("no response head from upstream within upstream_timeout")]
    UpstreamTimeout,
    #[error("internal error")]
    Internal(#[source] BoxError),
}

/// How an upstream exchange failed (the `kind` label of upstream errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Reset,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Reset => "reset",
        }
    }
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamFailure::Connect => "connection failed",
            UpstreamFailure::Reset => "connection reset",
        })
    }
}

/// Why a forwarded request failed, for the log's `error_kind` and the
/// upstream error metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Connect,
    Reset,
    Timeout,
    /// The upstream's response body failed after its head was sent.
    Body,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::Body => "body",
        }
    }
}

impl From<UpstreamFailure> for FailureKind {
    fn from(f: UpstreamFailure) -> Self {
        match f {
            UpstreamFailure::Connect => FailureKind::Connect,
            UpstreamFailure::Reset => FailureKind::Reset,
        }
    }
}

/// The `outcome` field of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    MissingKey,
    InvalidKey,
    RevokedKey,
    ExpiredKey,
    WrongTenant,
    ScopeDenied,
    UnsupportedMediaType,
    AuthThrottled,
    RateLimited,
    LimiterUnavailable,
    UpstreamError,
    UpstreamTimeout,
    BadRequest,
    PayloadTooLarge,
    Misdirected,
    UnknownHost,
    NoRoute,
    UnknownChallenge,
    /// The client reset or closed before a response existed (logged as 499).
    ClientClosed,
    Internal,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::MissingKey => "missing_key",
            Outcome::InvalidKey => "invalid_key",
            Outcome::RevokedKey => "revoked_key",
            Outcome::ExpiredKey => "expired_key",
            Outcome::WrongTenant => "wrong_tenant",
            Outcome::ScopeDenied => "scope_denied",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::AuthThrottled => "auth_throttled",
            Outcome::RateLimited => "rate_limited",
            Outcome::LimiterUnavailable => "limiter_unavailable",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::BadRequest => "bad_request",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::Misdirected => "misdirected",
            Outcome::UnknownHost => "unknown_host",
            Outcome::NoRoute => "no_route",
            Outcome::UnknownChallenge => "unknown_challenge",
            Outcome::ClientClosed => "client_closed",
            Outcome::Internal => "internal",
        }
    }
}

/// Which JSON shape an error body takes: Twenty's REST errors, or GraphQL's
/// `errors[]` on GraphQL routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    Rest,
    GraphQl,
}

impl ErrorShape {
    /// GraphQL shape when the first path segment is `graphql` or `metadata`
    /// (in any case, `;parameters` ignored: a server that routes
    /// case-insensitively must not be shown a REST-checked GraphQL request;
    /// the scope check uses the same rule).
    pub fn for_path(path: &str) -> Self {
        // (A byte scan: `split` with a set of chars costs ~3x as much, on
        // every request.)
        let path = path.trim_start_matches('/');
        let end = path
            .bytes()
            .position(|b| matches!(b, b'/' | b'?' | b';'))
            .unwrap_or(path.len());
        let first = &path[..end];
        if first.eq_ignore_ascii_case("graphql") || first.eq_ignore_ascii_case("metadata") {
            ErrorShape::GraphQl
        } else {
            ErrorShape::Rest
        }
    }
}

/// Twenty's REST error shape, fields in Twenty's order: what [`rest_body`]
/// writes by hand (the tests check they agree byte for byte).
#[cfg(test)]
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RestError<'a> {
    status_code: u16,
    error: &'static str,
    messages: [&'static str; 1],
    request_id: &'a str,
}

/// What [`graphql_body`] writes by hand.
#[cfg(test)]
#[derive(serde::Serialize)]
struct GraphQlErrors<'a> {
    errors: [GraphQlError<'a>; 1],
}

#[cfg(test)]
#[derive(serde::Serialize)]
struct GraphQlError<'a> {
    message: &'static str,
    extensions: Extensions<'a>,
}

#[cfg(test)]
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Extensions<'a> {
    code: &'static str,
    request_id: &'a str,
}

/// A REST-shaped error body (also used for errors raised below the service).
pub fn rest_body(
    status: u16,
    code: &'static str,
    message: &'static str,
    request_id: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + code.len() + message.len() + request_id.len());
    out.extend_from_slice(b"{\"statusCode\":");
    out.extend_from_slice(itoa_u16(status, &mut [0; 5]));
    json_fields(
        &mut out,
        [(b",\"error\":", code), (b",\"messages\":[", message)],
        (b"],\"requestId\":", request_id),
        b"}",
    );
    out
}

/// A GraphQL-shaped error body.
fn graphql_body(code: &'static str, message: &'static str, request_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + code.len() + message.len() + request_id.len());
    json_fields(
        &mut out,
        [
            (b"{\"errors\":[{\"message\":", message),
            (b",\"extensions\":{\"code\":", code),
        ],
        (b",\"requestId\":", request_id),
        b"}}]}",
    );
    out
}

/// Each field's JSON text before it, then the field as a JSON string: the
/// error table's code and message, then the request id; then `end`. (The
/// error bodies, written without serde: ~1.4k instructions a refusal less,
/// `bench/callgrind.sh 401`.)
///
/// The code and message are literals in this file, none needing an escape,
/// so they are copied without the byte scan [`json::push_str`] makes (~0.4k
/// instructions a refusal). Debug builds, every test among them, check the
/// claim on each body they write.
fn json_fields(
    out: &mut Vec<u8>,
    table: [(&[u8], &'static str); 2],
    (before_id, request_id): (&[u8], &str),
    end: &[u8],
) {
    for (before, s) in table {
        debug_assert!(
            !json::needs_escape(s),
            "error table string needs JSON escaping: {s:?}"
        );
        out.extend_from_slice(before);
        json::push_plain(out, s);
    }
    out.extend_from_slice(before_id);
    json::push_str(out, request_id);
    out.extend_from_slice(end);
}

/// `n` in decimal, without the formatting machinery.
fn itoa_u16(mut n: u16, buf: &mut [u8; 5]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

const BEARER_CHALLENGE: &str = "Bearer realm=\"twenty-gateway\"";
const BEARER_INVALID: &str = "Bearer realm=\"twenty-gateway\", error=\"invalid_token\"";

/// Retry-After: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// One row of the error table: everything a client and the log see of an
/// error, in one place.
struct Row {
    status: StatusCode,
    code: &'static str,
    outcome: Outcome,
    /// What clients read. It never says *why* a key was refused.
    message: &'static str,
}

const fn row(
    status: StatusCode,
    code: &'static str,
    outcome: Outcome,
    message: &'static str,
) -> Row {
    Row {
        status,
        code,
        outcome,
        message,
    }
}

impl GatewayError {
    /// The error table: one exhaustive match, no `_` arm over variants.
    fn row(&self) -> Row {
        use GatewayError as E;
        use StatusCode as S;
        const UNAUTH: &str = "UNAUTHENTICATED";
        const REFUSED: &str = "Invalid or revoked API key";
        match self {
            E::BadRequest(why) => row(
                S::BAD_REQUEST,
                "BAD_REQUEST",
                Outcome::BadRequest,
                why.public_message(),
            ),
            E::UriTooLong => row(
                S::URI_TOO_LONG,
                "BAD_REQUEST",
                Outcome::BadRequest,
                "Request target too long",
            ),
            E::Misdirected => row(
                S::MISDIRECTED_REQUEST,
                "MISDIRECTED_REQUEST",
                Outcome::Misdirected,
                "This host is not served on this connection",
            ),
            E::UnknownHost => row(
                S::NOT_FOUND,
                "NOT_FOUND",
                Outcome::UnknownHost,
                "Unknown host",
            ),
            E::NoRoute => row(
                S::NOT_FOUND,
                "NOT_FOUND",
                Outcome::NoRoute,
                "No route for this path",
            ),
            E::UnknownChallenge => row(
                S::NOT_FOUND,
                "NOT_FOUND",
                Outcome::UnknownChallenge,
                "Unknown ACME challenge",
            ),
            E::MissingKey => row(
                S::UNAUTHORIZED,
                UNAUTH,
                Outcome::MissingKey,
                "Missing API key",
            ),
            E::MissingToken => row(
                S::UNAUTHORIZED,
                UNAUTH,
                Outcome::MissingKey,
                "Missing token",
            ),
            E::InvalidKey => row(S::UNAUTHORIZED, UNAUTH, Outcome::InvalidKey, REFUSED),
            E::ExpiredKey => row(S::UNAUTHORIZED, UNAUTH, Outcome::ExpiredKey, REFUSED),
            E::RevokedKey => row(S::UNAUTHORIZED, UNAUTH, Outcome::RevokedKey, REFUSED),
            E::WrongTenant => row(
                S::FORBIDDEN,
                "FORBIDDEN",
                Outcome::WrongTenant,
                "This API key does not belong to this workspace",
            ),
            E::Forbidden(why) => row(
                S::FORBIDDEN,
                "FORBIDDEN",
                Outcome::ScopeDenied,
                why.public_message(),
            ),
            E::UnsupportedMediaType(why) => row(
                S::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                Outcome::UnsupportedMediaType,
                why.public_message(),
            ),
            E::AuthThrottled { .. } => row(
                S::TOO_MANY_REQUESTS,
                "TOO_MANY_AUTH_FAILURES",
                Outcome::AuthThrottled,
                "Too many failed authentication attempts",
            ),
            E::RateLimited { .. } => row(
                S::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                Outcome::RateLimited,
                "Rate limit exceeded",
            ),
            E::LimiterUnavailable => row(
                S::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                Outcome::LimiterUnavailable,
                "Rate limiting is unavailable; try again later",
            ),
            E::PayloadTooLarge => row(
                S::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                Outcome::PayloadTooLarge,
                "Request body too large",
            ),
            E::GraphQlTooLarge => row(
                S::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                Outcome::PayloadTooLarge,
                "GraphQL request body larger than 64 KiB",
            ),
            E::RequestTimeout => row(
                S::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                Outcome::BadRequest,
                "Request body not received in time",
            ),
            E::HeadersTooLarge => row(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "BAD_REQUEST",
                Outcome::BadRequest,
                "Request headers too large",
            ),
            E::Upstream { .. } => row(
                S::BAD_GATEWAY,
                "BAD_GATEWAY",
                Outcome::UpstreamError,
                "Upstream unavailable",
            ),
            E::UpstreamTimeout => row(
                S::GATEWAY_TIMEOUT,
                "GATEWAY_TIMEOUT",
                Outcome::UpstreamTimeout,
                "Upstream timed out",
            ),
            E::Internal(_) => row(
                S::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                Outcome::Internal,
                "Internal error",
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.row().status
    }

    pub fn code(&self) -> &'static str {
        self.row().code
    }

    pub fn outcome(&self) -> Outcome {
        self.row().outcome
    }

    pub fn public_message(&self) -> &'static str {
        self.row().message
    }

    /// For the log and metrics: how an upstream exchange failed.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            GatewayError::Upstream { kind, .. } => Some(FailureKind::from(*kind)),
            GatewayError::UpstreamTimeout => Some(FailureKind::Timeout),
            _ => None,
        }
    }

    /// The operator's detail: this error and its sources, for the log line.
    pub fn detail(&self) -> String {
        let mut detail = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        detail
    }

    /// The JSON response for this error, carrying `request_id`.
    pub fn to_response(&self, shape: ErrorShape, request_id: &str) -> Response<Bytes> {
        let Row {
            status,
            code,
            message,
            ..
        } = self.row();
        let body = match shape {
            ErrorShape::Rest => rest_body(status.as_u16(), code, message, request_id),
            ErrorShape::GraphQl => graphql_body(code, message, request_id),
        };
        let mut resp = Response::new(Bytes::from(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            GatewayError::MissingKey => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
            }
            GatewayError::InvalidKey | GatewayError::ExpiredKey | GatewayError::RevokedKey => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_INVALID));
            }
            GatewayError::AuthThrottled { retry_after }
            | GatewayError::RateLimited { retry_after } => {
                h.insert(
                    RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*retry_after)),
                );
            }
            _ => {}
        }
        resp
    }
}

impl BadRequest {
    fn public_message(self) -> &'static str {
        match self {
            BadRequest::MultipleAuthorization => "More than one Authorization header",
            BadRequest::MissingHost => "Missing Host header",
            BadRequest::BadHost => "Invalid Host header",
            BadRequest::Framing => "Malformed request",
            BadRequest::Method => "Method not supported",
            BadRequest::GraphQl(why) => why.public_message(),
            BadRequest::NotOriginForm
            | BadRequest::DotSegment
            | BadRequest::EmptySegment
            | BadRequest::EncodedSeparator
            | BadRequest::Backslash
            | BadRequest::Nul
            | BadRequest::BadPercentEncoding
            | BadRequest::NotUtf8 => "Invalid request path",
        }
    }
}

impl BadGraphQl {
    fn public_message(self) -> &'static str {
        match self {
            BadGraphQl::QueryInUrl => "A GraphQL POST must carry its query in the body only",
            BadGraphQl::BodyOnGet => "A GraphQL GET must not carry a body",
            BadGraphQl::Batch => "Batched GraphQL requests are not allowed for this API key",
            BadGraphQl::NotObject => "A GraphQL request body must be one JSON object",
            BadGraphQl::InvalidJson => "Invalid JSON in request body",
            BadGraphQl::DuplicateMember => "Repeated JSON member name in request body",
            BadGraphQl::MissingQuery => "A GraphQL request must carry a query string",
            BadGraphQl::DuplicateParam => "Repeated query or operationName parameter",
            BadGraphQl::InvalidDocument => "Invalid GraphQL document",
        }
    }
}

impl Forbidden {
    fn public_message(self) -> &'static str {
        match self {
            Forbidden::Api => "This API key may not use this API",
            Forbidden::Method | Forbidden::MethodOverride | Forbidden::Upgrade => {
                "This API key is read-only"
            }
            Forbidden::Mutation => "This API key is read-only: mutations are not allowed",
        }
    }
}

impl UnsupportedMedia {
    fn public_message(self) -> &'static str {
        match self {
            UnsupportedMedia::ContentType => "GraphQL requests must be sent as application/json",
            UnsupportedMedia::ContentEncoding => {
                "Content-Encoding is not supported for this API key"
            }
        }
    }
}

#[cfg(test)]
mod tests;
