//! gwload — the twenty-gateway benchmark's own HTTP/1.1 client (see bench/README.md).
//!
//! Two modes, both single-threaded (tokio current_thread), rustls + aws-lc-rs as the TLS client:
//!
//! * `gwload load`: N concurrent connections send GET requests in a loop until the duration is
//!   over. With `--close` every request opens a new TCP + TLS connection (full handshake: the
//!   client never resumes a session, whatever tickets the server hands out) — that is what the
//!   new-connection scenario measures. Without it, connections are kept alive (1 MiB scenario).
//!   Prints `key: value` lines for bench/harness.py.
//! * `gwload hold`: opens N keep-alive TLS connections, sends one request on each, then keeps them
//!   idle. Talks to the harness over stdin/stdout: prints `READY <open> <failed> <secs>`, then
//!   `STATUS <open>` for each `sample` line it reads; exits when stdin closes or after --max-hold.
//!
//! The server's handshake signature is verified; the certificate chain is not (like wrk/h2load
//! with a test CA). Only loopback targets are accepted; every run is bounded in time.
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug)]
struct SignatureOnly {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// --no-sig-verify: also skip the CertificateVerify signature check (the server's work is the same;
    /// only the client gets cheaper, so a fast server is less likely to be load-generator-bound)
    check_sig: bool,
}

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_sig {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_sig {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

struct Target {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    request: Vec<u8>,
}

impl Target {
    async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((c, name)) => Box::new(c.connect(name.clone(), tcp).await?),
        })
    }
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Reads one HTTP/1.1 response (Content-Length or chunked). `buf` carries over bytes already
/// read past the previous response. Returns (status, bytes on the wire, keep-alive).
async fn read_response(s: &mut Box<dyn Io>, buf: &mut Vec<u8>, tmp: &mut [u8]) -> std::io::Result<(u16, u64, bool)> {
    let hend = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(invalid("response head too large"));
        }
        let n = s.read(tmp).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..hend]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    let mut clen: Option<u64> = None;
    let mut chunked = false;
    let mut close = head.starts_with("http/1.0");
    for l in head.split("\r\n").skip(1) {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k.trim() {
                "content-length" => clen = v.parse().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
    }
    let mut total = hend as u64;
    buf.drain(..hend);
    if chunked {
        loop {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n") {
                    break p;
                }
                let n = s.read(tmp).await?;
                if n == 0 {
                    return Err(eof());
                }
                buf.extend_from_slice(&tmp[..n]);
            };
            let size_txt = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| invalid("bad chunk size"))?;
            let need = line_end + 2 + size + 2; // size line, data, CRLF (last chunk: no trailers expected)
            while buf.len() < need {
                let n = s.read(tmp).await?;
                if n == 0 {
                    return Err(eof());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            buf.drain(..need);
            total += need as u64;
            if size == 0 {
                break;
            }
        }
    } else if let Some(mut left) = clen {
        let have = (buf.len() as u64).min(left);
        buf.drain(..have as usize);
        left -= have;
        total += have;
        while left > 0 {
            let n = s.read(tmp).await?;
            if n == 0 {
                return Err(eof());
            }
            let used = (n as u64).min(left);
            if (used as usize) < n {
                buf.extend_from_slice(&tmp[used as usize..n]);
            }
            left -= used;
            total += used;
        }
    } else if status == 204 || status == 304 {
    } else {
        return Err(invalid("response without length"));
    }
    Ok((status, total, !close))
}

#[derive(Default)]
struct Stats {
    s2xx: u64,
    s4xx: u64,
    s_other: u64,
    errors: u64,
    conns: u64,
    bytes: u64,
    lat_us: Vec<u32>,
}

