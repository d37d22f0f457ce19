//! Request handling. [`handle`] is the outer shell: it creates the per-request
//! context, runs the [`pipeline`], turns any error into its JSON response and
//! hands the access record to the response body, which writes the log line
//! when the response is over — whatever happened on the way.

pub mod auth;
pub mod body;
pub mod host;
pub mod pipeline;
pub mod ratelimit;
pub mod route;
pub mod target;
pub mod upstream;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use ipnet::IpNet;

use self::body::{Finish, InFlight, Payload, ResponseBody};
use self::upstream::{X_FORWARDED_FOR, X_REQUEST_ID};
use crate::access_log::{AccessRecord, clip};
use crate::conn::Activity;
use crate::error::{ErrorShape, GatewayError};
use crate::state::Gateway;
use crate::tls::LoadedCert;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What a connection knows about itself, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as a header value, made once per connection: the
    /// `X-Forwarded-For` of every request that arrives without one.
    pub peer_header: HeaderValue,
    pub tls: Option<TlsInfo>,
    pub activity: Activity,
}

#[derive(Debug)]
pub struct TlsInfo {
    pub sni: Option<String>,
    /// The certificate served on this connection (for 421).
    pub cert: Option<Arc<LoadedCert>>,
}

/// Per-request state filled in by the pipeline. Its `finish` logs the
/// request when dropped, whichever way the request ends.
pub struct Ctx {
    pub finish: Box<Finish>,
    pub rate_headers: Option<(HeaderValue, HeaderValue)>,
}

/// A client-sent request id is kept if sane: 1–128 visible ASCII characters.
fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// 32 random hex characters.
pub fn new_request_id() -> HeaderValue {
    let mut hex = [0u8; 32];
    // Cannot fail: the buffer is exactly twice the input's length.
    let _ = hex::encode_to_slice(rand::random::<[u8; 16]>(), &mut hex);
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: Option<TlsInfo>) -> Self {
        ConnInfo {
            peer,
            peer_header: peer_header(peer.ip()),
            tls,
            activity: Activity::default(),
        }
    }
}

/// An address as a header value (digits, dots, colons, hex: always valid).
pub fn peer_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy —
/// then the right-most `X-Forwarded-For` entry that is not one.
fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if !is_trusted(&ip) => return ip,
            Ok(_) => continue,
            // Garbage in the chain: stop believing it.
            Err(_) => return peer,
        }
    }
    peer
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

/// Serve one request: run the pipeline, answer errors as JSON, log once.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    // One snapshot for the whole request: one consistent world.
    let snap = gw.current();
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| sane_request_id(v))
        .cloned()
        .unwrap_or_else(new_request_id);
    let shape = ErrorShape::for_path(req.uri().path());
    // The path and user agent are copied only for the access log line;
    // metrics need neither.
    let log = snap.config.access_log;
    let mut ctx = Ctx {
        finish: Box::new(Finish {
            gateway: gw.clone(),
            log,
            in_flight: InFlight::new(conn.clone()),
            counters: None,
            record: AccessRecord {
                user_agent: req
                    .headers()
                    .get(http::header::USER_AGENT)
                    .filter(|_| log)
                    .map(|v| clip(&String::from_utf8_lossy(v.as_bytes())).to_string()),
                ..AccessRecord::new(
                    request_id,
                    client_ip(conn.peer.ip(), req.headers(), &snap.config.trusted_proxies),
                    req.method().clone(),
                    if log {
                        req.uri().path().to_string()
                    } else {
                        String::new()
                    },
                    protocol(req.version()),
                    start,
                )
            },
        }),
        rate_headers: None,
    };

    let result = pipeline::run(&gw, &snap, &conn, req, &mut ctx).await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            ctx.finish.record.outcome = e.outcome();
            ctx.finish.record.error_kind = match &e {
                GatewayError::Upstream { kind, .. } => Some(kind.as_str()),
                GatewayError::UpstreamTimeout => Some("timeout"),
                _ => None,
            };
            if ctx.finish.record.error.is_none() {
                let mut detail = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    detail.push_str(": ");
                    detail.push_str(&s.to_string());
                    source = s.source();
                }
                ctx.finish.record.error = Some(detail);
            }
            e.to_response(shape, ctx.finish.record.request_id())
                .map(Payload::full)
        }
    };
    ctx.finish.record.status = resp.status().as_u16();
    stamp_response(
        resp.headers_mut(),
        &ctx.finish.record.request_id,
        ctx.rate_headers,
    );
    let finish = ctx.finish;
    Ok(resp.map(|payload| ResponseBody::new(payload, finish)))
}

/// The gateway's own response headers. The request id and the rate-limit
/// state differ in every response, so over HTTP/2 they go out as HPACK
/// literals that are never indexed: indexing them would only churn both
/// ends' dynamic tables (evicting the entries that do repeat, like `server`
/// and `content-type`), and it was ~2k instructions per request of table
/// upkeep and Huffman coding (`bench/callgrind.sh h2`). HTTP/1.1 ignores
/// the flag.
fn stamp_response(
    headers: &mut http::HeaderMap,
    request_id: &HeaderValue,
    rate: Option<(HeaderValue, HeaderValue)>,
) {
    let mut id = request_id.clone();
    id.set_sensitive(true);
    headers.insert(X_REQUEST_ID.clone(), id);
    if let Some((policy, mut state)) = rate {
        state.set_sensitive(true);
        headers.insert(RATELIMIT_POLICY.clone(), policy);
        headers.insert(RATELIMIT.clone(), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_response_headers_are_never_indexed_and_the_policy_is() {
        let mut h = http::HeaderMap::new();
        let rate = (
            HeaderValue::from_static("\"key\";q=600;w=60"),
            HeaderValue::from_static("\"key\";r=599;t=1"),
        );
        stamp_response(&mut h, &HeaderValue::from_static("abc"), Some(rate));
        assert_eq!(h[&X_REQUEST_ID], "abc");
        assert!(h[&X_REQUEST_ID].is_sensitive());
        assert!(h[&RATELIMIT].is_sensitive());
        assert!(!h[&RATELIMIT_POLICY].is_sensitive());
    }

    #[test]
    fn request_ids() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!sane_request_id(&HeaderValue::from_static("a b")));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        let long = "x".repeat(129);
        assert!(!sane_request_id(&HeaderValue::from_str(&long).unwrap()));
        assert_eq!(new_request_id().len(), 32);
    }

    #[test]
    fn client_ip_from_trusted_chain() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = http::HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.0.0.2"),
        );
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(lb, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        assert_eq!(client_ip(lb, &h, &[]), lb);
    }
}
