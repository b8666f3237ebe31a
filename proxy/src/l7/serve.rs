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
//! Drain: when `stop` fires, HTTP/1 connections stop keep-alive (the response in
//! progress carries `Connection: close`; an idle connection closes at once) and
//! HTTP/2 connections get GOAWAY; requests in flight finish.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::forward::forward;
use super::io::{ClientIo, Observer, Salvage};
use super::{ConnCtx, HttpVersion};
use crate::error::ConnEnd;

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
pub async fn serve(
    stream: TcpStream,
    prefix: BytesMut,
    ctx: Arc<ConnCtx>,
    observer: Observer,
    mut stop: watch::Receiver<bool>,
) -> ConnEnd {
    let salvage: Salvage = Arc::new(Mutex::new(None));
    let io = TokioIo::new(ClientIo::new(stream, prefix, observer, salvage.clone()));
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| forward(svc_ctx.clone(), req));
    let served = match ctx.version {
        HttpVersion::Http1 => {
            let mut conn = pin!(http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ctx.header_read_timeout)
                .max_header_size(MAX_HEADER_BYTES)
                // A client may shut its write side after the request (nc -N).
                .half_close(true)
                // Responses are the upstream's: no Date added that it did not send.
                .auto_date_header(false)
                .serve_connection(io, svc)
                .with_upgrades());
            // The connection is polled first, so that a request already read by
            // detection is parsed (and answered) even when the drain has begun.
            tokio::select! {
                biased;
                r = conn.as_mut() => r,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        HttpVersion::H2 => {
            let mut conn = pin!(http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .auto_date_header(false)
                .serve_connection(io, svc));
            tokio::select! {
                biased;
                r = conn.as_mut() => r,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    for tunnel in ctx.take_tunnels() {
        let _ = tunnel.await;
    }
    let left = salvage.lock().unwrap_or_else(|e| e.into_inner()).take();
    match served {
        Ok(()) => ConnEnd::Eof,
        Err(e) if e.is_timeout() => match left {
            Some((stream, true)) => {
                // Small enough for any socket buffer: one non-blocking write.
                let _ = stream.try_write(REQUEST_TIMEOUT_408);
                ConnEnd::HeaderTimeout
            }
            _ => ConnEnd::IdleTimeout,
        },
        Err(e) => ConnEnd::Http(e),
    }
}
