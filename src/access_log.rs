//! The typed access-log record and its writer: one flat JSON object per
//! request on stdout (or a human line with `--log-format pretty`).
//!
//! Lines are formatted on the request's task and written by one dedicated
//! thread, so a slow stdout never blocks a runtime worker. If stdout falls
//! more than [`MAX_PENDING`] bytes behind, lines are dropped and counted
//! rather than stalling traffic.

use std::cell::Cell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::base::json;
use crate::error::{FailureKind, Outcome};

/// Bytes of lines waiting for stdout before new ones are dropped (~20k lines).
const MAX_PENDING: usize = 8 << 20;
const MAX_FIELD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Everything one access-log line says: a view of the request's context,
/// taken once when its response is over (the metrics read the same view).
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// Also the `X-Request-Id` response header.
    pub request_id: &'a http::HeaderValue,
    pub client_ip: IpAddr,
    pub method: &'a http::Method,
    pub host: Option<&'a str>,
    /// Path only: the query string never reaches a log line.
    pub path: &'a str,
    pub route: Option<&'a Arc<str>>,
    pub tenant: Option<&'a Arc<str>>,
    pub key_id: Option<&'a Arc<str>>,
    pub status: u16,
    pub outcome: Outcome,
    pub upstream: Option<&'a Arc<str>>,
    pub start: Instant,
    pub upstream_ms: Option<f64>,
    pub bytes_out: u64,
    pub protocol: &'static str,
    pub user_agent: Option<&'a str>,
    /// Why the gateway refused or failed, for operators (never a secret).
    pub error: Option<&'a str>,
    /// For upstream failures: connect, reset, timeout or body (metric label).
    pub error_kind: Option<FailureKind>,
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

