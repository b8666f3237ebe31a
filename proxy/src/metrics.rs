//! The proxy's metrics: recorded through the OpenTelemetry SDK, exposed in the
//! Prometheus text format by `opentelemetry-prometheus` (ARCHITECTURE.md, Metrics names them).
//!
//! Labels are bounded by construction: direction, service names and error reasons —
//! never addresses, ports or ids (those belong in `/connections`).
//!
//! Besides the traffic series named there, a proxy with a controller exports the discovery
//! client's state: `weft_discovery_updates_total` and `weft_discovery_connected`.

use std::sync::Arc;

use opentelemetry::metrics::{Counter, Meter, UpDownCounter};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use weft_runtime::metrics::Exporter;
use weft_runtime::otlp::OtlpSettings;

use crate::addr::Direction;
use crate::discovery::DiscoveryStatus;
use crate::error::ErrorReason;

/// All instruments of one proxy, plus the registry they are exported from.
#[derive(Debug)]
pub struct Metrics {
    // Kept alive: dropping it would stop collection.
    exporter: Exporter,
    tcp_opened: Counter<u64>,
    tcp_closed: Counter<u64>,
    tcp_active: UpDownCounter<i64>,
    tcp_sent: Counter<u64>,
    tcp_received: Counter<u64>,
    errors: Counter<u64>,
    tcp_connect_retries: Counter<u64>,
    /// False: the traffic series are not recorded (`--no-traffic-metrics`).
    enabled: bool,
}

/// The pre-built label sets of one connection, so the hot path allocates nothing.
#[derive(Clone, Debug)]
pub struct TcpLabels {
    edge: [KeyValue; 4],
    active: [KeyValue; 2],
}

impl TcpLabels {
    /// Labels for a connection in `direction` from `source_service` to
    /// `destination_service`, `tls` when its hop between sidecars is mutual TLS.
    /// The names are shared, not copied: a connection allocates no label strings.
    pub fn new(
        direction: Direction,
        source_service: &Arc<str>,
        destination_service: &Arc<str>,
        tls: bool,
    ) -> Self {
        TcpLabels {
            edge: [
                KeyValue::new("direction", direction.as_str()),
                KeyValue::new("source_service", Arc::clone(source_service)),
                KeyValue::new("destination_service", Arc::clone(destination_service)),
                tls_label(tls),
            ],
            active: [
                KeyValue::new("direction", direction.as_str()),
                KeyValue::new("destination_service", Arc::clone(destination_service)),
            ],
        }
    }
}

/// The `tls` label: whether a connection's (or request's) hop between sidecars is
/// mutual TLS.
pub fn tls_label(tls: bool) -> KeyValue {
    KeyValue::new("tls", if tls { "true" } else { "false" })
}

/// Errors building the metrics pipeline.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("building the metrics pipeline: {0}")]
    Exporter(String),
}

/// The proxy's telemetry resource, its metrics' and its spans': `service.name`
/// `weft-proxy`, the pod, and `weft.service`, its mesh service.
pub fn resource(service: &str, namespace: Option<&str>, pod: Option<&str>) -> Resource {
    weft_runtime::metrics::resource(
        "weft-proxy",
        namespace,
        pod,
        [KeyValue::new("weft.service", service.to_string())],
    )
}

impl Metrics {
    /// Builds the SDK pipeline (Prometheus only); `service` becomes the resource's
    /// `weft.service` (`weft_service` in target_info). With `enabled` false the traffic series are never recorded.
    pub fn new(service: &str, enabled: bool) -> Result<Self, MetricsError> {
        Metrics::with_resource(service, enabled, None, None, None)
    }

    /// [`Metrics::new`] with the pod's namespace and name in the resource
    /// (`service.namespace`, `k8s.pod.name`), pushing over OTLP too with `otlp`.
    pub fn with_resource(
        service: &str,
        enabled: bool,
        namespace: Option<&str>,
        pod: Option<&str>,
        otlp: Option<&OtlpSettings>,
    ) -> Result<Self, MetricsError> {
        let resource = resource(service, namespace, pod);
        let exporter = Exporter::with_otlp(resource, otlp)
            .map_err(|e| MetricsError::Exporter(e.to_string()))?;
        let meter = exporter.meter("weft-proxy");
        let errors = meter
            .u64_counter("weft_proxy_errors")
            .with_description("Connections or requests the proxy failed itself, by reason")
            .build();
        Ok(Metrics {
            tcp_opened: meter
                .u64_counter("weft_tcp_connections_opened")
                .with_description("TCP connections accepted by the proxy")
                .build(),
            tcp_closed: meter
                .u64_counter("weft_tcp_connections_closed")
                .with_description("TCP connections the proxy finished")
                .build(),
            tcp_active: meter
                .i64_up_down_counter("weft_tcp_active_connections")
                .with_description("TCP connections currently open through the proxy")
                .build(),
            tcp_sent: meter
                .u64_counter("weft_tcp_sent_bytes")
                .with_description("Bytes the proxy wrote to the application side")
                .build(),
            tcp_received: meter
                .u64_counter("weft_tcp_received_bytes")
                .with_description("Bytes the proxy read from the application side")
                .build(),
            tcp_connect_retries: meter
                .u64_counter("weft_tcp_connect_retries")
                .with_description(
                    "Opaque TCP connects tried again on another endpoint, by why the last one failed",
                )
                .build(),
            errors,
            enabled,
            exporter,
        })
    }

