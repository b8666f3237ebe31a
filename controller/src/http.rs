//! The controller's HTTP API on hyper 1:
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /v1/services` | the served services (`services`: what proxies receive), every known endpoint with its origins, health, whether its source says it is ready and whether its sidecar is draining (`endpoints`), registrations waiting for their service (`unattached`), clashes between sources (`conflicts`) |
//! | `GET /v1/services/{service}` | one service the same way |
//! | `PUT /v1/services/{service}/endpoints/{address}` | registers an endpoint; optional JSON body `{"port": 8080, "weight": 1, "labels": {"zone": "a"}}`; `201` new, `200` updated or unchanged |
//! | `DELETE /v1/services/{service}/endpoints/{address}` | deregisters it; `204`, or `404` when it is not registered |
//! | `GET /v1/status` | epoch and version, sources and their errors (file:line), conflicts, subscribers (proxies that applied a snapshot), each proxy's sent and applied versions, lag and last rejection (`proxies`), the API credentials in force (`auth`), the ADS streams of proxyless gRPC clients: open, pushes, ACKs and NACKs per type, the last NACK (`xds`) |
//! | `GET /ui/api/mesh` | the mesh page's data ([`crate::ui`]): services, edges and their golden signals, pods' sidecars and connections, recent bad configurations |
//! | `GET /ui/`, `/ui/app.js`, `/ui/style.css` | the mesh page's assets (no data: open) |
//! | `GET /metrics` | Prometheus |
//! | `GET /ready`, `/live` | `200` once serving |
//!
//! Everything but `/metrics`, `/ready`, `/live` and the page's assets needs `Authorization: Bearer
//! TOKEN`, and writes a token scoped to the service ([`crate::auth`]): `401` without
//! a valid credential, `403` out of scope, `429` (with `Retry-After`) over the
//! caller's write rate, `409` over a registry cap (`--max-registrations`,
//! `--max-endpoints-per-service`). Credentials are checked before the body is read.
//!
//! Errors are JSON `{"error": "..."}` with a 4xx saying what is wrong with the
//! request (`400` malformed, `404` no such service or registration, `413` body over
//! 64 KiB, `422` a port the service does not send to); the registry is then unchanged.
//! A registration names a service some source defines (the mesh file, Kubernetes): a
//! registry cannot invent the VIP and ports proxies route by. Without `--state-dir`
//! changes get `503`: they could not be persisted.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::{Api as ApiKind, Auth, Caller, Denial};
use crate::health::{HealthTable, Status as Health};
use crate::merge::{Catalog, CatalogService};
use crate::metrics::Metrics;
use crate::model::{Name, Registration};
use crate::registry::{PutOutcome, Registry, RegistryError};
use crate::state::State;
use crate::ui::Ui;
/// The body type of every response served here.
pub use weft_runtime::http::Body;
use weft_runtime::http::{respond, RemoteAddr};

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What the API serves from.
#[derive(Debug, Clone)]
pub struct Api {
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    /// The registry; `None` without a state directory.
    pub registry: Option<Arc<Registry>>,
    pub health: Arc<HealthTable>,
    /// Who may call what.
    pub auth: Arc<Auth>,
    /// The mesh page and its data.
    pub ui: Arc<Ui>,
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    weft_runtime::http::text(status, body)
}

fn json_with(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(status, "application/json", body)
        }
        Err(e) => {
            tracing::error!(error = %e, "serializing a response");
            text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed\n")
        }
    }
}

fn ok_json(value: &impl Serialize) -> Response<Body> {
    json_with(StatusCode::OK, value)
}

/// A refused request: its status and the reason.
fn refuse(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    json_with(status, &json!({ "error": reason.into() }))
}

