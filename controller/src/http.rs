//! The controller's HTTP API on hyper 1: `GET /v1/services` (the served mesh's
//! services as JSON), `GET /v1/status` (version, last reload, errors with file:line,
//! subscribers), `/metrics` (Prometheus), `/ready` and `/live`.

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
use serde::Serialize;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::state::State;

/// The body type of every response served here.
pub type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// What the API serves from.
#[derive(Debug, Clone)]
pub struct Api {
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn json(value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(StatusCode::OK, "application/json", body)
        }
        Err(e) => {
            tracing::error!(error = %e, "serializing a response");
            text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed\n")
        }
    }
}

/// The answer to `GET path`.
pub fn route(api: &Api, path: &str) -> Response<Body> {
    let state = &api.state;
    match path {
        "/v1/services" => {
            let snap = state.snapshot();
            json(&serde_json::json!({
                "version": snap.version,
                "services": snap.mesh.services,
            }))
        }
        "/v1/status" => json(&state.status()),
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            api.metrics.render(),
        ),
        // The controller serves only once it has a good configuration.
        "/ready" | "/live" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, api: Api, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the HTTP listener");
                    continue;
                }
            },
        };
        let api = api.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = match *req.method() {
                    Method::GET | Method::HEAD => route(&api, req.uri().path()),
                    _ => text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"),
                };
                std::future::ready(Ok::<_, Infallible>(resp))
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "HTTP API connection");
            }
        });
    }
}
