//! The admin listener (loopback by default): `/healthz`, `/readyz`,
//! `/metrics`, `POST /reload`. Plain HTTP/1.1; keep it off public addresses.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::runtime::Gateway;
use crate::runtime::reload::{Trigger, reload};

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

async fn route(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if gw.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            gw.metrics.encode(gw.access_log.dropped()),
        ),
        (&Method::POST, "/reload") => match reload(&gw, Trigger::Admin).await {
            Ok(snap) => json(
                StatusCode::OK,
                serde_json::json!({
                    "status": "reloaded",
                    "generation": snap.generation,
                    "tenants": snap.tenants.len(),
                    "keys": snap.keys.len(),
                }),
            ),
            Err(errors) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "status": "error",
                    "file": errors.file.display().to_string(),
                    "errors": errors.errors.iter().map(|e| serde_json::json!({
                        "path": e.path,
                        "message": e.message,
                    })).collect::<Vec<_>>(),
                }),
            ),
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/reload") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"statusCode": 405, "error": "METHOD_NOT_ALLOWED"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"statusCode": 404, "error": "NOT_FOUND", "messages": ["admin endpoints: /healthz /readyz /metrics POST /reload"]}),
        ),
    };
    Ok(resp)
}

/// Serve the admin endpoints until the future is dropped.
pub async fn serve_admin(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(gw.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
