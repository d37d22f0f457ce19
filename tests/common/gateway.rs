//! The gateway process: [`GatewaySetup`] (a tempdir with the config, certificates and other
//! files) runs the real `twenty-gateway` binary and learns its addresses from the `listening`
//! log lines; [`Gateway`] is the running process (addresses, client connections, signals, exit,
//! config file edits). [`run_cli`] runs the binary to completion.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::{CertFiles, Conn, Lines, TIMEOUT, ca, parse_json_line};

pub const BIN: &str = env!("CARGO_BIN_EXE_twenty-gateway");

/// Builder for a gateway run: a tempdir with the config, certificates and other files;
/// `certs/default.crt|key` (covering [`DEFAULT_SANS`]) is always there.
pub struct GatewaySetup {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

/// Names the default certificate covers.
pub const DEFAULT_SANS: &[&str] = &["gw.test", "*.gw.test", "crm.acme.test", "crm.beta.test"];

impl Default for GatewaySetup {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewaySetup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        ca().issue(&dir.path().join("certs"), "default", DEFAULT_SANS);
        GatewaySetup {
            dir,
            env: Vec::new(),
        }
    }
    /// Issue another certificate as `certs/<name>.crt|key`.
    pub fn cert(&self, name: &str, sans: &[&str]) -> CertFiles {
        ca().issue(&self.dir.path().join("certs"), name, sans)
    }
    /// Write a file relative to the config directory.
    pub fn file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let p = self.config_path();
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// Start `twenty-gateway --config <dir>/gateway.yaml` and wait for all its listeners.
    pub async fn spawn(self, yaml: &str) -> Gateway {
        let path = self.write_config(yaml);
        let wanted = configured_listeners(yaml);
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("GATEWAY_CONFIG")
            .env("RUST_BACKTRACE", "0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn twenty-gateway");
        let stdout = Lines::new();
        let stderr = Lines::new();
        stdout.collect_from(child.stdout.take().unwrap());
        stderr.collect_from(child.stderr.take().unwrap());
        let pid = child.id();
        // A thread owns the child and publishes its exit status when it exits.
        let (exit_tx, exit) = watch::channel(None);
        std::thread::spawn(move || {
            let st = child.wait().expect("wait for twenty-gateway");
            let _ = exit_tx.send(Some(st));
        });
        let mut gw = Gateway {
            pid,
            exit,
            setup: self,
            https: None,
            http: None,
            admin: None,
            stdout,
            stderr,
        };
        for l in wanted {
            let line = gw
                .stdout
                .wait(|s| {
                    parse_json_line(s).is_some_and(|m| {
                        m.get("event").and_then(Value::as_str) == Some("listening")
                            && m.get("listener").and_then(Value::as_str) == Some(l.as_str())
                    })
                })
                .await;
            let Some(line) = line else {
                let status = gw.exited();
                panic!(
                    "gateway never logged `listening` for {l} (exit status: {status:?})\n--- config ---\n{yaml}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    gw.stdout.snapshot().join("\n"),
                    gw.stderr.snapshot().join("\n")
                );
            };
            let m = parse_json_line(&line).unwrap();
            let addr: SocketAddr = m
                .get("addr")
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("listening line without a socket addr: {line}"));
            match l.as_str() {
                "https" => gw.https = Some(addr),
                "http" => gw.http = Some(addr),
                "admin" => gw.admin = Some(addr),
                _ => {}
            }
        }
        gw
    }
}

/// Which of `listen.https|http|admin` the YAML sets to a non-null value.
fn configured_listeners(yaml: &str) -> Vec<String> {
    let v: serde_yaml::Value = match serde_yaml::from_str(yaml) {
        Ok(v) => v,
        Err(_) => return vec!["https".into()],
    };
    let mut out = Vec::new();
    for l in ["https", "http", "admin"] {
        if v.get("listen")
            .and_then(|x| x.get(l))
            .is_some_and(|x| !x.is_null())
        {
            out.push(l.to_string());
        }
    }
    out
}

pub async fn spawn_gateway(yaml: &str) -> Gateway {
    GatewaySetup::new().spawn(yaml).await
}

pub struct Gateway {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    pub setup: GatewaySetup,
    https: Option<SocketAddr>,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
        }
    }
}

impl Gateway {
    pub fn https(&self) -> SocketAddr {
        self.https.expect("https listener")
    }
    pub fn http(&self) -> SocketAddr {
        self.http.expect("http listener (listen.http)")
    }
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener")
    }
    pub fn dir(&self) -> &Path {
        self.setup.dir.path()
    }

    /// HTTP/1.1 over TLS with SNI and Host = `host`.
    pub async fn h1(&self, host: &str) -> Conn {
        Conn::h1(self.https(), host).await
    }
    /// HTTP/2 over TLS with SNI and :authority = `host`.
    pub async fn h2(&self, host: &str) -> Conn {
        Conn::h2(self.https(), host).await
    }
    /// [`Gateway::h2`] or [`Gateway::h1`]: for tests run over both.
    pub async fn conn(&self, h2: bool, host: &str) -> Conn {
        if h2 {
            self.h2(host).await
        } else {
            self.h1(host).await
        }
    }

    /// The gateway's process id (for /proc inspection).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Send a signal by name (`HUP`, `TERM`, ...) with the `kill` utility.
    pub fn signal(&self, sig: &str) {
        assert!(
            self.exited().is_none(),
            "process already exited\n{}",
            self.all_output()
        );
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Rewrite the config file in place (same inode).
    pub fn rewrite_config_in_place(&self, yaml: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.setup.config_path())
            .unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }

    /// Replace the config file by writing a temp file and renaming it over (like `sed -i`).
    pub fn replace_config(&self, yaml: &str) {
        let tmp = self.dir().join(".gateway.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.setup.config_path()).unwrap();
    }

    /// The exit status, if the process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Wait for the process to exit (up to `limit`), then for its output to be fully read.
    pub async fn wait_exit(&self, limit: Duration) -> ExitStatus {
        let mut rx = self.exit.clone();
        let Ok(Ok(st)) = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await else {
            panic!(
                "the process did not exit within {limit:?}\n{}",
                self.all_output()
            );
        };
        let st = st.expect("exit status");
        self.stdout.wait_eof().await;
        self.stderr.wait_eof().await;
        st
    }

    /// [`Gateway::wait_exit`], asserting exit status 0.
    pub async fn wait_exit_0(&self, limit: Duration) {
        let st = self.wait_exit(limit).await;
        assert_eq!(
            st.code(),
            Some(0),
            "exit status {st:?}\n{}",
            self.all_output()
        );
    }

    /// Send SIGTERM and wait for the exit status (and the end of its output).
    pub async fn terminate(&self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(TIMEOUT * 3).await
    }
}

/// Run the binary to completion with optional stdin.
pub fn run_cli(
    args: &[&str],
    stdin: Option<&[u8]>,
    cwd: Option<&Path>,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("GATEWAY_CONFIG");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(input).unwrap();
        drop(s);
    }
    // Bounded: a hung CLI must fail the test, not hang the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!(
                "`twenty-gateway {}` did not exit within 20s",
                args.join(" ")
            );
        }
    }
}
