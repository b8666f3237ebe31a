//! The downstream side of an HTTP connection: hyper's HTTP/1 or HTTP/2 server,
//! chosen by detection, over the client socket (with the detected prefix replayed),
//! each request handed to [`forward`].
//!
//! Limits against bad input, from hyper: a malformed request gets 400, a request
//! head over [`MAX_HEADER_BYTES`] or with too many headers gets 431, a URI too long
//! 414. A client that has not sent a whole request head within the header timeout
//! ([`HEADER_READ_TIMEOUT`] by default) is disconnected — with a 408 written here
//! if it had started one (hyper just closes; the socket comes back through the
//! [`Salvage`] slot for that), silently if the connection was merely idle between
//! requests. None of it reaches the upstream.
//!
//! Idle HTTP/1 keep-alive connections cost little: between requests, once hyper
//! has waited [`super::head_wait::IDLE_PROBE`] for a next head and nothing is on its way either
//! direction, the connection is taken back from hyper (`into_parts`, with whatever
//! hyper had read and not parsed) and held as a bare socket waiting for readiness;
//! hyper's buffers, its boxed request future and its header timer go with it (about
//! 15 KiB a connection), and a new hyper connection is made for the next request
//! when the client sends one. An idle connection is closed after the proxy's idle
//! timeout ([`crate::policy::IDLE_TIMEOUT`]).
//!
//! Drain: when `stop` fires, HTTP/1 connections stop keep-alive (the response in
//! progress carries `Connection: close`; an idle connection closes at once) and
//! HTTP/2 connections get GOAWAY; requests in flight finish.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use super::body::ProxyBody;
use super::forward::forward;
use super::head_wait::HeadWaitTimer;
use super::io::{ClientIo, Observer, Quiet, Salvage};
use super::{ConnCtx, HttpVersion};
use crate::error::ConnEnd;
use crate::tcp::stream::Stream;

