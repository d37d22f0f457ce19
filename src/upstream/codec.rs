//! HTTP/1.1 towards Twenty, without I/O: the request head written into a
//! buffer, the response head parsed from one, and the response body's
//! framing (RFC 9112 §6) decoded step by step. [`super::conn`] moves the
//! bytes. Strict where a lenient reading could desynchronise a pooled
//! connection: anything not clearly framed is an error (a 502), and a
//! connection is reused only when both messages were complete and exact.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::headers::{Added, has_token};

/// A response head (status line and headers) larger than this is refused.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header lines in one response head (or its trailers).
pub const MAX_HEADERS: usize = 128;
/// A chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The trailer section of a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a response could not be read: each one ends the exchange with a 502
/// (or cuts the body short) and closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid status code")]
    Status,
    #[error("invalid response header")]
    Header,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding other than chunked")]
    TransferEncoding,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedSwitch,
    #[error("malformed chunked body")]
    Chunk,
    #[error("malformed trailers")]
    Trailers,
    #[error("connection closed before the response ended")]
    Incomplete,
}

/// How a request body goes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: the head is all.
    None,
    /// `Content-Length`, exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` (the size is not known in advance).
    Chunked,
}

/// Write the request line and headers of `parts` (already rewritten for
/// the upstream: origin form, hop-by-hop headers gone), then the gateway's
/// `added` fields, then `framing`'s field, which replaces any
/// `Content-Length` or `Transfer-Encoding` the head carried.
pub fn encode_head(parts: &Parts, added: &Added<'_>, framing: BodyFraming, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &HeaderName, value: &HeaderValue| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    let mut announced = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            announced = true;
        } else if name != TRANSFER_ENCODING {
            field(name, value);
        }
    }
    added.for_each(field);
    match framing {
        // The client's own `Content-Length: 0` (as one field, however many
        // it sent: a server may refuse duplicates).
        BodyFraming::None if announced => out.extend_from_slice(b"content-length: 0\r\n"),
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this response ended.
    pub reusable: bool,
}

/// Parse the response head at the start of `buf`, consuming it; `None`
/// while it is incomplete. `method` is the request's (a HEAD response has
/// no body whatever it says). A 101 is an error: upgrades do not take
/// this way (they go through hyper, see [`super::client`]).
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, ProtocolError> {
    // Room for the usual head on the stack; a head with more fields is
    // parsed again with room for the most we take.
    match parse_with::<USUAL_HEADERS>(buf, method) {
        Err(ProtocolError::HeadTooLarge) if buf.len() < MAX_HEAD => {
            parse_with::<MAX_HEADERS>(buf, method)
        }
        parsed => parsed,
    }
}

/// Header fields most answers stay within.
const USUAL_HEADERS: usize = 24;

fn parse_with<const N: usize>(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<Head>, ProtocolError> {
    // Where each name and value sits in the head, so that values become
    // slices of one shared buffer instead of copies.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); N];
    let (len, code, minor, count) = {
        let mut headers = [httparse::EMPTY_HEADER; N];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(ProtocolError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
            Err(e) => return Err(ProtocolError::Head(e)),
        };
        if len > MAX_HEAD {
            return Err(ProtocolError::HeadTooLarge);
        }
        let base = buf.as_ptr() as usize;
        let count = resp.headers.len();
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            *span = (
                name as u32,
                (name + h.name.len()) as u32,
                value as u32,
                (value + h.value.len()) as u32,
            );
        }
        (len, resp.code, resp.version, count)
    };
    let head = buf.split_to(len).freeze();
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ProtocolError::Status)?;
    let version = match minor {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Room for the fields the gateway adds to the answer (request id, rate
    // limits) without growing the map.
    let mut headers = HeaderMap::with_capacity(count + 3);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| ProtocolError::Header)?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| ProtocolError::Header)?;
        headers.append(name, value);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProtocolError::UnexpectedSwitch);
    }
    let (framing, exact) = framing(&mut headers, status, method, version)?;
    // Reused only after an exact HTTP/1.1 exchange: an HTTP/1.0 server
    // would not understand the chunked uploads the next request may send.
    let reusable = exact
        && version == Version::HTTP_11
        && framing != Framing::Close
        && !has_token(&headers, &CONNECTION, "close");
    Ok(Some(Head {
        status,
        headers,
        framing,
        reusable,
    }))
}

