//! The straight line a request walks: one call per step, each a function of
//! what it needs (testable without a socket), each saying why it sits where
//! it does. SPEC's order is: target (400) → 421 → host (404) → route (404)
//! → authentication → rate limits → permission → upstream. A cheaper or more
//! specific rejection never waits behind a later one.

use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::body::Payload;
use super::ctx::{ConnInfo, RequestCtx};
use crate::acme;
use crate::auth::{self, Refused};
use crate::error::{BadRequest, GatewayError};
use crate::host::{self, RequestHost};
use crate::permission::{self, Permitted};
use crate::ratelimit::{
    self, AuthBrake, Checked, OnUnavailable, SharedChecked, SharedLimits, SharedRequest,
    state_field,
};
use crate::route::RouteAuth;
use crate::runtime::{Gateway, KeyEntry, RouteEntry, Snapshot, TenantEntry};
use crate::target;
use crate::upstream::{self, Forwarding, RequestBody};

pub async fn run(
    gw: &Gateway,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    ctx: &mut RequestCtx,
) -> Result<Response<Payload>, GatewayError> {
    // 1. The head alone: size, target, method, framing. Nothing below may
    //    look at a path an upstream could read differently.
    check_head(&req, snap.config.limits.max_header_bytes)?;

    // 1b. ACME HTTP-01 on the plain listener (with `acme` set): the CA
    //     fetches its token with no key, for a name that may have no
    //     certificate yet, so it is answered before the host and route checks.
    if conn.tls.is_none()
        && snap.config.acme.is_some()
        && let Some(token) = acme::challenge::http01_token(req.uri().path())
    {
        return answer_http01(gw, token).await;
    }
    let (mut parts, body) = req.into_parts();

    // 2. The host, malformed → 400; then 421 before the tenant lookup: a
    //    connection whose certificate does not cover this host must not be
    //    used for it, whether or not we know the host.
    let RequestHost { raw: host, name } =
        host::request_host(&parts, &conn.host).map_err(GatewayError::BadRequest)?;
    // 3. Tenant from the host, then route from the path: both are cheap map
    //    lookups that need no credentials.
    let selected =
        check_coverage(conn, &name).and_then(|()| select(snap, &name, parts.uri.path(), ctx));
    // The name goes to the log as it is (moved, not copied), refused or not.
    ctx.host = Some(name);
    let (tenant, route) = selected?;

    // 4. Authentication, on routes that want a key (the brake first: a
    //    braked client is refused before we spend a hash on its guess).
    let (key, body) = match route.route.auth {
        RouteAuth::Key => {
            let key = authenticate(snap, tenant, &parts.headers, SystemTime::now(), ctx).await?;

            // 5. Rate limits: the key's own, then the tenant's shared one.
            //    Only authenticated requests count, so a stranger cannot
            //    drain a tenant's quota. With `cluster`, Redis decides (and
            //    checks the brake in the same round trip).
            let checked = match &snap.shared {
                None => Some(ratelimit::check_local(
                    key.limit.as_ref(),
                    tenant.limit.as_ref(),
                )),
                Some(shared) => check_shared(shared.as_ref(), snap, tenant, key, ctx).await?,
            };
            if let Some(checked) = checked {
                apply_limits(key, &checked, ctx)?;
            }

            // 6. Permission: what this key may do on this route. After the
            //    limits, so a refused attempt uses quota like any other;
            //    before anything goes upstream. A read key's GraphQL body is
            //    read and checked here, and those bytes are what goes up.
            let body = permission::check(
                &key.key,
                &route.route,
                &parts,
                body,
                gw.registry.verdicts(),
                snap.config.limits.upstream_timeout,
            )
            .await?;
            (Some(key), body)
        }
        // 4'. Routes without a gateway key: every request (refusals too)
        //     counts against the client's anonymous budget first, so open
        //     routes cannot be used to flood Twenty.
        open => {
            open_route(snap, open, parts.uri.query(), ctx).await?;
            (None, Permitted::Stream(body))
        }
    };

    // 7. A body announced larger than allowed is refused before we open an
    //    upstream exchange; unannounced (chunked) ones are cut while
    //    streaming.
    let max_body = snap.config.limits.max_request_body;
    let body = match body {
        Permitted::Stream(body) if http_body::Body::size_hint(&body).lower() > max_body => {
            return Err(GatewayError::PayloadTooLarge);
        }
        Permitted::Stream(body) => RequestBody::new(body, max_body),
        Permitted::Checked(bytes) if bytes.len() as u64 > max_body => {
            return Err(GatewayError::PayloadTooLarge);
        }
        Permitted::Checked(bytes) => RequestBody::full(bytes),
    };

    // 8. Upstream.
    let websocket = upstream::is_websocket_upgrade(parts.version, &parts.headers);
    // The upgrade future must be taken before the request is consumed.
    let client_upgrade = websocket.then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let forwarding = Forwarding {
        client_ip: ctx.client_ip,
        // The usual case (no trusted proxy in front): made once per connection.
        client_ip_header: (ctx.client_ip == conn.peer.ip()).then_some(&conn.peer_header),
        proto: if conn.tls.is_some() { "https" } else { "http" },
        host: &host,
        request_id: &ctx.request_id,
        tenant: &tenant.tenant.header,
        key_id: key.map(|k| &k.key.header),
        // The tenant's Twenty token only for requests with a gateway
        // key: on open routes it would be Twenty's key for anyone.
        authorization: key.and(tenant.tenant.upstream_authorization.as_ref()),
        websocket,
    };
    let added = upstream::rewrite_request(&mut parts, &forwarding)?;
    let upstream_req = Request::from_parts(parts, body);
    // Which server (balancing, health, failover of what was never sent)
    // is the client's business, below.
    let started = Instant::now();
    let sent = gw
        .registry
        .upstream()
        .send(
            &route.target,
            upstream_req,
            &added,
            snap.config.limits.upstream_timeout,
        )
        .await;
    ctx.upstream_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    let mut resp = sent?;
    upstream::rewrite_response(&mut resp);
    if websocket && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // Tunnel only once the upstream has agreed to switch.
        let Some(client) = client_upgrade.flatten() else {
            return Err(GatewayError::BadRequest(BadRequest::Framing));
        };
        let upstream_io = hyper::upgrade::on(&mut resp);
        upstream::spawn_tunnel(client, upstream_io);
        return Ok(resp.map(|_| Payload::empty()));
    }
    Ok(resp.map(Payload::Stream))
}

