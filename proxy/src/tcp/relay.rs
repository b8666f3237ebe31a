//! Byte relay between a captured connection and its upstream, preserving TCP
//! semantics: each direction is copied on its own, an end-of-stream in one direction
//! becomes a write shutdown (half-close) of the other, and an error on either side
//! resets both, so a peer's reset reaches the other peer as a reset instead of a
//! hang. Memory per connection is bounded: one buffer per direction, allocated only
//! once that direction has carried data, 16 KiB at first and grown (up to
//! 256 KiB) while reads keep filling it, so bulk transfers move in large chunks
//! (fewer system calls per byte) and chatty ones stay small; a slow reader stalls
//! the writer (backpressure).

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

use super::connect::Upstream;
use crate::error::{ConnEnd, ErrorReason, Side};

/// Size of each direction's copy buffer when it first carries data.
const FIRST_BUF: usize = 16 * 1024;
/// The largest a copy buffer grows to.
const MAX_BUF: usize = 256 * 1024;

/// Observes bytes as they are relayed (live counters, metrics).
pub trait RelayObserver: Sync {
    /// `n` bytes were read from the client and written upstream.
    fn relayed_from_client(&self, n: u64);
    /// `n` bytes were read from upstream and written to the client.
    fn relayed_to_client(&self, n: u64);
}

/// Counts into two atomics; handy for tests.
impl RelayObserver for (AtomicU64, AtomicU64) {
    fn relayed_from_client(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn relayed_to_client(&self, n: u64) {
        self.1.fetch_add(n, Ordering::Relaxed);
    }
}

/// Relays until both directions end or one fails. On failure both sockets are reset
/// (SO_LINGER 0) when the caller drops them.
pub async fn relay(client: &TcpStream, upstream: &TcpStream, obs: &dyn RelayObserver) -> ConnEnd {
    let up = async {
        pump(client, upstream, |n| obs.relayed_from_client(n))
            .await
            .map_err(|(side, error)| (flip(side), error))
    };
    let down = pump(upstream, client, |n| obs.relayed_to_client(n));
    match tokio::try_join!(up, down) {
        Ok(((), ())) => ConnEnd::Eof,
        Err((side, error)) => {
            reset(client);
            reset(upstream);
            ConnEnd::Failed { side, error }
        }
    }
}

/// [`relay`], after first writing `prefix` upstream: bytes already read from the
/// client (by protocol detection).
pub async fn relay_after(
    prefix: &[u8],
    client: &TcpStream,
    upstream: &TcpStream,
    obs: &dyn RelayObserver,
) -> ConnEnd {
    if !prefix.is_empty() {
        if let Err(error) = write_all(upstream, prefix).await {
            reset(client);
            reset(upstream);
            return ConnEnd::Failed {
                side: Side::Upstream,
                error,
            };
        }
        obs.relayed_from_client(prefix.len() as u64);
    }
    relay(client, upstream, obs).await
}

/// An opaque connection: relays `client` to `upstream` after writing `prefix` (bytes
/// protocol detection already read), or resets the client when no upstream could be
/// connected. The upstream stays registered as the proxy's own until the relay ends
/// (its guard is dropped with it).
pub async fn relay_opaque(
    client: &TcpStream,
    prefix: &[u8],
    upstream: Result<Upstream, ErrorReason>,
    obs: &dyn RelayObserver,
) -> ConnEnd {
    match upstream {
        Ok(upstream) => relay_after(prefix, client, &upstream.stream, obs).await,
        Err(reason) => {
            reset(client);
            ConnEnd::Refused(reason)
        }
    }
}

/// `pump` reports sides relative to its own (from, to) arguments as if `from` were
/// upstream; the client→upstream direction flips them.
fn flip(side: Side) -> Side {
    match side {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    }
}

/// Arms an abortive close: dropping the socket then sends RST instead of FIN.
pub fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Copies `from` → `to` until end-of-stream, then half-closes `to`. Errors are tagged
/// with the side they happened on, where `from` is reported as `Upstream` and `to` as
/// `Client` (the upstream→client orientation).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    mut count: impl FnMut(u64),
) -> Result<(), (Side, io::Error)> {
    let mut buf: Option<Box<[u8]>> = None;
    loop {
        from.readable().await.map_err(|e| (Side::Upstream, e))?;
        // Allocate only once this direction carries data: idle connections hold no
        // buffers.
        let cur = buf.get_or_insert_with(|| vec![0u8; FIRST_BUF].into_boxed_slice());
        let n = match from.try_read(cur) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err((Side::Upstream, e)),
        };
        let full = n == cur.len();
        if n == 0 {
            match SockRef::from(to).shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => return Err((Side::Client, e)),
                _ => return Ok(()),
            }
        }
        write_all(to, &cur[..n])
            .await
            .map_err(|e| (Side::Client, e))?;
        count(n as u64);
        if full && cur.len() < MAX_BUF {
            // More was waiting than fitted: a bulk transfer.
            *cur = vec![0u8; cur.len() * 4].into_boxed_slice();
        }
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
