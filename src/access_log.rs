//! The typed access-log record and its writer: one flat JSON object per
//! request on stdout (or a human line with `--log-format pretty`).
//!
//! Lines are formatted on the request's task and written by one dedicated
//! thread, so a slow stdout never blocks a runtime worker. If stdout falls
//! more than [`QUEUE`] lines behind, lines are dropped and counted rather
//! than stalling traffic.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::error::Outcome;

const QUEUE: usize = 16 * 1024;
const MAX_FIELD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Everything one access-log line says; filled step by step as the request
/// moves through the pipeline, written once when its response is done.
#[derive(Debug)]
pub struct AccessRecord {
    /// Also the `X-Request-Id` response header: kept once, as the header value.
    pub request_id: http::HeaderValue,
    pub client_ip: IpAddr,
    pub method: http::Method,
    pub host: Option<String>,
    /// Path only: the query string never reaches a log line.
    pub path: String,
    pub route: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    pub status: u16,
    pub outcome: Outcome,
    pub upstream: Option<Arc<str>>,
    pub start: Instant,
    pub upstream_ms: Option<f64>,
    pub bytes_out: u64,
    pub protocol: &'static str,
    pub user_agent: Option<String>,
    /// Why the gateway refused or failed, for operators (never a secret).
    pub error: Option<String>,
    /// For upstream failures: connect, reset, timeout or body (metric label).
    pub error_kind: Option<&'static str>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: String,
    level: &'static str,
    event: &'static str,
    request_id: &'a str,
    client_ip: IpAddr,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    route: Option<&'a str>,
    tenant: Option<&'a str>,
    key_id: Option<&'a str>,
    status: u16,
    outcome: &'static str,
    upstream: Option<&'a str>,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    bytes_out: u64,
    protocol: &'static str,
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Truncate to at most `MAX_FIELD` bytes on a char boundary.
pub fn clip(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl AccessRecord {
    /// A record for a request that has just started; the pipeline fills in
    /// the rest as it goes.
    pub fn new(
        request_id: http::HeaderValue,
        client_ip: IpAddr,
        method: http::Method,
        path: String,
        protocol: &'static str,
        start: Instant,
    ) -> Self {
        AccessRecord {
            request_id,
            client_ip,
            method,
            host: None,
            path,
            route: None,
            tenant: None,
            key_id: None,
            status: 0,
            outcome: Outcome::Ok,
            upstream: None,
            start,
            upstream_ms: None,
            bytes_out: 0,
            protocol,
            user_agent: None,
            error: None,
            error_kind: None,
        }
    }

    /// Request ids are visible ASCII (checked or generated), so this is exact.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    pub fn duration_ms(&self) -> f64 {
        round_ms(self.start.elapsed().as_secs_f64() * 1000.0)
    }

    fn to_line(&self, format: LogFormat) -> Vec<u8> {
        let timestamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        match format {
            LogFormat::Json => {
                let line = JsonLine {
                    timestamp,
                    level: "INFO",
                    event: "request",
                    request_id: self.request_id(),
                    client_ip: self.client_ip,
                    method: self.method.as_str(),
                    host: self.host.as_deref().map(clip),
                    path: clip(&self.path),
                    route: self.route.as_deref(),
                    tenant: self.tenant.as_deref(),
                    key_id: self.key_id.as_deref(),
                    status: self.status,
                    outcome: self.outcome.as_str(),
                    upstream: self.upstream.as_deref(),
                    duration_ms: self.duration_ms(),
                    upstream_ms: self.upstream_ms.map(round_ms),
                    bytes_out: self.bytes_out,
                    protocol: self.protocol,
                    user_agent: self.user_agent.as_deref().map(clip),
                    error: self.error.as_deref(),
                };
                let mut buf = serde_json::to_vec(&line).unwrap_or_default();
                buf.push(b'\n');
                buf
            }
            LogFormat::Pretty => {
                let dash = |o: Option<&str>| o.unwrap_or("-").to_string();
                format!(
                    "{timestamp} {status} {outcome} {method} {host}{path} {proto} client={ip} tenant={tenant} key={key} route={route} upstream={up} {dur}ms bytes={bytes} rid={rid}{err}\n",
                    status = self.status,
                    outcome = self.outcome.as_str(),
                    method = self.method,
                    host = dash(self.host.as_deref()),
                    path = clip(&self.path).escape_debug(),
                    proto = self.protocol,
                    ip = self.client_ip,
                    tenant = dash(self.tenant.as_deref()),
                    key = dash(self.key_id.as_deref()),
                    route = dash(self.route.as_deref()),
                    up = dash(self.upstream.as_deref()),
                    dur = self.duration_ms(),
                    bytes = self.bytes_out,
                    rid = self.request_id(),
                    err = self
                        .error
                        .as_deref()
                        .map(|e| format!(" error={e:?}"))
                        .unwrap_or_default(),
                )
                .into_bytes()
            }
        }
    }
}

enum Msg {
    Line(Vec<u8>),
    /// Everything queued before this is written and flushed; then ack.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The access-log sink shared by all requests.
pub struct AccessLog {
    format: LogFormat,
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

impl AccessLog {
    pub fn stdout(format: LogFormat) -> Self {
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx));
        if let Err(e) = spawned {
            tracing::error!(event = "access_log_disabled", error = %e, "cannot start the access-log writer thread");
        }
        AccessLog {
            format,
            tx,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn write(&self, record: &AccessRecord) {
        match self.tx.try_send(Msg::Line(record.to_line(self.format))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Wait (up to `timeout`) until every line queued so far is on stdout;
    /// called before the process exits so drained requests keep their lines.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(ack_tx)).is_err() {
            return false;
        }
        ack_rx.recv_timeout(timeout).is_ok()
    }

    /// Lines dropped because stdout could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// How long the writer lets lines gather after the first one wakes it: one
/// wake-up and one `write` per window instead of one per request.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);
/// Write out early when a batch grows this large.
const BATCH_MAX: usize = 1 << 20;

fn writer(rx: Receiver<Msg>) {
    let stdout = std::io::stdout();
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let write_out = |batch: &mut Vec<u8>| {
        if !batch.is_empty() {
            // stdout is line-buffered: a batch ending in '\n' goes out in one write.
            let mut out = stdout.lock();
            let _ = out.write_all(batch);
            let _ = out.flush();
            batch.clear();
        }
    };
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut next = Some(first);
        // While we sleep, senders enqueue without waking anyone.
        std::thread::sleep(BATCH_WINDOW);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    batch.extend_from_slice(&line);
                    if batch.len() >= BATCH_MAX {
                        write_out(&mut batch);
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        write_out(&mut batch);
        if batch.capacity() > 4 * BATCH_MAX {
            batch = Vec::with_capacity(64 * 1024);
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}
