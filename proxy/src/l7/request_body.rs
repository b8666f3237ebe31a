//! The request body sent upstream: the client's, streamed as it comes, optionally
//! with a bounded copy (at most [`MAX_REPLAY_BODY`]) that a retry sends again.
//! Apart from the response body ([`super::body`]) because the pools send it and
//! the response body returns connections to the pools: together they would
//! depend on each other.
//!
//! The copy is kept *while* the body streams ([`RequestBody::teed`]), never by
//! reading the whole body first: a gRPC request has no length and may be a stream
//! the client keeps open until it has an answer, so waiting for its end before
//! sending would stall it. A retry ([`Replay::body`]) sends what was kept and then
//! goes on reading the client's body where the last attempt left it, so it works
//! whether or not that attempt had read the body to its end. Only one attempt
//! reads at a time: making a retry's body retires the previous attempt's, which
//! from then on fails (its upstream stream is abandoned anyway). Once more than
//! [`MAX_REPLAY_BODY`] has gone by, or the client's body failed, there is no copy
//! to send again.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The largest request body kept for a retry; past it, the body streams on and
/// only a request that was never sent is retried.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Why a request body sent upstream failed.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed as it comes, no copy kept.
    Stream(Incoming),
    /// The client's body read through the copy a retry can send again.
    Teed(Reader),
}

impl RequestBody {
    /// The client's body, streamed with a copy kept for retries, unless it says it
    /// is larger than [`MAX_REPLAY_BODY`] (then `Stream`: there would be no copy).
    /// The [`Replay`] makes the bodies of retries.
    pub fn teed(body: Incoming) -> (RequestBody, Option<Replay>) {
        if body.size_hint().lower() > MAX_REPLAY_BODY {
            return (RequestBody::Stream(body), None);
        }
        let hint = body.size_hint();
        let source = (!body.is_end_stream()).then_some(body);
        let shared = Arc::new(Mutex::new(Shared {
            source,
            kept: Vec::new(),
            kept_len: 0,
            trailers: None,
            overflowed: false,
            client_failed: false,
            reader: 0,
        }));
        let reader = Reader {
            shared: shared.clone(),
            generation: 0,
            next: 0,
            trailers_sent: false,
            hint,
        };
        (RequestBody::Teed(reader), Some(Replay { shared, hint }))
    }
}

/// What the attempts of one request share: the client's body (while some of it
/// is unread) and the copy of what was read.
#[derive(Debug)]
struct Shared {
    /// The client's body; `None` once it ended (or failed).
    source: Option<Incoming>,
    /// The data frames read so far, in order (empty once overflowed).
    kept: Vec<Bytes>,
    kept_len: u64,
    /// The client's trailers, once read.
    trailers: Option<HeaderMap>,
    /// More than [`MAX_REPLAY_BODY`] was read: no copy any more.
    overflowed: bool,
    /// The client's body failed: nothing can be sent again.
    client_failed: bool,
    /// The generation of the reader allowed to read; older ones fail.
    reader: u64,
}

/// The handle that makes the bodies of retries.
#[derive(Debug)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    hint: SizeHint,
}

impl Replay {
    /// A body for one more attempt: what was kept, then the rest of the client's
    /// body. `None` when there is nothing to send again (the copy overflowed, or
    /// the client's body failed). Retires every earlier attempt's body.
    pub fn body(&self) -> Option<RequestBody> {
        let mut shared = lock(&self.shared);
        if shared.overflowed || shared.client_failed {
            return None;
        }
        shared.reader += 1;
        Some(RequestBody::Teed(Reader {
            shared: self.shared.clone(),
            generation: shared.reader,
            next: 0,
            trailers_sent: false,
            hint: self.hint,
        }))
    }

    /// Whether [`Replay::body`] would give a body now.
    pub fn is_replayable(&self) -> bool {
        let shared = lock(&self.shared);
        !shared.overflowed && !shared.client_failed
    }

    /// Whether the client's body failed while an attempt read it (the request
    /// failed because of the client, not the upstream).
    pub fn client_failed(&self) -> bool {
        lock(&self.shared).client_failed
    }
}

/// One attempt's body: the copy from its start, then the client's body.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// The next kept frame to send.
    next: usize,
    trailers_sent: bool,
    hint: SizeHint,
}

impl Shared {
    /// Keeps a copy of a frame just read from the client, while the copy stays
    /// within [`MAX_REPLAY_BODY`].
    fn keep(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            if self.overflowed {
                return;
            }
            self.kept_len += data.len() as u64;
            if self.kept_len > MAX_REPLAY_BODY {
                self.overflowed = true;
                self.kept = Vec::new();
            } else {
                self.kept.push(data.clone());
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
    }
}

/// A body a newer attempt took over.
#[derive(Debug, thiserror::Error)]
#[error("request body taken over by a retry")]
struct Retired;

/// The client's body failed before this attempt.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
struct ClientFailed;

impl Reader {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut guard = lock(&self.shared);
        let shared = &mut *guard;
        if shared.reader != self.generation {
            return Poll::Ready(Some(Err(Box::new(Retired))));
        }
        if let Some(data) = shared.kept.get(self.next) {
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if let Some(source) = shared.source.as_mut() {
            match std::task::ready!(Pin::new(source).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    shared.keep(&frame);
                    self.next = shared.kept.len();
                    self.trailers_sent |= frame.is_trailers();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => {
                    shared.source = None;
                    shared.client_failed = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                None => shared.source = None,
            }
        }
        // The client's body has ended: what is left is its trailers, which an
        // earlier attempt may have been the one to read.
        if shared.client_failed {
            return Poll::Ready(Some(Err(Box::new(ClientFailed))));
        }
        if std::mem::replace(&mut self.trailers_sent, true) {
            return Poll::Ready(None);
        }
        Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))))
    }

    /// Whether nothing is left to send: what was kept has been, and the client's
    /// body has ended, trailers sent if it had any. "Ended" as the client's body
    /// says it, not only once polled past its end: hyper sends HTTP/2 END_STREAM
    /// on the frame after which this is true, else an empty DATA frame without it,
    /// and h2 (0.4.20) closes a connection that brings it more than 100 of those
    /// (GOAWAY `ENHANCE_YOUR_CALM`) — the proxy's one pooled connection to an
    /// endpoint would die every 100 gRPC calls, failing the calls in flight.
    fn is_end(&self) -> bool {
        let shared = lock(&self.shared);
        shared.reader == self.generation
            && !shared.client_failed
            && self.next >= shared.kept.len()
            && shared.source.as_ref().is_none_or(Body::is_end_stream)
            && (self.trailers_sent || shared.trailers.is_none())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Stream(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            RequestBody::Teed(reader) => reader.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(body) => body.is_end_stream(),
            RequestBody::Teed(reader) => reader.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(body) => body.size_hint(),
            RequestBody::Teed(reader) => reader.hint,
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
