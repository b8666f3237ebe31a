//! The controller's metrics on `/metrics` (HTTP port, 15014): recorded through the
//! OpenTelemetry SDK and exposed in the Prometheus text format through
//! [`weft_runtime::metrics::Exporter`], the same pipeline as the proxy's (with the
//! standard `process_*` series).
//!
//! | series | labels |
//! | --- | --- |
//! | `weft_controller_config_reloads_total` | `result` = `ok` or `error` |
//! | `weft_controller_config_version` | |
//! | `weft_controller_subscribed_proxies` (applied a snapshot) | |
//! | `weft_controller_proxies` (discovery streams open) | `state` = `current` (at the served version), `behind`, `rejecting` (last answer a rejection; also counted in its other state) |
//! | `weft_controller_proxy_lag_max_seconds` (the longest a sent version waits for its Ack) | |
//! | `weft_controller_pushes_total` (updates sent to proxies, snapshots included) | |
//! | `weft_controller_acks_total` (the proxies' answers to updates) | `result` = `applied` or `rejected` |
//! | `weft_controller_services` | |
//! | `weft_controller_endpoints` (served: health checks passed or not checked) | `service` |
//! | `weft_controller_endpoints_checked` (under active health checks) | `service` |
//! | `weft_controller_endpoints_withdrawn` (failing their health checks) | `service` |
//! | `weft_controller_api_denied_total` (API calls refused; nothing changed) | `api` = `http` or `grpc`; `reason` = `missing_credential`, `bad_credential`, `out_of_scope`, `rate_limited`, `endpoint_cap`, `registration_cap`, `watch_cap` |
//! | `weft_controller_xds_streams` (ADS streams open: proxyless gRPC clients) | |
//! | `weft_controller_xds_pushes_total` (ADS responses sent) | `type` = `listener`, `cluster`, `endpoints` |
//! | `weft_controller_xds_acks_total` (ADS clients' answers to them) | `type`; `result` = `applied` or `rejected` |
//! | `weft_controller_runtime_tasks` (tasks alive in the controller's tokio runtime: a connection, a Watch each hold some; a count that grows with nothing connected is a leak) | |
//!
//! Every instrument is observable: it is read from [`State`] at scrape time. The
//! state already counts reloads, errors and subscribers for `/v1/status`, so the two
//! views cannot disagree, and nothing is recorded on the discovery path but one
//! atomic add per push. `service` is bounded: it takes the mesh's service names, and
//! a removed service's series goes with it (observable gauges report only what the
//! last callback observed). Addresses are never labels (their count is unbounded in
//! a cluster): which endpoint fails is in `GET /v1/services`.

use std::sync::Arc;

use opentelemetry::KeyValue;
use weft_runtime::metrics::Exporter;
use weft_runtime::otlp::OtlpSettings;

use crate::auth::Auth;
use crate::health::{HealthTable, Status};
use crate::state::State;

/// Errors building the metrics pipeline.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("building the metrics pipeline: {0}")]
    Exporter(String),
}

/// The controller's instruments and the registry they are exported from.
#[derive(Debug)]
pub struct Metrics {
    // The observable instruments' callbacks live in its provider.
    exporter: Exporter,
}

/// How the controller describes its metrics (`k8s.pod.name`, `service.namespace`
/// beside `service.name` `weft-controller`), and where it pushes them over OTLP
/// (`None`: nowhere, nothing runs for it).
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub otlp: Option<OtlpSettings>,
}

impl Metrics {
    /// Builds the pipeline and the instruments observing `state`, `health` and
    /// `auth`.
    pub fn new(
        state: Arc<State>,
        health: Arc<HealthTable>,
        auth: Arc<Auth>,
    ) -> Result<Self, MetricsError> {
        Metrics::with_telemetry(state, health, auth, &Telemetry::default())
    }

    /// [`Metrics::new`] described by, and pushed over OTLP as, `telemetry` says.
    pub fn with_telemetry(
        state: Arc<State>,
        health: Arc<HealthTable>,
        auth: Arc<Auth>,
        telemetry: &Telemetry,
    ) -> Result<Self, MetricsError> {
        let resource = weft_runtime::metrics::resource(
            "weft-controller",
            telemetry.namespace.as_deref(),
            telemetry.pod.as_deref(),
            [],
        );
        let exporter = Exporter::with_otlp(resource, telemetry.otlp.as_ref())
            .map_err(|e| MetricsError::Exporter(e.to_string()))?;
        let meter = exporter.meter("weft-controller");
        register(&meter, &state, &health);
        register_xds(&meter, &state);
        register_auth(&meter, auth);
        register_runtime(&meter);
        Ok(Metrics { exporter })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.exporter.render()
    }
}

