//! Byte relay between a captured connection and its upstream, preserving TCP
//! semantics: each direction is copied on its own, an end-of-stream in one direction
//! becomes a write shutdown (half-close) of the other, and an error on either side
//! resets both, so a peer's reset reaches the other peer as a reset instead of a
//! hang. Memory per connection is bounded: one buffer per direction, allocated only
//! once that direction has carried data, 16 KiB at first and grown (up to
//! 256 KiB) while reads keep filling it, so bulk transfers move in large chunks
//! (fewer system calls per byte) and chatty ones stay small; a slow reader stalls
//! the writer (backpressure).
//!
//! A bulk direction (a read filled the first buffer) moves on through a pipe with
//! splice(2) instead (see [`splice`](super::splice)): the bytes go socket → pipe →
//! socket inside the kernel, never copied through this process.
//!
//! Time is bounded too ([`RelayLimits`]): a connection that carries no byte either
//! way for the idle timeout, or for the half-close timeout once one direction has
//! ended (haproxy's `timeout client-fin` / `server-fin`: an inactivity bound, so a
//! long download after the request's half-close goes on while bytes flow), is reset
//! on both sides and ends as [`ConnEnd::IdleTimeout`] or
//! [`ConnEnd::HalfCloseTimeout`]. One timer per connection, re-armed only when it
//! fires: the pumps just note the time of their last byte.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connect::Upstream;
use super::splice::{self, Pipe, Spliced};
use super::stream::Stream;
use crate::error::{ConnEnd, ErrorReason, Side};

/// Size of each direction's copy buffer when it first carries data.
const FIRST_BUF: usize = 16 * 1024;
/// The largest a copy buffer grows to.
const MAX_BUF: usize = 256 * 1024;
/// The activity clock counts milliseconds: a re-check never comes sooner.
const MIN_RECHECK: Duration = Duration::from_millis(1);

/// How long a relayed connection may go without carrying a byte (zero: no bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Neither direction carried a byte for this long.
    pub idle: Duration,
    /// One direction has ended and the other carried no byte for this long.
    pub half_close: Duration,
}

impl RelayLimits {
    /// No bound at all.
    pub const NONE: RelayLimits = RelayLimits {
        idle: Duration::ZERO,
        half_close: Duration::ZERO,
    };
}

/// When each direction last moved a byte (or ended), in milliseconds since the
/// relay began, and whether one direction has ended.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    half_closed: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            half_closed: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once the connection has been inactive past its bound. The timer
    /// is set for the idle bound after the last byte, or sooner: while both
    /// directions are open, at most a half-close timeout ahead (so a direction
    /// ending meanwhile is seen in time); once one has ended, the half-close bound
    /// after the last byte. Bytes moving in between only move the next deadline.
    async fn expired(&self, limits: RelayLimits) -> ConnEnd {
        let bound = |d: Duration| (!d.is_zero()).then_some(d);
        let (idle, half_close) = (bound(limits.idle), bound(limits.half_close));
        if idle.is_none() && half_close.is_none() {
            return std::future::pending().await;
        }
        loop {
            let now = Instant::now();
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = now.saturating_duration_since(last);
            let half_closed = self.half_closed.load(Ordering::Relaxed);
            if idle.is_some_and(|d| quiet >= d) {
                return ConnEnd::IdleTimeout;
            }
            if half_closed && half_close.is_some_and(|d| quiet >= d) {
                return ConnEnd::HalfCloseTimeout;
            }
            let idle_at = idle.and_then(|d| last.checked_add(d));
            let half_close_at = half_close.and_then(|d| {
                if half_closed {
                    last.checked_add(d)
                } else {
                    now.checked_add(d)
                }
            });
            match [idle_at, half_close_at].into_iter().flatten().min() {
                Some(at) => tokio::time::sleep_until(at.max(now + MIN_RECHECK)).await,
                None => return std::future::pending().await,
            }
        }
    }
}

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

