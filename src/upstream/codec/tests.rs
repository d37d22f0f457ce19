use super::*;
use proptest::prelude::*;

fn head(bytes: &[u8], method: &Method) -> Result<Option<Head>, ProtocolError> {
    parse_head(&mut BytesMut::from(bytes), method)
}

fn get(bytes: &[u8]) -> Result<Head, ProtocolError> {
    head(bytes, &Method::GET).map(|h| h.expect("complete head"))
}

/// Everything the decoder yields for `body` fed in pieces of `step` bytes
/// (then eof): data joined, trailers, or the first error.
fn decode_all(
    framing: Framing,
    body: &[u8],
    step: usize,
) -> Result<(Vec<u8>, Option<HeaderMap>), ProtocolError> {
    let mut d = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut fed = 0;
    loop {
        let eof = fed >= body.len();
        match d.decode(&mut buf, eof)? {
            Some(Event::Data(b)) => {
                assert!(!b.is_empty(), "empty data event");
                data.extend_from_slice(&b);
            }
            Some(Event::Trailers(t)) => trailers = Some(t),
            Some(Event::End) => return Ok((data, trailers)),
            None => {
                assert!(!eof, "wants more after eof");
                let end = (fed + step.max(1)).min(body.len());
                buf.extend_from_slice(&body[fed..end]);
                fed = end;
            }
        }
    }
}

/// `encode_head` of a request built by `b`, after the gateway's rewrite
/// (client 192.0.2.9 over https, request id r1, tenant t).
fn encoded(b: http::request::Builder, framing: BodyFraming) -> String {
    let mut parts = b.body(()).unwrap().into_parts().0;
    let (host, rid, tenant) = (
        HeaderValue::from_static("a"),
        HeaderValue::from_static("r1"),
        HeaderValue::from_static("t"),
    );
    let f = crate::upstream::headers::example_forwarding(&host, &rid, &tenant);
    let added = crate::upstream::rewrite_request(&mut parts, &f).unwrap();
    let mut out = Vec::new();
    encode_head(&parts, &added, framing, &mut out);
    String::from_utf8(out).unwrap()
}

const ADDED: &str = "x-forwarded-for: 192.0.2.9\r\nx-forwarded-proto: https\r\n\
                     x-forwarded-host: a\r\nx-request-id: r1\r\nx-gateway-tenant: t\r\n";

#[test]
fn request_heads_carry_the_framing_of_their_body() {
    let get = http::Request::get("/rest/people?x=1")
        .header("host", "a")
        .header("accept", "*/*")
        .header("x-request-id", "client's");
    assert_eq!(
        encoded(get, BodyFraming::None),
        format!("GET /rest/people?x=1 HTTP/1.1\r\nhost: a\r\naccept: */*\r\n{ADDED}\r\n")
    );
    let post = http::Request::post("/graphql")
        .header("content-length", "99")
        .header("host", "a");
    assert_eq!(
        encoded(post, BodyFraming::Length(12)),
        format!("POST /graphql HTTP/1.1\r\nhost: a\r\n{ADDED}content-length: 12\r\n\r\n")
    );
    // No Host (an HTTP/2 client's request): the gateway's comes first.
    let put = http::Request::put("/rest/x")
        .header("content-length", "9")
        .header("transfer-encoding", "chunked");
    assert_eq!(
        encoded(put, BodyFraming::Chunked),
        format!("PUT /rest/x HTTP/1.1\r\nhost: a\r\n{ADDED}transfer-encoding: chunked\r\n\r\n")
    );
    // No path at all still goes as `/`.
    assert!(
        encoded(http::Request::get("http://a"), BodyFraming::None)
            .starts_with("GET / HTTP/1.1\r\n")
    );
}

#[test]
fn a_head_is_read_whole_or_not_at_all() {
    let text = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok";
    for cut in 0..text.len() - 2 {
        let mut buf = BytesMut::from(&text[..cut]);
        assert_eq!(
            parse_head(&mut buf, &Method::GET).unwrap().map(|_| ()),
            None,
            "cut {cut}"
        );
        assert_eq!(buf.len(), cut, "nothing consumed");
    }
    let mut buf = BytesMut::from(&text[..]);
    let h = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.headers["content-type"], "application/json");
    assert_eq!(h.framing, Framing::Length(2));
    assert!(h.reusable);
    assert_eq!(&buf[..], b"ok", "the body stays in the buffer");
}

