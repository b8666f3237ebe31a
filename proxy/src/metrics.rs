//! The proxy's metrics: recorded through the OpenTelemetry SDK, exposed in the
//! Prometheus text format by `opentelemetry-prometheus` (DESIGN.md §6 names them).
//!
//! Labels are bounded by construction: direction, service names and error reasons —
//! never addresses, ports or ids (those belong in `/connections`).

use opentelemetry::metrics::{Counter, MeterProvider as _, UpDownCounter};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::Resource;
use prometheus::{Encoder, TextEncoder};

use crate::addr::Direction;

/// Why the proxy failed a connection itself (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReason {
    /// The original destination could not be recovered.
    NoOrigDst,
    /// The connection reached the proxy without having been redirected to it, or the
    /// proxy's own upstream connection came back to it.
    Loop,
    /// The upstream refused the connection.
    ConnectRefused,
    /// The upstream did not answer within the connect timeout.
    ConnectTimeout,
    /// Any other connect error (unreachable, ...).
    ConnectError,
    /// The proxy is at its connection limit.
    Overload,
    /// The destination is a service with no endpoints.
    NoEndpoints,
}

impl ErrorReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::NoOrigDst => "no_original_destination",
            ErrorReason::Loop => "loop",
            ErrorReason::ConnectRefused => "connect_refused",
            ErrorReason::ConnectTimeout => "connect_timeout",
            ErrorReason::ConnectError => "connect_error",
            ErrorReason::Overload => "overload",
            ErrorReason::NoEndpoints => "no_endpoints",
        }
    }
}

/// All instruments of one proxy, plus the registry they are exported from.
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus::Registry,
    // Kept alive: dropping the provider would stop collection.
    _provider: SdkMeterProvider,
    tcp_opened: Counter<u64>,
    tcp_closed: Counter<u64>,
    tcp_active: UpDownCounter<i64>,
    tcp_sent: Counter<u64>,
    tcp_received: Counter<u64>,
    errors: Counter<u64>,
}

/// The pre-built label sets of one connection, so the hot path allocates nothing.
#[derive(Clone, Debug)]
pub struct TcpLabels {
    edge: [KeyValue; 3],
    active: [KeyValue; 2],
}

impl TcpLabels {
    /// Labels for a connection in `direction` from `source_service` to
    /// `destination_service`.
    pub fn new(direction: Direction, source_service: &str, destination_service: &str) -> Self {
        TcpLabels {
            edge: [
                KeyValue::new("direction", direction.as_str()),
                KeyValue::new("source_service", source_service.to_string()),
                KeyValue::new("destination_service", destination_service.to_string()),
            ],
            active: [
                KeyValue::new("direction", direction.as_str()),
                KeyValue::new("destination_service", destination_service.to_string()),
            ],
        }
    }
}

/// Errors building the metrics pipeline.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("building the Prometheus exporter: {0}")]
    Exporter(String),
}

impl Metrics {
    /// Builds the SDK pipeline; `service` becomes the `target_info` service name.
    pub fn new(service: &str) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError::Exporter(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name("weft-proxy")
            .with_attribute(KeyValue::new("weft_service", service.to_string()))
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_resource(resource)
            .build();
        let meter = provider.meter("weft-proxy");
        Ok(Metrics {
            registry,
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
            errors: meter
                .u64_counter("weft_proxy_errors")
                .with_description("Connections or requests the proxy failed itself, by reason")
                .build(),
            _provider: provider,
        })
    }

    /// A connection was accepted and routed.
    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_opened.add(1, &labels.edge);
        self.tcp_active.add(1, &labels.active);
    }

    /// A connection counted by [`Metrics::tcp_opened`] finished.
    pub fn tcp_closed(&self, labels: &TcpLabels) {
        self.tcp_closed.add(1, &labels.edge);
        self.tcp_active.add(-1, &labels.active);
    }

    /// Bytes read from the application side.
    pub fn tcp_received(&self, labels: &TcpLabels, bytes: u64) {
        self.tcp_received.add(bytes, &labels.edge);
    }

    /// Bytes written to the application side.
    pub fn tcp_sent(&self, labels: &TcpLabels, bytes: u64) {
        self.tcp_sent.add(bytes, &labels.edge);
    }

    /// The proxy failed a connection itself.
    pub fn error(&self, direction: Direction, destination_service: &str, reason: ErrorReason) {
        self.errors.add(
            1,
            &[
                KeyValue::new("direction", direction.as_str()),
                KeyValue::new("destination_service", destination_service.to_string()),
                KeyValue::new("reason", reason.as_str()),
            ],
        );
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}