/// Relays until both directions end, one fails or `limits` run out. On failure or
/// timeout both sockets are reset (SO_LINGER 0) when the caller drops them.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    limits: RelayLimits,
    obs: &dyn RelayObserver,
) -> ConnEnd {
    let activity = Activity::new();
    let up = async {
        pump(client, upstream, &activity, |n| obs.relayed_from_client(n))
            .await
            .map_err(|(side, error)| (flip(side), error))
    };
    let down = pump(upstream, client, &activity, |n| obs.relayed_to_client(n));
    let end = both_ways(up, down, &activity, limits).await;
    if !matches!(end, ConnEnd::Eof) {
        reset(client);
        reset(upstream);
    }
    end
}

/// Runs both directions of a relay until both end ([`ConnEnd::Eof`]), one fails,
/// or the connection outlives `limits`; the caller resets both sockets unless
/// both ended.
async fn both_ways(
    up: impl std::future::Future<Output = Result<(), (Side, io::Error)>>,
    down: impl std::future::Future<Output = Result<(), (Side, io::Error)>>,
    activity: &Activity,
    limits: RelayLimits,
) -> ConnEnd {
    tokio::select! {
        done = async { tokio::try_join!(up, down) } => match done {
            Ok(((), ())) => ConnEnd::Eof,
            Err((side, error)) => ConnEnd::Failed { side, error },
        },
        end = activity.expired(limits) => end,
    }
}

/// [`relay`], after first writing `prefix` upstream: bytes already read from the
/// client (by protocol detection).
pub async fn relay_after(
    prefix: &[u8],
    client: &TcpStream,
    upstream: &TcpStream,
    limits: RelayLimits,
    obs: &dyn RelayObserver,
) -> ConnEnd {
    if !prefix.is_empty() {
        if let Err(error) = write_all(upstream, prefix, || {}).await {
            reset(client);
            reset(upstream);
            return ConnEnd::Failed {
                side: Side::Upstream,
                error,
            };
        }
        obs.relayed_from_client(prefix.len() as u64);
    }
    relay(client, upstream, limits, obs).await
}

/// An opaque connection: relays `client` to `upstream` after writing `prefix` (bytes
/// protocol detection already read), or resets the client when no upstream could be
/// connected. The upstream stays registered as the proxy's own until the relay ends
/// (its guard is dropped with it).
pub async fn relay_opaque(
    client: &mut Stream,
    prefix: &[u8],
    upstream: Result<Upstream<Stream>, ErrorReason>,
    limits: RelayLimits,
    obs: &dyn RelayObserver,
) -> ConnEnd {
    match upstream {
        Ok(mut upstream) => match (&*client, &upstream.stream) {
            (Stream::Plain(c), Stream::Plain(u)) => relay_after(prefix, c, u, limits, obs).await,
            _ => relay_secured(prefix, client, &mut upstream.stream, limits, obs).await,
        },
        Err(reason) => {
            reset(client.tcp());
            ConnEnd::Refused(reason)
        }
    }
}

/// [`relay_after`] where either side is under TLS: the same semantics (half-close
/// as a TLS close_notify and a write shutdown, errors resetting both sockets, the
/// time bounds), through each stream's own reads and writes: the bytes must pass
/// through the process to be encrypted or decrypted, so nothing is spliced.
async fn relay_secured(
    prefix: &[u8],
    client: &mut Stream,
    upstream: &mut Stream,
    limits: RelayLimits,
    obs: &dyn RelayObserver,
) -> ConnEnd {
    let end = {
        let activity = Activity::new();
        let (mut client_rx, mut client_tx) = tokio::io::split(&mut *client);
        let (mut up_rx, mut up_tx) = tokio::io::split(&mut *upstream);
        let up = async {
            if !prefix.is_empty() {
                write_flushed(&mut up_tx, prefix)
                    .await
                    .map_err(|e| (Side::Upstream, e))?;
                obs.relayed_from_client(prefix.len() as u64);
            }
            pump_io(&mut client_rx, &mut up_tx, &activity, |n| {
                obs.relayed_from_client(n)
            })
            .await
            .map_err(|(side, error)| (flip(side), error))
        };
        let down = pump_io(&mut up_rx, &mut client_tx, &activity, |n| {
            obs.relayed_to_client(n)
        });
        both_ways(up, down, &activity, limits).await
    };
    // The split halves are gone: the sockets are at hand again.
    if !matches!(end, ConnEnd::Eof) {
        reset(client.tcp());
        reset(upstream.tcp());
    }
    end
}