/// One endpoint in `/v1/services`: where it comes from, whether proxies get it and
/// its health.
fn endpoint_view(api: &Api, name: &Name, entry: &CatalogService) -> Vec<serde_json::Value> {
    let draining = api.state.draining();
    entry
        .endpoints
        .iter()
        .map(|ep| {
            let check = api.health.get(name, ep.address);
            let health = match &check {
                None => "unchecked",
                Some(h) if h.status == Health::Healthy => "healthy",
                Some(_) => "unhealthy",
            };
            let is_draining = draining.contains(&ep.address);
            let mut v = json!({
                "address": ep.address,
                "sources": ep.sources,
                "served": ep.ready
                    && !is_draining
                    && check.as_ref().is_none_or(|h| h.status == Health::Healthy),
                "ready": ep.ready,
                "health": health,
                "draining": is_draining,
            });
            if let Some(check) = check {
                v["check"] = json!(check);
            }
            if let Some(r) = &ep.registration {
                v["port"] = json!(r.port);
                v["weight"] = json!(r.weight);
                v["labels"] = json!(r.labels);
            }
            v
        })
        .collect()
}

fn services_view(api: &Api, catalog: &Catalog) -> serde_json::Value {
    let snap = api.state.snapshot();
    let endpoints: BTreeMap<&Name, Vec<serde_json::Value>> = catalog
        .services
        .iter()
        .map(|(name, entry)| (name, endpoint_view(api, name, entry)))
        .collect();
    let defined_by: BTreeMap<&Name, _> = catalog
        .services
        .iter()
        .map(|(n, e)| (n, e.defined_by))
        .collect();
    json!({
        "version": snap.version,
        "services": snap.mesh.services,
        "defined_by": defined_by,
        "endpoints": endpoints,
        "unattached": catalog.unattached,
        "conflicts": catalog.conflicts,
    })
}

/// The answer to `GET path`.
pub fn route(api: &Api, path: &str) -> Response<Body> {
    let state = &api.state;
    match path {
        "/v1/services" => ok_json(&services_view(api, &state.catalog())),
        "/v1/status" => {
            let mut status = serde_json::to_value(state.status()).unwrap_or_default();
            status["auth"] = json!(api.auth.status());
            status["proxies"] = json!(state.proxies().view(state.snapshot().version));
            status["xds"] = json!(state.xds().view());
            ok_json(&status)
        }
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            api.metrics.render(),
        ),
        // The controller serves only once it has a good configuration.
        "/ready" | "/live" => text(StatusCode::OK, "ok\n"),
        _ => match path.strip_prefix("/v1/services/") {
            Some(rest) if !rest.contains('/') => one_service(api, rest),
            _ => api
                .ui
                .route(path)
                .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
        },
    }
}

fn one_service(api: &Api, raw: &str) -> Response<Body> {
    let name = match parse_name(raw) {
        Ok(n) => n,
        Err(reason) => return bad(reason),
    };
    let catalog = api.state.catalog();
    let snap = api.state.snapshot();
    match (catalog.services.get(&name), snap.mesh.services.get(&name)) {
        (Some(entry), Some(served)) => ok_json(&json!({
            "version": snap.version,
            "name": name,
            "defined_by": entry.defined_by,
            "service": served,
            "endpoints": endpoint_view(api, &name, entry),
        })),
        _ => refuse(StatusCode::NOT_FOUND, format!("no service named {name}")),
    }
}

/// A path's segment, percent-decoded.
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A 400 for a bad path variable.
fn bad(reason: String) -> Response<Body> {
    refuse(StatusCode::BAD_REQUEST, reason)
}

fn parse_name(raw: &str) -> Result<Name, String> {
    let text = decode(raw).ok_or_else(|| format!("bad percent-encoding in {raw:?}"))?;
    Name::try_from(text).map_err(|e| format!("service: {e}"))
}

fn parse_address(raw: &str) -> Result<IpAddr, String> {
    let text = decode(raw).ok_or_else(|| format!("bad percent-encoding in {raw:?}"))?;
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(&text);
    bare.parse().map_err(|_| {
        let hint = if text.parse::<std::net::SocketAddr>().is_ok() {
            "; give the port in the body: {\"port\": N}"
        } else {
            ""
        };
        format!("address {text:?} is not an IPv4 or IPv6 address{hint}")
    })
}

/// The optional body of a `PUT`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutBody {
    pub(crate) port: Option<NonZeroU16>,
    pub(crate) weight: Option<NonZeroU32>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
}

