//! twenty-gateway: an authenticating API gateway for self-hosted Twenty CRM.
//!
//! # Layout
//!
//! Layers, each importing only from the ones before it (README "Layout"):
//!
//! - leaves: [`base`] (header names, request ids), [`error`] (the one
//!   error table), [`access_log`], [`metrics`];
//! - steps, each owning its compiled table: [`target`] → [`host`] →
//!   [`route`] → [`auth`] → [`ratelimit`] → [`permission`]; [`tls`]
//!   (certificates and their sources), [`upstream`] (servers, header
//!   rewriting, pooled client);
//! - [`config`]: `gateway.yaml` → typed `Config`, every error with its field;
//! - [`runtime`]: the swapped `Snapshot` compiled into entries, the
//!   `Registry` of state that outlives it, reload;
//! - [`proxy`]: `handle` → `pipeline::run` (one call per step) with the
//!   typed `RequestCtx`, the logging phase in `proxy::body::Finish`;
//! - connections: [`codec_errors`], [`conn`], [`listener`], [`admin`];
//! - [`cli`] / `main.rs`, and [`serve`] below.

#![forbid(unsafe_code)]

// Leaves: no imports from the rest of the crate but each other.
pub mod access_log;
pub mod base;
pub mod error;
pub mod healthcheck;
pub mod metrics;
// Steps: each owns its compiled table and how to check it.
pub mod acme;
pub mod auth;
pub mod balance;
pub mod cluster;
pub mod host;
pub mod permission;
pub mod ratelimit;
pub mod route;
pub mod scope;
pub mod target;
pub mod tls;
pub mod upstream;
// The config file, compiled into the steps' tables.
pub mod config;
// The running gateway: the swapped snapshot, state that outlives it, reload.
pub mod runtime;
// Per request: the pipeline of steps, the request context, the logging phase.
pub mod proxy;
// Connections and listeners.
pub mod admin;
pub mod codec_errors;
pub mod conn;
pub mod listener;
// The command line.
pub mod cli;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::listener::{Bound, accept_loop};
use crate::runtime::Gateway;

/// Serve on already-bound listeners until `shutdown` resolves, then drain:
/// stop accepting, let in-flight requests finish within `shutdown_grace`.
pub async fn serve(
    gw: Arc<Gateway>,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<(), rustls::Error> {
    let tls = TlsAcceptor::from(tls::server_config(gw.certs.clone())?);
    let limits = gw.current().config.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain) = tokio::sync::watch::channel(false);

    // Live operations first: the SIGHUP handler and the file watch must be
    // in place before anyone is told we are listening (SIGHUP's default
    // action would kill the process).
    let mut background = vec![tokio::spawn(housekeeping(gw.clone()))];
    if let Some(task) = runtime::reload::on_sighup(gw.clone()) {
        background.push(tokio::spawn(task));
    }
    if let Some(task) = runtime::reload::watch_file(gw.clone()) {
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
        tenants = snap.tenants.len(),
        keys = snap.keys.len(),
        certificates = gw.certs.file_count(),
        "serving"
    );
    drop(snap);
    // Stored ACME certificates are served from here on; missing ones are
    // ordered in the background (the CA validates against the listeners
    // started just below).
    gw.apply_acme().await;

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
        gw.registry.housekeeping();
    }
}
