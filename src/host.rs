//! Host resolution: `Host` (HTTP/1.1) or `:authority` (HTTP/2), lowercased,
//! port and trailing dot removed, and refused when malformed or ambiguous.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::request::Parts;
use http::{HeaderValue, Version, header::HOST};

use crate::error::BadRequest;

/// Index of a tenant in the config's tenant list.
pub type TenantId = usize;

/// Host → tenant: exact custom domains, then `<label>.<base_domain>`. The
/// config's table maps to [`TenantId`]s; the runtime compiles it into one
/// that maps straight to each tenant's entry ([`HostTable::map`]).
#[derive(Debug)]
pub struct HostTable<V = TenantId> {
    pub domains: HostMap<V>,
    pub base_domains: Vec<String>,
    pub subdomains: HostMap<V>,
}

/// A map looked up by the request's host on every request, hashed with
/// foldhash (seeded per process) instead of SipHash: ~0.15k instructions a
/// request less (`bench/callgrind.sh`). SipHash's resistance to collision
/// flooding is not needed: the maps are built from the config only, so a
/// client chooses what is looked up, never what is in them.
pub type HostMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

impl<V> Default for HostTable<V> {
    fn default() -> Self {
        HostTable {
            domains: HostMap::default(),
            base_domains: Vec::new(),
            subdomains: HostMap::default(),
        }
    }
}

impl<V> HostTable<V> {
    /// `host` is already normalised (lowercase, no port, no trailing dot).
    pub fn lookup(&self, host: &str) -> Option<&V> {
        if let Some(t) = self.domains.get(host) {
            return Some(t);
        }
        for base in &self.base_domains {
            let Some(label) = host
                .strip_suffix(base.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
            else {
                continue;
            };
            if !label.is_empty()
                && !label.contains('.')
                && let Some(t) = self.subdomains.get(label)
            {
                return Some(t);
            }
        }
        None
    }

    /// The same table with every value replaced by `f(value)`; hosts whose
    /// value maps to `None` are left out.
    pub fn filter_map<U>(&self, mut f: impl FnMut(&V) -> Option<U>) -> HostTable<U> {
        let mut map = |m: &HostMap<V>| -> HostMap<U> {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), f(v)?)))
                .collect()
        };
        HostTable {
            domains: map(&self.domains),
            base_domains: self.base_domains.clone(),
            subdomains: map(&self.subdomains),
        }
    }
}

/// Normalise a host (with optional port): lowercase, no port, no trailing
/// dot. `None` if it is not a plausible DNS name or IP literal.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    // (An `@` (userinfo) fails the character checks below, in the name and
    // in the port alike.)
    if raw.is_empty() || raw.len() > MAX_HOST_LEN {
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
        // (A byte scan: `rsplit_once` sets up a char searcher.)
        match raw.bytes().rposition(|b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        }
    };
    if !check_port(port) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 253 {
        return None;
    }
    // One pass (this runs on every request): letters, digits, `-`, `_` and
    // single dots inside; starting with a dot counts as a doubled one, and
    // `prev` still being a dot at the end refuses an empty name or one that
    // ends with a dot.
    let mut prev = b'.';
    for b in name.bytes() {
        let ok = match b {
            b'.' => prev != b'.',
            _ => b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'),
        };
        if !ok {
            return None;
        }
        prev = b;
    }
    if prev == b'.' {
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
    pub name: Arc<str>,
}

/// The first host a connection's requests named, as received and
/// normalised. Nearly every request on a connection names the same host, so
/// [`request_host`] normalises a host it has seen on the connection once:
/// a request whose host is byte for byte the remembered one gets the
/// remembered name, which is what normalising its bytes would give
/// (normalisation is a function of the bytes alone). Everything else is
/// still decided per request: the checks of the Host fields, the tenant,
/// the certificate's coverage. ~1.0k instructions a request over HTTP/1.1,
/// ~1.4k over HTTP/2 (`bench/callgrind.sh`); a copy of the host (not a
/// slice of the read buffer, which it would keep alive) held for the
/// connection's life.
#[derive(Debug, Default)]
pub struct HostMemo(OnceLock<(HeaderValue, Arc<str>)>);

