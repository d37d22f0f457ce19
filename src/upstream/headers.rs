//! Header rewriting at the edge: hop-by-hop headers out, the gateway's
//! forwarding headers in, origin-form target, HTTP/1.1 towards Twenty.

use std::net::IpAddr;

use http::header::Entry;
use http::header::{
    AUTHORIZATION, CONNECTION, EXPECT, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri, Version};

use crate::base::headers::{
    GATEWAY_PREFIX, KEEP_ALIVE, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    X_GATEWAY_KEY_ID, X_GATEWAY_TENANT, X_REQUEST_ID,
};
use crate::error::GatewayError;

/// A comma-separated field (`Connection`, `Upgrade`) lists `token`, any case.
pub(super) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    // On bytes: a value with other non-ASCII members still lists `close`.
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// An HTTP/1.1 `Upgrade: websocket` handshake request.
pub fn is_websocket_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && has_token(headers, &UPGRADE, "websocket")
        && has_token(headers, &CONNECTION, "upgrade")
}

/// The hop-by-hop headers RFC 9110 §7.6.1 lists besides `Connection`.
static HOP_BY_HOP: [&HeaderName; 5] = [&KEEP_ALIVE, &TE, &TRAILER, &TRANSFER_ENCODING, &UPGRADE];

/// Remove hop-by-hop headers: those named in `Connection` (unless
/// protected), the standard list, and every `Proxy-*`. With `upgrade`, keeps
/// `Upgrade` and sets `Connection: upgrade` so the handshake passes.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let seen = Seen::scan(headers);
    strip(headers, upgrade, &seen);
}

/// What one pass over a head's names found. Removals and lookups follow
/// only for what is there: most messages carry nothing to remove, or just
/// `Connection: keep-alive`, and a hashed lookup costs more than a look at
/// each name.
#[derive(Default)]
struct Seen {
    connection: bool,
    /// [`HOP_BY_HOP`]'s, same order.
    hop: [bool; HOP_BY_HOP.len()],
    proxy: bool,
    expect: bool,
    gateway: bool,
    forwarded_for: bool,
    host: bool,
    /// Client copies of fields the gateway sets itself.
    forwarded_proto: bool,
    forwarded_host: bool,
    request_id: bool,
    authorization: bool,
}

impl Seen {
    fn scan(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for name in headers.keys() {
            if name == CONNECTION {
                seen.connection = true;
            } else if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
                seen.hop[i] = true;
            } else if name == HOST {
                seen.host = true;
            } else if name == EXPECT {
                seen.expect = true;
            } else if name == X_FORWARDED_FOR {
                seen.forwarded_for = true;
            } else if name == X_FORWARDED_PROTO {
                seen.forwarded_proto = true;
            } else if name == X_FORWARDED_HOST {
                seen.forwarded_host = true;
            } else if name == X_REQUEST_ID {
                seen.request_id = true;
            } else if name == AUTHORIZATION {
                seen.authorization = true;
            } else {
                let name = name.as_str();
                seen.proxy |= name.starts_with("proxy-");
                seen.gateway |= name.starts_with(GATEWAY_PREFIX);
            }
        }
        seen
    }
}

