//! twenty-gateway: an authenticating API gateway for self-hosted Twenty CRM.
//!
//! # Layout
//!
//! In the order a request meets them:
//!
//! - [`cli`] / `main.rs` — parse the command line, load the config, run.
//! - [`config`] — `gateway.yaml`: [`config::raw`] (serde mirror, unknown
//!   fields rejected) → [`config::validate`] (typed [`config::Config`], every
//!   error with its path) → [`config::reload`] (swap a new snapshot in).
//! - [`state`] — the swappable [`state::Snapshot`] a request loads once, and
//!   what outlives it (limiters, upstream pool, log writer).
//! - [`listener`] — accept loop, connection cap, TLS handshake timeout.
//! - [`conn`] — one connection: HTTP/1.1 or HTTP/2, idle and drain closes,
//!   idle HTTP/1.1 connections parked without hyper's buffers.
//! - [`tls`] — certificates by SNI from the live snapshot; coverage for 421.
//! - [`proxy`] — per request: [`proxy::handle`] (context, error → JSON,
//!   log once) around [`proxy::pipeline`]: [`proxy::target`] →
//!   [`proxy::host`] → [`proxy::route`] → [`proxy::auth`] →
//!   [`proxy::ratelimit`] → [`proxy::upstream`], bodies in [`proxy::body`].
//! - [`error`] — one error type: status, code, outcome, JSON body.
//! - [`access_log`] — the typed access-log record and its writer thread.
//! - [`metrics`] / [`admin`] — Prometheus metrics, `/healthz`, `/readyz`,
//!   `POST /reload` on the admin listener.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod cli;
pub mod codec_errors;
pub mod config;
pub mod conn;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod state;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::listener::{Bound, accept_loop};
use crate::state::Gateway;

/// Serve on already-bound listeners until `shutdown` resolves, then drain:
/// stop accepting, let in-flight requests finish within `shutdown_grace`.
pub async fn serve(
    gw: Arc<Gateway>,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let tls = TlsAcceptor::from(tls::server_config(gw.snapshot.clone())?);
    let limits = gw.current().config.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain) = tokio::sync::watch::channel(false);

    // Live operations first: the SIGHUP handler and the file watch must be
    // in place before anyone is told we are listening (SIGHUP's default
    // action would kill the process).
    let mut background = vec![tokio::spawn(housekeeping(gw.clone()))];
    if let Some(task) = config::reload::on_sighup(gw.clone()) {
        background.push(tokio::spawn(task));
    }
    if let Some(task) = config::reload::watch_file(gw.clone()) {
        background.push(tokio::spawn(task));
    }
    let addrs = [
        ("https", Some(&bound.https)),
        ("http", bound.http.as_ref()),
        ("admin", bound.admin.as_ref()),
    ]
    .map(|(name, l)| (name, l.and_then(|l| l.local_addr().ok())));
    let admin = bound
        .admin
        .map(|l| tokio::spawn(admin::serve_admin(gw.clone(), l)));
    gw.ready.store(true, std::sync::atomic::Ordering::Release);

    // Accepting already works (the sockets are bound and queue connections).
    for (name, addr) in addrs {
        if let Some(addr) = addr {
            tracing::info!(event = "listening", listener = name, addr = %addr, "listening");
        }
    }
    let snap = gw.current();
    tracing::info!(
        event = "config_loaded",
        generation = snap.generation,
        tenants = snap.config.tenants.len(),
        keys = snap.config.keys.keys.len(),
        certificates = snap.config.certs.len(),
        "serving"
    );
    drop(snap);

    let https = accept_loop(
        gw.clone(),
        bound.https,
        Some(tls),
        connections.clone(),
        drain.clone(),
    );
    let http = async {
        match bound.http {
            Some(l) => accept_loop(gw.clone(), l, None, connections.clone(), drain.clone()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = https => {}
        _ = http => {}
        _ = shutdown => {}
    }
    // The accept loops are gone: only connections hold receivers now.
    drop(drain);

    gw.ready.store(false, std::sync::atomic::Ordering::Release);
    for task in background {
        task.abort();
    }
    let open = drain_tx.receiver_count();
    // shutdown_grace may have been changed by a reload since start.
    let limits = gw.current().config.limits.clone();
    tracing::info!(
        event = "shutdown_started",
        open_connections = open,
        grace_ms = limits.shutdown_grace.as_millis() as u64,
        "shutting down: no longer accepting, draining"
    );
    let _ = drain_tx.send(true);
    match tokio::time::timeout(limits.shutdown_grace, drain_tx.closed()).await {
        Ok(()) => tracing::info!(event = "shutdown_complete", "all connections drained"),
        Err(_) => tracing::warn!(
            event = "shutdown_forced",
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "shutdown_grace elapsed with requests still in flight; cutting them"
        ),
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(())
}

/// Periodic upkeep: forget idle auth-failure counters so the brake's memory
/// follows the attack, not the history; close upstream connections idle too
/// long.
async fn housekeeping(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tick.tick().await;
        if let Some(brake) = &gw.current().brake {
            brake.housekeeping();
        }
        gw.upstream.prune_idle();
    }
}
