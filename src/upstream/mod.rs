//! The way to Twenty: an [`Upstream`] resolves to its servers (one today;
//! the seam for pools with balancing and health), [`headers`] rewrites the
//! request and response heads, [`client`] keeps pooled keep-alive
//! connections per server, [`body`] streams both ways, [`tunnel`] carries
//! WebSockets.

pub mod body;
pub mod client;
pub mod headers;
pub mod tunnel;

use std::sync::Arc;

use http::uri::Authority;

pub use body::RequestBody;
pub use client::{Pool, UpstreamBody, UpstreamClient};
pub use headers::{Forwarding, is_websocket_upgrade, rewrite_request, rewrite_response};
pub use tunnel::spawn_tunnel;

/// A named upstream from the config: the servers behind it.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub servers: Vec<Server>,
}

/// One server of an upstream: `http://host:port`.
#[derive(Debug)]
pub struct Server {
    pub authority: Authority,
}

/// An upstream as requests use it: the connection pool of each of its
/// servers, in config order. [`Target::choose`] is where balancing goes.
pub struct Target {
    pub name: Arc<str>,
    pub servers: Vec<Arc<Pool>>,
}

impl Target {
    /// The server this request goes to (the only one today).
    pub fn choose(&self) -> Option<&Arc<Pool>> {
        self.servers.first()
    }
}
