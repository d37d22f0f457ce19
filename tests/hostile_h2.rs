//! Hostile HTTP/2, frame by frame: a minimal raw HTTP/2 client over TLS (ALPN h2) that sends
//! what well-behaved client libraries refuse to send (connection-specific headers, CR/LF in
//! values, lying `content-length`, too many streams, reset floods, CONTINUATION floods), and
//! checks both the frames the gateway answers with and what reached the recording upstream.
//!
//! HPACK: requests are encoded as literal fields without indexing (no Huffman); the client
//! announces a header table size of 0, so the gateway's responses carry no dynamic-table
//! references, and only `:status` is decoded (static index or a Huffman/plain 3-digit literal).

pub mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One header field as raw bytes (name, value).
type Field<'a> = (&'a [u8], &'a [u8]);

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const COMPRESSION_ERROR: u32 = 0x9;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

// ---------------------------------------------------------------------------------------------
// HPACK (just enough)
// ---------------------------------------------------------------------------------------------

fn hpack_int(out: &mut Vec<u8>, prefix_bits: u8, flags: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, new names, raw (non-Huffman) strings.
/// Bytes are taken as given: nothing is validated (that is the point).
fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(0x00);
        hpack_int(&mut out, 7, 0, k.len());
        out.extend_from_slice(k);
        hpack_int(&mut out, 7, 0, v.len());
        out.extend_from_slice(v);
    }
    out
}

fn read_int(b: &[u8], i: &mut usize, prefix_bits: u8) -> Option<usize> {
    let max = (1usize << prefix_bits) - 1;
    let mut v = (*b.get(*i)? as usize) & max;
    *i += 1;
    if v < max {
        return Some(v);
    }
    let mut m = 0;
    loop {
        let byte = *b.get(*i)?;
        *i += 1;
        v += ((byte & 0x7f) as usize) << m;
        m += 7;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
}

/// Huffman-decode a string of ASCII digits (RFC 7541 Appendix B codes for '0'..='9').
fn huffman_digits(b: &[u8]) -> Option<String> {
    const CODES: [(u32, u8); 10] = [
        (0b00000, 5),
        (0b00001, 5),
        (0b00010, 5),
        (0b011001, 6),
        (0b011010, 6),
        (0b011011, 6),
        (0b011100, 6),
        (0b011101, 6),
        (0b011110, 6),
        (0b011111, 6),
    ];
    let bits: Vec<u8> = b
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut pos = 0;
    'outer: while pos < bits.len() {
        for (d, (code, len)) in CODES.iter().enumerate() {
            let len = *len as usize;
            if pos + len <= bits.len() {
                let v = bits[pos..pos + len]
                    .iter()
                    .fold(0u32, |a, b| a << 1 | u32::from(*b));
                if v == *code {
                    out.push(char::from(b'0' + d as u8));
                    pos += len;
                    continue 'outer;
                }
            }
        }
        // padding: the rest must be all ones (EOS prefix), fewer than 8 bits
        if bits.len() - pos < 8 && bits[pos..].iter().all(|b| *b == 1) {
            break;
        }
        return None;
    }
    Some(out)
}

