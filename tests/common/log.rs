//! What the gateway prints: [`Lines`] (a child's output, awaitable line by line) and its JSON
//! log lines — access lines by request id, events by name or by any predicate.

use std::io::{BufRead, BufReader};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::watch;

use super::{Gateway, TIMEOUT};

/// A JSON log line.
pub type LogLine = Map<String, Value>;

/// Lines a child process printed, awaitable.
#[derive(Clone)]
pub struct Lines {
    tx: Arc<watch::Sender<LinesState>>,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    eof: bool,
}

impl Lines {
    pub(super) fn new() -> Self {
        Lines {
            tx: Arc::new(watch::channel(LinesState::default()).0),
        }
    }

    /// Read `r` line by line on a thread until it ends.
    pub(super) fn collect_from<R: std::io::Read + Send + 'static>(&self, r: R) {
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&line)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        tx.send_modify(|st| st.lines.push(s));
                    }
                }
            }
            tx.send_modify(|st| st.eof = true);
        });
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.tx.borrow().lines.clone()
    }
    pub fn is_eof(&self) -> bool {
        self.tx.borrow().eof
    }
    /// Lines printed so far (a start mark for [`Lines::wait_after`]).
    pub fn line_count(&self) -> usize {
        self.tx.borrow().lines.len()
    }

    /// The first line matching `pred`, waiting up to [`TIMEOUT`]; None on timeout or EOF.
    pub async fn wait(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_after(0, pred).await
    }

    /// Like [`Lines::wait`], but only lines printed after the first `start` lines count.
    pub async fn wait_after(&self, start: usize, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut rx = self.tx.subscribe();
        let r = tokio::time::timeout(
            TIMEOUT,
            rx.wait_for(|st| st.eof || st.lines.iter().skip(start).any(|l| pred(l))),
        )
        .await;
        match r {
            Ok(Ok(st)) => st.lines.iter().skip(start).find(|l| pred(l)).cloned(),
            _ => None,
        }
    }

    /// Wait until the stream is closed (the process exited and everything was read).
    pub async fn wait_eof(&self) {
        let mut rx = self.tx.subscribe();
        let r = tokio::time::timeout(TIMEOUT, rx.wait_for(|st| st.eof)).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "output stream not closed within {TIMEOUT:?}"
        );
    }
}

/// Parse a log line as a JSON object (None if it is not one).
pub fn parse_json_line(l: &str) -> Option<LogLine> {
    match serde_json::from_str::<Value>(l) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A string field of a log line.
pub fn str_field<'a>(m: &'a LogLine, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

impl Gateway {
    /// Every JSON object printed on stdout so far.
    pub fn json_lines(&self) -> Vec<LogLine> {
        self.stdout
            .snapshot()
            .iter()
            .filter_map(|l| parse_json_line(l))
            .collect()
    }

    /// Access lines (`"event":"request"`) so far.
    pub fn access_lines(&self) -> Vec<LogLine> {
        self.json_lines()
            .into_iter()
            .filter(|m| str_field(m, "event") == Some("request"))
            .collect()
    }

    /// The access line for `request_id` (waits for it).
    pub async fn access_line(&self, request_id: &str) -> LogLine {
        self.wait_log_after(0, &format!("the access line of {request_id:?}"), |m| {
            str_field(m, "event") == Some("request")
                && str_field(m, "request_id") == Some(request_id)
        })
        .await
    }

    /// `outcome` of the access line for `request_id`.
    pub async fn outcome(&self, request_id: &str) -> String {
        str_field(&self.access_line(request_id).await, "outcome")
            .unwrap_or("<missing>")
            .to_string()
    }

    /// Everything the process printed on stdout and stderr so far.
    pub fn all_output(&self) -> String {
        let mut s = self.stdout.snapshot().join("\n");
        s.push('\n');
        s.push_str(&self.stderr.snapshot().join("\n"));
        s
    }

    /// Wait for a JSON log line printed after the first `start` lines that satisfies `pred`;
    /// panics naming `what` (with all output) if none comes within [`TIMEOUT`].
    pub async fn wait_log_after(
        &self,
        start: usize,
        what: &str,
        pred: impl Fn(&LogLine) -> bool,
    ) -> LogLine {
        let line = self
            .stdout
            .wait_after(start, |l| parse_json_line(l).is_some_and(|m| pred(&m)))
            .await;
        match line.as_deref().and_then(parse_json_line) {
            Some(m) => m,
            None => panic!(
                "no log line for {what} within {TIMEOUT:?}{}; stdout:\n{}\nstderr:\n{}",
                if self.stdout.is_eof() {
                    " (stdout closed: the process exited)"
                } else {
                    ""
                },
                self.stdout.snapshot().join("\n"),
                self.stderr.snapshot().join("\n")
            ),
        }
    }

    /// Wait for a JSON log line printed after `start` lines whose `event` satisfies `pred`.
    pub async fn wait_event_after(&self, start: usize, pred: impl Fn(&str) -> bool) -> LogLine {
        self.wait_log_after(start, "the expected event", |m| {
            str_field(m, "event").is_some_and(&pred)
        })
        .await
    }
}
