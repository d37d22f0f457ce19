//! Active health checks: one task per server, `GET path` every `interval`
//! over a connection of its own (opened for the check, so a server that
//! stopped accepting fails even while old connections live on), any 2xx
//! within `timeout` passes. Checks are not requests: they touch neither
//! the outstanding count nor the request counter.

use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::connect::{TlsClient, connect};
use super::health::CheckSettings;
use super::server::{Checker, Server};
use super::url::ServerUrl;

/// Start checking `server` on the current tokio runtime (`None` outside
/// one).
pub fn spawn(server: &Arc<Server>, settings: CheckSettings) -> Option<Checker> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let task = handle.spawn(run(Arc::downgrade(server), settings.clone()));
    Some(Checker::new(settings, task))
}

async fn run(server: Weak<Server>, settings: CheckSettings) {
    let CheckSettings { check, tls } = settings;
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The server may be gone from every config: then so is its check.
        let Some(server) = server.upgrade() else {
            return;
        };
        let probe = probe(server.url(), &check.path, tls.as_ref());
        let result = match tokio::time::timeout(check.timeout, probe).await {
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status)) => Err(format!("health check answered {}", status.as_u16())),
            Ok(Err(e)) => Err(format!("health check failed: {e}")),
            Err(_) => Err(format!(
                "health check timed out after {} ms",
                check.timeout.as_millis()
            )),
        };
        server.on_check(result, Instant::now());
    }
}

#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    Connect(#[from] super::connect::ConnectError),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
}

/// One `GET path` on a fresh connection; the status of the answer.
async fn probe(
    url: &ServerUrl,
    path: &http::uri::PathAndQuery,
    tls: Option<&TlsClient>,
) -> Result<StatusCode, ProbeError> {
    let stream = connect(url, tls).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = AbortOnDrop(tokio::spawn(conn));
    let host = HeaderValue::from_str(url.authority().as_str())
        .map_err(|e| ProbeError::Request(e.into()))?;
    let req = Request::get(path.as_str())
        .header(HOST, host)
        .header(USER_AGENT, "twenty-gateway health check")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let status = sender.send_request(req).await?.status();
    drop(conn);
    Ok(status)
}

struct AbortOnDrop(JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
