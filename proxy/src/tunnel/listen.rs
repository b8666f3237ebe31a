//! The server side of the tunnel: reading a peer's preface (bounded in size and
//! time) into the local address it targets, and writing the one answer. What
//! happens in between and after (dialling the application, the relay, telemetry,
//! `/connections`) is the inbound path's, the same as for a redirected connection
//! ([`crate::connection`]).
//!
//! Only the pod's own applications are reachable: the target is always the address
//! the peer connected to (one of the pod's) with the port it asked for, never one
//! of the proxy's own ports, so the tunnel is no open relay.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::preface::{Decoded, Preface, PrefaceError, Status, MAX_EXTENSIONS, PREFACE_HEAD};
use crate::error::ErrorReason;
use crate::tcp::stream::Stream;

/// How long a peer has to send its whole preface once connected (a sidecar sends
/// it at once).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a tunnel connection was not taken; the caller logs it and closes.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Preface(#[from] PrefaceError),
    #[error(
        "no whole preface within {}",
        humantime::format_duration(PREFACE_TIMEOUT)
    )]
    Timeout,
    #[error("connection ended before a whole preface: {0}")]
    Io(io::Error),
    #[error("port {0} is not reachable through the tunnel")]
    Forbidden(u16),
}

/// Reads a peer's preface within [`PREFACE_TIMEOUT`] and returns what it targets:
/// the pod's address the peer connected to, with the port it asked for. A port of
/// the proxy itself (`own_ports`) or 0 is answered `forbidden`, a version this
/// proxy does not speak `unsupported version`; garbage gets no answer.
pub async fn read_target(stream: &mut Stream, own_ports: &[u16]) -> Result<SocketAddr, Rejected> {
    let preface = match tokio::time::timeout(PREFACE_TIMEOUT, read_preface(stream)).await {
        Err(_) => return Err(Rejected::Timeout),
        Ok(Err(Rejected::Preface(e @ PrefaceError::UnsupportedVersion(_)))) => {
            let _ = answer(stream, Status::UnsupportedVersion).await;
            return Err(e.into());
        }
        Ok(read) => read?,
    };
    if preface.port == 0 || own_ports.contains(&preface.port) {
        let _ = answer(stream, Status::Forbidden).await;
        return Err(Rejected::Forbidden(preface.port));
    }
    let local = stream.tcp().local_addr().map_err(Rejected::Io)?;
    Ok(SocketAddr::new(local.ip(), preface.port))
}

/// Reads exactly one preface: never a byte past it.
async fn read_preface(stream: &mut Stream) -> Result<Preface, Rejected> {
    let mut buf = [0u8; PREFACE_HEAD + MAX_EXTENSIONS];
    let mut have = 0;
    loop {
        match Preface::decode(&buf[..have])? {
            Decoded::Complete { preface, .. } => return Ok(preface),
            Decoded::NeedMore(total) => {
                let n = stream
                    .read(&mut buf[have..total])
                    .await
                    .map_err(Rejected::Io)?;
                if n == 0 {
                    return Err(Rejected::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                have += n;
            }
        }
    }
}

/// The answer to a connect to the application that ended with `outcome`.
pub fn status_of(outcome: Result<(), ErrorReason>) -> Status {
    match outcome {
        Ok(()) => Status::Connected,
        Err(ErrorReason::ConnectRefused) => Status::Refused,
        Err(ErrorReason::ConnectTimeout) => Status::Timeout,
        Err(ErrorReason::Unauthorized) => Status::Unauthorized,
        Err(_) => Status::Error,
    }
}

/// Writes the answer `status` (and flushes it: under TLS, the record goes out on
/// flush).
pub async fn answer(stream: &mut Stream, status: Status) -> io::Result<()> {
    stream.write_all(&status.encode()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::preface::{Answer, ANSWER_LEN};
    use tokio::net::{TcpListener, TcpStream};

    /// A client connected to a fresh listener on 127.0.0.2 and the accepted side.
    async fn pair() -> (TcpStream, Stream) {
        let l = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, Stream::Plain(s))
    }

    async fn read_answer(c: &mut TcpStream) -> Answer {
        let mut buf = [0u8; ANSWER_LEN];
        c.read_exact(&mut buf).await.expect("answer");
        Answer::decode(&buf)
    }

    #[tokio::test]
    async fn the_target_is_the_address_connected_to_and_nothing_past_the_preface_is_read() {
        let (mut c, mut s) = pair().await;
        c.write_all(&Preface { port: 8080 }.encode())
            .await
            .expect("preface");
        c.write_all(b"app bytes").await.expect("data");
        let target = read_target(&mut s, &[15006]).await.expect("target");
        assert_eq!(target, "127.0.0.2:8080".parse().expect("addr"));
        let mut rest = [0u8; 9];
        s.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"app bytes");
    }

    #[tokio::test]
    async fn a_preface_split_over_writes_is_waited_for() {
        let (mut c, mut s) = pair().await;
        let bytes = Preface { port: 9000 }.encode();
        let writer = tokio::spawn(async move {
            for part in bytes.chunks(3) {
                c.write_all(part).await.expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c
        });
        let target = read_target(&mut s, &[]).await.expect("target");
        assert_eq!(target.port(), 9000);
        drop(writer.await);
    }

    #[tokio::test]
    async fn the_proxys_own_ports_are_forbidden() {
        for port in [0, 15006] {
            let (mut c, mut s) = pair().await;
            c.write_all(&Preface { port }.encode())
                .await
                .expect("preface");
            let err = read_target(&mut s, &[15006]).await.expect_err("forbidden");
            assert!(matches!(err, Rejected::Forbidden(p) if p == port), "{err}");
            assert_eq!(read_answer(&mut c).await, Answer::Status(Status::Forbidden));
        }
    }

    #[tokio::test]
    async fn garbage_is_refused_without_an_answer() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let err = read_target(&mut s, &[]).await.expect_err("garbage");
        assert!(
            matches!(err, Rejected::Preface(PrefaceError::BadMagic)),
            "{err}"
        );
        drop(s);
        // Closed with the garbage unread: a reset, or an end of stream; no answer.
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn another_version_is_told_ours() {
        let (mut c, mut s) = pair().await;
        let mut bytes = Preface { port: 80 }.encode();
        bytes[8] = 9;
        c.write_all(&bytes).await.expect("write");
        let err = read_target(&mut s, &[]).await.expect_err("version");
        assert!(
            matches!(err, Rejected::Preface(PrefaceError::UnsupportedVersion(9))),
            "{err}"
        );
        assert_eq!(
            read_answer(&mut c).await,
            Answer::Status(Status::UnsupportedVersion)
        );
    }

    #[tokio::test]
    async fn a_truncated_preface_is_an_error() {
        let (mut c, mut s) = pair().await;
        c.write_all(&Preface { port: 80 }.encode()[..7])
            .await
            .expect("write");
        drop(c);
        let err = read_target(&mut s, &[]).await.expect_err("truncated");
        assert!(matches!(err, Rejected::Io(_)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_given_up_on() {
        let (_c, mut s) = pair().await;
        let err = read_target(&mut s, &[]).await.expect_err("silent");
        assert!(matches!(err, Rejected::Timeout), "{err}");
    }
}