    /// Exports the discovery client's state: `weft_discovery_updates_total` (updates
    /// applied, snapshots included) and `weft_discovery_connected` (1 while a Watch
    /// stream is open). Observed at scrape time from `status`, which `/routes` reads
    /// too, so the two never disagree and discovery's path records nothing twice.
    pub fn observe_discovery(&self, status: Arc<DiscoveryStatus>) {
        let meter = self.exporter.meter("weft-proxy");
        let updates = status.clone();
        // Observable instruments live as long as the provider; the handles can go.
        let _ = meter
            .u64_observable_counter("weft_discovery_updates")
            .with_description("Discovery updates (snapshots included) applied to the routing table")
            .with_callback(move |o| o.observe(updates.updates_applied(), &[]))
            .build();
        let _ = meter
            .u64_observable_gauge("weft_discovery_connected")
            .with_description("1 while the proxy has an open discovery stream to the controller")
            .with_callback(move |o| o.observe(u64::from(status.connected()), &[]))
            .build();
    }

    /// `weft_endpoint_ejections_total{destination_service, reason}`: endpoints the
    /// circuit breaker took out of rotation (`failures`: consecutive failures;
    /// `unreachable`: nothing listening). Recorded whatever `--no-traffic-metrics`
    /// says: ejections are rare and are what an operator alerts on.
    pub fn ejections_counter(&self) -> Counter<u64> {
        self.exporter
            .meter("weft-proxy")
            .u64_counter("weft_endpoint_ejections")
            .with_description("Endpoints ejected by the circuit breaker, by reason")
            .build()
    }

    /// The meter the L7 path builds its `weft_http_*` instruments on (it builds them
    /// itself, so that this module does not depend on it).
    pub fn meter(&self) -> Meter {
        self.exporter.meter("weft-proxy")
    }

    /// The `weft_proxy_errors` counter, shared with the L7 path's proxy-made
    /// responses.
    pub fn errors_counter(&self) -> &Counter<u64> {
        &self.errors
    }

    /// Whether the traffic series are recorded (`--no-traffic-metrics` turns them off).
    pub fn traffic_enabled(&self) -> bool {
        self.enabled
    }

    /// A connection was accepted and routed.
    pub fn tcp_opened(&self, labels: &TcpLabels) {
        if !self.enabled {
            return;
        }
        self.tcp_opened.add(1, &labels.edge);
        self.tcp_active.add(1, &labels.active);
    }

    /// A connection counted by [`Metrics::tcp_opened`] finished.
    pub fn tcp_closed(&self, labels: &TcpLabels) {
        if !self.enabled {
            return;
        }
        self.tcp_closed.add(1, &labels.edge);
        self.tcp_active.add(-1, &labels.active);
    }

    /// Bytes read from the application side.
    pub fn tcp_received(&self, labels: &TcpLabels, bytes: u64) {
        if !self.enabled {
            return;
        }
        self.tcp_received.add(bytes, &labels.edge);
    }

    /// Bytes written to the application side.
    pub fn tcp_sent(&self, labels: &TcpLabels, bytes: u64) {
        if !self.enabled {
            return;
        }
        self.tcp_sent.add(bytes, &labels.edge);
    }

    /// The proxy failed a connection itself.
    pub fn error(&self, direction: Direction, destination_service: &str, reason: ErrorReason) {
        if !self.enabled {
            return;
        }
        self.errors.add(
            1,
            &[
                KeyValue::new("direction", direction.as_str()),
                KeyValue::new("destination_service", destination_service.to_string()),
                KeyValue::new("reason", reason.as_str()),
            ],
        );
    }

    /// An opaque connection's connect is tried on another endpoint after one failed
    /// for `reason` (`connect_refused`, `connect_timeout`, `connect_error`,
    /// `app_unreachable`: a peer sidecar's tunnel answered that its application did
    /// not accept, `tunnel_reset`: the tunnel broke before answering).
    pub fn tcp_connect_retry(
        &self,
        direction: Direction,
        destination_service: &Arc<str>,
        reason: &'static str,
    ) {
        if !self.enabled {
            return;
        }
        self.tcp_connect_retries.add(
            1,
            &[
                KeyValue::new("direction", direction.as_str()),
                KeyValue::new("destination_service", Arc::clone(destination_service)),
                KeyValue::new("reason", reason),
            ],
        );
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.exporter.render()
    }
}
