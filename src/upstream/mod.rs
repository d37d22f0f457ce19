//! The way to Twenty: an [`Upstream`] resolves to its servers (a
//! [`ServerPool`]: balancing and health in [`crate::balance`]), [`headers`]
//! rewrites the request and response heads, [`client`] keeps pooled
//! keep-alive connections per server and moves a request that could not be
//! sent to another server, [`body`] streams both ways, [`tunnel`] carries
//! WebSockets.

pub mod body;
pub mod client;
pub mod codec;
pub mod conn;
pub mod headers;
pub mod tunnel;

use std::sync::Arc;

use crate::balance::{PoolSpec, ServerPool};

pub use body::RequestBody;
pub use client::{Pool, UpstreamBody, UpstreamClient};
pub use headers::{Forwarding, is_websocket_upgrade, rewrite_request, rewrite_response};
pub use tunnel::spawn_tunnel;

/// A named upstream from the config: the servers behind it and how they
/// are checked and reached.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub pool: PoolSpec,
}

/// An upstream as requests use it: its servers with their shared state
/// (balancing, health) and the connection pool of each, same order.
pub struct Target {
    pub name: Arc<str>,
    /// None only if building it failed (a bug: validation builds it too).
    pub servers: Option<Arc<ServerPool>>,
    pub conns: Vec<Arc<Pool>>,
}
