//! The downstream side of an HTTP connection: hyper's HTTP/1 or HTTP/2 server,
//! chosen by detection, over the client socket (with the detected prefix replayed),
//! each request handed to [`forward`].
//!
//! Limits against bad input, from hyper: a malformed request gets 400, a request
//! head over [`MAX_HEADER_BYTES`] or with too many headers gets 431, a URI too long
//! 414; a client that has not sent a whole request head within
//! [`HEADER_READ_TIMEOUT`] is disconnected. None of it reaches the upstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::forward::forward;
use super::io::{ClientIo, Observer};
use super::{ConnCtx, HttpVersion};

/// Largest request head accepted from a client (Envoy's default is 60 KiB).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a client has to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP on `stream` until the client closes; returns how it ended, for
/// `/connections`.
pub async fn serve(
    stream: TcpStream,
    prefix: BytesMut,
    ctx: Arc<ConnCtx>,
    observer: Observer,
) -> String {
    let io = TokioIo::new(ClientIo::new(stream, prefix, observer));
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| forward(svc_ctx.clone(), req));
    let served = match ctx.version {
        HttpVersion::Http1 => {
            http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_header_size(MAX_HEADER_BYTES)
                // A client may shut its write side after the request (nc -N).
                .half_close(true)
                // Responses are the upstream's: no Date added that it did not send.
                .auto_date_header(false)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        }
        HttpVersion::H2 => {
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .auto_date_header(false)
                .serve_connection(io, svc)
                .await
        }
    };
    for tunnel in ctx.take_tunnels() {
        let _ = tunnel.await;
    }
    match served {
        Ok(()) => "eof".to_string(),
        Err(e) if e.is_timeout() => "header_timeout".to_string(),
        Err(e) => format!("http_error: {e}"),
    }
}