/// [`strip_hop_by_hop`] after the scan. What it may remove (tokens in
/// `Connection`) never includes `Host`, `X-Forwarded-For` or `X-Gateway-*`
/// ([`protected_name`]), so those flags stay true after it.
fn strip(headers: &mut HeaderMap, upgrade: bool, seen: &Seen) {
    let (connection, present, proxy) = (seen.connection, seen.hop, seen.proxy);
    if connection {
        // Taken out in one lookup; only a second `Connection` line (rare)
        // costs an allocation.
        let (first, more): (Option<HeaderValue>, Vec<HeaderValue>) = match headers.entry(CONNECTION)
        {
            Entry::Occupied(e) => {
                let mut values = e.remove_entry_mult().1;
                (values.next(), values.collect())
            }
            Entry::Vacant(_) => (None, Vec::new()),
        };
        for token in first
            .iter()
            .chain(&more)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
        {
            // The standard hop-by-hop names (`keep-alive`, the usual token)
            // go below anyway, by their flags, without parsing the token
            // into a name.
            if token.is_empty()
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
                || protected_name(token)
                || (upgrade && token.eq_ignore_ascii_case("upgrade"))
            {
                continue;
            }
            // A token that is not a header name matches nothing.
            headers.remove(token);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present && !(upgrade && **name == UPGRADE) {
            headers.remove(*name);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if proxy {
        remove_prefixed(headers, "proxy-");
    }
}

/// Headers a `Connection` list can never remove: the credential, the host,
/// and everything the gateway sets itself (`token` as written, any case).
fn protected_name(token: &str) -> bool {
    let fixed = [
        &AUTHORIZATION,
        &HOST,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_REQUEST_ID,
    ];
    fixed.iter().any(|n| token.eq_ignore_ascii_case(n.as_str()))
        || token
            .get(..GATEWAY_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(GATEWAY_PREFIX))
}

/// Remove every header whose (lowercase) name starts with `prefix`;
/// allocation-free when there is none.
fn remove_prefixed(headers: &mut HeaderMap, prefix: &str) {
    if headers.keys().any(|k| k.as_str().starts_with(prefix)) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with(prefix))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// What the gateway adds to a request it forwards.
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    /// `client_ip` as a header value, when the caller has it at hand.
    pub client_ip_header: Option<&'a HeaderValue>,
    pub proto: &'static str,
    pub host: &'a HeaderValue,
    pub request_id: &'a HeaderValue,
    pub tenant: &'a HeaderValue,
    pub key_id: Option<&'a HeaderValue>,
    pub authorization: Option<&'a HeaderValue>,
    pub websocket: bool,
}

/// The fields the gateway adds to a forwarded request. They are not put
/// into the head's map (seven hashed inserts, and usually a regrowth of the
/// map, per request): the upstream codec writes them after the client's
/// own fields, whose copies of them [`rewrite_request`] removed.
pub struct Added<'a> {
    forwarded_for: HeaderValue,
    proto: HeaderValue,
    f: &'a Forwarding<'a>,
    /// The head has no `Host` (an HTTP/2 client's): the gateway adds one.
    host: bool,
}

impl Added<'_> {
    /// Each added field, in the order they go out.
    pub fn for_each(&self, mut field: impl FnMut(&HeaderName, &HeaderValue)) {
        let f = self.f;
        if self.host {
            field(&HOST, f.host);
        }
        field(&X_FORWARDED_FOR, &self.forwarded_for);
        field(&X_FORWARDED_PROTO, &self.proto);
        field(&X_FORWARDED_HOST, f.host);
        field(&X_REQUEST_ID, f.request_id);
        field(&X_GATEWAY_TENANT, f.tenant);
        if let Some(id) = f.key_id {
            field(&X_GATEWAY_KEY_ID, id);
        }
        if let Some(auth) = f.authorization {
            field(&AUTHORIZATION, auth);
        }
    }

    /// Into the head's map (for hyper's client, which carries WebSocket
    /// handshakes).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        self.for_each(|name, value| {
            headers.insert(name.clone(), value.clone());
        });
    }
}

/// Turn the client's request head into the upstream's, but for the fields
/// the gateway adds: those are returned, to be written after it.
pub fn rewrite_request<'a>(
    parts: &mut Parts,
    f: &'a Forwarding<'a>,
) -> Result<Added<'a>, GatewayError> {
    let h = &mut parts.headers;
    let seen = Seen::scan(h);
    strip(h, f.websocket, &seen);
    // The gateway answers `Expect: 100-continue` itself.
    if seen.expect {
        h.remove(EXPECT);
    }
    // Client-sent X-Gateway-* never reach Twenty: only the gateway speaks for
    // tenants and keys.
    if seen.gateway {
        remove_prefixed(h, GATEWAY_PREFIX);
    }
    // The client's copies of what the gateway sets go (each looked up only
    // when the scan saw it).
    for (present, name) in [
        (seen.forwarded_proto, &X_FORWARDED_PROTO),
        (seen.forwarded_host, &X_FORWARDED_HOST),
        (seen.request_id, &X_REQUEST_ID),
        (
            seen.authorization && f.authorization.is_some(),
            &AUTHORIZATION,
        ),
    ] {
        if present {
            h.remove(name);
        }
    }

    let forwarded_for = match (seen.forwarded_for, f.client_ip_header) {
        (false, Some(ip)) => ip.clone(),
        _ => {
            let mut xff = String::new();
            for v in h.get_all(&X_FORWARDED_FOR) {
                if let Ok(s) = v.to_str() {
                    let s = s.trim();
                    if !s.is_empty() {
                        xff.push_str(s);
                        xff.push_str(", ");
                    }
                }
            }
            use std::fmt::Write;
            let _ = write!(xff, "{}", f.client_ip);
            if seen.forwarded_for {
                h.remove(&X_FORWARDED_FOR);
            }
            HeaderValue::try_from(xff).map_err(|e| GatewayError::Internal(e.into()))?
        }
    };

    // Origin form: the connection already goes to the upstream, and the path
    // and query go byte for byte.
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    Ok(Added {
        forwarded_for,
        proto: HeaderValue::from_static(f.proto),
        f,
        // HTTP/2 carries the host in :authority; Twenty (HTTP/1.1) needs Host.
        host: !seen.host,
    })
}

