//! Per-key permission: what an authenticated key may do on a route. The step
//! after rate limits (a refused attempt uses quota like any other) and before
//! anything goes upstream.
//!
//! Today every valid key may do everything its tenant's routes allow; this is
//! the seam for scoped keys (`scope: read`, `apis: [core]`), which need the
//! key, the route and the request head (and, for GraphQL, the body).

use http::request::Parts;

use crate::auth::Key;
use crate::error::GatewayError;
use crate::route::Route;

/// Allow or refuse `key` on `route` for this request head.
pub fn check(_key: &Key, _route: &Route, _head: &Parts) -> Result<(), GatewayError> {
    Ok(())
}