#[test]
fn framing_follows_rfc_9112() {
    let f = |t: &[u8]| get(t).map(|h| (h.framing, h.reusable));
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        Ok((Framing::Length(5), true))
    );
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
        Ok((Framing::Length(5), true))
    );
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
        Ok((Framing::Chunked, true))
    );
    // Both: chunked wins, and the connection is not trusted again.
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Ok((Framing::Chunked, false))
    );
    let both =
        get(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    assert!(
        !both.headers.contains_key("content-length"),
        "the overridden length goes"
    );
    assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n"), Ok((Framing::Close, false)));
    assert_eq!(
        f(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        f(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        f(b"HTTP/1.1 100 Continue\r\n\r\n"),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, Close\r\n\r\n"),
        Ok((Framing::Length(5), false))
    );
    assert_eq!(
        f(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n"),
        Ok((Framing::Length(5), false))
    );
    // HTTP/1.0 servers get no second request, keep-alive or not.
    assert_eq!(
        f(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"),
        Ok((Framing::Length(5), false))
    );
    let head_resp = head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        &Method::HEAD,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (head_resp.framing, head_resp.reusable),
        (Framing::Empty, true)
    );
    assert_eq!(
        head_resp.headers["content-length"], "100",
        "kept for the client"
    );
}

#[test]
fn ambiguous_or_broken_heads_are_errors() {
    use ProtocolError::*;
    let e = |t: &[u8]| get(t).err();
    assert_eq!(
        e(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        Some(ContentLength)
    );
    assert_eq!(
        e(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n"),
        Some(ContentLength)
    );
    for bad in ["abc", "-1", "+5", "", "1 2", "0x10", "99999999999999999999"] {
        let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(e(text.as_bytes()), Some(ContentLength), "{bad:?}");
    }
    for bad in [
        "gzip",
        "gzip, chunked",
        "chunked, gzip",
        "chunked, chunked",
        "identity",
        "",
    ] {
        let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {bad}\r\n\r\n");
        assert_eq!(e(text.as_bytes()), Some(TransferEncoding), "{bad:?}");
    }
    assert_eq!(
        e(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        Some(UnexpectedSwitch)
    );
    assert!(matches!(e(b"HTTP/1.1 abc OK\r\n\r\n"), Some(Head(_))));
    assert!(matches!(e(b"FOO\r\n\r\n"), Some(Head(_))));
    assert!(matches!(
        e(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"),
        Some(Head(_))
    ));
    assert!(matches!(
        e(b"HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n"),
        Some(Head(_))
    ));
    assert!(matches!(e(b"HTTP/2 200 OK\r\n\r\n"), Some(Head(_))));

    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("x-{i}: v\r\n"))
        .collect();
    assert_eq!(
        e(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()),
        Some(HeadTooLarge)
    );
    // Too big while still incomplete: refused without waiting for the end.
    let big = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD));
    assert_eq!(head(big.as_bytes(), &Method::GET).err(), Some(HeadTooLarge));
}

#[test]
fn chunked_bodies_decode_in_any_pieces() {
    let body = b"5;name=value\r\nhello\r\nA \t; x\r\n0123456789\r\n0\r\nx-trailer: t\r\n\r\n";
    for step in 1..=body.len() {
        let (data, trailers) = decode_all(Framing::Chunked, body, step).unwrap();
        assert_eq!(data, b"hello0123456789");
        assert_eq!(trailers.unwrap()["x-trailer"], "t");
    }
    let (data, trailers) = decode_all(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
    assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
}

#[test]
fn broken_chunks_are_errors() {
    use ProtocolError::*;
    let e = |b: &[u8]| decode_all(Framing::Chunked, b, 64).err();
    assert_eq!(e(b"zz\r\nhello\r\n0\r\n\r\n"), Some(Chunk));
    assert_eq!(e(b"\r\n"), Some(Chunk), "empty size");
    assert_eq!(e(b"5\nhello\r\n0\r\n\r\n"), Some(Chunk), "bare LF");
    assert_eq!(
        e(b"5 x\r\nhello\r\n0\r\n\r\n"),
        Some(Chunk),
        "junk after size"
    );
    assert_eq!(
        e(b"5;a\x01b\r\nhello\r\n0\r\n\r\n"),
        Some(Chunk),
        "control in extension"
    );
    assert_eq!(
        e(b"5\r\nhelloXX0\r\n\r\n"),
        Some(Chunk),
        "no CRLF after data"
    );
    assert_eq!(e(b"11111111111111111\r\n"), Some(Chunk), "17 hex digits");
    assert_eq!(
        e(&[b"1".repeat(MAX_CHUNK_LINE), b"\r\n".to_vec()].concat()),
        Some(Chunk),
        "size line too long"
    );
    assert_eq!(e(b"5\r\nhel"), Some(Incomplete));
    assert_eq!(e(b"5\r\nhello\r\n"), Some(Incomplete), "no last chunk");
    assert_eq!(e(b"0\r\nx-t: t\r\n"), Some(Incomplete), "trailers cut");
    assert_eq!(e(b"0\r\nbad name: t\r\n\r\n"), Some(Trailers));
    // The largest size there is: waits for its bytes, then misses them.
    assert_eq!(e(b"ffffffffffffffff\r\nabc"), Some(Incomplete));
}

#[test]
fn length_and_close_delimited_bodies() {
    assert_eq!(
        decode_all(Framing::Length(5), b"hello", 2).unwrap().0,
        b"hello"
    );
    assert_eq!(
        decode_all(Framing::Length(5), b"hel", 2),
        Err(ProtocolError::Incomplete)
    );
    assert_eq!(
        decode_all(Framing::Close, b"all of it", 4).unwrap().0,
        b"all of it"
    );
    assert_eq!(decode_all(Framing::Close, b"", 4).unwrap().0, b"");
    assert_eq!(decode_all(Framing::Empty, b"", 4).unwrap().0, b"");
    // Bytes past the end stay in the buffer (the caller does not reuse).
    let mut d = BodyDecoder::new(Framing::Length(2));
    let mut buf = BytesMut::from(&b"okEXTRA"[..]);
    assert_eq!(
        d.decode(&mut buf, false),
        Ok(Some(Event::Data(Bytes::from_static(b"ok"))))
    );
    assert!(d.is_done());
    assert_eq!(d.decode(&mut buf, false), Ok(Some(Event::End)));
    assert_eq!(&buf[..], b"EXTRA");
}

/// A chunked encoding of `data` cut into `sizes` (cycled), with random
/// hex case and extensions.
fn chunked(data: &[u8], sizes: &[usize], upper: bool, ext: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        let size = if upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        out.extend_from_slice(size.as_bytes());
        if ext {
            out.extend_from_slice(b" ;e=\"v\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// 512 cases per property in `cargo test`; `PROPTEST_CASES=N` for a longer campaign.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Any bytes: no panic, and never a head that claims more than it
    /// consumed.
    #[test]
    fn arbitrary_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(_)) = parse_head(&mut buf, &Method::GET) {
            prop_assert!(buf.len() < bytes.len());
        }
    }

    /// Any bytes as a body of any framing, in any pieces: no panic, no
    /// empty data event, and the same outcome whatever the pieces.
    #[test]
    fn arbitrary_bodies_decode_the_same_in_any_pieces(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        framing in prop_oneof![
            Just(Framing::Chunked),
            Just(Framing::Close),
            (0u64..300).prop_map(Framing::Length),
        ],
        step in 1usize..64,
    ) {
        let whole = decode_all(framing, &bytes, bytes.len().max(1));
        let pieces = decode_all(framing, &bytes, step);
        prop_assert_eq!(whole, pieces);
    }

    /// Valid chunked bodies decode to what was encoded, in any pieces.
    #[test]
    fn chunked_round_trip(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        sizes in proptest::collection::vec(1usize..700, 1..8),
        upper: bool,
        ext: bool,
        step in 1usize..300,
    ) {
        let encoded = chunked(&data, &sizes, upper, ext);
        let (decoded, trailers) = decode_all(Framing::Chunked, &encoded, step).unwrap();
        prop_assert_eq!(decoded, data);
        prop_assert!(trailers.is_none());
    }

    /// Valid responses with one byte changed: no panic, and a parse that
    /// succeeds describes a framing the decoder can follow.
    #[test]
    fn mutated_responses_never_panic(
        pick in 0usize..4,
        at in any::<prop::sample::Index>(),
        byte: u8,
        step in 1usize..32,
    ) {
        let samples: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx: y\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\ngone",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ];
        let mut bytes = samples[pick].to_vec();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(head)) = parse_head(&mut buf, &Method::GET) {
            let rest = buf.to_vec();
            let _ = decode_all(head.framing, &rest, step);
        }
    }
}

#[test]
fn what_the_client_is_told_is_exact() {
    // Repeated equal lengths are folded into one value.
    let folded =
        get(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n").unwrap();
    let values: Vec<_> = folded.headers.get_all("content-length").iter().collect();
    assert_eq!(values, ["5"]);
    // One value is left as it was.
    let one = get(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").unwrap();
    assert_eq!(one.headers["content-length"], "5");
    // Transfer-Encoding from an HTTP/1.0 server: faulty framing (RFC 9112 §6.1).
    assert_eq!(
        get(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").err(),
        Some(ProtocolError::TransferEncoding)
    );
}

#[test]
fn close_is_seen_next_to_non_ascii_members() {
    let h =
        get(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close, \xe9\r\n\r\n").unwrap();
    assert!(!h.reusable);
}