/// `:status` of a response header block (it is always the first field).
fn status_of(b: &[u8]) -> Option<u16> {
    let mut i = 0;
    // dynamic table size updates (001xxxxx)
    while b.get(i)? & 0xe0 == 0x20 {
        read_int(b, &mut i, 5)?;
    }
    let first = *b.get(i)?;
    if first & 0x80 != 0 {
        let idx = read_int(b, &mut i, 7)?;
        return [200, 204, 206, 304, 400, 404, 500]
            .get(idx.checked_sub(8)?)
            .copied();
    }
    // literal with an indexed name: 01xxxxxx (incremental), 0000xxxx, 0001xxxx
    let idx = if first & 0xc0 == 0x40 {
        read_int(b, &mut i, 6)?
    } else {
        read_int(b, &mut i, 4)?
    };
    if idx != 8 {
        return None;
    }
    let huffman = b.get(i)? & 0x80 != 0;
    let len = read_int(b, &mut i, 7)?;
    let raw = b.get(i..i + len)?;
    let s = if huffman {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    s.parse().ok()
}

#[test]
fn hpack_helpers_decode_statuses() {
    assert_eq!(status_of(&[0x88]), Some(200));
    assert_eq!(status_of(&[0x20, 0x8c]), Some(400));
    let enc = |s: &str| -> Vec<u8> {
        let mut bits = Vec::new();
        for c in s.bytes() {
            let (code, len) = [
                (0b00000u32, 5u8),
                (0b00001, 5),
                (0b00010, 5),
                (0b011001, 6),
                (0b011010, 6),
                (0b011011, 6),
                (0b011100, 6),
                (0b011101, 6),
                (0b011110, 6),
                (0b011111, 6),
            ][(c - b'0') as usize];
            for i in (0..len).rev() {
                bits.push(((code >> i) & 1) as u8);
            }
        }
        while bits.len() % 8 != 0 {
            bits.push(1);
        }
        bits.chunks(8)
            .map(|c| c.iter().fold(0u8, |a, b| a << 1 | b))
            .collect()
    };
    for st in ["431", "401", "429", "502", "200"] {
        let h = enc(st);
        let mut b = vec![0x48, 0x80 | h.len() as u8];
        b.extend_from_slice(&h);
        assert_eq!(status_of(&b), Some(st.parse().unwrap()), "{st}");
        let mut plain = vec![0x08, 3];
        plain.extend_from_slice(st.as_bytes());
        assert_eq!(status_of(&plain), Some(st.parse().unwrap()));
    }
    let mut b = Vec::new();
    hpack_int(&mut b, 7, 0, 300);
    let mut i = 0;
    assert_eq!(read_int(&b, &mut i, 7), Some(300));
}

// ---------------------------------------------------------------------------------------------
// the raw client
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct StreamState {
    status: Option<u16>,
    block: Vec<u8>,
    body: Vec<u8>,
    ended: bool,
    reset: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
enum End {
    Response { status: Option<u16>, body: Vec<u8> },
    Reset(u32),
    GoAway(u32),
    Closed,
}

struct H2 {
    io: TlsStream,
    buf: Vec<u8>,
    streams: HashMap<u32, StreamState>,
    server_settings: Vec<(u16, u32)>,
    goaway: Option<(u32, u32)>,
    eof: bool,
    pending_headers: Option<u32>,
}

impl H2 {
    async fn connect(gw: &Gateway) -> H2 {
        let (io, info) = tls_connect(gw.https(), &TlsOpts::h2("acme.gw.test")).await;
        assert_eq!(info.alpn.as_deref(), Some(&b"h2"[..]), "ALPN h2");
        let mut c = H2 {
            io,
            buf: Vec::new(),
            streams: HashMap::new(),
            server_settings: Vec::new(),
            goaway: None,
            eof: false,
            pending_headers: None,
        };
        c.io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut settings = Vec::new();
        settings.extend_from_slice(&SETTINGS_HEADER_TABLE_SIZE.to_be_bytes());
        settings.extend_from_slice(&0u32.to_be_bytes());
        c.frame(SETTINGS, 0, 0, &settings).await;
        // wait for the server's SETTINGS (and ACK it)
        let t = Instant::now();
        while c.server_settings.is_empty() && !c.eof && t.elapsed() < TIMEOUT {
            c.pump(TIMEOUT).await;
        }
        c
    }

    fn frame_bytes(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    async fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        let f = Self::frame_bytes(ty, flags, stream, payload);
        let _ = self.io.write_all(&f).await;
        let _ = self.io.flush().await;
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    fn request_fields<'a>(
        path: &'a str,
        extra: &[(&'a [u8], &'a [u8])],
    ) -> Vec<(&'a [u8], &'a [u8])> {
        let mut f: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"acme.gw.test"),
            (b":path", path.as_bytes()),
        ];
        f.extend_from_slice(extra);
        f
    }

    /// HEADERS (END_HEADERS, END_STREAM unless `body_follows`).
    async fn headers(&mut self, stream: u32, fields: &[(&[u8], &[u8])], body_follows: bool) {
        let flags = END_HEADERS | if body_follows { 0 } else { END_STREAM };
        self.frame(HEADERS, flags, stream, &block(fields)).await;
    }

    async fn data(&mut self, stream: u32, data: &[u8], end: bool) {
        self.frame(DATA, if end { END_STREAM } else { 0 }, stream, data)
            .await;
    }

    /// Read one frame (or time out) and update the state; SETTINGS and PING are answered.
    async fn pump(&mut self, wait: Duration) -> bool {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let ty = self.buf[3];
                    let flags = self.buf[4];
                    let id =
                        u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                            & 0x7fff_ffff;
                    let payload: Vec<u8> = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    self.on_frame(ty, flags, id, payload).await;
                    return true;
                }
            }
            if self.eof {
                return false;
            }
            let mut tmp = vec![0u8; 65536];
            match tokio::time::timeout(wait, self.io.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.eof = true;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => return false,
            }
        }
    }

    async fn on_frame(&mut self, ty: u8, flags: u8, id: u32, payload: Vec<u8>) {
        match ty {
            SETTINGS if flags & ACK == 0 => {
                for s in payload.chunks(6) {
                    if s.len() == 6 {
                        self.server_settings.push((
                            u16::from_be_bytes([s[0], s[1]]),
                            u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                        ));
                    }
                }
                self.frame(SETTINGS, ACK, 0, &[]).await;
            }
            PING if flags & ACK == 0 => self.frame(PING, ACK, 0, &payload).await,
            GOAWAY => {
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                self.goaway = Some((last, code));
            }
            RST_STREAM => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                self.streams.entry(id).or_default().reset = Some(code);
            }
            HEADERS | CONTINUATION => {
                let st = self.streams.entry(id).or_default();
                let mut p = payload.as_slice();
                if ty == HEADERS {
                    if flags & 0x8 != 0 {
                        let pad = usize::from(p[0]);
                        p = &p[1..p.len() - pad];
                    }
                    if flags & 0x20 != 0 {
                        p = &p[5..];
                    }
                }
                st.block.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    if st.status.is_none() {
                        st.status = status_of(&st.block);
                    }
                    st.block.clear();
                    self.pending_headers = None;
                } else {
                    self.pending_headers = Some(id);
                }
                if ty == HEADERS && flags & END_STREAM != 0 {
                    st.ended = true;
                }
            }
            DATA => {
                let st = self.streams.entry(id).or_default();
                st.body.extend_from_slice(&payload);
                if flags & END_STREAM != 0 {
                    st.ended = true;
                }
                // keep the windows open
                if !payload.is_empty() {
                    let inc = (payload.len() as u32).to_be_bytes();
                    self.frame(WINDOW_UPDATE, 0, 0, &inc).await;
                    if !st_ended(&self.streams, id) {
                        self.frame(WINDOW_UPDATE, 0, id, &inc).await;
                    }
                }
            }
            _ => {}
        }
    }

    /// Pump until stream `id` has ended one way or another.
    async fn wait_stream(&mut self, id: u32) -> End {
        let t = Instant::now();
        loop {
            if let Some(st) = self.streams.get(&id) {
                if let Some(code) = st.reset {
                    return End::Reset(code);
                }
                if st.ended {
                    return End::Response {
                        status: st.status,
                        body: st.body.clone(),
                    };
                }
            }
            if let Some((last, code)) = self.goaway
                && (id > last || self.eof)
            {
                return End::GoAway(code);
            }
            if self.eof {
                return End::Closed;
            }
            assert!(
                t.elapsed() < TIMEOUT,
                "stream {id}: nothing within {TIMEOUT:?}"
            );
            self.pump(Duration::from_millis(200)).await;
        }
    }

    /// Pump until GOAWAY or EOF (or `wait` passes); the GOAWAY code if any.
    async fn wait_goaway(&mut self, wait: Duration) -> Option<u32> {
        let t = Instant::now();
        while self.goaway.is_none() && !self.eof && t.elapsed() < wait {
            self.pump(Duration::from_millis(100)).await;
        }
        self.goaway.map(|(_, c)| c)
    }
}

