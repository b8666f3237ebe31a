//! The handshakes on the data path: a client sidecar securing its socket to a peer,
//! and a server sidecar telling a peer's mutual TLS from anything else on its
//! inbound port before taking it.
//!
//! The inbound port carries plaintext from unmeshed clients and an application's
//! own end-to-end TLS as well as weft peers: only a ClientHello offering [`ALPN`] is
//! terminated, and it is recognised from peeked bytes (rustls's own parser reading
//! a copy), so whatever it is not reaches detection and the application
//! untouched.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::Acceptor;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use super::{server_name, ALPN};
use crate::tcp::stream::Stream;

/// How long a handshake may take, either side, once begun.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client that began a ClientHello has to complete it.
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// The most of a ClientHello looked at: a sidecar's is some hundreds of bytes.
const MAX_HELLO: usize = 4096;
/// A TLS handshake record's first byte.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Secures `tcp`, connected to a peer sidecar, with `config` (which demands the
/// peer's identity), within [`HANDSHAKE_TIMEOUT`].
pub async fn connect(config: Arc<ClientConfig>, tcp: TcpStream) -> io::Result<Stream> {
    let handshake = TlsConnector::from(config).connect(server_name(), tcp);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
    Ok(Stream::Tls(Box::new(TlsStream::Client(tls))))
}

/// Takes a peer's handshake on `tcp` with `config` (which demands a client
/// certificate from the mesh CA), within [`HANDSHAKE_TIMEOUT`]. A refused
/// handshake gives the socket back (for a reset); one that ran out of time has
/// closed it.
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
) -> Result<Stream, (io::Error, Option<TcpStream>)> {
    let handshake = TlsAcceptor::from(config).accept(tcp).into_fallible();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(TlsStream::Server(tls)))),
        Ok(Err((e, tcp))) => Err((e, Some(tcp))),
        Err(_) => Err((io::ErrorKind::TimedOut.into(), None)),
    }
}

/// What a connection's first bytes are, as the inbound port tells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello offering weft's ALPN: a peer sidecar's mutual TLS.
    Mesh,
    /// Anything else: plaintext, another TLS, or a client silent for the wait.
    Other,
}

/// Peeks at `tcp`'s first bytes (nothing is consumed) to tell a peer sidecar's
/// handshake: a client silent for `silent_for` is no peer (a sidecar's
/// ClientHello follows its connect at once); one whose first byte opens a TLS
/// record has [`HELLO_TIMEOUT`] to complete its ClientHello.
pub async fn peek_hello(tcp: &TcpStream, silent_for: Duration) -> io::Result<Hello> {
    let mut buf = vec![0u8; MAX_HELLO];
    // A peek, not the socket's readiness, which may be reported without a byte.
    let mut n = match tokio::time::timeout(silent_for, tcp.peek(&mut buf)).await {
        Err(_) => return Ok(Hello::Other),
        Ok(peeked) => peeked?,
    };
    let deadline = Instant::now() + HELLO_TIMEOUT;
    loop {
        if n == 0 || buf[0] != HANDSHAKE_RECORD {
            return Ok(Hello::Other);
        }
        match read_hello(&buf[..n]) {
            Some(hello) => return Ok(hello),
            // A ClientHello in more than one segment: the rest is waited for by
            // time (peeked bytes keep the socket readable).
            None if n < buf.len() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                n = tcp.peek(&mut buf).await?;
            }
            None => return Ok(Hello::Other),
        }
    }
}

/// Parses a copy of the peeked bytes; `None`: the ClientHello is not whole yet.
fn read_hello(mut bytes: &[u8]) -> Option<Hello> {
    let mut acceptor = Acceptor::default();
    while !bytes.is_empty() {
        match acceptor.read_tls(&mut bytes) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => {
            let mesh = accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ALPN));
            Some(if mesh { Hello::Mesh } else { Hello::Other })
        }
        Err(_) => Some(Hello::Other),
    }
}
