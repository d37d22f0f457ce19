//! Header rewriting at the edge: hop-by-hop headers out, the gateway's
//! forwarding headers in, origin-form target, HTTP/1.1 towards Twenty.

use std::net::IpAddr;

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

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
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
    // One pass over the names, then removals only for what is there: most
    // messages carry nothing here or just `Connection: keep-alive`, and a
    // hashed removal costs more than a look at each name.
    let (mut connection, mut present, mut proxy) = (false, [false; HOP_BY_HOP.len()], false);
    for name in headers.keys() {
        if name == CONNECTION {
            connection = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present[i] = true;
        } else if name.as_str().starts_with("proxy-") {
            proxy = true;
        }
    }
    if connection {
        let values: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
        headers.remove(CONNECTION);
        for token in values
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
        {
            let keep = protected_name(token) || (upgrade && token.eq_ignore_ascii_case("upgrade"));
            // A token that is not a header name matches nothing.
            if !keep && !token.is_empty() {
                headers.remove(token);
            }
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

/// Turn the client's request head into the upstream's.
pub fn rewrite_request(parts: &mut Parts, f: &Forwarding<'_>) -> Result<(), GatewayError> {
    let h = &mut parts.headers;
    strip_hop_by_hop(h, f.websocket);
    // The gateway answers `Expect: 100-continue` itself.
    h.remove(EXPECT);
    // Client-sent X-Gateway-* never reach Twenty: only the gateway speaks for
    // tenants and keys.
    remove_prefixed(h, GATEWAY_PREFIX);

    let xff = match (h.contains_key(&X_FORWARDED_FOR), f.client_ip_header) {
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
            HeaderValue::try_from(xff).map_err(|e| GatewayError::Internal(e.into()))?
        }
    };
    h.insert(X_FORWARDED_FOR.clone(), xff);
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(f.proto));
    h.insert(X_FORWARDED_HOST.clone(), f.host.clone());
    h.insert(X_REQUEST_ID.clone(), f.request_id.clone());
    h.insert(X_GATEWAY_TENANT.clone(), f.tenant.clone());
    if let Some(id) = f.key_id {
        h.insert(X_GATEWAY_KEY_ID.clone(), id.clone());
    }
    if let Some(auth) = f.authorization {
        h.insert(AUTHORIZATION, auth.clone());
    }
    // HTTP/2 carries the host in :authority; Twenty (HTTP/1.1) needs Host.
    if !h.contains_key(HOST) {
        h.insert(HOST, f.host.clone());
    }

    // Origin form: the connection already goes to the upstream, and the path
    // and query go byte for byte.
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    Ok(())
}

/// Clean the upstream's response head before it goes to the client.
pub fn rewrite_response<B>(resp: &mut Response<B>) {
    let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), upgrade);
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