impl AccessRecord<'_> {
    /// Request ids are visible ASCII (checked or generated), so this is exact.
    pub fn request_id(&self) -> &str {
        crate::base::request_id::as_str(self.request_id)
    }

    pub fn duration_ms(&self) -> f64 {
        round_ms(self.start.elapsed().as_secs_f64() * 1000.0)
    }

    /// Append this record's line (newline included) to `buf`.
    fn write_line(&self, format: LogFormat, buf: &mut Vec<u8>) {
        match format {
            LogFormat::Json => self.write_json(buf, SystemTime::now(), self.duration_ms()),
            LogFormat::Pretty => {
                let dash = |o: Option<&str>| o.unwrap_or("-").to_string();
                let _ = writeln!(
                    buf,
                    "{timestamp} {status} {outcome} {method} {host}{path} {proto} client={ip} tenant={tenant} key={key} route={route} upstream={up} {dur}ms bytes={bytes} rid={rid}{err}",
                    timestamp = humantime::format_rfc3339_millis(SystemTime::now()),
                    status = self.status,
                    outcome = self.outcome.as_str(),
                    method = self.method,
                    host = dash(self.host),
                    path = clip(self.path).escape_debug(),
                    proto = self.protocol,
                    ip = self.client_ip,
                    tenant = dash(self.tenant.map(|s| &**s)),
                    key = dash(self.key_id.map(|s| &**s)),
                    route = dash(self.route.map(|s| &**s)),
                    up = dash(self.upstream.map(|s| &**s)),
                    dur = self.duration_ms(),
                    bytes = self.bytes_out,
                    rid = self.request_id(),
                    err = self
                        .error
                        .map(|e| format!(" error={e:?}"))
                        .unwrap_or_default(),
                );
            }
        }
    }

    /// The JSON line, field by field. The names are fixed literals and
    /// nearly every value is plain text, so this skips what a generic
    /// serializer spends per field (escaping every key, growing the buffer)
    /// — a third of the access log's cost per request. Escaping, when a value
    /// needs it, and number formatting are still serde_json's; a unit test
    /// holds the output byte-identical to `serde_json` on a `#[derive]`d
    /// struct of the same fields.
    fn write_json(&self, buf: &mut Vec<u8>, now: SystemTime, duration_ms: f64) {
        let mut int = itoa::Buffer::new();
        buf.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(buf, now);
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"event\":\"request\",\"request_id\":");
        json::push_str(buf, self.request_id());
        buf.extend_from_slice(b",\"client_ip\":\"");
        match self.client_ip {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf.push(b'.');
                    }
                    buf.extend_from_slice(int.format(octet).as_bytes());
                }
            }
            IpAddr::V6(ip) => {
                let _ = write!(buf, "{ip}");
            }
        }
        buf.extend_from_slice(b"\",\"method\":");
        json::push_str(buf, self.method.as_str());
        buf.extend_from_slice(b",\"host\":");
        json_opt(buf, self.host.map(clip));
        buf.extend_from_slice(b",\"path\":");
        json::push_str(buf, clip(self.path));
        buf.extend_from_slice(b",\"route\":");
        json_opt(buf, self.route.map(|s| &**s));
        buf.extend_from_slice(b",\"tenant\":");
        json_opt(buf, self.tenant.map(|s| &**s));
        buf.extend_from_slice(b",\"key_id\":");
        json_opt(buf, self.key_id.map(|s| &**s));
        buf.extend_from_slice(b",\"status\":");
        buf.extend_from_slice(int.format(self.status).as_bytes());
        buf.extend_from_slice(b",\"outcome\":");
        json::push_str(buf, self.outcome.as_str());
        buf.extend_from_slice(b",\"upstream\":");
        json_opt(buf, self.upstream.map(|s| &**s));
        buf.extend_from_slice(b",\"duration_ms\":");
        let _ = serde_json::to_writer(&mut *buf, &duration_ms);
        buf.extend_from_slice(b",\"upstream_ms\":");
        let _ = serde_json::to_writer(&mut *buf, &self.upstream_ms.map(round_ms));
        buf.extend_from_slice(b",\"bytes_out\":");
        buf.extend_from_slice(int.format(self.bytes_out).as_bytes());
        buf.extend_from_slice(b",\"protocol\":");
        json::push_str(buf, self.protocol);
        buf.extend_from_slice(b",\"user_agent\":");
        json_opt(buf, self.user_agent.map(clip));
        if let Some(e) = self.error {
            buf.extend_from_slice(b",\"error\":");
            json::push_str(buf, e);
        }
        buf.extend_from_slice(b"}\n");
    }
}

/// `now` as RFC 3339 UTC with milliseconds, exactly as
/// `humantime::format_rfc3339_millis` writes it (`2026-11-23T05:29:27.277Z`);
/// the date and time of day are formatted once a second per thread.
fn write_timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    let head = SECOND
        .try_with(|cached| {
            let (s, head) = cached.get();
            if s == secs {
                return head;
            }
            let head = date_and_time(secs);
            cached.set((secs, head));
            head
        })
        // Thread teardown: no cache, same text.
        .unwrap_or_else(|_| date_and_time(secs));
    buf.extend_from_slice(&head);
    // subsec_millis() < 1000: three digits.
    buf.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix second.
fn date_and_time(secs: u64) -> [u8; 19] {
    // humantime writes "YYYY-MM-DDTHH:MM:SSZ": keep all but the Z.
    let text =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
    let mut head = [0u8; 19];
    if let Some(b) = text.as_bytes().get(..19) {
        head.copy_from_slice(b);
    }
    head
}

fn json_opt(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json::push_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

/// Lines waiting for the writer thread, and flushes waiting for them.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    acks: Vec<std::sync::mpsc::Sender<()>>,
    /// The writer thread is gone (or never started): nothing will drain
    /// `lines`, so new lines are dropped at once.
    closed: bool,
    /// The `AccessLog` is gone: the writer writes what is left and ends.
    stop: bool,
}

impl Pending {
    /// Nothing for the writer to do.
    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.acks.is_empty()
    }
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when `pending` goes from empty to not.
    work: Condvar,
    /// Lines dropped because the sink could not keep up (or is gone).
    dropped: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// Each worker formats its lines here, outside the lock (taken while in
    /// use, put back after).
    static LINE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The access-log sink shared by all requests.