async fn load_worker(t: Rc<Target>, close: bool, deadline: Instant, timeout: Duration) -> Stats {
    let mut st = Stats::default();
    let mut conn: Option<Box<dyn Io>> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let r = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                conn = Some(t.connect().await?);
                st.conns += 1;
                buf.clear();
            }
            let s = conn.as_mut().unwrap();
            s.write_all(&t.request).await?;
            read_response(s, &mut buf, &mut tmp).await
        })
        .await;
        match r {
            Ok(Ok((status, bytes, keep))) => {
                st.lat_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                st.bytes += bytes;
                match status {
                    200..=299 => st.s2xx += 1,
                    400..=499 => st.s4xx += 1,
                    _ => st.s_other += 1,
                }
                if close || !keep {
                    conn = None; // dropping the stream closes the socket (no close_notify wait)
                }
            }
            _ => {
                if Instant::now() < deadline {
                    st.errors += 1;
                }
                conn = None;
            }
        }
    }
    st
}

async fn hold(t: Rc<Target>, n: usize, concurrency: usize, max_hold: Duration) {
    let open = Rc::new(Cell::new(0usize));
    let failed = Rc::new(Cell::new(0usize));
    let non200 = Rc::new(Cell::new(0usize));
    let sem = Rc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let t0 = Instant::now();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            for _ in 0..n {
                let (t, open, failed, non200, sem, done_tx) =
                    (t.clone(), open.clone(), failed.clone(), non200.clone(), sem.clone(), done_tx.clone());
                tokio::task::spawn_local(async move {
                    let permit = sem.acquire().await.unwrap();
                    let r = tokio::time::timeout(Duration::from_secs(20), async {
                        let mut s = t.connect().await?;
                        s.write_all(&t.request).await?;
                        let mut buf = Vec::new();
                        let mut tmp = vec![0u8; 16 * 1024];
                        let (status, _, keep) = read_response(&mut s, &mut buf, &mut tmp).await?;
                        Ok::<_, std::io::Error>((s, status, keep))
                    })
                    .await;
                    drop(permit);
                    match r {
                        Ok(Ok((mut s, status, keep))) if keep => {
                            if status != 200 {
                                non200.set(non200.get() + 1);
                            }
                            open.set(open.get() + 1);
                            let _ = done_tx.send(());
                            // idle: returns when the server closes the connection (or sends junk)
                            let mut one = [0u8; 1];
                            let _ = s.read(&mut one).await;
                            open.set(open.get() - 1);
                        }
                        _ => {
                            failed.set(failed.get() + 1);
                            let _ = done_tx.send(());
                        }
                    }
                });
            }
            drop(done_tx);
            for _ in 0..n {
                if done_rx.recv().await.is_none() {
                    break;
                }
            }
            println!("READY {} {} {:.2} {}", open.get(), failed.get(), t0.elapsed().as_secs_f64(), non200.get());
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            let end = tokio::time::sleep(max_hold);
            tokio::pin!(end);
            loop {
                tokio::select! {
                    _ = &mut end => break,
                    l = lines.next_line() => match l {
                        Ok(Some(l)) if l.trim() == "sample" => println!("STATUS {}", open.get()),
                        Ok(Some(_)) => {}
                        _ => break,
                    },
                }
            }
            println!("DONE");
        })
        .await;
    // returning drops the LocalSet and with it every held connection
}

