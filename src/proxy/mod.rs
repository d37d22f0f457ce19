//! Request handling. [`handle`] is the outer shell: it creates the request's
//! context ([`ctx::RequestCtx`]), runs the [`pipeline`], turns any error into
//! its JSON response and hands the context to the response body, whose
//! logging phase ([`body::Finish`]) writes the log line and the metrics when
//! the response is over — whatever happened on the way.

pub mod body;
pub mod ctx;
pub mod pipeline;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use self::body::{Finish, InFlight, Payload, ResponseBody};
pub use self::ctx::{ConnInfo, RequestCtx, TlsInfo, peer_header};
use crate::access_log::clip;
use crate::base::headers::{RATELIMIT, RATELIMIT_POLICY, X_REQUEST_ID};
use crate::base::request_id;
use crate::codec_errors::CodecRefusal;
use crate::error::ErrorShape;
use crate::runtime::Gateway;

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
        .filter(|v| request_id::sane(v))
        .cloned()
        .unwrap_or_else(request_id::new_request_id);
    let shape = ErrorShape::for_path(req.uri().path());
    // The path and user agent are copied only for the access log line;
    // metrics need neither.
    let log = snap.config.access_log;
    let mut ctx = RequestCtx::new(
        request_id,
        ctx::client_ip(conn.peer.ip(), req.headers(), &snap.config.trusted_proxies),
        req.method().clone(),
        if log {
            req.uri().path().to_string()
        } else {
            String::new()
        },
        ctx::protocol(req.version()),
        start,
    );
    if log {
        ctx.user_agent = req
            .headers()
            .get(http::header::USER_AGENT)
            .map(|v| clip(&String::from_utf8_lossy(v.as_bytes())).to_string());
    }
    let mut finish = Box::new(Finish {
        ctx,
        gateway: gw.clone(),
        log,
        in_flight: Some(InFlight::new(conn.clone())),
    });

    let result = pipeline::run(&gw, &snap, &conn, req, &mut finish.ctx).await;
    let ctx = &mut finish.ctx;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            ctx.fail(&e, log);
            e.to_response(shape, request_id::as_str(&ctx.request_id))
                .map(Payload::full)
        }
    };
    ctx.status = resp.status().as_u16();
    stamp_response(resp.headers_mut(), &ctx.request_id, ctx.rate_headers.take());
    Ok(resp.map(|payload| ResponseBody::new(payload, finish)))
}

/// Report a request the HTTP/1 codec refused (see [`crate::codec_errors`])
/// through the same logging phase as every other request.
pub fn codec_refused(gw: &Arc<Gateway>, peer: std::net::SocketAddr, refusal: CodecRefusal) {
    let mut ctx = RequestCtx::new(
        refusal.request_id,
        peer.ip(),
        http::Method::from_bytes(b"-").unwrap_or_default(),
        String::new(),
        "HTTP/1.1",
        Instant::now(),
    );
    ctx.status = refusal.error.status().as_u16();
    ctx.bytes_out = refusal.body_len as u64;
    // (The detail is set here, logged or not: these are rare.)
    ctx.fail(&refusal.error, false);
    ctx.failure.detail = Some(format!(
        "request refused by the HTTP/1 parser: {}",
        refusal.error.public_message()
    ));
    drop(Finish {
        ctx,
        gateway: gw.clone(),
        log: gw.current().config.access_log,
        in_flight: None,
    });
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

/// Map a result's error into the context (for steps that record their own
/// detail before failing).
pub(crate) fn with_detail(ctx: &mut RequestCtx, detail: String) {
    ctx.failure.detail = Some(detail);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GatewayError;

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
    fn errors_fill_the_context_once() {
        let mut ctx = RequestCtx::new(
            HeaderValue::from_static("id"),
            std::net::Ipv4Addr::LOCALHOST.into(),
            http::Method::GET,
            String::new(),
            "HTTP/1.1",
            Instant::now(),
        );
        // Not logged: no detail is made.
        ctx.fail(&GatewayError::UpstreamTimeout, false);
        assert_eq!(ctx.record().error, None);
        assert_eq!(ctx.record().outcome.as_str(), "upstream_timeout");
        ctx.fail(&GatewayError::UpstreamTimeout, true);
        assert_eq!(
            ctx.record().error,
            Some("no response head from upstream within upstream_timeout")
        );
        ctx.failure.detail = None;
        with_detail(&mut ctx, "braked".into());
        ctx.fail(&GatewayError::UpstreamTimeout, true);
        let r = ctx.record();
        assert_eq!(r.outcome.as_str(), "upstream_timeout");
        assert_eq!(r.error, Some("braked"));
        assert_eq!(r.error_kind.map(|k| k.as_str()), Some("timeout"));
    }
}