/// `/v1/services/{service}/endpoints/{address}` split into its two variables.
fn endpoint_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1/services/")?;
    let (service, rest) = rest.split_once('/')?;
    let address = rest.strip_prefix("endpoints/")?;
    (!service.is_empty() && !address.is_empty() && !address.contains('/'))
        .then_some((service, address))
}

/// The service and address of an endpoint path, or why one is bad.
pub(crate) fn parse_endpoint(service: &str, address: &str) -> Result<(Name, IpAddr), String> {
    Ok((parse_name(service)?, parse_address(address)?))
}

/// The refusal of a call from `peer`, counted and logged.
fn deny(api: &Api, peer: Option<std::net::SocketAddr>, denial: &Denial) -> Response<Body> {
    api.auth.denied(ApiKind::Http, peer, denial);
    let status = match denial {
        Denial::Missing | Denial::Bad(_) => StatusCode::UNAUTHORIZED,
        Denial::OutOfScope { .. } => StatusCode::FORBIDDEN,
        Denial::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        Denial::WatchCap { .. } | Denial::Cap { .. } => StatusCode::CONFLICT,
    };
    let mut response = refuse(status, denial.message());
    let headers = response.headers_mut();
    match denial {
        Denial::Missing | Denial::Bad(_) => {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"weft-controller\""),
            );
        }
        Denial::RateLimited(wait) => {
            // Whole seconds, rounded up: a client that waits that long gets through.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(secs.max(1)),
            );
        }
        _ => {}
    }
    response
}

/// A write's checks before its body is read: the caller's rate, then its scope.
fn admit_write(api: &Api, caller: &Caller, raw_service: &str) -> Result<(), Denial> {
    api.auth.take_write(caller)?;
    // A service name that does not parse is a 400, answered later.
    match parse_name(raw_service) {
        Ok(service) => api.auth.may_register(caller, &service),
        Err(_) => Ok(()),
    }
}

async fn put_endpoint(
    api: &Api,
    peer: Option<std::net::SocketAddr>,
    service: &str,
    address: &str,
    body: Bytes,
) -> Response<Body> {
    let (service, address) = match parse_endpoint(service, address) {
        Ok(parsed) => parsed,
        Err(reason) => return bad(reason),
    };
    let body: PutBody = if body.iter().all(u8::is_ascii_whitespace) {
        PutBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let reg = Registration {
        service,
        address,
        port: body.port,
        weight: body.weight.unwrap_or(NonZeroU32::MIN),
        labels: body.labels,
    };
    if let Err(e) = reg.validate() {
        return refuse(StatusCode::BAD_REQUEST, e);
    }
    let Some(registry) = &api.registry else {
        return no_registry();
    };
    let catalog = api.state.catalog();
    let Some(entry) = catalog.services.get(&reg.service) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no service named {}: define it (VIP and ports) in the mesh file or in Kubernetes first",
                reg.service
            ),
        );
    };
    if let Some(port) = reg.port {
        let targets: Vec<u16> = entry
            .service
            .ports
            .iter()
            .map(|p| p.target_port.get())
            .collect();
        if !targets.contains(&port.get()) {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "service {} sends to target port(s) {targets:?}; port {port} is not one of them",
                    reg.service
                ),
            );
        }
    }
    match registry.put(reg.clone()).await {
        Ok(outcome) => {
            let (code, word) = match outcome {
                PutOutcome::Created => (StatusCode::CREATED, "created"),
                PutOutcome::Updated => (StatusCode::OK, "updated"),
                PutOutcome::Unchanged => (StatusCode::OK, "unchanged"),
            };
            if outcome != PutOutcome::Unchanged {
                tracing::info!(service = %reg.service, endpoint = %reg.address, "endpoint registered ({word})");
            }
            json_with(code, &json!({ "registered": reg, "outcome": word }))
        }
        Err(RegistryError::Cap { reason, message }) => {
            deny(api, peer, &Denial::Cap { reason, message })
        }
        Err(e) => {
            tracing::error!(error = %e, "persisting a registration");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("not registered: {e}"),
            )
        }
    }
}

