//! The straight line a request walks. Each step says why it sits where it
//! does; SPEC's order is: target (400) → 421 → host (404) → route (404) →
//! authentication → rate limits → upstream. A cheaper or more specific
//! rejection never waits behind a later one.

use std::time::{Instant, SystemTime};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::body::{Payload, RequestBody};
use super::ratelimit::{Decision, state_field};
use super::upstream::{Forwarding, is_websocket_upgrade, rewrite_request, rewrite_response};
use super::{ConnInfo, Ctx, auth, host, target};
use crate::error::{BadRequest, GatewayError};
use crate::state::{Gateway, Snapshot};

pub async fn run(
    gw: &Gateway,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Payload>, GatewayError> {
    let cfg = &snap.config;

    // 0. An HTTP/2 header list over `max_header_bytes`. HTTP/1 heads never
    //    get here that big (hyper's parser refuses them; codec_errors gives
    //    that 431 a JSON body); the h2 codec is allowed twice the limit
    //    (conn.rs) so that lists in between get this JSON 431 instead of the
    //    h2 crate's bodiless one.
    if req.version() == http::Version::HTTP_2
        && h2_field_list_size(&req) > cfg.limits.max_header_bytes
    {
        return Err(GatewayError::HeadersTooLarge);
    }

    // 1. The target first: nothing below may look at a path an upstream
    //    could read differently (dot segments, encoded slashes, ...).
    target::check_path(req.uri().path()).map_err(GatewayError::BadRequest)?;
    // CONNECT asks for a tunnel to an authority, not a resource under a
    // route; forwarding it would hand Twenty something other than the path
    // that was authorised.
    if req.method() == http::Method::CONNECT {
        return Err(GatewayError::BadRequest(BadRequest::Method));
    }

    // 1b. Framing hyper accepts but we won't forward: any transfer coding
    //     other than plain `chunked` (hyper decodes only the chunking, so
    //     `gzip, chunked` would reach Twenty as bytes with no coding).
    if req.headers().contains_key(http::header::TRANSFER_ENCODING) && !only_chunked(req.headers()) {
        return Err(GatewayError::BadRequest(BadRequest::Framing));
    }

    // 2. The host, malformed → 400; then 421 before the tenant lookup: a
    //    connection whose certificate does not cover this host must not be
    //    used for it, whether or not we know the host.
    let (mut parts, body) = req.into_parts();
    let host = host::request_host(&parts).map_err(GatewayError::BadRequest)?;
    ctx.finish.record.host = Some(host.name.clone());
    if let Some(tls) = &conn.tls
        && tls.sni.is_some()
        && tls.cert.as_ref().is_some_and(|c| !c.covers(&host.name))
    {
        return Err(GatewayError::Misdirected);
    }

    // 3. Tenant from the host, then route from the path: both are cheap map
    //    lookups that need no credentials.
    let tenant_id = cfg
        .hosts
        .lookup(&host.name)
        .ok_or(GatewayError::UnknownHost)?;
    let tenant = &cfg.tenants[tenant_id];
    ctx.finish.record.tenant = Some(tenant.name.clone());
    let (route_idx, route) = cfg
        .routes
        .lookup(parts.uri.path())
        .ok_or(GatewayError::NoRoute)?;
    ctx.finish.record.route = Some(route.prefix.clone());
    let tenant_route = &snap.routes[tenant_id][route_idx];
    ctx.finish.counters = Some(tenant_route.counters.clone());
    let upstream = &tenant.route_upstreams[route_idx];
    ctx.finish.record.upstream = Some(upstream.name.clone());

    // 4. Authentication, on routes that want it. The brake comes first: a
    //    braked client is refused before we spend a hash on its guess.
    let mut key_id = None;
    if route.auth {
        if let Some(brake) = &snap.brake
            && let Some(retry_after) = brake.blocked_for(ctx.finish.record.client_ip)
        {
            return Err(GatewayError::AuthThrottled { retry_after });
        }
        let authenticated =
            auth::authenticate(&cfg.keys, &parts.headers, tenant_id, SystemTime::now());
        let (key_idx, key) = match authenticated {
            Ok(found) => found,
            Err(refused) => {
                ctx.finish.record.key_id = refused.key.map(|k| k.id.clone());
                let e = refused.error;
                // Guesses count toward the brake; a missing key or a valid
                // key on the wrong tenant does not.
                if matches!(
                    e,
                    GatewayError::InvalidKey | GatewayError::ExpiredKey | GatewayError::RevokedKey
                ) && let Some(brake) = &snap.brake
                    && let Some(retry_after) = brake.record_failure(ctx.finish.record.client_ip)
                {
                    ctx.finish.record.error = Some(format!("{e}; client now braked"));
                    return Err(GatewayError::AuthThrottled { retry_after });
                }
                return Err(e);
            }
        };
        ctx.finish.record.key_id = Some(key.id.clone());
        key_id = Some(&key.header);

        // 5. Rate limits: the key's own, then the tenant's shared one. Only
        //    authenticated requests count, so a stranger cannot drain a
        //    tenant's quota.
        let mut checked: [(&str, Option<Decision>); 2] = [("key", None), ("tenant", None)];
        let mut denied = None;
        if let Some(l) = &snap.key_limiters[key_idx] {
            let d = l.check();
            checked[0].1 = Some(d);
            if let Decision::Denied { retry_after, .. } = d {
                denied = Some(retry_after);
            }
        }
        if denied.is_none()
            && let Some(l) = &snap.tenant_limiters[tenant_id]
        {
            let d = l.check();
            checked[1].1 = Some(d);
            if let Decision::Denied { retry_after, .. } = d {
                denied = Some(retry_after);
            }
        }
        if let Some(policy) = &snap.key_policies[key_idx] {
            ctx.rate_headers = Some((
                policy.clone(),
                HeaderValue::try_from(state_field(&checked))
                    .map_err(|e| GatewayError::Internal(e.into()))?,
            ));
        }
        if let Some(retry_after) = denied {
            return Err(GatewayError::RateLimited { retry_after });
        }
    }

    // 6. A body announced larger than allowed is refused before we open an
    //    upstream exchange; unannounced (chunked) ones are cut while streaming.
    let max_body = cfg.limits.max_request_body;
    if http_body::Body::size_hint(&body).lower() > max_body {
        return Err(GatewayError::PayloadTooLarge);
    }

    // 7. Upstream. The WebSocket upgrade future must be taken from the
    //    client's request before it is consumed.
    let websocket = is_websocket_upgrade(parts.version, &parts.headers);
    let client_upgrade = websocket.then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    rewrite_request(
        &mut parts,
        &Forwarding {
            client_ip: ctx.finish.record.client_ip,
            // The usual case (no trusted proxy in front): made once per connection.
            client_ip_header: (ctx.finish.record.client_ip == conn.peer.ip())
                .then_some(&conn.peer_header),
            proto: if conn.tls.is_some() { "https" } else { "http" },
            host: &host.raw,
            request_id: &ctx.finish.record.request_id,
            tenant: &tenant.header,
            key_id,
            authorization: tenant.upstream_authorization.as_ref(),
            websocket,
        },
    )?;
    let upstream_req = Request::from_parts(parts, RequestBody::new(body, max_body));
    let started = Instant::now();
    let sent = gw
        .upstream
        .send(
            &tenant_route.pool,
            upstream_req,
            cfg.limits.upstream_timeout,
        )
        .await;
    ctx.finish.record.upstream_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    let mut resp = sent?;
    rewrite_response(&mut resp);
    if websocket && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // Tunnel only once the upstream has agreed to switch.
        match client_upgrade.flatten() {
            Some(client) => {
                let upstream_io = hyper::upgrade::on(&mut resp);
                super::upstream::spawn_tunnel(client, upstream_io);
            }
            None => {
                return Err(GatewayError::BadRequest(BadRequest::Framing));
            }
        }
        return Ok(resp.map(|_| Payload::empty()));
    }
    Ok(resp.map(Payload::Stream))
}

fn only_chunked(headers: &http::HeaderMap) -> bool {
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
}