fn st_ended(streams: &HashMap<u32, StreamState>, id: u32) -> bool {
    streams
        .get(&id)
        .is_some_and(|s| s.ended || s.reset.is_some())
}

async fn gateway(up: &Upstream, limits: &[&str]) -> Gateway {
    Conf::one(up).limits(limits).spawn().await
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn raw_client_sanity_a_plain_request_is_served() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    let mut c = H2::connect(&gw).await;
    let a = acme_auth();
    c.headers(
        1,
        &H2::request_fields("/rest/ok", &[(b"authorization", a.as_bytes())]),
        false,
    )
    .await;
    match c.wait_stream(1).await {
        End::Response { status, body } => {
            assert_eq!(status, Some(200));
            assert!(String::from_utf8_lossy(&body).contains("/rest/ok"));
        }
        e => panic!("{e:?}"),
    }
    // a gateway error: 401 is a Huffman literal
    c.headers(3, &H2::request_fields("/rest/ok", &[]), false)
        .await;
    match c.wait_stream(3).await {
        End::Response { status, body } => {
            assert_eq!(status, Some(401));
            let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(j["error"], "UNAUTHENTICATED");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(up.requests().len(), 1);
}

/// Connection-specific headers, CR/LF/NUL in values, uppercase names, misplaced pseudo-headers:
/// each is a malformed request (RFC 9113 §8.2) → stream error PROTOCOL_ERROR (or a 400), never
/// forwarded — in particular never turned into an injected header line on the HTTP/1.1 hop.
#[tokio::test]
async fn malformed_h2_header_blocks_are_stream_errors_and_never_forwarded() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    let mut c = H2::connect(&gw).await;
    let a = acme_auth();
    let cases: Vec<(&str, Vec<Field>)> = vec![
        (
            "connection: keep-alive",
            vec![(b"connection", b"keep-alive")],
        ),
        (
            "transfer-encoding: chunked",
            vec![(b"transfer-encoding", b"chunked")],
        ),
        ("keep-alive", vec![(b"keep-alive", b"timeout=5")]),
        (
            "proxy-connection",
            vec![(b"proxy-connection", b"keep-alive")],
        ),
        ("upgrade", vec![(b"upgrade", b"websocket")]),
        ("te: gzip", vec![(b"te", b"gzip")]),
        (
            "CRLF injection in a value",
            vec![(b"x-a", b"1\r\nx-injected: yes")],
        ),
        ("LF in a value", vec![(b"x-a", b"1\nx-injected: yes")]),
        ("CR in a value", vec![(b"x-a", b"1\rx")]),
        ("NUL in a value", vec![(b"x-a", b"1\0x")]),
        (
            "CRLF in the authorization value",
            vec![
                (b"x-b", b"ok"),
                (b"authorization", b"Bearer x\r\nx-injected: yes"),
            ],
        ),
        ("uppercase header name", vec![(b"X-Upper", b"1")]),
        ("space in a header name", vec![(b"x a", b"1")]),
        ("colon in a header name", vec![(b"x:a", b"1")]),
        (
            "pseudo-header after a regular one",
            vec![(b"x-a", b"1"), (b":method", b"POST")],
        ),
        ("unknown pseudo-header", vec![(b":evil", b"1")]),
        ("CRLF in :path", vec![]),
        ("space in :path", vec![]),
    ];
    let mut failures = Vec::new();
    let mut id = 1u32;
    for (name, extra) in &cases {
        let path = format!("/rest/h2bad{id}");
        let mut fields = H2::request_fields(&path, &[(b"authorization", a.as_bytes())]);
        let bad_path;
        match *name {
            "CRLF in :path" => {
                bad_path = format!("{path}\r\nx-injected: yes");
                fields[3].1 = bad_path.as_bytes();
            }
            "space in :path" => {
                bad_path = format!("{path} HTTP/1.1\r\nx-injected: yes\r\n\r\nGET /rest/smuggled");
                fields[3].1 = bad_path.as_bytes();
            }
            _ => {}
        }
        if name.contains("authorization") {
            fields.retain(|(k, _)| *k != b"authorization");
        }
        fields.extend_from_slice(extra);
        c.headers(id, &fields, false).await;
        match c.wait_stream(id).await {
            // RFC 9113 §8.1.1 says stream error; h2 makes undecodable header fields a
            // connection error (GOAWAY PROTOCOL_ERROR / COMPRESSION_ERROR) — a refusal too.
            End::Reset(PROTOCOL_ERROR)
            | End::GoAway(PROTOCOL_ERROR)
            | End::GoAway(COMPRESSION_ERROR) => {}
            End::Response {
                status: Some(400),
                body,
            } => {
                // a gateway 400 is acceptable if it is the JSON error
                let ok = serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|j| j["error"] == "BAD_REQUEST");
                if !ok {
                    failures.push(format!("{name}: 400 without the JSON error"));
                }
            }
            e => failures.push(format!("{name}: {e:?} (want RST_STREAM PROTOCOL_ERROR)")),
        }
        if c.goaway.is_some() || c.eof {
            // a connection error is acceptable too, but then continue on a new connection
            c = H2::connect(&gw).await;
        }
        id += 2;
    }
    // `te: trailers` is the one allowed TE value: served (the check is specific).
    let mut fields =
        H2::request_fields("/rest/h2-te-trailers", &[(b"authorization", a.as_bytes())]);
    fields.push((b"te", b"trailers"));
    c.headers(id, &fields, false).await;
    match c.wait_stream(id).await {
        End::Response {
            status: Some(200), ..
        } => {}
        e => failures.push(format!("te: trailers: {e:?} (want 200)")),
    }
    // The connection survived the stream errors and still serves.
    id += 2;
    c.headers(
        id,
        &H2::request_fields("/rest/h2-after", &[(b"authorization", a.as_bytes())]),
        false,
    )
    .await;
    match c.wait_stream(id).await {
        End::Response {
            status: Some(200), ..
        } => {}
        e => failures.push(format!("request after the stream errors: {e:?}")),
    }
    let seen: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    if seen != ["/rest/h2-te-trailers", "/rest/h2-after"] {
        failures.push(format!("upstream saw {seen:?}"));
    }
    for r in up.requests() {
        if r.has("x-injected") || r.has("te") {
            failures.push(format!("injected header upstream: {:?}", r.headers));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `content-length` is checked against the DATA actually sent (RFC 9113 §8.1.1): a mismatch
/// is a stream error, and the upstream never receives a complete request with that length.
#[tokio::test]
async fn h2_content_length_must_match_data() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    let mut c = H2::connect(&gw).await;
    let a = acme_auth();
    let mut failures = Vec::new();
    // `streamed`: the lie only shows after the announced length was already complete and may
    // have been streamed upstream; the upstream then has exactly the announced, coherent body.
    for (id, name, cl, chunks, streamed) in [
        (
            1u32,
            "less DATA than content-length",
            "10",
            vec![&b"abc"[..]],
            false,
        ),
        (
            3,
            "more DATA than content-length",
            "2",
            vec![&b"hello"[..]],
            false,
        ),
        (
            5,
            "more DATA in a second frame",
            "5",
            vec![&b"hello"[..], &b"!"[..]],
            true,
        ),
        (7, "content-length without any DATA", "5", vec![], false),
        (9, "negative content-length", "-1", vec![&b"x"[..]], false),
        (
            11,
            "non-numeric content-length",
            "5x",
            vec![&b"hello"[..]],
            false,
        ),
    ] {
        let path = format!("/rest/h2cl{id}");
        let mut fields = H2::request_fields(&path, &[(b"authorization", a.as_bytes())]);
        fields[0].1 = b"POST";
        fields.push((b"content-length", cl.as_bytes()));
        c.headers(id, &fields, !chunks.is_empty()).await;
        for (i, ch) in chunks.iter().enumerate() {
            c.data(id, ch, i + 1 == chunks.len()).await;
        }
        match c.wait_stream(id).await {
            End::Reset(PROTOCOL_ERROR) => {}
            End::Response {
                status: Some(400), ..
            } => {}
            End::Response {
                status: Some(200), ..
            } if streamed => {}
            e => failures.push(format!(
                "{name}: {e:?} (want RST_STREAM PROTOCOL_ERROR or 400)"
            )),
        }
        if c.goaway.is_some() || c.eof {
            c = H2::connect(&gw).await;
        }
        for r in up.requests().iter().filter(|r| r.path() == path) {
            let announced: Option<usize> = r.header("content-length").and_then(|v| v.parse().ok());
            let complete = announced == Some(r.body.len());
            let coherent = streamed && r.body == b"hello";
            if complete && !coherent {
                failures.push(format!(
                    "{name}: upstream received a complete request for a lying content-length: {:?} body {:?}",
                    r.headers,
                    String::from_utf8_lossy(&r.body)
                ));
            }
            if announced.is_some_and(|n| r.body.len() > n) {
                failures.push(format!(
                    "{name}: upstream body longer than its content-length"
                ));
            }
        }
    }
    // A matching content-length is fine.
    let mut fields = H2::request_fields("/rest/h2cl-ok", &[(b"authorization", a.as_bytes())]);
    fields[0].1 = b"POST";
    fields.push((b"content-length", b"5"));
    c.headers(21, &fields, true).await;
    c.data(21, b"hel", false).await;
    c.data(21, b"lo", true).await;
    match c.wait_stream(21).await {
        End::Response {
            status: Some(200), ..
        } => {}
        e => failures.push(format!("matching content-length: {e:?}")),
    }
    let ok = up
        .wait_for("the matching request", |v| {
            v.iter().any(|r| r.path() == "/rest/h2cl-ok" && r.complete)
        })
        .await;
    let g = ok.iter().find(|r| r.path() == "/rest/h2cl-ok").unwrap();
    assert_eq!(g.body, b"hello");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `h2_max_concurrent_streams: 2`: the gateway announces it, a third concurrent stream is
/// refused (REFUSED_STREAM) and never reaches the upstream; once one finishes, new ones work.
#[tokio::test]
async fn h2_concurrent_streams_are_capped() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &["h2_max_concurrent_streams: 2"]).await;
    let mut c = H2::connect(&gw).await;
    assert!(
        c.server_settings
            .contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 2)),
        "SETTINGS_MAX_CONCURRENT_STREAMS=2 announced: {:?}",
        c.server_settings
    );
    let a = acme_auth();
    // 2 streams that hang at the upstream, then 8 more at once
    for id in [1u32, 3] {
        c.headers(
            id,
            &H2::request_fields(
                &format!("/rest/s{id}/_hang"),
                &[(b"authorization", a.as_bytes())],
            ),
            false,
        )
        .await;
    }
    up.wait_for("2 hanging requests", |v| v.len() == 2).await;
    let mut extra = Vec::new();
    for id in (5u32..21).step_by(2) {
        c.headers(
            id,
            &H2::request_fields(
                &format!("/rest/s{id}/_hang"),
                &[(b"authorization", a.as_bytes())],
            ),
            false,
        )
        .await;
        extra.push(id);
    }
    for id in &extra {
        assert_eq!(
            c.wait_stream(*id).await,
            End::Reset(REFUSED_STREAM),
            "stream {id} over the limit"
        );
    }
    // nothing more reached the upstream while two were in flight
    assert_served(&gw, &up, "beyond the stream cap").await;
    let mut hanging: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path().ends_with("/_hang"))
        .map(|r| r.target)
        .collect();
    hanging.sort(); // the two concurrent streams may reach the upstream in either order
    assert_eq!(hanging, ["/rest/s1/_hang", "/rest/s3/_hang"]);
    // finish both; then a new stream on the same connection is accepted
    up.gates().hang.add_permits(2);
    for id in [1u32, 3] {
        assert!(
            matches!(
                c.wait_stream(id).await,
                End::Response {
                    status: Some(200),
                    ..
                }
            ),
            "stream {id}"
        );
    }
    c.headers(
        31,
        &H2::request_fields("/rest/after", &[(b"authorization", a.as_bytes())]),
        false,
    )
    .await;
    assert!(matches!(
        c.wait_stream(31).await,
        End::Response {
            status: Some(200),
            ..
        }
    ));
}

