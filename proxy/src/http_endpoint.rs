//! A minimal HTTP/1 server for the proxy's own endpoints (admin and metrics), on
//! hyper. Requests are answered by a plain function from path to response.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on an admin/metrics listener");
                    continue;
                }
            },
        };
        let route = route.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let route = route.clone();
                async move {
                    let resp = match *req.method() {
                        Method::GET | Method::HEAD => route(req.uri().path()),
                        _ => text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin/metrics connection");
            }
        });
    }
}
