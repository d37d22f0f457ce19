//! `twenty-gateway healthcheck`: probe the admin listener from inside a container image that
//! has no curl (distroless). One blocking HTTP/1.1 `GET` on a plain TCP socket, a deadline over
//! the whole exchange, and only the status line is read: 2xx is healthy, anything else is not.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The admin listener of the shipped container configs (`listen.admin: 0.0.0.0:9901`).
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);
pub const DEFAULT_PATH: &str = "/healthz";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A status line longer than this is not an answer from the gateway's admin listener.
const MAX_STATUS_LINE: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the path must start with '/' and hold only visible ASCII characters")]
    BadPath,
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer with an HTTP status line")]
    NotHttp { addr: SocketAddr },
    #[error("{addr} answered {path} with status {status}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
    },
}

/// The address to connect to for a listener bound to `addr`: a wildcard bind (`0.0.0.0`, `::`)
/// is reached on the loopback address of its family.
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// `GET path` on `addr` (a wildcard address means loopback); `Ok(status)` for a 2xx answer
/// within `timeout`, counted from the start of the connect.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProbeError::BadPath);
    }
    let addr = connect_addr(addr);
    let deadline = Instant::now() + timeout;
    let timed_out = || ProbeError::Timeout { addr, timeout };
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed_out(),
        _ => ProbeError::Io { addr, source },
    };
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };

    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|source| {
        if source.kind() == std::io::ErrorKind::TimedOut {
            timed_out()
        } else {
            ProbeError::Connect { addr, source }
        }
    })?;
    stream
        .set_write_timeout(Some(left().ok_or_else(timed_out)?))
        .map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: twenty-gateway-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    stream
        .set_read_timeout(Some(left().ok_or_else(timed_out)?))
        .map_err(io)?;

    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_STATUS_LINE))
        .read_until(b'\n', &mut line)
        .map_err(io)?;
    let status = parse_status_line(&line).ok_or(ProbeError::NotHttp { addr })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::Status {
            addr,
            path: path.to_string(),
            status,
        })
    }
}

/// `HTTP/1.x NNN ...\r\n` → `NNN`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\n")?;
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ' && b != b'\r')
    {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    /// A one-connection server on a free loopback port: reads the request head, hands it to
    /// the test, then writes `answer` (or, with `None`, holds the connection until the client
    /// goes away).
    fn serve_once(answer: Option<&'static [u8]>) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut l = Vec::new();
                if reader.read_until(b'\n', &mut l).unwrap_or(0) == 0 || l == b"\r\n" {
                    break;
                }
                head.extend_from_slice(&l);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            match answer {
                Some(a) => {
                    let _ = s.write_all(a);
                }
                None => {
                    let _ = reader.read_to_end(&mut Vec::new());
                }
            }
        });
        (addr, rx)
    }

    #[test]
    fn healthy_on_2xx_and_sends_a_plain_get() {
        let (addr, head) = serve_once(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"));
        assert_eq!(probe(addr, "/healthz", DEFAULT_TIMEOUT).unwrap(), 200);
        let head = head.recv().unwrap();
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("Host: {addr}\r\n")), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
    }

    #[test]
    fn unhealthy_on_other_statuses() {
        let (addr, _) = serve_once(Some(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"));
        match probe(addr, "/readyz", DEFAULT_TIMEOUT) {
            Err(ProbeError::Status {
                status: 503, path, ..
            }) => assert_eq!(path, "/readyz"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_http_when_the_answer_is_not_a_status_line() {
        for answer in [&b"SSH-2.0-OpenSSH_9.2\r\n"[..], b"", b"HTTP/1.1 20"] {
            let (addr, _) = serve_once(Some(answer));
            assert!(
                matches!(
                    probe(addr, "/healthz", DEFAULT_TIMEOUT),
                    Err(ProbeError::NotHttp { .. })
                ),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn times_out_when_nothing_answers() {
        let (addr, head) = serve_once(None);
        let started = Instant::now();
        let timeout = Duration::from_millis(200);
        assert!(matches!(
            probe(addr, "/healthz", timeout),
            Err(ProbeError::Timeout { .. })
        ));
        assert!(head.recv().is_ok());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn connect_error_when_nothing_listens() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = probe(addr, "/healthz", DEFAULT_TIMEOUT).unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot connect to 127.0.0.1:"));
    }

    #[test]
    fn refuses_paths_that_would_break_the_request() {
        for path in ["healthz", "/a b", "/a\r\nX: y", "", "/é"] {
            assert!(
                matches!(
                    probe(DEFAULT_ADDR, path, DEFAULT_TIMEOUT),
                    Err(ProbeError::BadPath)
                ),
                "{path:?}"
            );
        }
    }

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        let v6: SocketAddr = "[::]:9901".parse().unwrap();
        let other: SocketAddr = "10.1.2.3:9901".parse().unwrap();
        assert_eq!(connect_addr(v4), DEFAULT_ADDR);
        assert_eq!(connect_addr(v6), "[::1]:9901".parse().unwrap());
        assert_eq!(connect_addr(other), other);
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 200\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 x\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None);
    }
}
