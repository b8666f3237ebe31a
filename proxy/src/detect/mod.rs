//! Protocol detection: waiting for the first bytes of a connection to decide
//! whether it goes to the HTTP path ([`crate::l7`]) or the opaque one
//! ([`crate::tcp`]), without stalling protocols where the server speaks first. The
//! per-connection pipeline calls [`sniff`] and dispatches on what it returns;
//! [`classify`] is the pure byte-prefix classifier.
//!
//! The client's bytes are read (not peeked) into a small buffer until
//! [`classify::classify`] decides; the buffer is then replayed, to hyper for HTTP or to
//! the upstream for opaque TCP. If the client has sent nothing after
//! [`SPECULATE_AFTER`], the upstream connection is opened speculatively; should the
//! server speak first (an SMTP or MySQL banner, a Redis reply), the connection goes
//! opaque at once and the banner is relayed — the client never waits out a
//! detection timeout. HTTP clients, which write their request right after connecting,
//! are normally decided before the speculative connection is made; when it was made
//! and the client turns out to speak HTTP, it is simply closed (HTTP traffic is
//! balanced per request over pooled connections instead).
//!
//! The caller says how long to wait before speculating: [`SPECULATE_AFTER`], or
//! [`SPECULATE_AFTER_KNOWN`] for a destination whose server was last seen to speak
//! first, which the caller learns from what [`sniff`] reports (`server_first`,
//! `speculated`). So a banner port costs its first connection the full wait and
//! the next ones none, while a port whose clients speak HTTP never gets a
//! connection dialled for nothing.
//!
//! A client that stays silent while the server does too goes opaque after
//! [`DETECT_TIMEOUT`]; one that sent an inconclusive prefix gets [`PARTIAL_TIMEOUT`]
//! to complete it.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::time::{sleep_until, Instant};

pub mod classify;

use crate::error::ErrorReason;
use crate::routes::PortProtocol;
use crate::tcp::connect::Dialed;
use crate::tcp::stream::Stream;
use classify::Verdict;

/// How long a silent client is given before the upstream is dialled speculatively.
pub const SPECULATE_AFTER: Duration = Duration::from_millis(10);
/// The same, for a destination whose server was last seen to speak first: no wait.
/// Its clients wait for the server, so any wait only delays the banner; bytes a
/// client has already sent when detection starts are still read first.
pub const SPECULATE_AFTER_KNOWN: Duration = Duration::ZERO;
/// How long a connection where neither side speaks is held in detection.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client that sent an inconclusive prefix has to complete it.
pub const PARTIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Initial size of the detection buffer (a typical request head fits).
const FIRST_READ: usize = 2048;

/// The HTTP version a connection speaks, on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.x downstream; HTTP/1.1 keep-alive upstream.
    Http1,
    /// HTTP/2 prior knowledge (h2c) on both sides.
    H2,
}

impl HttpVersion {
    /// The `protocol` shown in `/connections`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http1 => "http1",
            HttpVersion::H2 => "h2",
        }
    }
}

/// How a port's first bytes are looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// Detect; anything not HTTP is opaque, and the server may speak first.
    Auto,
    /// The port is declared HTTP: only HTTP/1 vs HTTP/2 is decided, nothing is opaque
    /// and nothing is dialled before the first request.
    Http,
}

impl Detection {
    /// How a port's declared protocol is detected; `None`: opaque TCP, no detection.
    pub fn of_port(protocol: PortProtocol) -> Option<Detection> {
        match protocol {
            PortProtocol::Auto => Some(Detection::Auto),
            PortProtocol::Http => Some(Detection::Http),
            PortProtocol::Tcp => None,
        }
    }
}

/// What detection decided.
#[derive(Debug)]
pub enum Sniffed {
    /// Serve as HTTP; `prefix` is what the client has sent so far. `speculated`:
    /// an upstream was dialled while the client was silent, and then closed.
    Http {
        version: HttpVersion,
        prefix: BytesMut,
        speculated: bool,
    },
    /// Relay as TCP: write `prefix` upstream first. `server_first`: the upstream
    /// spoke (or closed) before the client said anything.
    Opaque {
        prefix: BytesMut,
        upstream: Dialed,
        server_first: bool,
    },
    /// The client's socket failed (typically a reset) during detection.
    ClientFailed {
        error: io::Error,
        upstream: Option<Dialed>,
    },
}

