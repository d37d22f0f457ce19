//! Real Redis for tests: `redis-server` child processes on free ports (or a
//! unix socket) with persistence off, and a real 3-master Redis Cluster made
//! with `redis-cli --cluster create`. Killed when dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_WITHIN: Duration = Duration::from_secs(20);

/// A port that is free, and (for cluster nodes) whose bus port +10000 is too.
fn free_port(with_bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().expect("local addr").port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
    /// TLS only: the CA that issued the server's certificate.
    pub tls_ca: Option<PathBuf>,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// On 127.0.0.1 and a free port.
    pub fn tcp() -> Self {
        Self::start_tcp(&[], false)
    }

    /// On a unix socket only (`--port 0`).
    pub fn unix() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("redis.sock");
        let args = vec![
            "--port".into(),
            "0".into(),
            "--unixsocket".into(),
            socket.display().to_string(),
            "--unixsocketperm".into(),
            "700".into(),
        ];
        let mut s = RedisServer {
            child: None,
            port: None,
            socket: Some(socket),
            tls_ca: None,
            args,
            dir,
        };
        s.spawn();
        s
    }

    /// TLS only (`--port 0 --tls-port P`), with this certificate (which must
    /// cover `localhost`) issued by `ca`; clients need no certificate.
    pub fn tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port(false);
        let args = vec![
            "--port".to_string(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut s = RedisServer {
            child: None,
            port: Some(port),
            socket: None,
            tls_ca: Some(ca.to_path_buf()),
            args,
            dir,
        };
        s.spawn();
        s
    }

    fn start_tcp(extra: &[&str], cluster: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port(cluster);
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        if cluster {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                dir.path().join("nodes.conf").display().to_string(),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ]);
        }
        let mut s = RedisServer {
            child: None,
            port: Some(port),
            socket: None,
            tls_ca: None,
            args,
            dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        match (&self.socket, self.port) {
            (Some(s), _) => format!("unix://{}", s.display()),
            (None, Some(p)) if self.tls_ca.is_some() => format!("rediss://localhost:{p}"),
            (None, Some(p)) => format!("redis://127.0.0.1:{p}"),
            (None, None) => unreachable!("a server has a port or a socket"),
        }
    }

    /// `redis-cli` against this server; stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        match (&self.socket, self.port) {
            (Some(s), _) => cmd.arg("-s").arg(s),
            (None, Some(p)) => cmd.args(["-h", "127.0.0.1", "-p", &p.to_string()]),
            (None, None) => unreachable!(),
        };
        if let Some(ca) = &self.tls_ca {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same arguments (same port or socket).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `calls=` of `INFO commandstats` for `cmd` (e.g. `evalsha`).
    pub fn calls(&self, cmd: &str) -> u64 {
        command_calls(&self.cli(&["INFO", "commandstats"]), cmd)
    }

    /// Every key name with its PTTL.
    pub fn keys_with_ttl(&self) -> Vec<(String, i64)> {
        self.cli(&["--scan"])
            .lines()
            .filter(|k| !k.is_empty())
            .map(|k| {
                let ttl = self.cli(&["PTTL", k]).trim().parse().unwrap_or(-3);
                (k.to_string(), ttl)
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn command_calls(info: &str, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Three masters, no replicas, all 16384 slots assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_tcp(&[], true)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port.expect("tcp")))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + READY_WITHIN;
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Summed over the nodes.
    pub fn calls(&self, cmd: &str) -> u64 {
        self.nodes.iter().map(|n| n.calls(cmd)).sum()
    }

    pub fn keys_with_ttl(&self) -> Vec<(String, i64)> {
        self.nodes.iter().flat_map(|n| n.keys_with_ttl()).collect()
    }
}