/// Largest request head accepted from a client (Envoy's default is 60 KiB).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a client has to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves when the drain begins (the guard `wait_for` returns is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What a client that timed out in the middle of a request head is told.
const REQUEST_TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Serves HTTP on `stream` until the client closes (or, after `stop`, until the
/// requests in flight are done); returns how it ended, for `/connections`.
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub fn serve(
    stream: Stream,
    prefix: BytesMut,
    ctx: Arc<ConnCtx>,
    observer: Observer,
    mut stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ConnEnd> {
    // An async block, not an async fn: its captures are used in place, where an
    // async fn's arguments take room twice in every state of the future (once as
    // arguments, once as the locals they are moved into), which every idle
    // connection pays.
    async move {
        let salvage: Salvage = Arc::new(Mutex::new(None));
        let io = ClientIo::new(stream, prefix, observer, salvage.clone());
        let svc = Forward(ctx.clone());
        let served = match ctx.version {
            HttpVersion::Http1 => serve_h1(io, svc, &ctx, &mut stop).await,
            HttpVersion::H2 => {
                // Boxed: the connection task stays small whichever protocol it serves.
                let mut conn = Box::pin(
                    http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .auto_date_header(false)
                        .serve_connection(TokioIo::new(io), svc),
                );
                tokio::select! {
                    biased;
                    r = conn.as_mut() => r,
                    () = stopped(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
                .map_err(Served::Hyper)
            }
        };
        for tunnel in ctx.take_tunnels() {
            let _ = tunnel.await;
        }
        let left = salvage.lock().unwrap_or_else(|e| e.into_inner()).take();
        match served {
            Ok(()) => ConnEnd::Eof,
            Err(Served::Hyper(e)) if e.is_timeout() => match left {
                Some((stream, true)) => {
                    tell_timed_out(stream).await;
                    ConnEnd::HeaderTimeout
                }
                _ => ConnEnd::IdleTimeout,
            },
            Err(Served::Idle) => ConnEnd::IdleTimeout,
            Err(Served::Hyper(e)) => ConnEnd::Http(e),
        }
    }
}

/// Writes the 408 to a client that timed out in the middle of a request head,
/// without waiting on it: small enough for any socket buffer, one non-blocking
/// write; under TLS, one record sent as far as the socket takes it at once.
async fn tell_timed_out(mut stream: Stream) {
    match &stream {
        Stream::Plain(tcp) => {
            let _ = tcp.try_write(REQUEST_TIMEOUT_408);
        }
        Stream::Tls(_) => {
            use tokio::io::AsyncWriteExt;
            let told = async {
                stream.write_all(REQUEST_TIMEOUT_408).await?;
                stream.flush().await
            };
            let _ = tokio::time::timeout(Duration::ZERO, told).await;
        }
    }
}

/// How serving a connection failed.
enum Served {
    Hyper(hyper::Error),
    /// Idle (between requests) for the idle timeout.
    Idle,
}

/// Each request of a connection, to [`forward`].
#[derive(Clone)]
struct Forward(Arc<ConnCtx>);

impl Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(forward(self.0.clone(), req))
    }
}

/// HTTP/1: hyper serves the connection while requests come; between them, once
/// the connection is quiet, it is held without hyper (see the module docs).
#[allow(clippy::manual_async_fn)] // see the comment in the body
fn serve_h1<'a>(
    mut io: ClientIo,
    mut svc: Forward,
    ctx: &'a ConnCtx,
    stop: &'a mut watch::Receiver<bool>,
) -> impl std::future::Future<Output = Result<(), Served>> + 'a {
    // An async block for the reason given in `serve`.
    async move {
        loop {
            let timer = HeadWaitTimer::default();
            let quiet = io.quiet();
            // Boxed: it exists only while the connection is busy; the task holding an
            // idle connection stays small.
            let mut conn = Box::new(
                http1::Builder::new()
                    .timer(timer.clone())
                    .header_read_timeout(ctx.common.header_read_timeout)
                    .max_header_size(MAX_HEADER_BYTES)
                    // A client may shut its write side after the request (nc -N).
                    .half_close(true)
                    // Responses are the upstream's: no Date added that it did not send.
                    .auto_date_header(false)
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades(),
            );
            // The connection is polled first, so that a request already read by
            // detection is parsed (and answered) even when the drain has begun.
            let idle = tokio::select! {
                biased;
                r = until_idle(&mut *conn, &timer, &quiet) => r.map_err(Served::Hyper)?,
                () = stopped(stop) => {
                    Pin::new(&mut *conn).graceful_shutdown();
                    return Pin::new(&mut *conn).await.map_err(Served::Hyper);
                }
            };
            if !idle {
                return Ok(());
            }
            // In a block: nothing of hyper's parts may live in the task across the
            // idle wait (a moved-from local still takes its room there).
            let replayed = {
                let parts = unbox_parts(conn);
                io = parts.io.into_inner();
                svc = parts.service;
                // Even empty, hyper's read buffer holds its allocation: not kept while
                // idle.
                let unparsed = parts.read_buf;
                // Part of a next request came with the last one: hyper goes on with it.
                let replayed = !unparsed.is_empty();
                if replayed {
                    io.replay(BytesMut::from(&unparsed[..]));
                }
                replayed
            };
            if replayed {
                continue;
            }
            tokio::select! {
                r = io.readable() => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
                () = stopped(stop) => return Ok(()),
                () = tokio::time::sleep(ctx.common.policy.idle_timeout) => return Err(Served::Idle),
            }
        }
    }
}

/// The parts of a connection that has not ended; its box goes now (a box moved out
/// of is freed only when it goes out of scope).
fn unbox_parts(
    conn: Box<hyper::server::conn::http1::UpgradeableConnection<TokioIo<ClientIo>, Forward>>,
) -> http1::Parts<TokioIo<ClientIo>, Forward> {
    (*conn)
        .into_parts()
        .expect("a connection that has not ended has its parts")
}

/// Drives `conn` until it ends (`Ok(false)`) or is idle: hyper waits for a next
/// request and nothing is on its way (`Ok(true)`).
async fn until_idle<C>(
    conn: &mut C,
    timer: &HeadWaitTimer,
    quiet: &Quiet,
) -> Result<bool, hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Unpin,
{
    poll_fn(|cx| match Pin::new(&mut *conn).poll(cx) {
        Poll::Ready(r) => Poll::Ready(r.map(|()| false)),
        Poll::Pending if timer.idle_for_a_while() && quiet.is_quiet() => Poll::Ready(Ok(true)),
        Poll::Pending => Poll::Pending,
    })
    .await
}