/// Registers every instrument; each callback holds its own reference to the state.
/// (The instrument handles can be dropped: the callbacks live in the provider.)
fn register(meter: &opentelemetry::metrics::Meter, state: &Arc<State>, health: &Arc<HealthTable>) {
    let s = state.clone();
    let _ = meter
        .u64_observable_counter("weft_controller_config_reloads")
        .with_description(
            "Configurations read from the source: ok (the first included) or error (rejected, the last good one kept)",
        )
        .with_callback(move |o| {
            let status = s.status();
            o.observe(status.reloads_total, &[KeyValue::new("result", "ok")]);
            o.observe(
                status.reload_errors_total,
                &[KeyValue::new("result", "error")],
            );
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("weft_controller_config_version")
        .with_description("Version of the mesh being served")
        .with_callback(move |o| o.observe(s.snapshot().version, &[]))
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("weft_controller_subscribed_proxies")
        .with_description("Proxies subscribed to the discovery API that applied a snapshot")
        .with_callback(move |o| o.observe(count(s.subscribers()), &[]))
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("weft_controller_proxies")
        .with_description("Discovery streams open, by whether the proxy is at the served version")
        .with_callback(move |o| {
            let t = s.proxies().totals(s.snapshot().version);
            o.observe(count(t.current), &[KeyValue::new("state", "current")]);
            o.observe(
                count(t.connected - t.current),
                &[KeyValue::new("state", "behind")],
            );
            o.observe(count(t.rejecting), &[KeyValue::new("state", "rejecting")]);
        })
        .build();
    let s = state.clone();
    let _ = meter
        .f64_observable_gauge("weft_controller_proxy_lag_max_seconds")
        .with_description("The longest a version sent to a proxy has waited for its Ack")
        .with_callback(move |o| {
            o.observe(
                s.proxies().totals(s.snapshot().version).max_lag_seconds,
                &[],
            )
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_counter("weft_controller_acks")
        .with_description("Proxies' answers to discovery updates: applied or rejected")
        .with_callback(move |o| {
            let (applied, rejected) = s.proxies().acks();
            o.observe(applied, &[KeyValue::new("result", "applied")]);
            o.observe(rejected, &[KeyValue::new("result", "rejected")]);
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_counter("weft_controller_pushes")
        .with_description("Discovery updates sent to proxies (snapshots included)")
        .with_callback(move |o| o.observe(s.pushes(), &[]))
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("weft_controller_services")
        .with_description("Services in the mesh being served")
        .with_callback(move |o| o.observe(count(s.snapshot().mesh.services.len()), &[]))
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("weft_controller_endpoints")
        .with_description("Endpoints of each service in the mesh being served")
        .with_callback(move |o| {
            let snap = s.snapshot();
            for (name, svc) in &snap.mesh.services {
                o.observe(
                    count(svc.endpoints.len()),
                    &[KeyValue::new("service", name.to_string())],
                );
            }
        })
        .build();
    let h = health.clone();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("weft_controller_endpoints_checked")
        .with_description("Endpoints of each service under active health checks")
        .with_callback(move |o| {
            let all = h.all();
            for name in s.snapshot().mesh.services.keys() {
                let n = all.iter().filter(|((svc, _), _)| svc == name).count();
                o.observe(count(n), &[KeyValue::new("service", name.to_string())]);
            }
        })
        .build();
    let h = health.clone();
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("weft_controller_endpoints_withdrawn")
        .with_description("Endpoints of each service withdrawn for failing their health checks")
        .with_callback(move |o| {
            let all = h.all();
            for name in s.snapshot().mesh.services.keys() {
                let n = all
                    .iter()
                    .filter(|((svc, _), e)| svc == name && e.status == Status::Unhealthy)
                    .count();
                o.observe(count(n), &[KeyValue::new("service", name.to_string())]);
            }
        })
        .build();
}

/// The ADS streams' series, read from [`crate::xds::Stats`].
fn register_xds(meter: &opentelemetry::metrics::Meter, state: &Arc<State>) {
    let s = state.clone();
    let _ = meter
        .u64_observable_gauge("weft_controller_xds_streams")
        .with_description("ADS (xDS v3) streams open: proxyless gRPC clients")
        .with_callback(move |o| o.observe(s.xds().streams(), &[]))
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_counter("weft_controller_xds_pushes")
        .with_description("ADS responses sent, by resource type")
        .with_callback(move |o| {
            for (kind, pushes, _, _) in s.xds().counts() {
                o.observe(pushes, &[KeyValue::new("type", kind.label())]);
            }
        })
        .build();
    let s = state.clone();
    let _ = meter
        .u64_observable_counter("weft_controller_xds_acks")
        .with_description("ADS clients' answers to responses: applied (ACK) or rejected (NACK)")
        .with_callback(move |o| {
            for (kind, _, acks, nacks) in s.xds().counts() {
                let t = KeyValue::new("type", kind.label());
                o.observe(acks, &[t.clone(), KeyValue::new("result", "applied")]);
                o.observe(nacks, &[t, KeyValue::new("result", "rejected")]);
            }
        })
        .build();
}

/// The runtime's live task count, when built inside one (the controller always
/// is; tokio's stable `RuntimeMetrics::num_alive_tasks`).
fn register_runtime(meter: &opentelemetry::metrics::Meter) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let _ = meter
        .u64_observable_gauge("weft_controller_runtime_tasks")
        .with_description("Tasks alive in the controller's runtime")
        .with_callback(move |o| o.observe(count(runtime.metrics().num_alive_tasks()), &[]))
        .build();
}

/// The denial counter, read from [`Auth`]'s counts.
fn register_auth(meter: &opentelemetry::metrics::Meter, auth: Arc<Auth>) {
    let _ = meter
        .u64_observable_counter("weft_controller_api_denied")
        .with_description(
            "API calls refused (401, 403, 429, a registry cap, a Watch cap); nothing was changed",
        )
        .with_callback(move |o| {
            for (api, reason, n) in auth.denied_counts() {
                o.observe(
                    n,
                    &[
                        KeyValue::new("api", api.as_str()),
                        KeyValue::new("reason", reason),
                    ],
                );
            }
        })
        .build();
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
