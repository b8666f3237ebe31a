//! The OpenTelemetry-to-Prometheus pipeline every weft binary exports through:
//! instruments recorded or observed with the OpenTelemetry SDK, read at scrape time
//! into a `prometheus` registry by `opentelemetry-prometheus`, rendered in the text
//! exposition format on `/metrics`.
//!
//! The exporter settings are the same for every binary, so the series look alike:
//! no unit suffixes added to names (`_total` is still added to counters), no
//! `otel_scope_*` labels, the OpenTelemetry resource as `target_info`. Every
//! pipeline carries the standard `process_*` series ([`crate::process_metrics`]).
//!
//! With OTLP settings ([`crate::otlp`]) the same meter provider gets a second
//! reader, a periodic OTLP push: both read the same instruments, so the pushed
//! counts are the scraped ones. Without them the pipeline is the Prometheus reader
//! alone, as before.

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::Resource;
use prometheus::{Encoder as _, TextEncoder};

use crate::otlp::{OtlpSettings, OtlpWorker};

/// Errors building the pipeline.
#[derive(Debug, thiserror::Error)]
#[error("building the metrics exporter: {0}")]
pub struct ExporterError(String);

/// `service.namespace` when no Kubernetes namespace is given (the local mesh):
/// the name Kubernetes gives a namespace nobody chose.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The resource every weft binary describes itself with: `service.name` (the
/// binary), `service.namespace` (`namespace`, else [`DEFAULT_NAMESPACE`]),
/// `k8s.pod.name` and `service.instance.id` (the pod, when known; with a
/// namespace also `k8s.namespace.name`), and `extra`; the standard
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` override them. Prometheus
/// shows it as `target_info` (dots become underscores), OTLP sends it with every
/// export.
pub fn resource(
    service_name: &str,
    namespace: Option<&str>,
    pod: Option<&str>,
    extra: impl IntoIterator<Item = KeyValue>,
) -> Resource {
    use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
    let mut attributes = vec![KeyValue::new("service.name", service_name.to_string())];
    let namespace = namespace.filter(|s| !s.is_empty());
    attributes.push(KeyValue::new(
        "service.namespace",
        namespace.unwrap_or(DEFAULT_NAMESPACE).to_string(),
    ));
    if let Some(ns) = namespace {
        attributes.push(KeyValue::new("k8s.namespace.name", ns.to_string()));
    }
    if let Some(pod) = pod.filter(|s| !s.is_empty()) {
        attributes.push(KeyValue::new("k8s.pod.name", pod.to_string()));
        attributes.push(KeyValue::new("service.instance.id", pod.to_string()));
    }
    attributes.extend(extra);
    let builder = Resource::builder_empty()
        .with_attributes(attributes)
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_detector(Box::new(EnvResourceDetector::new()));
    match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.is_empty() => builder.with_service_name(name),
        _ => builder,
    }
    .build()
}

/// A meter provider exporting to a Prometheus registry (and, with OTLP settings,
/// pushing over OTLP too). Keep it alive as long as the metrics are served:
/// dropping the provider stops collection, and observable instruments' callbacks
/// live in it.
#[derive(Debug)]
pub struct Exporter {
    registry: prometheus::Registry,
    // Dropped before the OTLP thread (fields drop in order): shutting the provider
    // down makes a last push, which needs that thread.
    provider: SdkMeterProvider,
    otlp: Option<OtlpWorker>,
}

impl Exporter {
    /// Builds the pipeline for `resource` (its service name becomes `target_info`'s
    /// `service_name`) and registers the process instruments on it.
    pub fn new(resource: Resource) -> Result<Self, ExporterError> {
        Exporter::with_otlp(resource, None)
    }

    /// [`Exporter::new`], also pushing over OTLP with `otlp` when given (a reader
    /// on the same provider, its own thread: see [`crate::otlp`]). With `None`
    /// nothing more is built or started than by [`Exporter::new`].
    pub fn with_otlp(
        resource: Resource,
        otlp: Option<&OtlpSettings>,
    ) -> Result<Self, ExporterError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| ExporterError(e.to_string()))?;
        let mut builder = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_resource(resource);
        let mut worker = None;
        if let Some(settings) = otlp {
            let (w, reader) =
                OtlpWorker::start_metrics(settings).map_err(|e| ExporterError(e.to_string()))?;
            builder = builder.with_reader(reader);
            worker = Some(w);
        }
        let provider = builder.build();
        crate::process_metrics::register(&provider.meter("weft-runtime"));
        Ok(Exporter {
            registry,
            provider,
            otlp: worker,
        })
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

impl Drop for Exporter {
    fn drop(&mut self) {
        // With an OTLP push, the provider's shutdown makes a last push: bounded, so
        // a dead collector does not hold the process's exit. (Without one it is
        // the Prometheus reader's, which waits on nothing.)
        if self.otlp.is_some() {
            let provider = self.provider.clone();
            crate::otlp::shutdown_within_wait("metrics", move || provider.shutdown());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A collector that takes connections (the kernel's backlog) and never
    /// answers: the last push would wait the export's own 10 s timeout for it.
    #[test]
    fn a_collector_that_never_answers_does_not_hold_the_exit() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = crate::otlp::OtlpSettings {
            endpoint: format!("http://{}/v1/metrics", silent.local_addr().unwrap()),
            protocol: crate::otlp::Protocol::HttpProtobuf,
            interval: std::time::Duration::from_secs(60),
            timeout: std::time::Duration::from_secs(10),
        };
        let exporter =
            Exporter::with_otlp(Resource::builder_empty().build(), Some(&settings)).unwrap();
        exporter
            .meter("test")
            .u64_counter("weft_things")
            .build()
            .add(1, &[]);
        let stopping = std::time::Instant::now();
        drop(exporter);
        let took = stopping.elapsed();
        assert!(
            took < crate::otlp::LAST_EXPORT_WAIT + std::time::Duration::from_secs(3),
            "stopping took {took:?} with a silent collector"
        );
    }

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

    #[test]
    fn the_resource_names_the_pod_and_defaults_the_namespace() {
        let extra = [KeyValue::new("weft.service", "web")];
        let exporter = Exporter::new(resource("weft-proxy", None, Some("web-0"), extra)).unwrap();
        let text = String::from_utf8(exporter.render()).unwrap();
        let info = text
            .lines()
            .find(|l| l.starts_with("target_info{"))
            .unwrap_or_else(|| panic!("no target_info in {text}"));
        for want in [
            "service_name=\"weft-proxy\"",
            "service_namespace=\"default\"",
            "k8s_pod_name=\"web-0\"",
            "service_instance_id=\"web-0\"",
            // Dots become underscores: the label weft's dashboards could read.
            "weft_service=\"web\"",
        ] {
            assert!(info.contains(want), "{want} missing from {info}");
        }
        assert!(!info.contains("k8s_namespace_name"), "{info}");

        let exporter =
            Exporter::new(resource("weft-controller", Some("weft-system"), None, [])).unwrap();
        let text = String::from_utf8(exporter.render()).unwrap();
        assert!(text.contains("service_namespace=\"weft-system\""), "{text}");
        assert!(
            text.contains("k8s_namespace_name=\"weft-system\""),
            "{text}"
        );
        assert!(!text.contains("k8s_pod_name"), "{text}");
    }
}