impl HostMemo {
    /// The remembered host and name, if `raw` is the remembered host.
    fn get(&self, raw: &[u8]) -> Option<&(HeaderValue, Arc<str>)> {
        self.0.get().filter(|(r, _)| r.as_bytes() == raw)
    }

    /// Remember `raw` and its name if nothing is remembered yet (the
    /// connection's first valid host: a client alternating hosts just pays
    /// for normalising, as without the memo). Only hosts as long as a valid
    /// one can be: `normalize_host` trims spaces first, and a padded Host
    /// field (HTTP/2 does not strip it) must not make every connection keep
    /// kilobytes. A copy: for HTTP/1 `raw` is a slice of hyper's read
    /// buffer, which it would keep alive.
    fn remember(&self, raw: &HeaderValue, name: &Arc<str>) {
        if self.0.get().is_none()
            && raw.len() <= MAX_HOST_LEN
            && let Ok(copy) = HeaderValue::from_bytes(raw.as_bytes())
        {
            let _ = self.0.set((copy, name.clone()));
        }
    }
}

/// The longest host (with port) [`normalize_host`] accepts.
const MAX_HOST_LEN: usize = 260;

/// Exactly one Host header on HTTP/1.x; `:authority` (or Host) on HTTP/2.
/// An absolute-form target must name the same host as `Host`. These checks
/// run on every request; only the normalisation of a host the connection
/// named before comes from `memo`. (On HTTP/2 a hit also saves copying the
/// `:authority` into a header value: the remembered copy holds the same
/// bytes.)
pub fn request_host(parts: &Parts, memo: &HostMemo) -> Result<RequestHost, BadRequest> {
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
            match memo.get(a.as_str().as_bytes()) {
                Some((raw, name)) => {
                    return Ok(RequestHost {
                        raw: raw.clone(),
                        name: name.clone(),
                    });
                }
                None => HeaderValue::from_str(a.as_str()).map_err(|_| BadRequest::BadHost)?,
            }
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
    if let Some((_, name)) = memo.get(raw.as_bytes()) {
        return Ok(RequestHost {
            name: name.clone(),
            raw,
        });
    }
    let name: Arc<str> = raw
        .to_str()
        .ok()
        .and_then(normalize_host)
        .ok_or(BadRequest::BadHost)?
        .into();
    memo.remember(&raw, &name);
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
            ".",
            "..",
            "a..:80",
            "acme@localhost",
            "acme.localhost:80@x",
            "[::1]@x",
            "[::1]:80@",
        ] {
            assert_eq!(normalize_host(h), None, "{h:?}");
        }
    }

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn name(r: Result<RequestHost, BadRequest>) -> Result<String, BadRequest> {
        r.map(|h| h.name.to_string())
    }

    /// The memo gives what normalising gives, for the remembered bytes
    /// only; the checks around it still run on every request.
    #[test]
    fn a_connection_remembers_its_first_host_by_its_bytes() {
        let memo = HostMemo::default();
        let h1 = |hosts: &[&str]| name(request_host(&parts(Version::HTTP_11, "/", hosts), &memo));
        assert_eq!(h1(&["ACME.localhost:8443"]), Ok("acme.localhost".into()));
        assert_eq!(h1(&["ACME.localhost:8443"]), Ok("acme.localhost".into()));
        // Other bytes are normalised afresh, and not remembered.
        assert_eq!(h1(&["other.localhost"]), Ok("other.localhost".into()));
        assert_eq!(h1(&["acme.localhost:8443"]), Ok("acme.localhost".into()));
        let remembered = memo
            .0
            .get()
            .map(|(r, n)| (r.as_bytes().to_vec(), n.to_string()));
        assert_eq!(
            remembered,
            Some((b"ACME.localhost:8443".to_vec(), "acme.localhost".into()))
        );
        // The remembered host twice, or none, is refused as before.
        assert_eq!(
            h1(&["ACME.localhost:8443", "ACME.localhost:8443"]),
            Err(BadRequest::BadHost)
        );
        assert_eq!(h1(&[]), Err(BadRequest::MissingHost));
        assert_eq!(h1(&["acme..localhost"]), Err(BadRequest::BadHost));
        // An absolute-form target naming another host is refused.
        let absolute = parts(
            Version::HTTP_11,
            "https://evil.test/",
            &["ACME.localhost:8443"],
        );
        assert_eq!(
            name(request_host(&absolute, &memo)),
            Err(BadRequest::BadHost)
        );
        // HTTP/2: `:authority`, checked against a Host field if any.
        let h2 = |uri: &str, hosts: &[&str]| {
            name(request_host(&parts(Version::HTTP_2, uri, hosts), &memo))
        };
        assert_eq!(
            h2("https://ACME.localhost:8443/", &[]),
            Ok("acme.localhost".into())
        );
        assert_eq!(
            h2("https://ACME.localhost:8443/", &["other.localhost"]),
            Err(BadRequest::BadHost)
        );
        assert_eq!(h2("https://b.localhost/", &[]), Ok("b.localhost".into()));
    }

    /// A remembered host's name is used, not recomputed: a memo holding a
    /// name that normalising would never give shows which path answered.
    #[test]
    fn the_remembered_name_is_the_one_used() {
        let memo = HostMemo::default();
        let sentinel: Arc<str> = "sentinel".into();
        let _ = memo.0.set((HeaderValue::from_static("x.test"), sentinel));
        let got = |version, uri: &str, hosts: &[&str]| {
            name(request_host(&parts(version, uri, hosts), &memo))
        };
        assert_eq!(
            got(Version::HTTP_11, "/", &["x.test"]),
            Ok("sentinel".into())
        );
        assert_eq!(
            got(Version::HTTP_11, "https://x.test/", &["x.test"]),
            Ok("sentinel".into())
        );
        assert_eq!(
            got(Version::HTTP_2, "https://x.test/", &[]),
            Ok("sentinel".into())
        );
        assert_eq!(
            got(Version::HTTP_2, "/", &["x.test"]),
            Ok("sentinel".into())
        );
        // Other bytes, even equal once normalised, are normalised afresh.
        assert_eq!(got(Version::HTTP_11, "/", &["X.test"]), Ok("x.test".into()));
        assert_eq!(
            got(Version::HTTP_2, "https://x.test:443/", &[]),
            Ok("x.test".into())
        );
        // The checks still run before the memo is asked.
        assert_eq!(
            got(Version::HTTP_11, "/", &["x.test", "x.test"]),
            Err(BadRequest::BadHost)
        );
        assert_eq!(
            got(Version::HTTP_2, "https://x.test/", &["y.test"]),
            Err(BadRequest::BadHost)
        );
    }

    /// A padded Host field (HTTP/2 does not strip it) is valid once
    /// trimmed, but is not kept for the connection's life.
    #[test]
    fn a_padded_host_is_not_remembered() {
        let memo = HostMemo::default();
        let padded = format!("a.test{}", " ".repeat(4096));
        let r = request_host(&parts(Version::HTTP_2, "/", &[padded.as_str()]), &memo);
        assert_eq!(name(r), Ok("a.test".into()));
        assert!(memo.0.get().is_none());
        let r = request_host(&parts(Version::HTTP_2, "/", &["a.test"]), &memo);
        assert_eq!(name(r), Ok("a.test".into()));
        assert!(memo.0.get().is_some());
    }

    /// A first host that is invalid is not remembered.
    #[test]
    fn an_invalid_host_is_not_remembered() {
        let memo = HostMemo::default();
        let req = |h: &str| name(request_host(&parts(Version::HTTP_11, "/", &[h]), &memo));
        assert_eq!(req("a..b"), Err(BadRequest::BadHost));
        assert!(memo.0.get().is_none());
        assert_eq!(req("a.b"), Ok("a.b".into()));
        assert_eq!(req("a..b"), Err(BadRequest::BadHost));
    }

    #[test]
    fn host_table_single_label_only() {
        let mut t: HostTable = HostTable::default();
        t.base_domains.push("localhost".into());
        t.subdomains.insert("acme".into(), 0);
        t.domains.insert("crm.acme.test".into(), 1);
        assert_eq!(t.lookup("acme.localhost"), Some(&0));
        assert_eq!(t.lookup("crm.acme.test"), Some(&1));
        assert_eq!(t.lookup("x.acme.localhost"), None);
        assert_eq!(t.lookup("localhost"), None);
        assert_eq!(t.lookup(".localhost"), None);
        assert_eq!(t.lookup("acmelocalhost"), None);
    }
}
