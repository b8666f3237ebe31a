//! The one small HTTP/1 server behind every endpoint weft's binaries serve about
//! themselves: the proxy's admin and metrics listeners, the controller's API, and its
//! admission webhook over TLS. On hyper's connection API.
//!
//! One loop, [`serve_with`]: accept on a listener until shutdown, turn each TCP
//! stream into the connection's I/O with an acceptor (the stream itself for plain
//! TCP, a TLS handshake for the webhook), and answer its requests with a handler
//! that takes the whole request (bodies included). Two shapes over it:
//!
//! - [`serve`]: GET (and HEAD) only, answered by a plain function from path to
//!   response — the proxy's admin and metrics routes;
//! - [`serve_requests`]: every method, answered by an async handler of the whole
//!   request, over plain TCP — the controller's API.
//!
//! A connection's errors (a failed handshake, garbage, a reset) end only that
//! connection; an accept error is logged and the loop goes on.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// The body type of every response served here.
pub type Body = Full<Bytes>;

/// A response with `status`, `content_type` and `body`.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Serves `route` on `listener` until `shutdown` resolves. Only GET (and HEAD) are
/// answered; other methods get 405.
pub async fn serve<R>(listener: TcpListener, route: R, shutdown: impl Future<Output = ()>)
where
    R: Fn(&str) -> Response<Body> + Send + Sync + 'static,
{
    let route = Arc::new(route);
    serve_requests(
        listener,
        move |req: Request<Incoming>| {
            let resp = match *req.method() {
                Method::GET | Method::HEAD => route(req.uri().path()),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"),
            };
            std::future::ready(resp)
        },
        shutdown,
    )
    .await
}

/// Serves `handler` on `listener`, plain TCP, until `shutdown` resolves.
pub async fn serve_requests<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_with(
        listener,
        |stream, _peer| std::future::ready(Some(stream)),
        handler,
        shutdown,
    )
    .await
}

/// The address a request came from: in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// The serve loop: accepts on `listener` until `shutdown` resolves; `accept` turns
/// each stream into the connection's I/O (or `None` to drop it, having logged why);
/// `handler` answers every request on it. Each connection runs in a task of its own.
pub async fn serve_with<A, AF, Io, H, F>(
    listener: TcpListener,
    accept: A,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    A: Fn(TcpStream, SocketAddr) -> AF + Send + Sync + 'static,
    AF: Future<Output = Option<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let handler = Arc::new(handler);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = ?local, error = %e, "accepting an HTTP connection");
                    continue;
                }
            },
        };
        let io = accept(stream, peer);
        let handler = handler.clone();
        tokio::spawn(async move {
            let Some(io) = io.await else { return };
            let svc = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(RemoteAddr(peer));
                let answer = handler(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .await
            {
                tracing::debug!(listener = ?local, %peer, error = %e, "HTTP connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_by_path_and_refuses_other_methods() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            |path: &str| text(StatusCode::OK, format!("at {path}\n")),
            async {
                let _ = stopped.await;
            },
        ));
        let got = exchange(
            addr,
            "GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.ends_with("at /x\n"), "{got}");
        let got = exchange(
            addr,
            "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 405"), "{got}");
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn handlers_read_bodies() {
        use http_body_util::BodyExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_requests(
            listener,
            |req: Request<Incoming>| async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                text(StatusCode::CREATED, body)
            },
            std::future::pending(),
        ));
        let got = exchange(
            addr,
            "PUT /y HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 201"), "{got}");
        assert!(got.ends_with("hello"), "{got}");
        task.abort();
    }
}
