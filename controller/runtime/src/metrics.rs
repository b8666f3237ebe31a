//! The OpenTelemetry-to-Prometheus pipeline every weft binary exports through:
//! instruments recorded or observed with the OpenTelemetry SDK, read at scrape time
//! into a `prometheus` registry by `opentelemetry-prometheus`, rendered in the text
//! exposition format on `/metrics`.
//!
//! The exporter settings are the same for every binary, so the series look alike:
//! no unit suffixes added to names (`_total` is still added to counters), no
//! `otel_scope_*` labels, the OpenTelemetry resource as `target_info`. Every
//! pipeline carries the standard `process_*` series ([`crate::process_metrics`]).

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::Resource;
use prometheus::{Encoder as _, TextEncoder};

/// Errors building the pipeline.
#[derive(Debug, thiserror::Error)]
#[error("building the Prometheus exporter: {0}")]
pub struct ExporterError(String);

/// A meter provider exporting to a Prometheus registry. Keep it alive as long as
/// the metrics are served: dropping the provider stops collection, and observable
/// instruments' callbacks live in it.
#[derive(Debug)]
pub struct Exporter {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
}

impl Exporter {
    /// Builds the pipeline for `resource` (its service name becomes `target_info`'s
    /// `service_name`) and registers the process instruments on it.
    pub fn new(resource: Resource) -> Result<Self, ExporterError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| ExporterError(e.to_string()))?;
        let provider = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_resource(resource)
            .build();
        crate::process_metrics::register(&provider.meter("weft-runtime"));
        Ok(Exporter { registry, provider })
    }

    /// A meter of this pipeline (the name is not exported: scope labels are off).
    pub fn meter(&self, name: &'static str) -> Meter {
        self.provider.meter(name)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_counters_and_target_info() {
        let exporter =
            Exporter::new(Resource::builder().with_service_name("weft-test").build()).unwrap();
        let counter = exporter.meter("test").u64_counter("weft_things").build();
        counter.add(3, &[opentelemetry::KeyValue::new("kind", "a")]);
        let text = String::from_utf8(exporter.render()).unwrap();
        assert!(text.contains("weft_things_total{kind=\"a\"} 3\n"), "{text}");
        assert!(text.contains("service_name=\"weft-test\""), "{text}");
        assert!(!text.contains("otel_scope"), "{text}");
    }
}