/// A header list over `max_header_bytes` is refused on that stream without reaching the upstream:
/// up to twice the limit with the gateway's JSON 431 (logged like every refusal), past that by the
/// h2 codec (431, reset or GOAWAY); under the limit it is served.
#[tokio::test]
async fn h2_header_list_over_max_header_bytes_is_refused() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &["max_header_bytes: 8KiB"]).await;
    let mut c = H2::connect(&gw).await;
    let a = acme_auth();
    let small = "s".repeat(5000);
    let big = "b".repeat(12_000);
    let huge = "h".repeat(20_000);
    let mut fields = H2::request_fields("/rest/h2-small", &[(b"authorization", a.as_bytes())]);
    fields.push((b"x-pad", small.as_bytes()));
    c.headers(1, &fields, false).await;
    assert!(
        matches!(
            c.wait_stream(1).await,
            End::Response {
                status: Some(200),
                ..
            }
        ),
        "5 KB header list under 8 KiB"
    );
    let mut fields = H2::request_fields("/rest/h2-big", &[(b"authorization", a.as_bytes())]);
    fields.push((b"x-pad", big.as_bytes()));
    c.headers(3, &fields, false).await;
    let End::Response {
        status: Some(431),
        body,
    } = c.wait_stream(3).await
    else {
        panic!("12 KB header list (limit 8 KiB, codec cap 16 KiB): the gateway's 431");
    };
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON 431 body");
    assert_eq!(body["statusCode"], 431);
    assert_eq!(body["error"], "BAD_REQUEST");
    let id = body["requestId"].as_str().expect("requestId").to_string();
    let line = gw.access_line(&id).await;
    assert_eq!(line["status"], 431);
    assert_eq!(line["outcome"], "bad_request");
    assert!(c.goaway.is_none(), "the connection stays usable");
    // past twice the limit the h2 codec refuses the list before it is decoded into a request
    let mut fields = H2::request_fields("/rest/h2-huge", &[(b"authorization", a.as_bytes())]);
    fields.push((b"x-pad", huge.as_bytes()));
    c.headers(5, &fields, false).await;
    let end = c.wait_stream(5).await;
    assert!(
        matches!(
            end,
            End::Response {
                status: Some(431),
                ..
            } | End::Reset(_)
                | End::GoAway(_)
        ),
        "20 KB header list: {end:?}"
    );
    // many small fields adding up (200 × 95 B counted: past the codec cap too)
    if c.goaway.is_some() || c.eof {
        c = H2::connect(&gw).await;
    }
    let names: Vec<String> = (0..200).map(|i| format!("x-h{i}")).collect();
    let mut fields = H2::request_fields("/rest/h2-many", &[(b"authorization", a.as_bytes())]);
    for n in &names {
        fields.push((
            n.as_bytes(),
            b"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv",
        ));
    }
    c.headers(7, &fields, false).await;
    let end = c.wait_stream(7).await;
    assert!(
        matches!(
            end,
            End::Response {
                status: Some(431),
                ..
            } | End::Reset(_)
                | End::GoAway(_)
        ),
        "200 × 60 B header list: {end:?}"
    );
    let seen: Vec<_> = up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        seen,
        ["/rest/h2-small"],
        "oversized header lists never forwarded"
    );
}