/// Reads the client's first bytes and decides. `connect` dials the upstream (at most
/// once): speculatively once the client has been silent for `speculate_after`, or
/// when the connection turns out to be opaque.
pub async fn sniff<F, Fut>(
    client: &mut Stream,
    mode: Detection,
    speculate_after: Duration,
    connect: F,
) -> Sniffed
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Dialed>,
{
    let started = Instant::now();
    let mut deadline = started + DETECT_TIMEOUT;
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let mut connect = Some(connect);
    let mut connecting = pin!(None::<Fut>);
    let mut upstream: Option<Dialed> = None;
    let speculate = mode == Detection::Auto;
    let mut server_first = false;

    let verdict = loop {
        let connected = upstream
            .as_ref()
            .and_then(|u| u.upstream.as_ref().ok())
            .map(|u| u.stream.tcp());
        tokio::select! {
            biased;
            // The server spoke first (or closed): this is no client-first protocol.
            _ = async { connected.expect("guarded").readable().await }, if connected.is_some() => {
                server_first = true;
                break Verdict::Opaque;
            }
            up = async { connecting.as_mut().as_pin_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting.set(None);
                let mut up = up;
                // A banner that came under TLS with the tunnel's answer is inside the
                // session already, where the socket's readiness does not see it.
                let spoke = up.upstream.as_mut().is_ok_and(|u| u.stream.has_buffered());
                upstream = Some(up);
                if spoke {
                    server_first = true;
                    break Verdict::Opaque;
                }
            }
            read = async {
                // Never more than MAX_SNIFF bytes, whatever capacity the buffer has.
                let room = classify::MAX_SNIFF - buf.len();
                if buf.len() == buf.capacity() {
                    buf.reserve(buf.capacity().min(room));
                }
                client.read_buf(&mut (&mut buf).limit(room)).await
            } => {
                match read {
                    // End of stream before a decision: nothing HTTP to serve.
                    Ok(0) => break Verdict::Opaque,
                    Ok(_) => {}
                    Err(error) => return Sniffed::ClientFailed { error, upstream },
                }
                match classify::decide(&buf) {
                    Some(v) => break v,
                    None => deadline = deadline.min(Instant::now() + PARTIAL_TIMEOUT),
                }
            }
            // No timer for no wait: a timer's deadline rounds up to the next
            // millisecond tick.
            _ = async {
                if !speculate_after.is_zero() {
                    sleep_until(started + speculate_after).await;
                }
            }, if speculate && connect.is_some() => {
                if let Some(connect) = connect.take() {
                    connecting.set(Some(connect()));
                }
            }
            _ = sleep_until(deadline) => break Verdict::Opaque,
        }
    };
    // Dialled, or being dialled, while the client was silent.
    let speculated = connect.is_none();
    match (verdict, mode) {
        (Verdict::Http1, _) | (Verdict::Opaque | Verdict::NeedMore, Detection::Http) => {
            Sniffed::Http {
                version: HttpVersion::Http1,
                prefix: buf,
                speculated,
            }
        }
        (Verdict::H2, _) => Sniffed::Http {
            version: HttpVersion::H2,
            prefix: buf,
            speculated,
        },
        (Verdict::Opaque | Verdict::NeedMore, Detection::Auto) => {
            let upstream = match (upstream, connecting.as_mut().as_pin_mut(), connect) {
                (Some(up), _, _) => up,
                (None, Some(pending), _) => pending.await,
                (None, None, Some(connect)) => connect().await,
                (None, None, None) => Dialed {
                    endpoint: None,
                    upstream: Err(ErrorReason::ConnectError),
                },
            };
            Sniffed::Opaque {
                prefix: buf,
                upstream,
                server_first,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::EndpointAddr;
    use crate::tcp::connect::Connector;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, Stream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, Stream::Plain(s))
    }

    fn no_upstream() -> std::future::Ready<Dialed> {
        std::future::ready(Dialed {
            endpoint: None,
            upstream: Err(ErrorReason::NoEndpoints),
        })
    }

    #[tokio::test]
    async fn http_request_is_http_and_keeps_the_bytes() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        match sniff(&mut s, Detection::Auto, SPECULATE_AFTER, no_upstream).await {
            Sniffed::Http {
                version,
                prefix,
                speculated,
            } => {
                assert_eq!(version, HttpVersion::Http1);
                assert_eq!(&prefix[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                assert!(!speculated, "the request was there before any wait");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn request_line_split_over_writes_is_waited_for() {
        let (mut c, mut s) = pair().await;
        let writer = tokio::spawn(async move {
            for part in [&b"GE"[..], b"T /x HT", b"TP/1.1\r", b"\n"] {
                c.write_all(part).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c
        });
        match sniff(&mut s, Detection::Auto, SPECULATE_AFTER, no_upstream).await {
            Sniffed::Http {
                version,
                prefix,
                speculated,
            } => {
                assert_eq!(version, HttpVersion::Http1);
                assert_eq!(&prefix[..], b"GET /x HTTP/1.1\r\n");
                // Each part came 20 ms after the last: the upstream was dialled
                // while the client seemed silent, and is reported wasted.
                assert!(speculated);
            }
            other => panic!("{other:?}"),
        }
        drop(writer.await);
    }

    #[tokio::test]
    async fn server_speaking_first_goes_opaque_promptly() {
        let (_c, mut s) = pair().await;
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server_addr = EndpointAddr(server.local_addr().expect("addr"));
        let banner = tokio::spawn(async move {
            let (mut banner_side, _) = server.accept().await.expect("accept");
            banner_side
                .write_all(b"220 hello\r\n")
                .await
                .expect("banner");
            banner_side
        });
        let connector = Connector::default();
        let t = Instant::now();
        let out = sniff(&mut s, Detection::Auto, SPECULATE_AFTER_KNOWN, || {
            connector.dial_addr(server_addr, Duration::from_secs(1))
        })
        .await;
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        match out {
            Sniffed::Opaque {
                prefix,
                upstream,
                server_first,
            } => {
                assert!(prefix.is_empty());
                assert!(upstream.upstream.is_ok());
                assert!(server_first);
            }
            other => panic!("{other:?}"),
        }
        drop(banner.await);
    }

    #[tokio::test]
    async fn declared_http_takes_garbage_as_http1() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"\x16\x03\x01garbage").await.expect("write");
        match sniff(&mut s, Detection::Http, SPECULATE_AFTER, no_upstream).await {
            Sniffed::Http { version, .. } => assert_eq!(version, HttpVersion::Http1),
            other => panic!("{other:?}"),
        }
    }
}
