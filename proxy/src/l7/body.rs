//! The response body the proxy hands to hyper: the upstream's body streamed frame by
//! frame (trailers included), or a small fixed body for a response the proxy made.
//! When the body ends — or is dropped, if the client went away — the request is
//! recorded in the metrics, and an HTTP/1 upstream connection whose response was
//! read to its end goes back to its pool.
//!
//! [`RequestBody`] is the request body sent upstream: the client's, streamed, or a
//! bounded copy of it (at most [`MAX_REPLAY_BODY`]) that a retry can send again.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::pool::Lease;
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
        c.ctx
            .labels
            .record(&c.ctx.instruments, c.method, c.status, c.started.elapsed());
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

/// The largest request body kept for a retry; a larger one is streamed and only
/// retried when it was never sent.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// A request body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed as it comes.
    Stream(Incoming),
    /// A whole body held in memory (cheap to clone: `Bytes` is shared).
    Replay {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl RequestBody {
    /// The client's body as a replayable copy when it is small enough: empty, or
    /// with a length (`Content-Length`, or an h2 stream that said so) of at most
    /// [`MAX_REPLAY_BODY`]. `Err(body)`: too large or of unknown length, streamed
    /// instead; `Ok(None)`: the client failed while sending it.
    pub async fn replayable(body: Incoming) -> Result<Option<RequestBody>, Incoming> {
        if body.is_end_stream() {
            return Ok(Some(RequestBody::Replay {
                data: None,
                trailers: None,
            }));
        }
        match body.size_hint().upper() {
            Some(n) if n <= MAX_REPLAY_BODY => {}
            _ => return Err(body),
        }
        match body.collect().await {
            Ok(all) => {
                let trailers = all.trailers().cloned();
                let data = all.to_bytes();
                Ok(Some(RequestBody::Replay {
                    data: (!data.is_empty()).then_some(data),
                    trailers,
                }))
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the request body");
                Ok(None)
            }
        }
    }

    /// Another copy of a replayable body (`None` for a streamed one).
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Stream(_) => None,
            RequestBody::Replay { data, trailers } => Some(RequestBody::Replay {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Stream(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Replay { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(body) => body.is_end_stream(),
            RequestBody::Replay { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(body) => body.size_hint(),
            RequestBody::Replay { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
