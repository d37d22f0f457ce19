//! A tiny stand-in for a Twenty server, for trying the gateway without one:
//! answers every request with JSON describing what it received (method,
//! path, the gateway's X-Gateway-* and X-Forwarded-* headers). It never
//! echoes Authorization.
//!
//! `cargo run --example stand_in [-- 127.0.0.1:3000]`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = serde_json::json!({
        "data": {"stand_in": true},
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "x_gateway_tenant": header("x-gateway-tenant"),
        "x_gateway_key_id": header("x-gateway-key-id"),
        "x_forwarded_for": header("x-forwarded-for"),
        "x_request_id": header("x-request-id"),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("stand-in Twenty listening on http://{addr}");
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(answer))
                .await;
        });
    }
}