/// CONTINUATION flood (CVE-2024-27316 class): HEADERS without END_HEADERS followed by endless
/// CONTINUATION frames — empty ones (nothing for a size limit to count) and full ones. The
/// gateway ends the connection (GOAWAY) after a bounded number of frames and keeps serving
/// everybody else.
#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    let a = acme_auth();
    for (what, payload) in [
        ("empty", Vec::new()),
        ("1 KB", block(&[(b"x-f", &[b'f'; 1000])])),
    ] {
        let mut c = H2::connect(&gw).await;
        let fields = H2::request_fields("/rest/flood", &[(b"authorization", a.as_bytes())]);
        c.frame(HEADERS, END_STREAM, 1, &block(&fields)).await;
        let frame = H2::frame_bytes(CONTINUATION, 0, 1, &payload);
        let batch: Vec<u8> = frame.repeat(100);
        let mut sent = 0usize;
        let t = Instant::now();
        // up to 100 000 frames; the gateway must give up on us long before
        while sent < 100_000 && c.goaway.is_none() && !c.eof {
            if c.write_raw(&batch).await.is_err() {
                break;
            }
            sent += 100;
            while c.pump(Duration::from_millis(1)).await {}
        }
        let code = c.wait_goaway(Duration::from_secs(5)).await;
        assert!(
            c.goaway.is_some() || c.eof,
            "{what} CONTINUATION flood: connection still open after {sent} frames"
        );
        assert!(
            sent < 100_000,
            "{what} CONTINUATION flood: {sent} frames accepted"
        );
        if let Some(code) = code {
            assert_ne!(code, 0, "{what}: GOAWAY NO_ERROR is not a refusal");
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    assert_served(&gw, &up, "after the CONTINUATION flood").await;
    assert!(
        up.requests().iter().all(|r| r.path() != "/rest/flood"),
        "the flooded request never reached the upstream"
    );
}

/// Rapid reset (CVE-2023-44487): open streams and reset them at once, thousands of times, on
/// one connection. The gateway answers GOAWAY ENHANCE_YOUR_CALM and keeps serving other
/// clients meanwhile; only a bounded number of the reset requests got anywhere.
#[tokio::test]
async fn h2_rapid_reset_flood_gets_goaway_and_others_are_served() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    let a = acme_auth();
    let mut c = H2::connect(&gw).await;
    let mut id = 1u32;
    let mut pairs = 0;
    let t = Instant::now();
    // a bystander on its own connection, served while the flood goes on
    let mut bystander = gw.h2("acme.gw.test").await;
    while pairs < 20_000 && c.goaway.is_none() && !c.eof {
        let mut batch = Vec::new();
        for _ in 0..200 {
            let path = format!("/rest/rr{id}");
            let fields = H2::request_fields(&path, &[(b"authorization", a.as_bytes())]);
            batch.extend(H2::frame_bytes(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &block(&fields),
            ));
            batch.extend(H2::frame_bytes(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
            id += 2;
            pairs += 1;
        }
        if c.write_raw(&batch).await.is_err() {
            break;
        }
        while c.pump(Duration::from_millis(1)).await {}
    }
    let code = c.wait_goaway(Duration::from_secs(5)).await;
    assert_eq!(
        code,
        Some(ENHANCE_YOUR_CALM),
        "rapid reset: GOAWAY ENHANCE_YOUR_CALM expected after {pairs} HEADERS+RST pairs (eof: {})",
        c.eof
    );
    let r = bystander
        .get("/rest/bystander", &[("authorization", &a)])
        .await;
    assert_eq!(r.status, 200, "the bystander connection is still served");
    assert_served(&gw, &up, "after the rapid reset flood").await;
    let reached = up
        .requests()
        .iter()
        .filter(|r| r.path().starts_with("/rest/rr"))
        .count();
    assert!(
        reached < 1000,
        "{reached} of {pairs} reset requests reached the upstream"
    );
    assert!(t.elapsed() < Duration::from_secs(15));
}

/// "MadeYouReset" (CVE-2025-8671) class: the client makes the *server* reset streams, here by
/// ignoring `SETTINGS_MAX_CONCURRENT_STREAMS` (each extra stream is refused with
/// REFUSED_STREAM). Server-side resets are bounded too (`max_local_error_reset_streams`):
/// GOAWAY ENHANCE_YOUR_CALM, and the streams in flight never multiplied upstream.
#[tokio::test]
async fn h2_server_side_reset_flood_gets_goaway() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &["h2_max_concurrent_streams: 2"]).await;
    let a = acme_auth();
    let mut c = H2::connect(&gw).await;
    for id in [1u32, 3] {
        c.headers(
            id,
            &H2::request_fields(
                &format!("/rest/m{id}/_hang"),
                &[(b"authorization", a.as_bytes())],
            ),
            false,
        )
        .await;
    }
    up.wait_for("2 hanging requests", |v| v.len() == 2).await;
    let mut id = 5u32;
    let mut n = 0;
    while n < 20_000 && c.goaway.is_none() && !c.eof {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let path = format!("/rest/m{id}/_hang");
            let fields = H2::request_fields(&path, &[(b"authorization", a.as_bytes())]);
            batch.extend(H2::frame_bytes(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &block(&fields),
            ));
            id += 2;
            n += 1;
        }
        if c.write_raw(&batch).await.is_err() {
            break;
        }
        while c.pump(Duration::from_millis(1)).await {}
    }
    let code = c.wait_goaway(Duration::from_secs(5)).await;
    let refused = c
        .streams
        .values()
        .filter(|s| s.reset == Some(REFUSED_STREAM))
        .count();
    assert_eq!(
        code,
        Some(ENHANCE_YOUR_CALM),
        "refusal flood: GOAWAY ENHANCE_YOUR_CALM expected after {n} streams ({refused} refused, eof: {})",
        c.eof
    );
    assert!(n < 20_000);
    up.gates().hang.add_permits(2);
    assert_served(&gw, &up, "after the refusal flood").await;
    let hanging = up
        .requests()
        .iter()
        .filter(|r| r.path().ends_with("/_hang"))
        .count();
    assert_eq!(
        hanging, 2,
        "only the 2 admitted streams reached the upstream"
    );
}