/// Clean the upstream's response head before it goes to the client.
pub fn rewrite_response<B>(resp: &mut Response<B>) {
    let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), upgrade);
}

/// What the unit tests forward with: client 192.0.2.9 over https, no key,
/// no upstream token, no WebSocket.
#[cfg(test)]
pub(crate) fn example_forwarding<'a>(
    host: &'a HeaderValue,
    request_id: &'a HeaderValue,
    tenant: &'a HeaderValue,
) -> Forwarding<'a> {
    Forwarding {
        client_ip: IpAddr::from([192, 0, 2, 9]),
        client_ip_header: None,
        proto: "https",
        host,
        request_id,
        tenant,
        key_id: None,
        authorization: None,
        websocket: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_names(h: &HeaderMap) -> Vec<String> {
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn connection_cannot_remove_protected_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("X-Forwarded-For, Authorization, Host, x-secret, keep-alive"),
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(HOST, HeaderValue::from_static("acme.localhost"));
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("192.0.2.1"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut h, false);
        let left = sorted_names(&h);
        assert_eq!(left, ["authorization", "host", "x-forwarded-for"]);
    }

    #[test]
    fn connection_tokens_match_any_case_and_plain_messages_are_untouched() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("X-Custom , X-GATEWAY-KEY-ID,,not a name"),
        );
        h.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("x-gateway-key-id", HeaderValue::from_static("k"));
        h.insert("proxy-connection", HeaderValue::from_static("x"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        let left = sorted_names(&h);
        assert_eq!(left, ["accept", "x-gateway-key-id"]);

        let mut plain = HeaderMap::new();
        plain.insert("accept", HeaderValue::from_static("*/*"));
        plain.insert(HOST, HeaderValue::from_static("acme.localhost"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain, before);
    }

    #[test]
    fn rewrite_request_removes_and_adds_what_the_scan_found() {
        let forwarded = |req: http::Request<()>| {
            let (mut parts, ()) = req.into_parts();
            let host = HeaderValue::from_static("acme.localhost");
            let (rid, tenant) = (
                HeaderValue::from_static("r1"),
                HeaderValue::from_static("t"),
            );
            let f = example_forwarding(&host, &rid, &tenant);
            let added = rewrite_request(&mut parts, &f).unwrap();
            added.insert_into(&mut parts.headers);
            parts
        };
        let parts = forwarded(
            http::Request::post("https://acme.localhost/rest/x?q=1")
                .header("expect", "100-continue")
                .header("x-gateway-key-id", "forged")
                .header("X-Gateway-Other", "forged")
                .header("x-forwarded-for", "203.0.113.1")
                .header("connection", "expect, x-drop, close")
                .header("x-drop", "1")
                .header("proxy-authorization", "x")
                .header("accept", "*/*")
                .body(())
                .unwrap(),
        );
        let h = &parts.headers;
        assert_eq!(
            sorted_names(h),
            [
                "accept",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-gateway-tenant",
                "x-request-id"
            ]
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 192.0.2.9");
        assert_eq!(h[HOST], "acme.localhost");
        assert_eq!(h["x-gateway-tenant"], "t");
        assert_eq!(parts.uri, "/rest/x?q=1");

        // A Host of its own is kept; nothing to remove leaves the rest alone.
        let parts = forwarded(
            http::Request::get("/rest")
                .header(HOST, "acme.localhost:8443")
                .body(())
                .unwrap(),
        );
        assert_eq!(parts.headers[HOST], "acme.localhost:8443");
        assert_eq!(parts.headers["x-forwarded-for"], "192.0.2.9");
        assert_eq!(parts.headers.len(), 6);
    }

    #[test]
    fn websocket_keeps_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(Version::HTTP_11, &h));
        assert!(!is_websocket_upgrade(Version::HTTP_2, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
    }
}
