//! Bodies in both directions, streamed frame by frame, never buffered whole.
//!
//! [`RequestBody`] enforces `max_request_body` on the way up, also for
//! chunked uploads whose size is not announced. [`ResponseBody`] counts the
//! bytes sent down and writes the access-log line exactly once, when the
//! body ends, fails, or is dropped (client gone) — the logging phase runs
//! whatever happened before it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::ConnInfo;
use super::upstream::UpstreamBody;
use crate::access_log::AccessRecord;
use crate::error::{BoxError, Outcome};
use crate::metrics::RouteCounters;
use crate::state::Gateway;

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

/// What a response carries: a gateway-made body, or the upstream's stream.
pub enum Payload {
    Full(Option<Bytes>),
    Stream(UpstreamBody),
}

impl Payload {
    pub fn full(bytes: Bytes) -> Self {
        Payload::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub fn empty() -> Self {
        Payload::Full(None)
    }
}

/// The logging phase: created when a request starts, it writes the access
/// line and the metrics exactly once, when dropped — after the response body
/// ended, failed or was abandoned, or when the request itself was cancelled
/// (client reset or disconnect before a response existed).
pub struct Finish {
    pub record: AccessRecord,
    pub gateway: Arc<Gateway>,
    pub log: bool,
    pub in_flight: InFlight,
    /// The request counters of the tenant route, once the pipeline knows it.
    pub counters: Option<Arc<RouteCounters>>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if self.record.status == 0 {
            // No response was ever produced: the client went away first.
            self.record.status = 499;
            self.record.outcome = Outcome::ClientClosed;
        }
        self.gateway
            .metrics
            .observe(&self.record, self.counters.as_deref());
        if self.log {
            self.gateway.access_log.write(&self.record);
        }
    }
}

/// Counts a request as in flight on its connection (for `idle_timeout`).
pub struct InFlight(Arc<ConnInfo>);

impl InFlight {
    pub fn new(conn: Arc<ConnInfo>) -> Self {
        conn.activity.started();
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.finished();
    }
}

/// The body hyper sends to the client.
pub struct ResponseBody {
    payload: Payload,
    finish: Option<Box<Finish>>,
}

impl ResponseBody {
    pub fn new(payload: Payload, finish: Box<Finish>) -> Self {
        ResponseBody {
            payload,
            finish: Some(finish),
        }
    }

    fn count(&mut self, n: usize) {
        if let Some(f) = self.finish.as_mut() {
            f.record.bytes_out += n as u64;
        }
    }

    /// The response is over: log now rather than when hyper drops the body.
    fn done(&mut self) {
        self.finish.take();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.payload {
            Payload::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Payload::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
        };
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.count(data.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                if let Some(f) = this.finish.as_mut() {
                    f.record.outcome = Outcome::UpstreamError;
                    f.record.error = Some(format!("upstream body: {e}"));
                    f.record.error_kind = Some("body");
                }
                this.done();
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.done();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.payload {
            Payload::Full(b) => b.is_none(),
            Payload::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.payload {
            Payload::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Payload::Stream(s) => s.size_hint(),
        }
    }
}