/// `:authority` and `Host` must agree, CONNECT is not proxied, and `:path` must be
/// origin-form — all before anything is forwarded.
#[tokio::test]
async fn h2_authority_tricks_and_connect_are_refused() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &[]).await;
    let mut c = H2::connect(&gw).await;
    let a = acme_auth();
    let mut failures = Vec::new();
    let mut id = 1;
    let cases: Vec<(&str, Vec<Field>)> = vec![
        (
            "Host differs from :authority",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"acme.gw.test"),
                (b":path", b"/rest/a1"),
                (b"host", b"beta.gw.test"),
                (b"authorization", a.as_bytes()),
            ],
        ),
        (
            ":authority with userinfo",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"user@acme.gw.test"),
                (b":path", b"/rest/a2"),
                (b"authorization", a.as_bytes()),
            ],
        ),
        (
            "absolute-form :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"acme.gw.test"),
                (b":path", b"https://beta.gw.test/rest/a3"),
                (b"authorization", a.as_bytes()),
            ],
        ),
        (
            "CONNECT",
            vec![
                (b":method", b"CONNECT"),
                (b":authority", b"127.0.0.1:22"),
                (b"authorization", a.as_bytes()),
            ],
        ),
        (
            "CONNECT with a :path",
            vec![
                (b":method", b"CONNECT"),
                (b":scheme", b"https"),
                (b":authority", b"acme.gw.test"),
                (b":path", b"/rest/a5"),
                (b"authorization", a.as_bytes()),
            ],
        ),
    ];
    for (name, fields) in &cases {
        c.headers(id, fields, false).await;
        match c.wait_stream(id).await {
            End::Reset(PROTOCOL_ERROR) => {}
            End::Response {
                status: Some(s),
                body,
            } if (400..500).contains(&s) => {
                let ok = serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|j| j["statusCode"] == s);
                if !ok {
                    failures.push(format!("{name}: {s} without a JSON error"));
                }
            }
            e => failures.push(format!("{name}: {e:?} (want a 4xx or a stream error)")),
        }
        if c.goaway.is_some() || c.eof {
            c = H2::connect(&gw).await;
        }
        id += 2;
    }
    let seen: Vec<_> = up
        .requests()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    if !seen.is_empty() {
        failures.push(format!("forwarded: {seen:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `idle_timeout: 1s`: an idle HTTP/2 connection (after a request, or without any) gets
/// GOAWAY and is closed; `header_read_timeout` is 30 s so it is not what closes it.
#[tokio::test]
async fn idle_h2_connections_get_goaway_after_idle_timeout() {
    let up = spawn_upstream("core").await;
    let gw = gateway(&up, &["idle_timeout: 1s", "header_read_timeout: 30s"]).await;
    let a = acme_auth();
    let mut used = H2::connect(&gw).await;
    used.headers(
        1,
        &H2::request_fields("/rest/idle", &[(b"authorization", a.as_bytes())]),
        false,
    )
    .await;
    assert!(matches!(
        used.wait_stream(1).await,
        End::Response {
            status: Some(200),
            ..
        }
    ));
    let t = Instant::now();
    let mut unused = H2::connect(&gw).await;
    for (what, c) in [("after a request", &mut used), ("never used", &mut unused)] {
        let code = c.wait_goaway(Duration::from_secs(4)).await;
        assert!(
            code.is_some() || c.eof,
            "{what}: idle HTTP/2 connection neither got GOAWAY nor was closed after {:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() >= Duration::from_millis(700),
            "{what}: GOAWAY after {:?}, before idle_timeout",
            t.elapsed()
        );
        // and then it is closed (the client answers the GOAWAY PING, so this is quick)
        let t2 = Instant::now();
        while !c.eof && t2.elapsed() < Duration::from_secs(4) {
            c.pump(Duration::from_millis(100)).await;
        }
        assert!(
            c.eof,
            "{what}: GOAWAY ({code:?}) but the connection stayed open"
        );
    }
}