fn usage() -> ! {
    eprintln!(
        "usage: gwload load --addr IP:PORT [--sni NAME] [--host HOST] [--path P] [-H 'K: V']... \
         [-c CONNS] [-d SECS] [--close] [--plain] [--no-sig-verify] [--timeout SECS]\n       \
         gwload hold --addr IP:PORT [--sni NAME] [--host HOST] [--path P] [-H 'K: V']... \
         [-n CONNS] [--concurrency N] [--max-hold SECS]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    if mode != "load" && mode != "hold" {
        usage();
    }
    let mut addr: Option<SocketAddr> = None;
    let (mut sni, mut host, mut path) = ("acme.example.test".to_string(), None::<String>, "/".to_string());
    let (mut conns, mut dur, mut close, mut plain, mut tmo) = (32usize, 10f64, false, false, 10f64);
    let mut check_sig = true;
    let (mut n, mut concurrency, mut max_hold) = (5000usize, 64usize, 180f64);
    let mut headers: Vec<String> = vec![];
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--addr" => addr = Some(v().parse().unwrap_or_else(|_| usage())),
            "--sni" => sni = v(),
            "--host" => host = Some(v()),
            "--path" => path = v(),
            "-H" | "--header" => headers.push(v()),
            "-c" => conns = v().parse().unwrap_or_else(|_| usage()),
            "-d" => dur = v().parse().unwrap_or_else(|_| usage()),
            "--timeout" => tmo = v().parse().unwrap_or_else(|_| usage()),
            "--close" => close = true,
            "--plain" => plain = true,
            "--no-sig-verify" => check_sig = false,
            "-n" => n = v().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => concurrency = v().parse().unwrap_or_else(|_| usage()),
            "--max-hold" => max_hold = v().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let addr = addr.unwrap_or_else(|| usage());
    if !addr.ip().is_loopback() {
        eprintln!("gwload: loopback targets only");
        std::process::exit(2);
    }
    let host = host.unwrap_or_else(|| sni.clone());
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gwload\r\n");
    for h in &headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if close && mode == "load" {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");

    let tls = if plain {
        None
    } else {
        // aws-lc-rs: its X25519 and AES-GCM (AVX-512) cost the client about half of what ring's
        // do, so the shared load core saturates later. X25519 only, as before with ring: the
        // provider's default list would also offer the post-quantum hybrid, which OpenSSL 3.0
        // peers cannot negotiate; every server does the same key exchange.
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
            ..rustls::crypto::aws_lc_rs::default_provider()
        });
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignatureOnly { provider, check_sig }))
            .with_no_client_auth();
        c.resumption = rustls::client::Resumption::disabled();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(sni.clone()).unwrap_or_else(|_| usage());
        Some((tokio_rustls::TlsConnector::from(Arc::new(c)), name))
    };
    let target = Rc::new(Target { addr, tls, request: req.into_bytes() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    if mode == "hold" {
        rt.block_on(hold(target, n, concurrency, Duration::from_secs_f64(max_hold)));
        return;
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(dur);
    let timeout = Duration::from_secs_f64(tmo);
    let local = tokio::task::LocalSet::new();
    let all: Vec<Stats> = local.block_on(&rt, async {
        let hs: Vec<_> = (0..conns)
            .map(|_| tokio::task::spawn_local(load_worker(target.clone(), close, deadline, timeout)))
            .collect();
        let mut out = vec![];
        for h in hs {
            out.push(h.await.expect("worker"));
        }
        out
    });
    let wall = start.elapsed().as_secs_f64();
    let mut t = Stats::default();
    for s in all {
        t.s2xx += s.s2xx;
        t.s4xx += s.s4xx;
        t.s_other += s.s_other;
        t.errors += s.errors;
        t.conns += s.conns;
        t.bytes += s.bytes;
        t.lat_us.extend(s.lat_us);
    }
    t.lat_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if t.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (t.lat_us.len() - 1) as f64).round() as usize;
        t.lat_us[i] as f64 / 1000.0
    };
    let total = t.s2xx + t.s4xx + t.s_other;
    println!("requests: {total}");
    println!("status_2xx: {}", t.s2xx);
    println!("status_4xx: {}", t.s4xx);
    println!("status_other: {}", t.s_other);
    println!("errors: {}", t.errors);
    println!("connections: {}", t.conns);
    println!("duration_s: {wall:.3}");
    println!("rps: {:.1}", total as f64 / wall);
    println!("conn_per_s: {:.1}", t.conns as f64 / wall);
    println!("bytes: {}", t.bytes);
    println!("mib_s: {:.2}", t.bytes as f64 / wall / 1048576.0);
    println!("p50_ms: {:.3}", pct(50.0));
    println!("p90_ms: {:.3}", pct(90.0));
    println!("p99_ms: {:.3}", pct(99.0));
}