/// The body's framing (RFC 9112 §6.3), and whether it is unambiguous
/// enough to reuse the connection after it. `Content-Length` is left as one
/// value, or removed when chunked framing overrides it, so that the client
/// is told exactly what it gets.
fn framing(
    headers: &mut HeaderMap,
    status: StatusCode,
    method: &Method,
    version: Version,
) -> Result<(Framing, bool), ProtocolError> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    let length = content_length(headers)?;
    if headers.contains_key(TRANSFER_ENCODING) {
        // Only plain `chunked`, and only from an HTTP/1.1 server (§6.1: in
        // HTTP/1.0 the framing is faulty): the gateway would forward any
        // other coding undone while dropping the hop-by-hop header that
        // names it.
        let mut codings = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty());
        let chunked = codings
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        if !chunked || codings.next().is_some() || version != Version::HTTP_11 {
            return Err(ProtocolError::TransferEncoding);
        }
        // With a Content-Length too, chunked wins, the length goes, and
        // the connection closes after it (§6.3: a smuggling attempt?).
        if length.is_some() {
            headers.remove(CONTENT_LENGTH);
        }
        return Ok((Framing::Chunked, length.is_none()));
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// The Content-Length, if any: every value (header lines and list members)
/// must be the same plain decimal number. Repeats (`5, 5`, two lines) are
/// folded into one value.
fn content_length(headers: &mut HeaderMap) -> Result<Option<u64>, ProtocolError> {
    let mut length = None;
    let mut values = 0;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = decimal(part.trim_ascii()).ok_or(ProtocolError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(ProtocolError::ContentLength);
            }
            length = Some(n);
            values += 1;
        }
    }
    if values > 1
        && let Some(n) = length
    {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(length)
}

/// A non-empty run of ASCII digits that fits a u64.
fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// What the body decoder found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
}

/// The response body's framing, decoded from a buffer as bytes arrive.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    /// The last event was trailers; `End` follows.
    Ending,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        BodyDecoder { state }
    }

    /// Every byte of the body was read (`End` may still be due).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done | State::Ending)
    }

    /// Body bytes still due, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done | State::Ending => Some(0),
            _ => None,
        }
    }

    /// The body ends when the connection does.
    pub fn is_close(&self) -> bool {
        self.state == State::Close
    }

    /// The next event from `buf` (what it used is consumed); `None` when
    /// more input is needed. `eof`: the connection is closed, no more
    /// input will come.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<Event>, ProtocolError> {
        loop {
            match self.state {
                State::Done => return Ok(Some(Event::End)),
                State::Ending => {
                    self.state = State::Done;
                    return Ok(Some(Event::End));
                }
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return need(eof);
                    }
                    let take = n.min(buf.len() as u64);
                    self.state = match (self.state, n - take) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), left) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData(left),
                    };
                    return Ok(Some(Event::Data(buf.split_to(take as usize).freeze())));
                }
                State::Close => {
                    if !buf.is_empty() {
                        return Ok(Some(Event::Data(buf.split().freeze())));
                    }
                    if eof {
                        self.state = State::Done;
                        continue;
                    }
                    return Ok(None);
                }
                State::ChunkSize => {
                    let Some(line) = line(buf, MAX_CHUNK_LINE, ProtocolError::Chunk)? else {
                        return need(eof);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return need(eof);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::Chunk);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, trailers) = match httparse::parse_headers(buf, &mut headers) {
                        Ok(httparse::Status::Complete((len, parsed))) => {
                            let mut map = HeaderMap::with_capacity(parsed.len());
                            for h in parsed {
                                let name = HeaderName::from_bytes(h.name.as_bytes())
                                    .map_err(|_| ProtocolError::Trailers)?;
                                let value = HeaderValue::from_bytes(h.value)
                                    .map_err(|_| ProtocolError::Trailers)?;
                                map.append(name, value);
                            }
                            (len, map)
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => {
                            return need(eof);
                        }
                        _ => return Err(ProtocolError::Trailers),
                    };
                    if len > MAX_TRAILERS {
                        return Err(ProtocolError::Trailers);
                    }
                    buf.advance(len);
                    if trailers.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    self.state = State::Ending;
                    return Ok(Some(Event::Trailers(trailers)));
                }
            }
        }
    }
}

/// Out of input: wait for more, or fail if none will come.
fn need(eof: bool) -> Result<Option<Event>, ProtocolError> {
    if eof {
        Err(ProtocolError::Incomplete)
    } else {
        Ok(None)
    }
}

/// The next CRLF-terminated line (without its CRLF), consumed; `None`
/// while incomplete. Longer than `max`, or a bare LF, is `error`.
fn line(
    buf: &mut BytesMut,
    max: usize,
    error: ProtocolError,
) -> Result<Option<Bytes>, ProtocolError> {
    let window = &buf[..buf.len().min(max)];
    let Some(lf) = window.iter().position(|b| *b == b'\n') else {
        return if buf.len() >= max {
            Err(error)
        } else {
            Ok(None)
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(error);
    }
    let line = buf.split_to(lf + 1).freeze();
    Ok(Some(line.slice(..lf - 1)))
}

/// `chunk-size [ BWS ";" chunk-ext ]`: 1–16 hex digits; extensions are
/// ignored but must not hold control characters.
fn chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ProtocolError::Chunk);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or(ProtocolError::Chunk)?;
        size = (size << 4) | u64::from(d);
    }
    let rest = &line[digits..];
    let ext = &rest[rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()..];
    if !(rest.is_empty()
        || ext.first() == Some(&b';')
            && ext
                .iter()
                .all(|b| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80))
    {
        return Err(ProtocolError::Chunk);
    }
    Ok(size)
}

#[cfg(test)]
#[path = "codec/tests.rs"]
mod tests;