async fn delete_endpoint(api: &Api, service: &str, address: &str) -> Response<Body> {
    let (service, address) = match parse_endpoint(service, address) {
        Ok(parsed) => parsed,
        Err(reason) => return bad(reason),
    };
    let Some(registry) = &api.registry else {
        return no_registry();
    };
    match registry.delete(&service, address).await {
        Ok(true) => {
            tracing::info!(service = %service, endpoint = %address, "endpoint deregistered");
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Full::new(Bytes::new()))
                .unwrap_or_else(|_| text(StatusCode::NO_CONTENT, ""))
        }
        Ok(false) => {
            let elsewhere = api
                .state
                .catalog()
                .services
                .get(&service)
                .and_then(|s| s.endpoints.iter().find(|e| e.address == address))
                .map(|e| {
                    let from: Vec<&str> = e.sources.iter().map(|k| k.as_str()).collect();
                    format!(" (it comes from: {}; change it there)", from.join(", "))
                })
                .unwrap_or_default();
            refuse(
                StatusCode::NOT_FOUND,
                format!("{address} is not registered to service {service}{elsewhere}"),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "persisting a deregistration");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("not deregistered: {e}"),
            )
        }
    }
}

fn no_registry() -> Response<Body> {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "registration is off: start weft-controller with --state-dir DIR, where registrations are persisted",
    )
}

/// Paths anyone may read: probes, scrapers and the mesh page's assets (which
/// hold no data; its data API wants a token).
fn is_open(path: &str) -> bool {
    matches!(path, "/metrics" | "/ready" | "/live") || Ui::is_asset(path)
}

/// Answers one request.
pub async fn handle(api: &Api, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req.extensions().get::<RemoteAddr>().map(|r| r.0);
    let reading = matches!(method, Method::GET | Method::HEAD);
    if reading && is_open(&path) {
        return route(api, &path);
    }
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let caller = match api.auth.authenticate(authorization).await {
        Ok(caller) => caller,
        Err(denial) => return deny(api, peer, &denial),
    };
    let endpoint = endpoint_path(&path);
    if let (false, Some((service, _))) = (reading, endpoint) {
        if matches!(method, Method::PUT | Method::DELETE) {
            if let Err(denial) = admit_write(api, &caller, service) {
                return deny(api, peer, &denial);
            }
        }
    }
    match (&method, endpoint) {
        (&Method::GET | &Method::HEAD, _) => route(api, &path),
        (&Method::PUT, Some((service, address))) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let too_big = e
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some();
                    return if too_big {
                        refuse(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("body over {MAX_BODY} bytes"),
                        )
                    } else {
                        refuse(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
                    };
                }
            };
            put_endpoint(api, peer, service, address, body).await
        }
        (&Method::DELETE, Some((service, address))) => delete_endpoint(api, service, address).await,
        (_, Some(_)) => refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "use PUT to register, DELETE to deregister",
        ),
        _ => refuse(StatusCode::METHOD_NOT_ALLOWED, "only GET here"),
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, api: Api, shutdown: impl Future<Output = ()>) {
    weft_runtime::http::serve_requests(
        listener,
        move |req| {
            let api = api.clone();
            async move { handle(&api, req).await }
        },
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_addresses() {
        assert_eq!(
            endpoint_path("/v1/services/b/endpoints/10.0.0.1"),
            Some(("b", "10.0.0.1"))
        );
        assert_eq!(
            endpoint_path("/v1/services/b/endpoints/fd00::1"),
            Some(("b", "fd00::1"))
        );
        assert_eq!(endpoint_path("/v1/services/b/endpoints/"), None);
        assert_eq!(endpoint_path("/v1/services/b/endpoints/a/b"), None);
        assert_eq!(endpoint_path("/v1/services/b"), None);
        assert_eq!(decode("fd00%3A%3a1").as_deref(), Some("fd00::1"));
        assert_eq!(decode("%zz"), None);
        assert!(parse_address("[fd00::1]").is_ok());
        assert!(parse_address("fd00%3A%3A1").is_ok());
        assert!(parse_address("10.0.0.1:80").is_err());
        assert!(parse_address("host").is_err());
    }
}
