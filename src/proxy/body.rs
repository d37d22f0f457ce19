//! The response on its way to the client, streamed frame by frame.
//! [`ResponseBody`] counts the bytes sent down and runs the logging phase
//! exactly once, when the body ends, fails, or is dropped (client gone) —
//! whatever happened before it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::ctx::{ConnInfo, Failure, RequestCtx};
use crate::error::{BoxError, FailureKind, Outcome};
use crate::runtime::Gateway;
use crate::upstream::UpstreamBody;

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
    pub ctx: RequestCtx,
    pub gateway: Arc<Gateway>,
    pub log: bool,
    /// `None` for refusals of the HTTP/1 codec, which never were in flight.
    pub in_flight: Option<InFlight>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if self.ctx.status == 0 {
            // No response was ever produced: the client went away first.
            self.ctx.status = 499;
            self.ctx.outcome = Outcome::ClientClosed;
        }
        let record = self.ctx.record();
        self.gateway
            .metrics
            .observe(&record, self.ctx.counters.as_deref());
        if self.log {
            self.gateway.access_log.write(&record);
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
            f.ctx.bytes_out += n as u64;
        }
    }

    /// The response is over: log now rather than when hyper drops the body.
    fn done(&mut self) {
        self.finish.take();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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
                    f.ctx.outcome = Outcome::UpstreamError;
                    f.ctx.failure = Failure {
                        detail: Some(format!("upstream body: {e}")),
                        kind: Some(FailureKind::Body),
                    };
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
