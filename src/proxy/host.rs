//! Host resolution: `Host` (HTTP/1.1) or `:authority` (HTTP/2), lowercased,
//! port and trailing dot removed, and refused when malformed or ambiguous.

use http::request::Parts;
use http::{HeaderValue, Version, header::HOST};

use crate::error::BadRequest;

/// Normalise a host (with optional port): lowercase, no port, no trailing
/// dot. `None` if it is not a plausible DNS name or IP literal.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 260 || raw.contains('@') {
        return None;
    }
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: [addr] or [addr]:port
        let (addr, after) = rest.split_once(']')?;
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        return check_port(port).then(|| format!("[{}]", addr.to_ascii_lowercase()));
    } else {
        match raw.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        }
    };
    if !check_port(port) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty()
        || name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        || name.starts_with('.')
        || name.ends_with('.')
        || name.contains("..")
    {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

fn check_port(port: Option<&str>) -> bool {
    match port {
        None => true,
        Some(p) => {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && {
                p.parse::<u16>().is_ok()
            }
        }
    }
}

/// The request's host as received (for `X-Forwarded-Host`) and normalised.
pub struct RequestHost {
    pub raw: HeaderValue,
    pub name: String,
}

/// Exactly one Host header on HTTP/1.x; `:authority` (or Host) on HTTP/2.
/// An absolute-form target must name the same host as `Host`.
pub fn request_host(parts: &Parts) -> Result<RequestHost, BadRequest> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::BadHost);
    }
    let authority = parts.uri.authority();
    let raw = match (parts.version, header, authority) {
        (Version::HTTP_2, _, Some(a)) => {
            if let Some(h) = header
                && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
            {
                return Err(BadRequest::BadHost);
            }
            HeaderValue::from_str(a.as_str()).map_err(|_| BadRequest::BadHost)?
        }
        (_, Some(h), Some(a)) => {
            // Absolute-form on HTTP/1.1: never let it point somewhere else.
            if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                return Err(BadRequest::BadHost);
            }
            h.clone()
        }
        (_, Some(h), None) => h.clone(),
        (_, None, _) => return Err(BadRequest::MissingHost),
    };
    let name = raw
        .to_str()
        .ok()
        .and_then(normalize_host)
        .ok_or(BadRequest::BadHost)?;
    Ok(RequestHost { raw, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(
            normalize_host("ACME.localhost:8443").as_deref(),
            Some("acme.localhost")
        );
        assert_eq!(
            normalize_host("crm.acme.test.").as_deref(),
            Some("crm.acme.test")
        );
        assert_eq!(normalize_host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn refuses() {
        for h in [
            "",
            "user@acme.localhost",
            "acme.localhost:",
            "acme.localhost:99999",
            "acme.localhost:80:80",
            "acme..localhost",
            "a..",
            ".acme",
            "acme localhost",
            "[::1",
            "[zz]",
            "acme.localhost:8x",
            "a/b",
        ] {
            assert_eq!(normalize_host(h), None, "{h:?}");
        }
    }
}
