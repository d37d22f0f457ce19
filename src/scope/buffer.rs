//! Reading a body whole, up to a limit, so that the bytes checked are the
//! bytes forwarded.

use std::pin::pin;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// Why [`buffer`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum BufferError<E> {
    /// The body is (or announced it would be) longer than the limit; no
    /// more than `limit` bytes plus one frame were read.
    #[error("request body over the limit")]
    TooLarge,
    /// The body ended with trailers; they would not be forwarded unchecked.
    #[error("request body with trailers")]
    Trailers,
    /// The body itself failed (client reset, bad chunk framing).
    #[error("request body: {0}")]
    Body(#[source] E),
}

/// Reads `body` to its end into one `Bytes`, refusing it as soon as it is
/// known to exceed `limit` bytes (from its size hint before reading, or
/// from the frames read so far). A body that arrives in one frame is not
/// copied.
pub async fn buffer<B>(body: B, limit: usize) -> Result<Bytes, BufferError<B::Error>>
where
    B: Body,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(BufferError::TooLarge);
    }
    let mut body = pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BufferError::Body)?;
        let Ok(mut data) = frame.into_data() else {
            return Err(BufferError::Trailers);
        };
        len = len.saturating_add(data.remaining());
        if len > limit {
            return Err(BufferError::TooLarge);
        }
        if data.remaining() == 0 {
            continue;
        }
        match &first {
            None => first = Some(data.copy_to_bytes(data.remaining())),
            Some(f) => {
                if rest.is_empty() {
                    rest.reserve(len.min(limit));
                    rest.extend_from_slice(f);
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    let n = chunk.len();
                    rest.extend_from_slice(chunk);
                    data.advance(n);
                }
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}
