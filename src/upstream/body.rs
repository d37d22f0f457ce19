//! The client's body on its way to Twenty: [`RequestBody`] enforces
//! `max_request_body`, also for chunked uploads whose size is not
//! announced, and [`classify`] tells its failures from the upstream's.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::{BadRequest, BoxError, GatewayError, UpstreamFailure};

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds max_request_body")]
pub struct BodyTooLarge;

/// The client's body broke off or was malformed (bad chunk framing): the
/// client's fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The client's request body on its way upstream, cut off past the limit.
pub struct RequestBody {
    inner: Incoming,
    remaining: u64,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody {
            inner,
            remaining: limit,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(super) fn classify(e: hyper::Error) -> GatewayError {
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
