//! Shared integration-test harness: everything here is real (processes, sockets, TLS).
//!
//! - [`tls`]: a process-wide test CA (rcgen) that issues leaf certificates, and the client
//!   side of TLS ([`TlsOpts`], [`tls_connect`]).
//! - [`client`]: [`Conn`], an HTTP/1.1 or HTTP/2 client over real TLS (or plain TCP), several
//!   requests on one connection, and the fully read [`Resp`].
//! - [`raw`]: [`RawConn`], exact bytes on a TLS or TCP socket, and its [`RawResp`].
//! - [`upstream`]: [`spawn_upstream`], a hyper HTTP/1.1 server standing in for Twenty that
//!   records every request it receives and has "gated" paths whose progress the test controls.
//! - [`gateway`]: [`GatewaySetup`] / [`spawn_gateway`] run the real `twenty-gateway` binary on a
//!   config in a tempdir and learn its addresses from the `listening` log lines; [`run_cli`].
//! - [`log`]: [`Lines`], a child's output as awaitable lines, and the gateway's JSON log lines
//!   (access lines, events).
//! - [`admin`]: the admin listener: `/metrics` (scraped and polled), `POST /reload`.
//! - [`config`]: [`Conf`], the usual `gateway.yaml`, with the test keys and tenants.
//! - [`assert`]: gateway error bodies, a fresh client being served, `RateLimit` fields.
//!
//! Synchronisation is by channels, log lines and metrics, never by fixed sleeps.
//!
//! Each suite (`tests/*.rs`) is its own crate and uses part of this harness; suites declare it
//! `pub mod common;`, which makes the harness their public API, so rustc does not call the
//! helpers another suite uses dead code (private items in here are still checked).

pub mod admin;
pub mod assert;
pub mod client;
pub mod config;
pub mod gateway;
pub mod log;
pub mod raw;
pub mod tls;
pub mod upstream;

pub use admin::*;
pub use assert::*;
pub use client::*;
pub use config::*;
pub use gateway::*;
pub use log::*;
pub use raw::*;
pub use tls::*;
pub use upstream::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default wait for anything asynchronous (a log line, a recorded request, a response).
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A unique request id for this test process (so a test can find its own access line).
pub fn rid() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "t-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `tokio::time::timeout` that panics with a message instead of returning an error.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// Where `needle` first occurs in `hay`.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
