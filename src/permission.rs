//! Per-key permission: what an authenticated key may do on a route (SPEC
//! "Scoped keys"). The step after rate limits (a refused attempt uses quota
//! like any other) and before anything goes upstream.
//!
//! Unscoped keys pass untouched and their bodies stream as before. A key
//! limited to some `apis` is checked by the route's upstream name. A
//! `scope: read` key is checked by method on REST routes; on GraphQL routes
//! its body is read whole (at most 64 KiB, within `upstream_timeout`), its
//! document checked ([`crate::scope`]), and exactly those bytes go upstream.

use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http_body::Body;

use crate::auth::Key;
use crate::error::{BadRequest, GatewayError};
use crate::route::Route;
use crate::scope::{self, BufferError, Next, RouteKind, VerdictCache};

/// The request body, once the key may send it.
pub enum Permitted<B> {
    /// Not looked at: stream it.
    Stream(B),
    /// Read whole and checked: send these bytes.
    Checked(Bytes),
}

/// Allow or refuse `key` on `route` for this request. `body_timeout` bounds
/// reading a body that must be checked.
pub async fn check<B: Body>(
    key: &Key,
    route: &Route,
    head: &Parts,
    body: B,
    verdicts: &VerdictCache,
    body_timeout: Duration,
) -> Result<Permitted<B>, GatewayError> {
    if key.scope.is_unscoped() {
        return Ok(Permitted::Stream(body));
    }
    let kind = RouteKind::for_path(head.uri.path());
    match key.scope.check_head(&route.upstream, kind, head)? {
        Next::Forward => Ok(Permitted::Stream(body)),
        Next::CheckBody => {
            let read = tokio::time::timeout(body_timeout, scope::buffer(body, scope::MAX_BODY));
            let bytes = match read.await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(BufferError::TooLarge)) => return Err(GatewayError::GraphQlTooLarge),
                Ok(Err(BufferError::Trailers | BufferError::Body(_))) => {
                    return Err(GatewayError::BadRequest(BadRequest::Framing));
                }
                Err(_) => return Err(GatewayError::RequestTimeout),
            };
            scope::check_graphql(verdicts, head, &bytes)?;
            Ok(Permitted::Checked(bytes))
        }
    }
}
