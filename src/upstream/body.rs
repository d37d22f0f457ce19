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

/// The client's request body on its way upstream: streamed and cut off
/// past the limit, or bytes already read whole (and checked) by the
/// permission step, sent exactly as they are.
pub struct RequestBody(Inner);

enum Inner {
    Stream { inner: Incoming, remaining: u64 },
    Full(Option<Bytes>),
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody(Inner::Stream {
            inner,
            remaining: limit,
        })
    }

    /// A body read before the request went upstream.
    pub fn full(bytes: Bytes) -> Self {
        RequestBody(Inner::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// The bytes of a body read whole (not yet sent), without taking them.
    pub fn full_bytes(&self) -> Option<&Bytes> {
        match &self.0 {
            Inner::Full(bytes) => bytes.as_ref(),
            Inner::Stream { .. } => None,
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
        let (inner, remaining) = match &mut self.0 {
            Inner::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream { inner, remaining } => (inner, remaining),
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Stream { inner, .. } => inner.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Stream { inner, .. } => inner.size_hint(),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A failure of [`RequestBody`] itself, while our own codec sends it: the
/// client's (413, 400), or else the upstream's.
pub(super) fn body_error(e: BoxError) -> GatewayError {
    if e.is::<BodyTooLarge>() {
        GatewayError::PayloadTooLarge
    } else if e.is::<ClientBodyError>() {
        GatewayError::BadRequest(BadRequest::Framing)
    } else {
        GatewayError::Upstream {
            kind: UpstreamFailure::Reset,
            source: e,
        }
    }
}

/// A failure of hyper's client (upgrades): the request body's, or else
/// the upstream's.
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
