//! OTLP trace export (ARCHITECTURE.md, Traces): a tracer provider whose finished
//! spans are batched and pushed to a collector over gRPC or HTTP/protobuf
//! (`opentelemetry-otlp`), from a thread of its own (`weft-traces`, a
//! current-thread tokio runtime, as the metrics push in [`crate::otlp`]).
//!
//! Ending a span on the data path costs a `try_send` into the SDK's bounded
//! queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2,048 by default; a full queue drops the
//! span, never waits); batching, encoding and sending happen on the export thread
//! every `OTEL_BSP_SCHEDULE_DELAY` (5 s by default) or when a batch is full. The
//! sampler is always parent-based: a sidecar keeps the caller's decision, so a
//! trace is whole or absent, and the ratio only decides for requests that arrive
//! without one.

use std::fmt;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::otlp::{shutdown_within_wait, Destination, OtlpError, OtlpWorker, Protocol};

/// The share of requests without a sampling decision that are sampled when
/// nothing says otherwise: Istio's default (1%), since a sidecar sees every
/// request of its pod.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// The sample ratio: `flag` (`--trace-sample-ratio`), else the standard
/// `OTEL_TRACES_SAMPLER` (with `OTEL_TRACES_SAMPLER_ARG`) read through `env`,
/// else [`DEFAULT_SAMPLE_RATIO`]. weft's sampler is always parent-based, so
/// `traceidratio` and `always_on` / `always_off` are taken as their
/// `parentbased_` forms.
pub fn sample_ratio(
    flag: Option<f64>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<f64, OtlpError> {
    let in_range = |r: f64, from: &str| {
        if (0.0..=1.0).contains(&r) {
            Ok(r)
        } else {
            Err(OtlpError(format!("{from}: {r} is not a ratio from 0 to 1")))
        }
    };
    if let Some(r) = flag {
        return in_range(r, "--trace-sample-ratio");
    }
    let Some(sampler) = env("OTEL_TRACES_SAMPLER").filter(|s| !s.trim().is_empty()) else {
        return Ok(DEFAULT_SAMPLE_RATIO);
    };
    match sampler.trim() {
        "always_on" | "parentbased_always_on" => Ok(1.0),
        "always_off" | "parentbased_always_off" => Ok(0.0),
        "traceidratio" | "parentbased_traceidratio" => match env("OTEL_TRACES_SAMPLER_ARG") {
            // The specification's default argument.
            None => Ok(1.0),
            Some(arg) => match arg.trim().parse::<f64>() {
                Ok(r) => in_range(r, "OTEL_TRACES_SAMPLER_ARG"),
                Err(_) => Err(OtlpError(format!(
                    "OTEL_TRACES_SAMPLER_ARG: {arg:?} is not a number"
                ))),
            },
        },
        other => Err(OtlpError(format!(
            "OTEL_TRACES_SAMPLER: {other:?} is not one weft knows (always_on, always_off, \
             traceidratio, or their parentbased_ forms)"
        ))),
    }
}

/// A running trace export; spans of its tracers are pushed until it is dropped
/// (which sends what is queued, waiting at most
/// [`LAST_EXPORT_WAIT`](crate::otlp::LAST_EXPORT_WAIT)).
pub struct TraceExport {
    // Dropped before the worker (fields drop in order): shutting the provider down
    // makes a last export, which needs the worker's thread.
    provider: SdkTracerProvider,
    _worker: OtlpWorker,
}

impl fmt::Debug for TraceExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceExport").finish_non_exhaustive()
    }
}

impl TraceExport {
    /// Starts exporting to `destination` spans described by `resource`; requests
    /// without a sampling decision are sampled at `sample_ratio` (0 to 1).
    pub fn start(
        destination: &Destination,
        resource: Resource,
        sample_ratio: f64,
    ) -> Result<TraceExport, OtlpError> {
        let (worker, processor) = OtlpWorker::start("weft-traces", |runtime| {
            let exporter = build_exporter(destination)?;
            Ok(BatchSpanProcessor::builder(exporter, runtime).build())
        })?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        tracing::info!(
            endpoint = %destination.endpoint,
            protocol = %destination.protocol,
            sample_ratio,
            "pushing request spans over OTLP"
        );
        Ok(TraceExport {
            provider,
            _worker: worker,
        })
    }

    /// A tracer of this export (`scope` names the instrumentation scope).
    pub fn tracer(&self, scope: &'static str) -> SdkTracer {
        self.provider.tracer(scope)
    }
}

impl Drop for TraceExport {
    fn drop(&mut self) {
        let provider = self.provider.clone();
        shutdown_within_wait("spans", move || provider.shutdown());
    }
}

fn build_exporter(destination: &Destination) -> Result<SpanExporter, OtlpError> {
    let built = match destination.protocol {
        Protocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .with_endpoint(destination.endpoint.clone())
            .build(),
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(destination.endpoint.clone())
            .build(),
    };
    built.map_err(|e| {
        OtlpError(format!(
            "building the OTLP {} span exporter for {}: {e}",
            destination.protocol, destination.endpoint
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _};
    use std::time::{Duration, Instant};

    fn ratio(flag: Option<f64>, env: &[(&str, &str)]) -> Result<f64, OtlpError> {
        sample_ratio(flag, |k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_flag_wins_then_the_standard_sampler_then_one_percent() {
        let env = [
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        assert_eq!(ratio(Some(0.5), &env).unwrap(), 0.5);
        assert_eq!(ratio(None, &env).unwrap(), 0.25);
        assert_eq!(
            ratio(None, &[("OTEL_TRACES_SAMPLER", "always_on")]).unwrap(),
            1.0
        );
        assert_eq!(
            ratio(None, &[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]).unwrap(),
            0.0
        );
        assert_eq!(
            ratio(None, &[("OTEL_TRACES_SAMPLER", "traceidratio")]).unwrap(),
            1.0
        );
        assert_eq!(ratio(None, &[]).unwrap(), DEFAULT_SAMPLE_RATIO);
    }

    #[test]
    fn bad_ratios_and_samplers_are_named() {
        let e = ratio(Some(1.5), &[]).unwrap_err().to_string();
        assert!(e.contains("--trace-sample-ratio"), "{e}");
        let e = ratio(None, &[("OTEL_TRACES_SAMPLER", "jaeger_remote")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("jaeger_remote"), "{e}");
        let e = ratio(
            None,
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    }

    /// A collector that takes connections (the kernel's backlog) and never
    /// answers: the exporter would wait its own 10 s timeout for it.
    #[test]
    fn a_collector_that_never_answers_does_not_hold_the_exit() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let destination = Destination {
            endpoint: format!("http://{}/v1/traces", silent.local_addr().unwrap()),
            protocol: Protocol::HttpProtobuf,
        };
        let export =
            TraceExport::start(&destination, Resource::builder_empty().build(), 1.0).unwrap();
        let tracer = export.tracer("test");
        tracer.start("request").end();
        let stopping = Instant::now();
        drop(export);
        let took = stopping.elapsed();
        assert!(
            took < crate::otlp::LAST_EXPORT_WAIT + Duration::from_secs(3),
            "stopping took {took:?} with a silent collector"
        );
    }
}