/// Step 1: what the request head alone can be refused for.
pub fn check_head<B>(req: &Request<B>, max_header_bytes: usize) -> Result<(), GatewayError> {
    // An HTTP/2 header list over `max_header_bytes`. HTTP/1 heads never get
    // here that big (hyper's parser refuses them; codec_errors gives that
    // 431 a JSON body); the h2 codec is allowed twice the limit (conn.rs) so
    // that lists in between get this JSON 431 instead of the h2 crate's
    // bodiless one.
    if req.version() == http::Version::HTTP_2 && h2_field_list_size(req) > max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    target::check_path(req.uri().path()).map_err(GatewayError::BadRequest)?;
    // CONNECT asks for a tunnel to an authority, not a resource under a
    // route; forwarding it would hand Twenty something other than the path
    // that was authorised.
    if req.method() == http::Method::CONNECT {
        return Err(GatewayError::BadRequest(BadRequest::Method));
    }
    // Framing hyper accepts but we won't forward: any transfer coding other
    // than plain `chunked` (hyper decodes only the chunking, so `gzip,
    // chunked` would reach Twenty as bytes with no coding).
    if req.headers().contains_key(http::header::TRANSFER_ENCODING) && !only_chunked(req.headers()) {
        return Err(GatewayError::BadRequest(BadRequest::Framing));
    }
    Ok(())
}

/// Step 1b: the key authorization for a pending HTTP-01 challenge; 404
/// `NOT_FOUND` for any other token.
pub async fn answer_http01(gw: &Gateway, token: &str) -> Result<Response<Payload>, GatewayError> {
    // Ours, or (with `cluster`) one another gateway published.
    let answer = gw
        .acme
        .http01_answer(token)
        .await
        .ok_or(GatewayError::UnknownChallenge)?;
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Payload::full(answer.into()))
        .map_err(|e| GatewayError::Internal(e.into()))
}

/// Step 2b: 421 when the connection's certificate does not cover the host
/// (its normalised name).
pub fn check_coverage(conn: &ConnInfo, host: &str) -> Result<(), GatewayError> {
    match &conn.tls {
        Some(tls) if tls.sni.is_some() && tls.cert.as_ref().is_some_and(|c| !c.covers(host)) => {
            Err(GatewayError::Misdirected)
        }
        _ => Ok(()),
    }
}

