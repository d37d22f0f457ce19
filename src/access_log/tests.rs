use super::*;
use serde::Serialize;
use std::net::Ipv6Addr;
use std::sync::mpsc;

/// The reference: the same line as a generic serializer writes it.
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

fn reference(r: &AccessRecord, now: SystemTime, duration_ms: f64) -> Vec<u8> {
    let line = JsonLine {
        timestamp: humantime::format_rfc3339_millis(now).to_string(),
        level: "INFO",
        event: "request",
        request_id: r.request_id(),
        client_ip: r.client_ip,
        method: r.method.as_str(),
        host: r.host.map(clip),
        path: clip(r.path),
        route: r.route.map(|s| &**s),
        tenant: r.tenant.map(|s| &**s),
        key_id: r.key_id.map(|s| &**s),
        status: r.status,
        outcome: r.outcome.as_str(),
        upstream: r.upstream.map(|s| &**s),
        duration_ms,
        upstream_ms: r.upstream_ms.map(round_ms),
        bytes_out: r.bytes_out,
        protocol: r.protocol,
        user_agent: r.user_agent.map(clip),
        error: r.error,
    };
    let mut v = serde_json::to_vec(&line).unwrap();
    v.push(b'\n');
    v
}

/// Owned values for a record to borrow.
struct Owned {
    request_id: http::HeaderValue,
    client_ip: IpAddr,
    method: http::Method,
    path: String,
    host: Option<String>,
    route: Option<Arc<str>>,
    tenant: Option<Arc<str>>,
    key_id: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    user_agent: Option<String>,
    error: Option<String>,
    full: bool,
    start: Instant,
}

impl Owned {
    fn view(&self) -> AccessRecord<'_> {
        AccessRecord {
            request_id: &self.request_id,
            client_ip: self.client_ip,
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            route: self.route.as_ref(),
            tenant: self.tenant.as_ref(),
            key_id: self.key_id.as_ref(),
            status: if self.full { 502 } else { 0 },
            outcome: if self.full {
                Outcome::UpstreamError
            } else {
                Outcome::Ok
            },
            upstream: self.upstream.as_ref(),
            start: self.start,
            upstream_ms: self.full.then_some(12.345_678_9),
            bytes_out: if self.full { u64::MAX } else { 0 },
            protocol: "HTTP/2.0",
            user_agent: self.user_agent.as_deref(),
            error: self.error.as_deref(),
            error_kind: None,
        }
    }
}

fn record(path: &str) -> Owned {
    Owned {
        request_id: http::HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
        client_ip: IpAddr::from([203, 0, 113, 9]),
        method: http::Method::GET,
        path: path.to_string(),
        host: None,
        route: None,
        tenant: None,
        key_id: None,
        upstream: None,
        user_agent: None,
        error: None,
        full: false,
        start: Instant::now(),
    }
}

fn full(path: &str, text: &str) -> Owned {
    let mut r = record(path);
    r.host = Some(format!("acme{text}.example.test"));
    r.route = Some(format!("/rest{text}").into());
    r.tenant = Some(format!("acme{text}").into());
    r.key_id = Some(format!("ci{text}").into());
    r.full = true;
    r.upstream = Some(format!("core{text}").into());
    r.user_agent = Some(format!("curl/8{text}"));
    r.error = Some(format!("upstream reset{text}"));
    r
}

#[test]
fn json_lines_are_byte_identical_to_serde_json() {
    // Every string field with: nothing to escape, each character JSON
    // must escape, what it must not (DEL, non-ASCII), and a field past
    // the clip length.
    let texts = [
        "",
        "\"quoted\"",
        "back\\slash",
        "ctl\u{0}\u{1f}\n\t\r",
        "del\u{7f}é😀",
        "</script>",
    ];
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
    let mut cases = vec![record("/rest/people")];
    let mut bare = record("/");
    bare.client_ip = IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    cases.push(bare);
    for t in texts {
        cases.push(full(&format!("/rest/{t}"), t));
    }
    cases.push(full(&"x".repeat(3 * MAX_FIELD), &"é".repeat(MAX_FIELD)));
    for (i, r) in cases.iter().enumerate() {
        let r = &r.view();
        for duration in [0.0, 1.5, 2.0, 0.001, 123_456.789] {
            let mut ours = Vec::new();
            r.write_json(&mut ours, now, duration);
            let want = reference(r, now, duration);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&want),
                "case {i}, duration {duration}"
            );
        }
    }
}