/// [`pump`] over any stream: copies `from` → `to` until end-of-stream, then shuts
/// `to`'s write side. Sides are reported as by [`pump`].
async fn pump_io<R, W>(
    from: &mut R,
    to: &mut W,
    activity: &Activity,
    mut count: impl FnMut(u64),
) -> Result<(), (Side, io::Error)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // One buffer for the connection's life: a TLS session holds buffers of its
    // own anyway (rustls's), so no readiness trick saves much here.
    let mut buf = vec![0u8; FIRST_BUF].into_boxed_slice();
    loop {
        let n = from.read(&mut buf).await.map_err(|e| (Side::Upstream, e))?;
        if n == 0 {
            activity.touch();
            activity.half_closed.store(true, Ordering::Relaxed);
            return match to.shutdown().await {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err((Side::Client, e)),
                _ => Ok(()),
            };
        }
        write_flushed(to, &buf[..n])
            .await
            .map_err(|e| (Side::Client, e))?;
        activity.touch();
        count(n as u64);
    }
}

/// Writes `data` and flushes it (a TLS stream holds a record until then).
async fn write_flushed<W: AsyncWrite + Unpin>(to: &mut W, data: &[u8]) -> io::Result<()> {
    to.write_all(data).await?;
    to.flush().await
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
    activity: &Activity,
    mut count: impl FnMut(u64),
) -> Result<(), (Side, io::Error)> {
    let mut buf: Option<Box<[u8]>> = None;
    let mut pipe: Option<Pipe> = None;
    // Cleared for good once a socket turned out not to splice (see `splice`).
    let mut may_splice = true;
    loop {
        // Allocate only once this direction carries data: idle connections hold no
        // buffers.
        let cur = buf.get_or_insert_with(|| vec![0u8; FIRST_BUF].into_boxed_slice());
        if let Some(p) = &pipe {
            match splice::step(from, to, p, cur, || activity.touch()).await? {
                Spliced::Moved(n) => {
                    count(n as u64);
                    continue;
                }
                Spliced::Eof => return end_of_stream(to, activity),
                // Read the copy way: relay those bytes so and splice no more.
                Spliced::Copied(n) => {
                    tracing::debug!(
                        bytes = n,
                        "splice saw no bytes where recv did (a socket paired by sk_msg): copying from here on"
                    );
                    pipe = None;
                    may_splice = false;
                    write_all(to, &cur[..n], || activity.touch())
                        .await
                        .map_err(|e| (Side::Client, e))?;
                    count(n as u64);
                    continue;
                }
            }
        }
        from.readable().await.map_err(|e| (Side::Upstream, e))?;
        let n = match from.try_read(cur) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err((Side::Upstream, e)),
        };
        let full = n == cur.len();
        if n == 0 {
            return end_of_stream(to, activity);
        }
        // Activity is bytes moved: each write that moves some (a slow reader is not
        // idle), one clock read per write.
        write_all(to, &cur[..n], || activity.touch())
            .await
            .map_err(|e| (Side::Client, e))?;
        count(n as u64);
        if full {
            // More was waiting than fitted: a bulk transfer. Splice from here on
            // (no pipe to be had: larger buffers instead).
            if may_splice {
                pipe = Pipe::new(MAX_BUF);
                may_splice = pipe.is_some();
            }
            if pipe.is_none() && cur.len() < MAX_BUF {
                *cur = vec![0u8; cur.len() * 4].into_boxed_slice();
            }
        }
    }
}

/// `from` ended: half-closes `to`.
fn end_of_stream(to: &TcpStream, activity: &Activity) -> Result<(), (Side, io::Error)> {
    activity.touch();
    activity.half_closed.store(true, Ordering::Relaxed);
    match SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err((Side::Client, e)),
        _ => Ok(()),
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8], progress: impl Fn()) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => {
                data = &data[n..];
                progress();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
