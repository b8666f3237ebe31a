//! The proxy's own HTTP endpoints: admin (`/connections`, `/config`, `/routes`) on
//! loopback, and metrics and health (`/metrics`, `/ready`, `/ready/proxy`, `/live`,
//! and the application probe `/app-health/<port>` of [`crate::app_health`]) for the
//! kubelet, the controller and Prometheus. Read-only views of [`Shared`]; the serve
//! loop is `weft_runtime::http`.
//!
//! Which probe means what (ARCHITECTURE.md, Ports):
//!
//! - `/live`: the process serves. 200 from the start to the exit.
//! - `/ready/proxy`: the proxy itself is ready: not draining, the first discovery
//!   snapshot arrived (always, without a controller) and, with `--identity`, it
//!   holds a valid workload certificate (peers demand mutual TLS of it: without
//!   one it cannot serve a strict service, and would dial its peers in
//!   plaintext). Needs no app: what starts the app after the sidecar waits on this
//!   (or on `/live`).
//! - `/ready`: the pod should get traffic: `/ready/proxy`, and the app accepts
//!   connections on the ports its service sends to, when this pod backs its
//!   service ([`crate::readiness`]); else 503 saying which port and why.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpListener;

use crate::discovery::StatusReport;
use crate::readiness;
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
                    None if req.uri().path() == "/ready" => ready(&shared).await,
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
        "/discovery" => json(&discovery_report(shared)),
        "/identity" => json(&shared.identity.report()),
        "/" => text(
            StatusCode::OK,
            "weft-proxy admin\n  /connections  live and recently closed connections (JSON)\n  /config       the running configuration (JSON)\n  /routes       discovery status and the route table it applied (JSON)\n  /discovery    discovery status alone: epoch, version, when applied, rejections (JSON)\n  /identity     the workload certificate (--identity): SPIFFE ID, expiry, renewal (JSON)\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/routes`: what discovery applied (version, when, connection state) and the table
/// itself, read as one snapshot so the version matches the table shown.
fn routes_report(shared: &Shared) -> http::Response<http_endpoint::Body> {
    let (table, applied) = shared.routes.load_applied();
    json(&RoutesReport {
        discovery: status_report(shared, applied),
        services: table.view(),
    })
}

/// `/discovery`: `/routes` without the table (small, whatever the mesh's size).
fn discovery_report(shared: &Shared) -> StatusReport {
    status_report(shared, shared.routes.load_applied().1)
}

fn status_report(shared: &Shared, applied: Option<crate::routes::Applied>) -> StatusReport {
    let controller = shared
        .config
        .discovery
        .as_ref()
        .map(|d| d.controller.as_str());
    StatusReport::new(
        controller,
        &shared.discovery,
        shared.synced.load(Ordering::SeqCst),
        applied,
    )
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
        "/ready/proxy" => match proxy_not_ready(shared) {
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            None => text(StatusCode::OK, "ready\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Why the proxy itself is not ready, if it is not.
fn proxy_not_ready(shared: &Shared) -> Option<&'static str> {
    if shared.draining.load(Ordering::SeqCst) {
        Some("draining\n")
    } else if !shared.synced.load(Ordering::SeqCst) {
        Some("waiting for the first discovery snapshot\n")
    } else if wants_identity(shared) && shared.identity.tls().current().is_none() {
        Some("no valid workload certificate (--identity): none issued yet, or it expired\n")
    } else {
        None
    }
}

/// Whether the proxy keeps a workload certificate (`--identity`).
fn wants_identity(shared: &Shared) -> bool {
    shared.config.discovery.as_ref().is_some_and(|d| d.identity)
}

/// How long `/ready` waits for the app to accept (the kubelet's default probe
/// timeout is 1 s).
const APP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// `/ready`: the proxy's own readiness, then the app's ports this pod serves.
async fn ready(shared: &Shared) -> http::Response<http_endpoint::Body> {
    if let Some(why) = proxy_not_ready(shared) {
        return text(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    let pod: Vec<std::net::IpAddr> = crate::discovery::pod_addresses()
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let ports = readiness::app_ports(&shared.routes.load(), &shared.own_service, &pod);
    if ports.is_empty() {
        return text(StatusCode::OK, "ready\n");
    }
    let checked = shared
        .app_check
        .check(&ports, |port| {
            crate::app_health::accepts(&shared.connector, port, APP_CONNECT_TIMEOUT)
        })
        .await;
    match checked {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
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
