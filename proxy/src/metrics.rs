//! The proxy's metrics: recorded through the OpenTelemetry SDK, exposed in the
//! Prometheus text format by `opentelemetry-prometheus` (ARCHITECTURE.md, Metrics names them).
//!
//! Labels are bounded by construction: direction, service names and error reasons —
//! never addresses, ports or ids (those belong in `/connections`).
//!
//! Besides the traffic series named there, a proxy with a controller exports the discovery
//! client's state: `weft_discovery_updates_total` and `weft_discovery_connected`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry::metrics::{BoundCounter, BoundUpDownCounter, Counter, Meter, UpDownCounter};
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
    /// Each edge's `weft_tcp_*` series, bound once (see [`TcpSeries`]).
    tcp_edges: Mutex<HashMap<TcpEdge, Arc<TcpSeries>>>,
    /// What every connection gets when the traffic series are off.
    tcp_unrecorded: Arc<TcpSeries>,
}

/// Edges whose bound TCP series are kept; past it the map starts again (services
/// come and go with discovery; a connection keeps the handles it was given).
const MAX_TCP_EDGES: usize = 4096;

/// What the `weft_tcp_*` series of a connection are by: direction, source and
/// destination service, and whether its hop between sidecars is mutual TLS.
type TcpEdge = (Direction, Arc<str>, Arc<str>, bool);

/// One edge's `weft_tcp_*` series, bound to their label sets once for all the
/// edge's connections (OpenTelemetry's bound instruments). An unbound measurement
/// hashes and compares its whole label set in the SDK's map each time; a connection
/// makes several (opened, active, closed, and one per read and per write for the
/// byte counters), which a perf profile of the new-connection load put at about 9%
/// of the client-side proxy's user time.
#[derive(Debug)]
pub struct TcpSeries(Option<BoundTcp>);

#[derive(Debug)]
struct BoundTcp {
    opened: BoundCounter<u64>,
    closed: BoundCounter<u64>,
    active: BoundUpDownCounter<i64>,
    sent: BoundCounter<u64>,
    received: BoundCounter<u64>,
}

impl TcpSeries {
    /// A connection was accepted and routed.
    pub fn opened(&self) {
        if let Some(b) = &self.0 {
            b.opened.add(1);
            b.active.add(1);
        }
    }

    /// A connection counted by [`TcpSeries::opened`] finished.
    pub fn closed(&self) {
        if let Some(b) = &self.0 {
            b.closed.add(1);
            b.active.add(-1);
        }
    }

    /// Bytes read from the application side.
    pub fn received(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.received.add(bytes);
        }
    }

    /// Bytes written to the application side.
    pub fn sent(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.sent.add(bytes);
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
            tcp_edges: Mutex::new(HashMap::new()),
            tcp_unrecorded: Arc::new(TcpSeries(None)),
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

    /// The `weft_tcp_*` series of a connection in `direction` from `source_service`
    /// to `destination_service`, `tls` when its hop between sidecars is mutual TLS:
    /// bound the first time the edge is seen, shared after that.
    pub fn tcp_series(
        &self,
        direction: Direction,
        source_service: &Arc<str>,
        destination_service: &Arc<str>,
        tls: bool,
    ) -> Arc<TcpSeries> {
        if !self.enabled {
            return self.tcp_unrecorded.clone();
        }
        let key = (
            direction,
            source_service.clone(),
            destination_service.clone(),
            tls,
        );
        let mut edges = self.tcp_edges.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = edges.get(&key) {
            return series.clone();
        }
        if edges.len() >= MAX_TCP_EDGES {
            edges.clear();
        }
        let direction = KeyValue::new("direction", direction.as_str());
        let destination = KeyValue::new("destination_service", destination_service.clone());
        let edge = [
            direction.clone(),
            KeyValue::new("source_service", source_service.clone()),
            destination.clone(),
            tls_label(tls),
        ];
        let series = Arc::new(TcpSeries(Some(BoundTcp {
            opened: self.tcp_opened.bind(&edge),
            closed: self.tcp_closed.bind(&edge),
            active: self.tcp_active.bind(&[direction, destination]),
            sent: self.tcp_sent.bind(&edge),
            received: self.tcp_received.bind(&edge),
        })));
        edges.insert(key, series.clone());
        series
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

#[cfg(test)]
mod tests {
    use super::*;
    use weft_runtime::prom_text::value;

    /// Connections of one edge share its bound series; another tls value is another
    /// edge; a series bound again after the map started over counts into the same
    /// exported series.
    #[test]
    fn tcp_series_are_shared_per_edge_and_count_each_connection_once() {
        let metrics = Metrics::new("client", true).expect("metrics");
        let (client, backend): (Arc<str>, Arc<str>) = ("client".into(), "backend".into());
        let series = |tls| metrics.tcp_series(Direction::Outbound, &client, &backend, tls);
        let first = series(false);
        assert!(Arc::ptr_eq(&first, &series(false)));
        assert!(!Arc::ptr_eq(&first, &series(true)));
        for _ in 0..3 {
            let s = series(false);
            s.opened();
            s.received(10);
            s.sent(100);
            s.closed();
        }
        series(true).opened();
        // Fill the map past its bound: it starts again, and the edge is bound anew.
        for i in 0..MAX_TCP_EDGES {
            metrics.tcp_series(Direction::Inbound, &client, &format!("s{i}").into(), false);
        }
        let rebound = series(false);
        assert!(!Arc::ptr_eq(&first, &rebound));
        rebound.opened();

        let text = String::from_utf8(metrics.render()).expect("utf-8");
        let edge = |tls| {
            [
                ("direction", "outbound"),
                ("source_service", "client"),
                ("destination_service", "backend"),
                ("tls", tls),
            ]
        };
        let at = |name, tls| value(&text, name, &edge(tls));
        assert_eq!(at("weft_tcp_connections_opened_total", "false"), Some(4.0));
        assert_eq!(at("weft_tcp_connections_closed_total", "false"), Some(3.0));
        assert_eq!(at("weft_tcp_received_bytes_total", "false"), Some(30.0));
        assert_eq!(at("weft_tcp_sent_bytes_total", "false"), Some(300.0));
        assert_eq!(at("weft_tcp_connections_opened_total", "true"), Some(1.0));
        let active = [
            ("direction", "outbound"),
            ("destination_service", "backend"),
        ];
        assert_eq!(
            value(&text, "weft_tcp_active_connections", &active),
            Some(2.0)
        );
    }

    #[test]
    fn tcp_series_record_nothing_when_traffic_metrics_are_off() {
        let metrics = Metrics::new("client", false).expect("metrics");
        let s = metrics.tcp_series(Direction::Outbound, &"a".into(), &"b".into(), false);
        s.opened();
        s.sent(5);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert_eq!(value(&text, "weft_tcp_connections_opened_total", &[]), None);
        assert_eq!(value(&text, "weft_tcp_sent_bytes_total", &[]), None);
    }
}