/// Step 3: the tenant of the (normalised) host and its route for the path.
pub fn select<'s>(
    snap: &'s Snapshot,
    host: &str,
    path: &str,
    ctx: &mut RequestCtx,
) -> Result<(&'s TenantEntry, &'s RouteEntry), GatewayError> {
    let tenant = snap.tenant(host).ok_or(GatewayError::UnknownHost)?;
    ctx.tenant = Some(tenant.tenant.name.clone());
    let route = tenant.routes.lookup(path).ok_or(GatewayError::NoRoute)?;
    ctx.route = Some(route.route.prefix.clone());
    ctx.counters = Some(route.counters.clone());
    ctx.upstream = Some(route.target.name.clone());
    Ok((tenant, route))
}

/// Step 4: the brake, then the key. Guesses count toward the brake.
pub async fn authenticate<'s>(
    snap: &'s Snapshot,
    tenant: &TenantEntry,
    headers: &HeaderMap,
    now: SystemTime,
    ctx: &mut RequestCtx,
) -> Result<&'s KeyEntry, GatewayError> {
    let brake: Option<&AuthBrake> = snap.brake.as_deref();
    // With `cluster`, a block this gateway learnt from Redis (the request
    // with a key asks Redis in step 5 anyway).
    let blocked = match (&snap.shared, brake) {
        (Some(shared), Some(b)) => {
            shared.known_blocked(&tenant.tenant.name, ctx.client_ip, b.rate())
        }
        (None, Some(b)) => b.blocked_for(ctx.client_ip),
        (_, None) => None,
    };
    if let Some(retry_after) = blocked {
        return Err(GatewayError::AuthThrottled { retry_after });
    }
    match auth::authenticate(&snap.keys, headers, tenant.id, now) {
        Ok(key) => {
            ctx.key_id = Some(key.key.id.clone());
            Ok(key)
        }
        Err(refused) => {
            ctx.key_id = refused.key.map(|k| k.id.clone());
            let guess = refused.is_guess();
            let Refused { error, .. } = refused;
            let braked = match (guess, brake) {
                (true, Some(b)) => record_failure(snap, b, tenant, ctx.client_ip).await,
                _ => None,
            };
            if let Some(retry_after) = braked {
                super::with_detail(ctx, format!("{error}; client now braked"));
                return Err(GatewayError::AuthThrottled { retry_after });
            }
            Err(error)
        }
    }
}

/// A guess counts toward the brake: in Redis with `cluster`, else (or
/// when Redis cannot answer and `on_unavailable` is `local`) locally.
async fn record_failure(
    snap: &Snapshot,
    brake: &AuthBrake,
    tenant: &TenantEntry,
    ip: std::net::IpAddr,
) -> Option<std::time::Duration> {
    let Some(shared) = &snap.shared else {
        return brake.record_failure(ip);
    };
    match shared
        .record_failure(&tenant.tenant.name, ip, brake.rate())
        .await
    {
        Ok(braked) => braked,
        Err(ratelimit::Unavailable) => match shared.on_unavailable() {
            OnUnavailable::Local => brake.record_failure(ip),
            // `deny` refuses valid keys only: a guess keeps its 401.
            OnUnavailable::Allow | OnUnavailable::Deny => None,
        },
    }
}

/// Step 5 with `cluster`: the brake and the limits from Redis in one round
/// trip; when it cannot answer, `on_unavailable` decides: `local` = the
/// gateway's own brake and limiters, `allow` = no limits (`None`: no
/// `RateLimit` fields), `deny` = 503.
pub async fn check_shared(
    shared: &dyn SharedLimits,
    snap: &Snapshot,
    tenant: &TenantEntry,
    key: &KeyEntry,
    ctx: &mut RequestCtx,
) -> Result<Option<Checked>, GatewayError> {
    let brake = snap.brake.as_deref();
    let req = SharedRequest {
        tenant: &tenant.tenant.name,
        key: key.limit.as_ref(),
        tenant_limit: tenant.limit.as_ref(),
        brake: brake.map(|b| (ctx.client_ip, b.rate())),
    };
    match shared.check(req).await {
        Ok(SharedChecked::Limits(checked)) => Ok(Some(checked)),
        Ok(SharedChecked::Braked(retry_after)) => Err(GatewayError::AuthThrottled { retry_after }),
        Err(ratelimit::Unavailable) => match shared.on_unavailable() {
            OnUnavailable::Local => {
                if let Some(retry_after) = brake.and_then(|b| b.blocked_for(ctx.client_ip)) {
                    return Err(GatewayError::AuthThrottled { retry_after });
                }
                Ok(Some(ratelimit::check_local(
                    key.limit.as_ref(),
                    tenant.limit.as_ref(),
                )))
            }
            OnUnavailable::Allow => Ok(None),
            OnUnavailable::Deny => Err(GatewayError::LimiterUnavailable),
        },
    }
}

