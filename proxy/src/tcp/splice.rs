//! One direction of a bulk relay moved with splice(2): socket → pipe → socket
//! inside the kernel, the bytes never copied through the proxy (haproxy's
//! `option splice-auto` does the same). [`relay`](super::relay) switches a
//! direction over once a read has filled its first buffer, so only bulk
//! transfers pay for a pipe (two descriptors); chatty connections never do.
//!
//! Every "nothing to read" and "end of stream" answer of a splice is checked
//! with an ordinary `recv` before it is believed. A socket whose data arrives
//! another way than its TCP receive queue (an app socket paired with the
//! proxy's by the opt-in sk_msg program of eBPF mode, whose bytes wait in the
//! sockmap's own queue where `tcp_splice_read` does not look) reads as empty,
//! or as ended once the peer's FIN is in, to splice; `recv` returns its bytes.
//! Those bytes are then relayed the copy way and the direction splices no more,
//! so nothing is lost or reordered, whatever the capture mode.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::error::Side;

/// A pipe to splice through.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the pipe holds at most: the most one splice moves.
    capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe holding up to `size` bytes if the kernel allows that
    /// much (else its default, 64 KiB); `None` when no pipe can be had (out of
    /// descriptors), and the caller copies instead.
    pub fn new(size: usize) -> Option<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: both descriptors were just made by pipe2 and are owned by no one
        // else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a pipe descriptor we own; a refusal (over the per-user
        // pipe limit) leaves the default size, read back just below.
        let capacity = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(capacity).ok().filter(|&c| c > 0)?;
        Some(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// What one [`step`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Spliced {
    /// Moved this many bytes from one socket to the other.
    Moved(usize),
    /// The source has ended (checked with `recv`).
    Eof,
    /// `recv` found this many bytes that splice could not see; they are in the
    /// caller's buffer and were not written: splicing this socket would lose
    /// them.
    Copied(usize),
}

/// Waits until `from` has bytes, splices what it has (up to the pipe's capacity)
/// into the pipe and from there into `to`, calling `progress` after each write
/// that moved some. Errors carry the side they happened on, `from` reported as
/// `Upstream` and `to` as `Client` (as the relay's pump does).
pub async fn step(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    buf: &mut [u8],
    progress: impl Fn(),
) -> Result<Spliced, (Side, io::Error)> {
    let read = loop {
        from.readable().await.map_err(|e| (Side::Upstream, e))?;
        let attempt = from.try_io(Interest::READABLE, || {
            match splice(from.as_raw_fd(), pipe.write.as_raw_fd(), pipe.capacity) {
                Ok(0) => {}
                Ok(n) => return Ok(Spliced::Moved(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Empty or ended, to splice: ask recv, which also sees a sockmap's
            // queue. Its WouldBlock is the real one and clears the readiness.
            match recv(from.as_raw_fd(), buf)? {
                0 => Ok(Spliced::Eof),
                n => Ok(Spliced::Copied(n)),
            }
        });
        match attempt {
            Ok(read) => break read,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err((Side::Upstream, e)),
        }
    };
    let Spliced::Moved(n) = read else {
        return Ok(read);
    };
    let mut left = n;
    while left > 0 {
        to.writable().await.map_err(|e| (Side::Client, e))?;
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
        }) {
            Ok(m) => {
                left -= m;
                progress();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err((Side::Client, e)),
        }
    }
    Ok(Spliced::Moved(n))
}

/// One non-blocking splice of up to `len` bytes.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two descriptors the caller holds open, without
    // offsets (both are a socket or a pipe).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One non-blocking recv into `buf`.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most buf.len() bytes into buf.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn moves_a_stream_through_the_pipe_and_sees_its_end() {
        // writer → from_peer ~ from → (splice) → to ~ to_peer → reader
        let (mut writer, from) = pair().await;
        let (to, mut reader) = pair().await;
        let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let send = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let recv = tokio::spawn(async move {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.unwrap();
            got
        });
        let pipe = Pipe::new(256 * 1024).unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let (mut moved, mut steps) = (0, 0);
        loop {
            match step(&from, &to, &pipe, &mut buf, || {}).await.unwrap() {
                Spliced::Moved(n) => {
                    moved += n;
                    steps += 1;
                }
                Spliced::Eof => break,
                Spliced::Copied(n) => panic!("a plain TCP socket read {n} bytes the copy way"),
            }
        }
        drop(to);
        send.await.unwrap();
        assert_eq!(moved, payload.len());
        assert!(recv.await.unwrap() == payload, "spliced bytes differ");
        assert!(steps > 1, "one splice moved it all? {steps}");
    }

    #[test]
    fn a_pipe_holds_what_was_asked_or_the_default() {
        let pipe = Pipe::new(256 * 1024).unwrap();
        // 256 KiB, or the 64 KiB default where the per-user pipe limit refused it.
        assert!(
            [256 * 1024, 64 * 1024].contains(&pipe.capacity),
            "{}",
            pipe.capacity
        );
    }
}