#[test]
fn timestamps_match_humantime_across_seconds_and_days() {
    let mut t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_000);
    // Millisecond steps across second, minute and day boundaries, then
    // leaps, so the per-second cache is both hit and refreshed.
    for step in (0..3000)
        .map(|_| 7)
        .chain([86_399_993, 1, 999, 1000, 31_536_000_000])
    {
        t += Duration::from_millis(step);
        let mut ours = Vec::new();
        write_timestamp(&mut ours, t);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            humantime::format_rfc3339_millis(t).to_string()
        );
    }
}

/// A sink that holds every write until it is opened, and keeps what it got.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<(Mutex<bool>, Condvar)>,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Gate {
    fn open(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }
    fn lines(&self) -> Vec<String> {
        let got = self.got.lock().unwrap();
        String::from_utf8_lossy(&got)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Write for Gate {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut open = self.open.0.lock().unwrap();
        while !*open {
            open = self.open.1.wait(open).unwrap();
        }
        self.got.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn lines_arrive_in_order_and_flush_waits_for_them() {
    let gate = Gate::default();
    gate.open();
    let log = AccessLog::new(LogFormat::Json, gate.clone());
    for i in 0..1000 {
        log.write(&record(&format!("/rest/{i}")).view());
    }
    assert!(log.flush(Duration::from_secs(10)));
    let lines = gate.lines();
    assert_eq!(lines.len(), 1000);
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["path"], format!("/rest/{i}"));
    }
    assert_eq!(log.dropped(), 0);
}

#[test]
fn a_stuck_sink_drops_and_counts_lines_instead_of_blocking() {
    let gate = Gate::default();
    let log = AccessLog::new(LogFormat::Json, gate.clone());
    // ~300 bytes a line: well past MAX_PENDING while the sink is stuck.
    let n = 2 * MAX_PENDING / 250;
    for i in 0..n {
        log.write(&record(&format!("/rest/{i}")).view());
    }
    let dropped = log.dropped();
    assert!(dropped > 0, "nothing dropped with the sink stuck");
    gate.open();
    assert!(log.flush(Duration::from_secs(10)));
    let lines = gate.lines();
    assert_eq!(lines.len() as u64 + dropped, n as u64);
    // What was kept is the oldest, in order.
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.contains(&format!("\"path\":\"/rest/{i}\"")),
            "line {i}: {l}"
        );
    }
    // And the log takes lines again once the sink drains.
    log.write(&record("/after").view());
    assert!(log.flush(Duration::from_secs(10)));
    assert!(gate.lines().last().unwrap().contains("/after"));
}

#[test]
fn dropping_the_log_writes_what_is_queued_and_ends_the_writer() {
    /// Tells the test when the writer thread has let go of it.
    struct Watched(Gate, mpsc::Sender<()>);
    impl Write for Watched {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Drop for Watched {
        fn drop(&mut self) {
            let _ = self.1.send(());
        }
    }
    let gate = Gate::default();
    gate.open();
    let (ended_tx, ended) = mpsc::channel();
    let log = AccessLog::new(LogFormat::Json, Watched(gate.clone(), ended_tx));
    for i in 0..10 {
        log.write(&record(&format!("/rest/{i}")).view());
    }
    drop(log);
    ended
        .recv_timeout(Duration::from_secs(10))
        .expect("the writer thread outlived its log");
    assert_eq!(gate.lines().len(), 10);
}

#[test]
fn a_closed_sink_ends_the_writer_and_lines_are_dropped() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = AccessLog::new(LogFormat::Json, Closed);
    log.write(&record("/first").view());
    // The flush is answered although the write failed; after it the
    // writer is gone and lines are dropped and counted, not kept.
    log.flush(Duration::from_secs(10));
    log.write(&record("/second").view());
    assert_eq!(log.dropped(), 2);
    assert!(!log.flush(Duration::from_secs(1)));
}
