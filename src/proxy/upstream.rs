//! The way to Twenty: header rewriting (hop-by-hop out, forwarding headers
//! in), the pooled keep-alive client, error classification, and WebSocket
//! tunnelling once the upstream has answered 101.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONNECTION, EXPECT, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{BodyTooLarge, ClientBodyError, RequestBody};
use crate::config::Limits;
use crate::error::{BadRequest, BoxError, GatewayError, UpstreamFailure};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_GATEWAY_TENANT: HeaderName = HeaderName::from_static("x-gateway-tenant");
pub static X_GATEWAY_KEY_ID: HeaderName = HeaderName::from_static("x-gateway-key-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

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

/// Headers only the gateway may set.
const GATEWAY_PREFIX: &str = "x-gateway-";

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

/// Idle keep-alive connections kept per upstream; more are closed.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;
/// An idle pooled connection is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keepalive probes on upstream connections start after this long idle.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// One upstream's idle keep-alive HTTP/1.1 connections, most recently used
/// last. Each connection's I/O runs in its own task; the pool holds the
/// sending halves.
pub struct Pool {
    authority: Authority,
    idle: Mutex<Vec<(Instant, SendRequest<RequestBody>)>>,
}

impl Pool {
    /// A ready idle connection, newest first; closed ones are dropped.
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((_, sender)) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Send on `sender`; the response body gives it back to the pool once
    /// read to the end.
    async fn send_on(
        self: &Arc<Self>,
        mut sender: SendRequest<RequestBody>,
        req: http::Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, TrySendError<http::Request<RequestBody>>> {
        let resp = sender.try_send_request(req).await?;
        let pool = self.clone();
        Ok(resp.map(|incoming| UpstreamBody {
            incoming,
            connection: Some((pool, sender)),
            ended: false,
        }))
    }

    /// Back to the pool once the exchange is over. Usually the connection
    /// is ready again by the time its response body ended (hyper marks it
    /// idle in the same poll that reads the last byte); otherwise a task
    /// waits for it. One that closes or was upgraded is dropped.
    fn give_back(self: &Arc<Self>, mut sender: SendRequest<RequestBody>) {
        if sender.is_ready() {
            self.park(sender);
        } else if !sender.is_closed() {
            let pool = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.park(sender);
                }
            });
        }
    }

    fn park(&self, sender: SendRequest<RequestBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push((Instant::now(), sender));
        }
    }

    /// Close connections idle for longer than [`IDLE_TIMEOUT`] or closed by
    /// the upstream.
    fn prune(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(since, sender)| {
            !sender.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
        });
    }
}

/// The upstream client: one [`Pool`] per upstream address, shared by every
/// config generation that names it (a reload keeps the warm connections).
pub struct UpstreamClient {
    pools: Mutex<HashMap<Authority, Arc<Pool>>>,
    connect_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(limits: &Limits) -> Self {
        UpstreamClient {
            pools: Mutex::default(),
            connect_timeout: limits.connect_timeout,
        }
    }

    /// The pool for an upstream address (looked up when a config is
    /// installed, not per request).
    pub fn pool(&self, authority: &Authority) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(authority.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    authority: authority.clone(),
                    idle: Mutex::default(),
                })
            })
            .clone()
    }

    /// Forget the pools no installed config names any more; their idle
    /// connections close when the last request still using them ends.
    pub fn retain<'a>(&self, in_use: impl Iterator<Item = &'a Arc<Pool>>) {
        let used: HashSet<&Authority> = in_use.map(|p| &p.authority).collect();
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|authority, _| used.contains(authority));
    }

    /// Periodic upkeep: close idle connections past their time.
    pub fn prune_idle(&self) {
        let now = Instant::now();
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for pool in pools {
            pool.prune(now);
        }
    }

    /// Send the request; the response *head* must arrive within `timeout`
    /// (connecting included). The body then streams for as long as it
    /// lasts (SSE).
    pub async fn send(
        &self,
        pool: &Arc<Pool>,
        req: http::Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        match tokio::time::timeout(timeout, self.exchange(pool, req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(result) => result,
        }
    }

    async fn exchange(
        &self,
        pool: &Arc<Pool>,
        mut req: http::Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        if let Some(sender) = pool.checkout() {
            match pool.send_on(sender, req).await {
                Ok(resp) => return Ok(resp),
                // The upstream closed this idle connection before the
                // request went out: hyper hands it back untouched, and it
                // goes once more, on a fresh connection.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(classify(e.into_error())),
                },
            }
        }
        let sender = self.connect(&pool.authority).await?;
        pool.send_on(sender, req)
            .await
            .map_err(|e| classify(e.into_error()))
    }

    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<SendRequest<RequestBody>, GatewayError> {
        let connect_failed = |e: BoxError| GatewayError::Upstream {
            kind: UpstreamFailure::Connect,
            source: e,
        };
        // `[::1]` in a URL is `::1` to the resolver.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| connect_failed("connect_timeout elapsed".into()))?
            .map_err(|e| connect_failed(e.into()))?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_failed(e.into()))?;
        tokio::spawn(async move {
            // Ends when either side closes; `with_upgrades` hands a
            // WebSocket's connection to the tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed with error");
            }
        });
        Ok(sender)
    }
}

/// An upstream response body. Read to the end, it hands its connection
/// back to the pool (no task per request waits for that); dropped early, the
/// connection goes with it, since unread bytes would be the next response.
pub struct UpstreamBody {
    incoming: Incoming,
    connection: Option<(Arc<Pool>, SendRequest<RequestBody>)>,
    /// The body said it was over. A chunked body only says so by ending:
    /// `is_end_stream` knows the end of a Content-Length body alone.
    ended: bool,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.incoming).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some((pool, sender)) = self.connection.take()
            && self.is_end_stream()
        {
            pool.give_back(sender);
        }
    }
}

fn classify(e: hyper::Error) -> GatewayError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<BodyTooLarge>() {
            return GatewayError::PayloadTooLarge;
        }
        if s.is::<ClientBodyError>() {
            return GatewayError::BadRequest(BadRequest::Framing);
        }
        source = s.source();
    }
    GatewayError::Upstream {
        kind: UpstreamFailure::Reset,
        source: Box::new(e),
    }
}

/// Join the client's and the upstream's upgraded connections and copy bytes
/// both ways until either side closes.
pub fn spawn_tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = tokio::join!(client, upstream);
        match (client, upstream) {
            (Ok(c), Ok(u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "websocket tunnel closed with error");
                }
            }
            (c, u) => {
                tracing::debug!(
                    client_ok = c.is_ok(),
                    upstream_ok = u.is_ok(),
                    "websocket upgrade did not complete"
                );
            }
        }
    });
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
