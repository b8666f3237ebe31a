//! The request body sent upstream: the client's, streamed, or a bounded copy of it
//! (at most [`MAX_REPLAY_BODY`]) that a retry can send again. Apart from the
//! response body ([`super::body`]) because the pools send it and the response body
//! returns connections to the pools: together they would depend on each other.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

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
