//! WebSocket tunnelling, once the upstream has answered 101.

use hyper_util::rt::TokioIo;

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
