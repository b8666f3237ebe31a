//! The downstream socket as hyper sees it: the bytes detection already read are
//! replayed first, then the socket is read directly; every byte each way is counted
//! (the connection's `/connections` counters and the `weft_tcp_*` byte series), so
//! HTTP connections report like opaque ones.
//!
//! When hyper is done with it, the socket is handed back through a [`Salvage`] slot
//! instead of being closed, so the server can still answer a client that timed out
//! in the middle of a request head with 408. [`ClientIo`] also notes whether the
//! client sent anything since the proxy last wrote (a partial request head).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tcp::relay::RelayObserver;

/// Counts what crosses the client socket.
pub type Observer = Arc<dyn RelayObserver + Send>;

/// Where a [`ClientIo`] leaves its socket when dropped, and whether the client had
/// sent bytes the proxy has not answered yet.
pub type Salvage = Arc<Mutex<Option<(TcpStream, bool)>>>;

/// A client connection with a replayed prefix and byte counting.
pub struct ClientIo {
    /// `None` only while being dropped.
    stream: Option<TcpStream>,
    prefix: BytesMut,
    observer: Observer,
    /// Bytes came from the client after the proxy's last write.
    unanswered: bool,
    salvage: Salvage,
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            *self.salvage.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((stream, self.unanswered));
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
    pub fn new(stream: TcpStream, prefix: BytesMut, observer: Observer, salvage: Salvage) -> Self {
        ClientIo {
            unanswered: !prefix.is_empty(),
            stream: Some(stream),
            prefix,
            observer,
            salvage,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("present until dropped"))
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
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.stream().poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.unanswered = true;
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
        let n = ready!(this.stream().poll_write(cx, buf))?;
        this.unanswered = false;
        this.observer.relayed_to_client(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(this.stream().poll_write_vectored(cx, bufs))?;
        this.unanswered = false;
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
