//! The downstream socket as hyper sees it: the bytes detection already read are
//! replayed first, then the socket is read directly; every byte each way is counted
//! (the connection's `/connections` counters and the `weft_tcp_*` byte series), so
//! HTTP connections report like opaque ones.
//!
//! When hyper is done with it, the socket is handed back through a [`Salvage`] slot
//! instead of being closed, so the server can still answer a client that timed out
//! in the middle of a request head with 408. [`ClientIo`] also notes whether the
//! client sent anything since the proxy last wrote (a partial request head), whether
//! its last read found nothing to read and whether a write is blocked: with hyper
//! waiting for a head, that is an idle connection the serve loop may take back.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use crate::tcp::relay::RelayObserver;
use crate::tcp::stream::Stream;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts what crosses the client socket.
pub type Observer = Arc<dyn RelayObserver + Send>;

/// Where a [`ClientIo`] leaves its socket when dropped, and whether the client had
/// sent bytes the proxy has not answered yet.
pub type Salvage = Arc<Mutex<Option<(Stream, bool)>>>;

/// A client connection with a replayed prefix and byte counting.
pub struct ClientIo {
    /// `None` only while being dropped.
    stream: Option<Stream>,
    prefix: BytesMut,
    observer: Observer,
    quiet: Arc<Quiet>,
    salvage: Salvage,
}

/// What a [`ClientIo`] knows of its traffic, readable while hyper owns it.
#[derive(Debug, Default)]
pub struct Quiet {
    /// Bytes came from the client after the proxy's last write.
    unanswered: AtomicBool,
    /// The last read of the socket found nothing to read.
    read_parked: AtomicBool,
    /// The last write to the socket could not proceed (the client is not reading).
    write_blocked: AtomicBool,
}

impl Quiet {
    /// Nothing is on its way either direction: the socket had nothing to read when
    /// last read, every write went out, and the client sent nothing since the
    /// proxy's last write (so no part of a next request was read).
    pub fn is_quiet(&self) -> bool {
        self.read_parked.load(Relaxed)
            && !self.write_blocked.load(Relaxed)
            && !self.unanswered.load(Relaxed)
    }
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            *self.salvage.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((stream, self.quiet.unanswered.load(Relaxed)));
        }
    }
}

impl std::fmt::Debug for ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIo")
            .field("stream", &self.stream)
            .field("prefix", &self.prefix.len())
            .finish()
    }
}

impl ClientIo {
    pub fn new(stream: Stream, prefix: BytesMut, observer: Observer, salvage: Salvage) -> Self {
        let quiet = Quiet::default();
        quiet.unanswered.store(!prefix.is_empty(), Relaxed);
        ClientIo {
            quiet: Arc::new(quiet),
            stream: Some(stream),
            prefix,
            observer,
            salvage,
        }
    }

    fn stream(&mut self) -> Pin<&mut Stream> {
        Pin::new(self.stream.as_mut().expect("present until dropped"))
    }

    /// Its traffic, as seen while hyper owns it.
    pub fn quiet(&self) -> Arc<Quiet> {
        self.quiet.clone()
    }

    /// Bytes read from the socket but not consumed (what hyper had buffered): read
    /// again first.
    pub fn replay(&mut self, bytes: BytesMut) {
        debug_assert!(self.prefix.is_empty());
        if !bytes.is_empty() {
            self.quiet.unanswered.store(true, Relaxed);
        }
        self.prefix = bytes;
    }

    /// Waits until the client sends something (or closes).
    pub async fn readable(&mut self) -> io::Result<()> {
        self.stream
            .as_mut()
            .expect("present until dropped")
            .readable()
            .await
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Give the detection buffer back now, not when the connection ends.
                this.prefix = BytesMut::new();
            }
            this.observer.relayed_from_client(n as u64);
            this.quiet.read_parked.store(false, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = this.stream().poll_read(cx, buf);
        this.quiet.read_parked.store(read.is_pending(), Relaxed);
        ready!(read)?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.quiet.unanswered.store(true, Relaxed);
            this.observer.relayed_from_client(n as u64);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.stream().poll_write(cx, buf);
        this.quiet
            .write_blocked
            .store(written.is_pending(), Relaxed);
        let n = ready!(written)?;
        this.quiet.unanswered.store(false, Relaxed);
        this.observer.relayed_to_client(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.stream().poll_write_vectored(cx, bufs);
        this.quiet
            .write_blocked
            .store(written.is_pending(), Relaxed);
        let n = ready!(written)?;
        this.quiet.unanswered.store(false, Relaxed);
        this.observer.relayed_to_client(n as u64);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_shutdown(cx)
    }
}
