//! The proxy's own HTTP endpoints: admin (`/connections`, `/config`, `/routes`) on
//! loopback, and metrics and health (`/metrics`, `/ready`, `/live`, and the
//! application probe `/app-health/<port>` of [`crate::app_health`]) for the kubelet,
//! the controller and Prometheus. Read-only views of [`Shared`]; the serve loop is
//! `weft_runtime::http`.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpListener;

use crate::discovery::StatusReport;
use crate::state::Shared;
use weft_runtime::http::{self as http_endpoint, respond, text};

/// Serves the admin endpoint on `listener` until `stop` resolves.
pub async fn serve_admin(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: impl Future<Output = ()>,
) {
    http_endpoint::serve(listener, move |path| admin_route(&shared, path), stop).await
}

/// Serves the metrics and health endpoint on `listener`. It keeps serving during the
/// drain so `/ready` can say 503 and the last scrape sees the final counts; it ends
/// with the process.
pub async fn serve_metrics(shared: Arc<Shared>, listener: TcpListener) {
    http_endpoint::serve_requests(
        listener,
        move |req: http::Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            async move {
                if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
                    return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
                }
                // The probe's path goes on to the app with its query.
                let target = req.uri().path_and_query().map_or("", |p| p.as_str());
                match target.strip_prefix("/app-health/") {
                    Some(rest) => crate::app_health::probe(&shared, rest).await,
                    None => metrics_route(&shared, req.uri().path()),
                }
            }
        },
        std::future::pending(),
    )
    .await
}

fn admin_route(shared: &Shared, path: &str) -> http::Response<http_endpoint::Body> {
    match path {
        "/connections" => json(&serde_json::json!({ "connections": shared.conns.snapshot() })),
        "/config" => json(&shared.config),
        "/routes" => routes_report(shared),
        "/" => text(
            StatusCode::OK,
            "weft-proxy admin\n  /connections  live and recently closed connections (JSON)\n  /config       the running configuration (JSON)\n  /routes       discovery status and the route table it applied (JSON)\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/routes`: what discovery applied (version, when, connection state) and the table
/// itself, read as one snapshot so the version matches the table shown.
fn routes_report(shared: &Shared) -> http::Response<http_endpoint::Body> {
    let (table, applied) = shared.routes.load_applied();
    let controller = shared
        .config
        .discovery
        .as_ref()
        .map(|d| d.controller.as_str());
    let discovery = StatusReport::new(
        controller,
        &shared.discovery,
        shared.synced.load(Ordering::SeqCst),
        applied,
    );
    json(&RoutesReport {
        discovery,
        services: table.view(),
    })
}

/// The body of `/routes`; serialized straight from the table (no intermediate JSON
/// tree: with thousands of endpoints that would double the work).
#[derive(serde::Serialize)]
struct RoutesReport<'a> {
    discovery: StatusReport,
    services: Vec<crate::routes::ServiceView<'a>>,
}

fn metrics_route(shared: &Shared, path: &str) -> http::Response<http_endpoint::Body> {
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if shared.draining.load(Ordering::SeqCst) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/ready" if !shared.synced.load(Ordering::SeqCst) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first discovery snapshot\n",
        ),
        "/ready" => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn json(value: &impl serde::Serialize) -> http::Response<http_endpoint::Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        ),
    }
}
