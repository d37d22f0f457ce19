//! Several servers behind one upstream name: which server a request goes
//! to, and whether a server may take requests at all.
//!
//! - [`url`] — a server's URL, kept as written (it names the server in
//!   metrics and events).
//! - [`registry`] — server state that outlives config generations, keyed by
//!   (upstream name, URL); a reload's [`Build`] makes the new pools.
//! - [`pool`] — [`ServerPool::pick`]: power of two choices on requests in
//!   flight among healthy servers; [`Failover`] moves a request that was
//!   never sent to another server within the connect timeout.
//! - [`server`] / [`health`] — per-server counters and the health state
//!   machine (passive: request outcomes; active: check results).
//! - [`check`] — the active check task, one per server.
//! - [`connect`] — TCP or TLS (rustls, `ca` or system roots, SNI from the
//!   URL, ALPN `http/1.1`) connections to a server.
//! - [`metrics`] — `gateway_upstream_server_healthy`,
//!   `gateway_upstream_requests_total`.

pub mod check;
pub mod connect;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod registry;
pub mod server;
pub mod url;

pub use connect::{ConnectError, Stream, TlsClient, TlsClientError, connect};
pub use health::{HealthCheck, Outcome};
pub use metrics::BalanceMetrics;
pub use pool::{Failover, Pick, ServerPool, Unreachable};
pub use registry::{Build, BuildError, PoolSpec, Registry};
pub use server::Server;
pub use url::{Scheme, ServerUrl, UrlError};
