//! A connection's byte stream as the data path reads and writes it: the socket
//! itself, or mutual TLS between sidecars over it ([`crate::mtls`]). Plaintext stays
//! a bare [`TcpStream`], so its fast paths (splice, readiness without a lock) are
//! untouched; the socket under either is always at hand ([`Stream::tcp`]) for what
//! only a socket does (its addresses, a reset, its options).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A socket, plaintext or under the mesh's TLS.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is some kilobytes, and most connections are plaintext.
    Tls(Box<TlsStream<TcpStream>>),
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Plain(s)
    }
}

impl Stream {
    /// The socket under the stream.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.get_ref().0,
        }
    }

    /// Whether the bytes go under the mesh's TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The peer's SPIFFE ID, read from the certificate it presented (TLS only).
    pub fn peer_identity(&self) -> Option<String> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => crate::mtls::peer_identity(t.get_ref().1.peer_certificates()),
        }
    }

    /// Whether decrypted bytes wait inside the TLS session, which the socket's
    /// readiness cannot tell: they came in one read with the bytes last asked for.
    pub fn has_buffered(&mut self) -> bool {
        let state = match self {
            Stream::Plain(_) => return false,
            Stream::Tls(t) => match t.as_mut() {
                TlsStream::Client(c) => c.get_mut().1.process_new_packets(),
                TlsStream::Server(s) => s.get_mut().1.process_new_packets(),
            },
        };
        state.is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
    }

    /// Waits until the peer has sent something (or closed): bytes inside the TLS
    /// session count at once.
    ///
    /// A `poll_fn` over the socket's read readiness rather than tokio's
    /// `readable()`: an idle HTTP connection waits in it, and its future is a
    /// reference here where `readable()`'s is about 170 bytes.
    pub async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            if self.has_buffered() {
                return Poll::Ready(Ok(()));
            }
            self.tcp().poll_read_ready(cx)
        })
        .await
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    /// TLS: a close_notify, then the socket's write side shut (a half-close).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}
