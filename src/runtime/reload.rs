//! Reload: load → validate → build a new snapshot → swap, with the old one
//! serving until the swap and forever if the new file is bad. SIGHUP, the
//! file watch and `POST /reload` all call [`reload`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use super::{Gateway, Snapshot};
use crate::config::{ConfigError, ConfigErrors, Limits, load};

#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    FileWatch,
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileWatch => "file_watch",
            Trigger::Admin => "admin",
        }
    }
}

/// Load the config file again and, if it is valid, make it the running one.
pub async fn reload(gw: &Gateway, trigger: Trigger) -> Result<Arc<Snapshot>, ConfigErrors> {
    let _serial = gw.reload_lock.lock().await;
    let path = gw.config_path.clone();
    // Reading certificates and hashing files is blocking work.
    let loaded = tokio::task::spawn_blocking(move || load(&path))
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors {
                file: gw.config_path.clone(),
                errors: vec![ConfigError {
                    path: String::new(),
                    message: format!("config loader failed: {e}"),
                }],
            })
        });
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            gw.metrics.reload(false);
            let lines = errors.lines();
            tracing::error!(
                event = "reload_failed",
                trigger = trigger.as_str(),
                error_count = lines.len(),
                errors = ?lines,
                "config reload failed; the running config is unchanged"
            );
            return Err(errors);
        }
    };
    let current = gw.current();
    if config.listen != current.config.listen {
        tracing::warn!(
            event = "reload_listen_ignored",
            "listen addresses are not reloadable; keeping the sockets bound at start (restart to move them)"
        );
    }
    let process_wide = |l: &Limits| (l.max_connections, l.connect_timeout);
    if process_wide(&config.limits) != process_wide(&current.config.limits) {
        tracing::warn!(
            event = "reload_limits_ignored",
            "limits.max_connections and limits.connect_timeout apply from the next restart"
        );
    }
    let snapshot = gw.install(config);
    // New tenant domains get their certificates without a restart.
    gw.apply_acme().await;
    gw.metrics.reload(true);
    gw.metrics
        .config_generation
        .set(i64::try_from(snapshot.generation).unwrap_or(i64::MAX));
    tracing::info!(
        event = "reload",
        trigger = trigger.as_str(),
        generation = snapshot.generation,
        tenants = snapshot.tenants.len(),
        keys = snapshot.keys.len(),
        certificates = gw.certs.file_count(),
        "config reloaded"
    );
    Ok(snapshot)
}

/// Reload on every SIGHUP. The handler is installed before this returns
/// (SIGHUP's default action is to terminate), the loop runs in the future.
pub fn on_sighup(gw: Arc<Gateway>) -> Option<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload via the admin listener");
            return None;
        }
    };
    Some(async move {
        while hup.recv().await.is_some() {
            let _ = reload(&gw, Trigger::Signal).await;
        }
    })
}

const DEBOUNCE: Duration = Duration::from_millis(300);

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// The symlink a Kubernetes volume (ConfigMap, Secret, projected) swaps to
/// publish a new version of all its files at once (kubelet's AtomicWriter):
/// `gateway.yaml → ..data/gateway.yaml`, `..data → ..2026_…/`.
const KUBE_DATA: &str = "..data";

/// Watch the config file and reload when its content changes. The parent
/// directory is watched, so editors that save by writing a new file and
/// renaming it over the old one (vim, `sed -i`) are seen too, and so is a
/// Kubernetes volume swapping its `..data` symlink. Events are debounced; a
/// write that leaves the config's content unchanged is ignored, a `..data`
/// swap is not (it may renew only a certificate the config names).
/// The watch is in place when this returns; the reload loop is the future.
pub fn watch_file(gw: Arc<Gateway>) -> Option<impl Future<Output = ()> + Send + 'static> {
    let path: PathBuf = gw.config_path.clone();
    let name = path.file_name().map(|n| n.to_os_string())?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // `true`: the volume's `..data` swapped (reload even if gateway.yaml's
    // bytes are the same); `false`: an event naming the config file.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let names = || event.paths.iter().filter_map(|p| p.file_name());
        if names().any(|n| n == KUBE_DATA) {
            let _ = tx.send(true);
        } else if names().any(|n| n == name) {
            let _ = tx.send(false);
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(event = "watch_failed", error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(event = "watch_failed", error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP or POST /reload");
        return None;
    }
    let mut last = digest(&path);
    Some(async move {
        while let Some(first) = rx.recv().await {
            // Debounce: wait until the burst of events from one save is over.
            let mut swapped = first;
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(s)) => swapped |= s,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = {
                let p = path.clone();
                tokio::task::spawn_blocking(move || digest(&p))
                    .await
                    .ok()
                    .flatten()
            };
            if now.is_none() || (now == last && !swapped) {
                // Deleted mid-rename, or touched without a change.
                continue;
            }
            last = now;
            let _ = reload(&gw, Trigger::FileWatch).await;
        }
        drop(watcher);
    })
}