///
/// A request appends its formatted line to one shared buffer under a mutex
/// held for a copy; one dedicated thread swaps that buffer out and writes
/// it in a single `write`. Per line that is no allocation, no channel
/// message and no wake-up: the writer is woken once per batch.
pub struct AccessLog {
    format: LogFormat,
    shared: Arc<Shared>,
}

impl AccessLog {
    pub fn stdout(format: LogFormat) -> Self {
        Self::new(format, std::io::stdout())
    }

    /// Lines go to `sink` (stdout in the gateway; tests pass their own).
    pub fn new<W: Write + Send + 'static>(format: LogFormat, sink: W) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            work: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let theirs = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(&theirs, sink));
        if let Err(e) = spawned {
            shared.lock().closed = true;
            tracing::error!(event = "access_log_disabled", error = %e, "cannot start the access-log writer thread");
        }
        AccessLog { format, shared }
    }

    pub fn write(&self, record: &AccessRecord) {
        // This thread's buffer, or a fresh one during thread teardown.
        let mut line = LINE.try_with(Cell::take).unwrap_or_default();
        line.clear();
        record.write_line(self.format, &mut line);
        self.append(&line);
        if line.capacity() <= 64 * 1024 {
            let _ = LINE.try_with(|cell| cell.set(line));
        }
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        if pending.closed || pending.lines.len() + line.len() > MAX_PENDING {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let wake = pending.is_empty();
        pending.lines.extend_from_slice(line);
        drop(pending);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Wait (up to `timeout`) until every line queued so far is written;
    /// called before the process exits so drained requests keep their lines.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        {
            let mut pending = self.shared.lock();
            if pending.closed {
                return false;
            }
            pending.acks.push(ack_tx);
        }
        self.shared.work.notify_one();
        ack_rx.recv_timeout(timeout).is_ok()
    }

    /// Lines dropped because the sink could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AccessLog {
    /// The writer thread writes what is queued and ends (it does not
    /// outlive its log; nothing waits for it here).
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
    }
}

fn lines_in(batch: &[u8]) -> u64 {
    batch.iter().filter(|&&b| b == b'\n').count() as u64
}

/// How long the writer lets lines gather after the first one wakes it: one
/// wake-up and one `write` per window instead of one per request.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

fn writer<W: Write>(shared: &Shared, mut sink: W) {
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let (hurry, stop) = {
            let mut pending = shared.lock();
            while pending.is_empty() && !pending.stop {
                pending = shared.work.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            if pending.is_empty() {
                return; // stopping, with nothing left to write
            }
            (!pending.acks.is_empty() || pending.stop, pending.stop)
        };
        // While we sleep, requests append without waking anyone. A flush
        // does not wait for the window, nor does the end.
        if !hurry {
            std::thread::sleep(BATCH_WINDOW);
        }
        let mut acks = {
            let mut pending = shared.lock();
            std::mem::swap(&mut pending.lines, &mut out);
            std::mem::take(&mut pending.acks)
        };
        let ok = out.is_empty() || sink.write_all(&out).and_then(|()| sink.flush()).is_ok();
        let failed = if ok { 0 } else { lines_in(&out) };
        out.clear();
        if out.capacity() > MAX_PENDING / 2 {
            out = Vec::with_capacity(64 * 1024);
        }
        if !ok {
            // The sink is gone (stdout closed): stop buffering for it. The
            // failed batch and what is still waiting count as dropped, like
            // everything after.
            let mut pending = shared.lock();
            pending.closed = true;
            let lost = failed + lines_in(&pending.lines);
            shared.dropped.fetch_add(lost, Ordering::Relaxed);
            pending.lines = Vec::new();
            acks.append(&mut pending.acks);
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if !ok || stop {
            // Stopping: nothing can be appended any more, so this batch
            // was the last.
            return;
        }
    }
}

#[cfg(test)]
mod tests;