/// Step 4': a route without a gateway key — the client's anonymous budget,
/// then (on `twenty_token` routes) Twenty's token in the query.
pub async fn open_route(
    snap: &Snapshot,
    auth: RouteAuth,
    query: Option<&str>,
    ctx: &RequestCtx,
) -> Result<(), GatewayError> {
    if let Some(limit) = &snap.anonymous {
        // With `cluster`, one budget per client across the fleet; when Redis
        // cannot answer, the local one (`allow`: none; `deny` refuses only
        // requests with a valid key, so it counts locally too).
        let refused = match &snap.shared {
            None => limit.check(ctx.client_ip).err(),
            Some(shared) => match shared.check_anonymous(ctx.client_ip, limit.rate()).await {
                Ok(ratelimit::Decision::Denied { retry_after, .. }) => Some(retry_after),
                Ok(ratelimit::Decision::Allowed { .. }) => None,
                Err(ratelimit::Unavailable) => match shared.on_unavailable() {
                    OnUnavailable::Allow => None,
                    OnUnavailable::Local | OnUnavailable::Deny => limit.check(ctx.client_ip).err(),
                },
            },
        };
        if let Some(retry_after) = refused {
            return Err(GatewayError::RateLimited { retry_after });
        }
    }
    if auth == RouteAuth::TwentyToken && !auth::has_twenty_token(query) {
        return Err(GatewayError::MissingToken);
    }
    Ok(())
}

/// Step 5: the `RateLimit` fields for the response, and 429 if a limit
/// refused.
pub fn apply_limits(
    key: &KeyEntry,
    checked: &Checked,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    if let Some(policy) = &key.policy {
        let state = state_field(&[("key", checked[0]), ("tenant", checked[1])]);
        ctx.rate_headers = Some((
            policy.clone(),
            HeaderValue::try_from(state).map_err(|e| GatewayError::Internal(e.into()))?,
        ));
    }
    match ratelimit::denied(checked) {
        Some(retry_after) => Err(GatewayError::RateLimited { retry_after }),
        None => Ok(()),
    }
}

fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty());
    matches!(
        (codings.next(), codings.next()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked")
    )
}

/// The size of an HTTP/2 request's field list as RFC 9113 §6.5.2 counts it
/// (and the h2 codec enforces it): each field's name and value plus 32
/// octets, pseudo-header fields included.
fn h2_field_list_size<B>(req: &Request<B>) -> usize {
    const PER_FIELD: usize = 32;
    let uri = req.uri();
    let pseudo = [
        (":method", Some(req.method().as_str())),
        (":path", uri.path_and_query().map(|p| p.as_str())),
        (":scheme", uri.scheme_str()),
        (":authority", uri.authority().map(|a| a.as_str())),
    ];
    let pseudo: usize = pseudo
        .iter()
        .filter_map(|(name, value)| value.map(|v| name.len() + v.len() + PER_FIELD))
        .sum();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + PER_FIELD)
        .sum();
    pseudo + fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_field_list_size_counts_pseudo_headers_and_32_per_field() {
        let req = Request::get("https://acme.localhost/rest/people")
            .header("x", "y")
            .body(())
            .expect("request");
        // :method GET, :path /rest/people, :scheme https, :authority acme.localhost, x: y
        let want = (7 + 3 + 32) + (5 + 12 + 32) + (7 + 5 + 32) + (10 + 14 + 32) + (1 + 1 + 32);
        assert_eq!(h2_field_list_size(&req), want);
    }

    #[test]
    fn head_checks() {
        let ok = Request::get("/rest/people").body(()).expect("request");
        assert!(check_head(&ok, 16 << 10).is_ok());
        let dots = Request::get("/rest/../x").body(()).expect("request");
        assert!(matches!(
            check_head(&dots, 16 << 10),
            Err(GatewayError::BadRequest(BadRequest::DotSegment))
        ));
        let gz = Request::post("/rest")
            .header("transfer-encoding", "gzip, chunked")
            .body(())
            .expect("request");
        assert!(matches!(
            check_head(&gz, 16 << 10),
            Err(GatewayError::BadRequest(BadRequest::Framing))
        ));
    }
}
