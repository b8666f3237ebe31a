//! The response body the proxy hands to hyper: the upstream's body streamed frame by
//! frame (trailers included), or a small fixed body for a response the proxy made.
//! When the body ends — or is dropped, if the client went away — the request is
//! recorded in the metrics, and an HTTP/1 upstream connection whose response was
//! read to its end goes back to its pool. (The body sent upstream is
//! [`super::request_body`]'s.)

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::pool::Lease;
use super::trace::RequestSpan;
use super::ConnCtx;

/// What is recorded when the response ends.
#[derive(Debug)]
pub struct Completion {
    pub ctx: Arc<ConnCtx>,
    pub method: &'static str,
    pub status: u16,
    pub started: Instant,
    /// The HTTP/1 connection the response came on, returned when it ends cleanly.
    pub lease: Option<Lease>,
    /// The request's hop between sidecars was mutual TLS (the `tls` label).
    pub tls: bool,
    /// The request's span, when it is sampled.
    pub span: Option<RequestSpan>,
}

/// A response body: streamed from upstream, or made by the proxy.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    completion: Option<Completion>,
}

#[derive(Debug)]
enum Inner {
    Upstream(Incoming),
    Fixed(Option<Bytes>),
}

impl ProxyBody {
    /// The upstream's body.
    pub fn upstream(body: Incoming, completion: Completion) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body),
            completion: Some(completion),
        }
    }

    /// A body the proxy made (empty when `data` is).
    pub fn fixed(data: Bytes, completion: Completion) -> Self {
        ProxyBody {
            inner: Inner::Fixed((!data.is_empty()).then_some(data)),
            completion: Some(completion),
        }
    }

    fn complete(&mut self, clean_end: bool) {
        let Some(c) = self.completion.take() else {
            return;
        };
        c.ctx.labels.record(
            &c.ctx.common.instruments,
            c.method,
            c.status,
            c.started.elapsed(),
            c.tls,
        );
        if let Some(span) = c.span {
            span.end(c.status, clean_end);
        }
        if let (true, Some(lease)) = (clean_end, c.lease) {
            lease.release();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Upstream(body) => match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => {
                    this.complete(true);
                    Poll::Ready(None)
                }
                Some(Ok(frame)) => {
                    if let (Some(span), Some(trailers)) = (
                        this.completion.as_mut().and_then(|c| c.span.as_mut()),
                        frame.trailers_ref(),
                    ) {
                        span.grpc_trailers(trailers);
                    }
                    if body.is_end_stream() {
                        this.complete(true);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(e)) => {
                    this.complete(false);
                    Poll::Ready(Some(Err(e)))
                }
            },
            Inner::Fixed(data) => {
                let frame = data.take().map(|d| Ok(Frame::data(d)));
                if frame.is_none() {
                    this.complete(true);
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Fixed(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Fixed(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let ended = self.is_end_stream();
        self.complete(ended);
    }
}
