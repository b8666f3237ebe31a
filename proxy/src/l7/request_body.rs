//! The request body sent upstream: the client's, streamed, or a bounded copy of it
//! (at most [`MAX_REPLAY_BODY`]) that a retry can send again. A body of known
//! length is read whole first; one of unknown length (a gRPC call, a chunked
//! upload) is streamed to the first attempt as it comes and recorded on the way
//! ([`Recorded`]), so a retry replays what was sent and then goes on with the rest
//! — waiting for its end first would stall a client that waits for an answer
//! before it finishes (a streaming call). Apart from the response body
//! ([`super::body`]) because the pools send it and the response body returns
//! connections to the pools: together they would depend on each other.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

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
    /// The client's body of unknown length, recorded as it is sent.
    Recorded(Recorded),
}

/// One reader of a recorded body: it reads the frames recorded so far from its own
/// position, then the client's stream (recording what it reads, up to
/// [`MAX_REPLAY_BODY`]). Attempts are sequential, so the readers share one tape.
#[derive(Debug)]
pub struct Recorded {
    tape: Arc<Mutex<Tape>>,
    pos: usize,
}

#[derive(Debug)]
struct Tape {
    source: Incoming,
    frames: Vec<Frame<Bytes>>,
    bytes: u64,
    /// More than [`MAX_REPLAY_BODY`] went by: the tape is no copy, no retry.
    overflow: bool,
    ended: bool,
}

impl Recorded {
    fn new(source: Incoming) -> Recorded {
        Recorded {
            tape: Arc::new(Mutex::new(Tape {
                source,
                frames: Vec::new(),
                bytes: 0,
                overflow: false,
                ended: false,
            })),
            pos: 0,
        }
    }

    fn tape(&self) -> std::sync::MutexGuard<'_, Tape> {
        self.tape.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader from the start, unless the body outgrew the tape.
    fn rewound(&self) -> Option<Recorded> {
        (!self.tape().overflow).then(|| Recorded {
            tape: self.tape.clone(),
            pos: 0,
        })
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut tape = self.tape.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(frame) = tape.frames.get(self.pos) {
            let copy = copy_frame(frame);
            self.pos += 1;
            return Poll::Ready(Some(Ok(copy)));
        }
        if tape.ended {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut tape.source).poll_frame(cx)) {
            None => {
                tape.ended = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => frame,
        };
        if !tape.overflow {
            tape.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
            if tape.bytes > MAX_REPLAY_BODY {
                tape.overflow = true;
                tape.frames = Vec::new();
            } else {
                tape.frames.push(copy_frame(&frame));
                self.pos += 1;
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let tape = self.tape();
        tape.ended && self.pos >= tape.frames.len()
    }
}

/// A frame again (data is shared, trailers copied).
fn copy_frame(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match (frame.data_ref(), frame.trailers_ref()) {
        (Some(d), _) => Frame::data(d.clone()),
        (None, Some(t)) => Frame::trailers(t.clone()),
        (None, None) => Frame::data(Bytes::new()),
    }
}

impl RequestBody {
    /// The client's body as a replayable copy when it is small enough: empty, or
    /// with a length (`Content-Length`, or an h2 stream that said so) of at most
    /// [`MAX_REPLAY_BODY`], read whole; of unknown length, recorded as it is sent
    /// (replayable while it stays within [`MAX_REPLAY_BODY`]). `Err(body)`: too
    /// large, streamed instead; `Ok(None)`: the client failed while sending it.
    pub async fn replayable(body: Incoming) -> Result<Option<RequestBody>, Incoming> {
        if body.is_end_stream() {
            return Ok(Some(RequestBody::Replay {
                data: None,
                trailers: None,
            }));
        }
        match body.size_hint().upper() {
            Some(n) if n <= MAX_REPLAY_BODY => {}
            Some(_) => return Err(body),
            None => return Ok(Some(RequestBody::Recorded(Recorded::new(body)))),
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

    /// Another copy of a replayable body (`None` for a streamed one, or a recorded
    /// one that outgrew its tape).
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Stream(_) => None,
            RequestBody::Recorded(r) => r.rewound().map(RequestBody::Recorded),
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
            RequestBody::Recorded(r) => r.poll_frame(cx),
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
            RequestBody::Recorded(r) => r.is_end_stream(),
            RequestBody::Replay { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(body) => body.size_hint(),
            RequestBody::Recorded(_) => SizeHint::default(),
            RequestBody::Replay { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
