//! Request-target validation: the path that is routed and authorised must be
//! the path the upstream interprets, so anything an upstream might normalise
//! differently (dot segments, `//`, encoded separators, NUL, bad escapes) is
//! refused here, before routing.

use crate::base::hex_digit as hex;
use crate::error::BadRequest;

/// Check an origin-form path (without the query).
pub fn check_path(path: &str) -> Result<(), BadRequest> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadRequest::NotOriginForm);
    }
    let mut segments = bytes[1..].split(|b| *b == b'/').peekable();
    while let Some(seg) = segments.next() {
        if seg.is_empty() {
            // Only a single trailing slash (or the root "/") may be empty.
            if segments.peek().is_none() {
                continue;
            }
            return Err(BadRequest::EmptySegment);
        }
        check_segment(seg)?;
    }
    Ok(())
}

fn check_segment(seg: &[u8]) -> Result<(), BadRequest> {
    // One look at each byte (this runs on every request).
    let (mut escaped, mut backslash, mut nul) = (false, false, false);
    for &b in seg {
        match b {
            b'%' => escaped = true,
            b'\\' => backslash = true,
            0 => nul = true,
            _ => {}
        }
    }
    if !escaped {
        if backslash {
            return Err(BadRequest::Backslash);
        }
        if nul {
            return Err(BadRequest::Nul);
        }
        if seg == b"." || seg == b".." {
            return Err(BadRequest::DotSegment);
        }
        return Ok(());
    }
    let mut decoded = Vec::with_capacity(seg.len());
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                seg.get(i + 1).copied().and_then(hex),
                seg.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadRequest::BadPercentEncoding);
            };
            let v = h << 4 | l;
            match v {
                b'/' | b'\\' => return Err(BadRequest::EncodedSeparator),
                0 => return Err(BadRequest::Nul),
                _ => decoded.push(v),
            }
            i += 3;
        } else {
            match b {
                b'\\' => return Err(BadRequest::Backslash),
                0 => return Err(BadRequest::Nul),
                _ => decoded.push(b),
            }
            i += 1;
        }
    }
    if decoded == b"." || decoded == b".." {
        return Err(BadRequest::DotSegment);
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(BadRequest::NotUtf8);
    }
    Ok(())
}

/// Route prefixes in the config follow the same rules, and take no escapes.
pub fn validate_route_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with /");
    }
    if prefix.contains(['%', '?', '#']) {
        return Err("must not contain %, ? or #");
    }
    check_path(prefix).map_err(|_| "must not contain empty or dot segments or backslashes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted() {
        for p in [
            "/",
            "/rest",
            "/rest/",
            "/rest/people",
            "/rest/people/",
            "/rest/people%20x",
            "/rest/%C3%A9",
            "/rest/a.b",
            "/rest/...",
            "/rest/.well-known",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn rejected() {
        use BadRequest::*;
        for (p, why) in [
            ("rest", NotOriginForm),
            ("*", NotOriginForm),
            ("", NotOriginForm),
            ("/rest/../x", DotSegment),
            ("/rest/./x", DotSegment),
            ("/rest/..", DotSegment),
            ("/rest/%2e%2e/x", DotSegment),
            ("/rest/%2E/x", DotSegment),
            ("/rest/.%2e", DotSegment),
            ("//rest", EmptySegment),
            ("/rest//people", EmptySegment),
            ("/rest//", EmptySegment),
            ("/rest/a%2Fb", EncodedSeparator),
            ("/rest/a%2fb", EncodedSeparator),
            ("/rest/a%5Cb", EncodedSeparator),
            ("/rest/a%5cb", EncodedSeparator),
            ("/rest/a\\b", Backslash),
            ("/rest/a%00", Nul),
            ("/rest/a%zz", BadPercentEncoding),
            ("/rest/a%4", BadPercentEncoding),
            ("/rest/a%", BadPercentEncoding),
            ("/rest/%c0%ae%c0%ae", NotUtf8),
            ("/rest/%ff", NotUtf8),
            ("/rest/a\\b\0", Backslash),
            ("/rest/a\0b", Nul),
            ("/rest/a\\%41", Backslash),
            ("/rest/a\0%41", Nul),
            ("/rest/x\0/a\\b", Nul),
            ("/rest/./a//b", DotSegment),
            ("/a//b/..", EmptySegment),
        ] {
            assert_eq!(check_path(p), Err(why), "{p}");
        }
    }
}
