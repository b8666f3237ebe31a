//! OTLP metrics export, beside the Prometheus endpoint (ARCHITECTURE.md, Metrics),
//! and what the trace export ([`crate::traces`]) shares with it: the flags, where
//! each signal goes ([`OtlpArgs::resolve_traces`]), the export thread.
//!
//! With an endpoint (`--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_*`
//! variables), [`crate::metrics::Exporter`] adds a second reader to its meter
//! provider: every `interval` it collects the same instruments the Prometheus
//! exporter reads and pushes them to an OpenTelemetry collector over gRPC or
//! HTTP/protobuf (`opentelemetry-otlp`). Without one nothing of this runs: no
//! exporter, no thread, no task.
//!
//! Where it runs: on a thread of its own (`weft-otlp`) with a current-thread tokio
//! runtime. The proxy's data path is one current-thread runtime; the SDK's default
//! `PeriodicReader` would start a thread of its own anyway and block on each export
//! there, while the tonic channel and the hyper client need a tokio runtime for
//! their I/O, which would then be the proxy's. Here one thread holds all of it:
//! the SDK's async-runtime reader is spawned on this runtime, the exporter is built
//! inside it (tonic's channel worker and hyper's connections land there), so
//! collecting, encoding and sending never take the data path's thread, and a slow
//! or unreachable collector delays nothing but the next export.
//!
//! Configuration, most specific first (the standard variables are the OpenTelemetry
//! SDK's):
//!
//! - endpoint: `--otlp-endpoint` (a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`:
//!   HTTP/protobuf sends to `<URL>/v1/metrics`), else
//!   `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (the URL as it is), else
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`; none: no export. Without the flag,
//!   `OTEL_SDK_DISABLED=true` or `OTEL_METRICS_EXPORTER=none` turn it off.
//! - protocol: `--otlp-protocol`, else `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, else
//!   `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf` (the specification's
//!   default); `grpc` or `http/protobuf`.
//! - interval: `--otlp-interval`, else `OTEL_METRIC_EXPORT_INTERVAL` (ms), else 60 s;
//!   an export's deadline `OTEL_METRIC_EXPORT_TIMEOUT` (ms), else 10 s.
//! - headers, the exporter's timeout, temporality: the crate reads
//!   `OTEL_EXPORTER_OTLP_[METRICS_]HEADERS`, `..._TIMEOUT` and
//!   `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (cumulative by default).
//! - plaintext only (`http://`): no TLS stack is linked for it.
//! - traces: the same, with `TRACES` for `METRICS` in the variables' names
//!   (`OTEL_TRACES_EXPORTER=none` turns them off) and `/v1/traces` as the path.

use std::fmt;
use std::time::Duration;

use opentelemetry_otlp::{MetricExporter, WithExportConfig as _};
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The name the flag and `OTEL_EXPORTER_OTLP_PROTOCOL` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// `s` as a protocol name; an error names `from`, where it was read.
    pub fn parse(s: &str, from: &str) -> Result<Protocol, OtlpError> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(OtlpError(format!(
                "{from}: unsupported OTLP protocol {other:?} (grpc or http/protobuf)"
            ))),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bad OTLP setting (named), or an exporter that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OtlpError(pub(crate) String);

/// The OTLP flags, the same for weft-proxy and weft-controller.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OtlpArgs {
    /// Also push metrics over OTLP to this collector (e.g. http://collector:4317
    /// with --otlp-protocol grpc, http://collector:4318 with http/protobuf, which
    /// sends to <URL>/v1/metrics). Without it (and without the standard
    /// OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_METRICS_ENDPOINT) nothing is
    /// pushed and nothing runs for it. /metrics serves the same instruments either
    /// way. Plain http:// only.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// grpc or http/protobuf [default: OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, then
    /// OTEL_EXPORTER_OTLP_PROTOCOL, then http/protobuf].
    #[arg(long, env = "WEFT_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// How often metrics are pushed (e.g. 10s) [default: OTEL_METRIC_EXPORT_INTERVAL
    /// in milliseconds, then 60s].
    #[arg(long, env = "WEFT_OTLP_INTERVAL", value_parser = humantime::parse_duration)]
    pub otlp_interval: Option<Duration>,
}

/// What to push where, resolved from the flags and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The URL requests go to: for HTTP/protobuf the full path (`.../v1/metrics`).
    pub endpoint: String,
    pub protocol: Protocol,
    pub interval: Duration,
    /// An export's deadline (collect, encode, send).
    pub timeout: Duration,
}

/// The specification's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const METRICS_PATH: &str = "/v1/metrics";
const TRACES_PATH: &str = "/v1/traces";

/// Where one signal's exports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The URL requests go to: for HTTP/protobuf the full path (`.../v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
}

/// The OTLP signals weft sends; each has its own standard variables
/// (`OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`, `..._PROTOCOL`, `OTEL_<SIGNAL>_EXPORTER`)
/// and its own HTTP path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Traces,
}

impl Signal {
    fn upper(self) -> &'static str {
        match self {
            Signal::Metrics => "METRICS",
            Signal::Traces => "TRACES",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Signal::Metrics => METRICS_PATH,
            Signal::Traces => TRACES_PATH,
        }
    }
}

impl OtlpArgs {
    /// The metrics settings from these flags and the process environment; `None`:
    /// no export.
    pub fn resolve(&self) -> Result<Option<OtlpSettings>, OtlpError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// Where traces go, from these flags and the process environment; `None`: no
    /// export (weft-proxy then makes no spans at all).
    pub fn resolve_traces(&self) -> Result<Option<Destination>, OtlpError> {
        self.resolve_traces_with(|name| std::env::var(name).ok())
    }

    /// [`OtlpArgs::resolve_traces`] with the environment read through `env` (tests).
    pub fn resolve_traces_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Destination>, OtlpError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut errors = Vec::new();
        let destination = self.destination(Signal::Traces, &env, &mut errors);
        if !errors.is_empty() {
            return Err(OtlpError(errors.join("; ")));
        }
        Ok(destination)
    }

    /// [`OtlpArgs::resolve`] with the environment read through `env` (tests).
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpSettings>, OtlpError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut errors = Vec::new();
        let destination = self.destination(Signal::Metrics, &env, &mut errors);
        let interval = match (self.otlp_interval, env("OTEL_METRIC_EXPORT_INTERVAL")) {
            (Some(d), _) => Some(d)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| "--otlp-interval: must be more than 0".to_string()),
            (None, Some(ms)) => millis(&ms, "OTEL_METRIC_EXPORT_INTERVAL"),
            (None, None) => Ok(DEFAULT_INTERVAL),
        }
        .unwrap_or_else(|e| {
            errors.push(e);
            DEFAULT_INTERVAL
        });
        let timeout = env("OTEL_METRIC_EXPORT_TIMEOUT")
            .map(|ms| millis(&ms, "OTEL_METRIC_EXPORT_TIMEOUT"))
            .unwrap_or(Ok(DEFAULT_TIMEOUT))
            .unwrap_or_else(|e| {
                errors.push(e);
                DEFAULT_TIMEOUT
            });
        if !errors.is_empty() {
            return Err(OtlpError(errors.join("; ")));
        }
        Ok(destination.map(|d| OtlpSettings {
            endpoint: d.endpoint,
            protocol: d.protocol,
            interval,
            timeout,
        }))
    }

    /// The endpoint and protocol of `signal`, most specific first; what is wrong
    /// goes to `errors`, named.
    fn destination(
        &self,
        signal: Signal,
        env: &impl Fn(&str) -> Option<String>,
        errors: &mut Vec<String>,
    ) -> Option<Destination> {
        let upper = signal.upper();
        let signal_protocol = format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL");
        let protocol = match (
            &self.otlp_protocol,
            env(&signal_protocol),
            env("OTEL_EXPORTER_OTLP_PROTOCOL"),
        ) {
            (Some(p), _, _) => Protocol::parse(p, "--otlp-protocol"),
            (None, Some(p), _) => Protocol::parse(&p, &signal_protocol),
            (None, None, Some(p)) => Protocol::parse(&p, "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (None, None, None) => Ok(Protocol::HttpProtobuf),
        }
        .unwrap_or_else(|e| {
            errors.push(e.0);
            Protocol::HttpProtobuf
        });
        // (URL, where it came from, whether it is a base the signal path is added to)
        let signal_endpoint = format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT");
        let endpoint = match &self.otlp_endpoint {
            Some(url) => Some((url.clone(), "--otlp-endpoint".to_string(), true)),
            None => {
                let exporter = format!("OTEL_{upper}_EXPORTER");
                let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true")
                    || env(&exporter).is_some_and(|v| v.trim() == "none");
                if disabled {
                    None
                } else if let Some(url) = env(&signal_endpoint) {
                    Some((url, signal_endpoint, false))
                } else {
                    env("OTEL_EXPORTER_OTLP_ENDPOINT")
                        .map(|url| (url, "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), true))
                }
            }
        };
        let (url, from, base) = endpoint?;
        check_url(&url, &from).map_err(|e| errors.push(e)).ok()?;
        let endpoint = match protocol {
            Protocol::HttpProtobuf if base => {
                format!("{}{}", url.trim_end_matches('/'), signal.path())
            }
            _ => url,
        };
        Some(Destination { endpoint, protocol })
    }
}

fn millis(v: &str, from: &str) -> Result<Duration, String> {
    match v.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "{from}: {v:?} is not a number of milliseconds above 0"
        )),
    }
}

/// An `http://host[:port][/path]` URL (the only kind OTLP is sent to); an error
/// names `from`, where it was read.
pub fn check_url(url: &str, from: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{from}: {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(()),
        Some("https") => Err(format!(
            "{from}: {url:?}: https is not supported (no TLS stack is linked for OTLP); \
             send to a collector over plain http, e.g. a node-local agent"
        )),
        _ => Err(format!("{from}: {url:?} is not an http://host[:port] URL")),
    }
}

/// An OTLP thread: a current-thread runtime an exporter and what drives it (the
/// metrics reader, the span processor) run on, until dropped.
pub(crate) struct OtlpWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for OtlpWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpWorker").finish_non_exhaustive()
    }
}

/// The SDK's async-runtime reader and span processor, spawned on a worker's
/// runtime.
#[derive(Debug, Clone)]
pub(crate) struct WorkerRuntime(tokio::runtime::Handle);

impl opentelemetry_sdk::runtime::Runtime for WorkerRuntime {
    fn spawn<F>(&self, future: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        drop(self.0.spawn(future));
    }

    // Not an `async fn`: that future would borrow `self`, and the trait wants a
    // 'static one.
    #[allow(clippy::manual_async_fn)]
    fn delay(&self, duration: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        // Created on first poll, so on the worker's runtime (its timer).
        async move { tokio::time::sleep(duration).await }
    }
}

/// The span processor's queue: a bounded tokio channel (spans are offered with
/// `try_send` from the data path and dropped when it is full).
impl opentelemetry_sdk::runtime::RuntimeChannel for WorkerRuntime {
    type Receiver<T: fmt::Debug + Send> = tokio_stream::wrappers::ReceiverStream<T>;
    type Sender<T: fmt::Debug + Send> = tokio::sync::mpsc::Sender<T>;

    fn batch_message_channel<T: fmt::Debug + Send>(
        &self,
        capacity: usize,
    ) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
        (
            sender,
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )
    }
}

impl OtlpWorker {
    /// Starts a thread named `name` and calls `build` inside its runtime (tonic's
    /// channel spawns its worker onto the current runtime), with the runtime to
    /// hand the SDK's reader or processor; what `build` makes runs on that thread.
    pub(crate) fn start<T>(
        name: &str,
        build: impl FnOnce(WorkerRuntime) -> Result<T, OtlpError>,
    ) -> Result<(OtlpWorker, T), OtlpError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OtlpError(format!("building the OTLP runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let built = {
            let _entered = handle.enter();
            build(WorkerRuntime(handle.clone()))?
        };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Cuts what is left (a send still waiting on a dead collector).
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| OtlpError(format!("starting the OTLP thread: {e}")))?;
        Ok((
            OtlpWorker {
                stop: Some(stop),
                thread: Some(thread),
            },
            built,
        ))
    }

    /// The metrics worker (`weft-otlp`): the exporter and the periodic reader for
    /// `settings`; the reader starts when it is registered with a meter provider.
    pub(crate) fn start_metrics(
        settings: &OtlpSettings,
    ) -> Result<(OtlpWorker, PeriodicReader<MetricExporter>), OtlpError> {
        let started = OtlpWorker::start("weft-otlp", |runtime| {
            let exporter = build_exporter(settings)?;
            Ok(PeriodicReader::builder(exporter, runtime)
                .with_interval(settings.interval)
                .with_timeout(settings.timeout)
                .build())
        })?;
        tracing::info!(
            endpoint = %settings.endpoint,
            protocol = %settings.protocol,
            interval = ?settings.interval,
            "pushing metrics over OTLP"
        );
        Ok(started)
    }
}

/// How long a process that stops waits for its last OTLP export (metrics or
/// spans): a collector that is down or slow must not hold a pod's termination.
pub(crate) const LAST_EXPORT_WAIT: Duration = Duration::from_secs(2);

/// Runs `shutdown` (a provider's: it makes the last export, waiting on the
/// worker's thread for as long as the exporter's own timeout) for at most
/// [`LAST_EXPORT_WAIT`]; past it the worker's drop cuts the export that is still
/// going. The SDK's async-runtime reader and processor ignore the timeout their
/// `shutdown_with_timeout` is given, hence the thread.
pub(crate) fn shutdown_within_wait<E: fmt::Display>(
    what: &'static str,
    shutdown: impl FnOnce() -> Result<(), E> + Send + 'static,
) {
    let (done, finished) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("weft-otlp-stop".into())
        .spawn(move || {
            let _ = done.send(shutdown().map_err(|e| e.to_string()));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, what, "could not stop the OTLP export");
        return;
    }
    match finished.recv_timeout(LAST_EXPORT_WAIT) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, what, "stopping the OTLP export"),
        Err(_) => tracing::warn!(
            what,
            wait = ?LAST_EXPORT_WAIT,
            "the collector did not take the last export in time; cut"
        ),
    }
}

impl Drop for OtlpWorker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn build_exporter(settings: &OtlpSettings) -> Result<MetricExporter, OtlpError> {
    let built = match settings.protocol {
        Protocol::Grpc => MetricExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .with_endpoint(settings.endpoint.clone())
            .build(),
        Protocol::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .build(),
    };
    built.map_err(|e| {
        OtlpError(format!(
            "building the OTLP {} exporter for {}: {e}",
            settings.protocol, settings.endpoint
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: &OtlpArgs, env: &[(&str, &str)]) -> Result<Option<OtlpSettings>, OtlpError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        args.resolve_with(|k| env.get(k).cloned())
    }

    fn flags(endpoint: Option<&str>, protocol: Option<&str>) -> OtlpArgs {
        OtlpArgs {
            otlp_endpoint: endpoint.map(str::to_string),
            otlp_protocol: protocol.map(str::to_string),
            otlp_interval: None,
        }
    }

    #[test]
    fn nothing_configured_means_no_export() {
        assert_eq!(resolve(&OtlpArgs::default(), &[]).unwrap(), None);
        // A protocol alone exports nothing.
        assert_eq!(
            resolve(
                &OtlpArgs::default(),
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn the_flag_is_a_base_url_as_the_standard_variable() {
        let s = resolve(&flags(Some("http://c:4318/"), None), &[])
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.interval, Duration::from_secs(60));
        assert_eq!(s.timeout, Duration::from_secs(10));
        let s = resolve(&flags(Some("http://c:4317"), Some("grpc")), &[])
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol),
            ("http://c:4317", Protocol::Grpc)
        );
    }

    #[test]
    fn standard_variables_are_honoured_and_flags_win() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "700"),
        ];
        let s = resolve(&OtlpArgs::default(), &env).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://base:4318");
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.interval, Duration::from_millis(1500));
        assert_eq!(s.timeout, Duration::from_millis(700));
        let s = resolve(
            &OtlpArgs::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "http://m:9999/custom",
                ),
            ],
        )
        .unwrap()
        .unwrap();
        // The per-signal URL is taken as it is.
        assert_eq!(s.endpoint, "http://m:9999/custom");
        let mut args = flags(Some("http://flag:4317"), Some("http/protobuf"));
        args.otlp_interval = Some(Duration::from_secs(2));
        let s = resolve(&args, &env).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://flag:4317/v1/metrics");
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.interval, Duration::from_secs(2));
    }

    #[test]
    fn standard_switches_turn_environment_export_off_but_not_the_flag() {
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ] {
            let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"), off];
            assert_eq!(resolve(&OtlpArgs::default(), &env).unwrap(), None);
            assert!(resolve(&flags(Some("http://f:1"), None), &env)
                .unwrap()
                .is_some());
        }
    }

    #[test]
    fn traces_go_where_metrics_go_unless_their_own_variables_say_otherwise() {
        let traces = |args: &OtlpArgs, env: &[(&str, &str)]| {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            args.resolve_traces_with(|k| env.get(k).cloned())
        };
        assert_eq!(traces(&OtlpArgs::default(), &[]).unwrap(), None);
        let d = traces(&flags(Some("http://c:4318"), None), &[])
            .unwrap()
            .unwrap();
        assert_eq!(d.endpoint, "http://c:4318/v1/traces");
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ];
        let d = traces(&OtlpArgs::default(), &env).unwrap().unwrap();
        assert_eq!(
            (d.endpoint.as_str(), d.protocol),
            ("http://t:4317", Protocol::Grpc)
        );
        // Metrics read the metrics' variables only.
        let m = resolve(&OtlpArgs::default(), &env).unwrap().unwrap();
        assert_eq!(
            (m.endpoint.as_str(), m.protocol),
            ("http://base:4318/v1/metrics", Protocol::HttpProtobuf)
        );
        // `OTEL_TRACES_EXPORTER=none` turns traces off, metrics stay.
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(traces(&OtlpArgs::default(), &env).unwrap(), None);
        assert!(resolve(&OtlpArgs::default(), &env).unwrap().is_some());
    }

    #[test]
    fn bad_settings_are_named_together() {
        let mut args = flags(Some("https://c:4317"), Some("http/json"));
        args.otlp_interval = Some(Duration::ZERO);
        let e = resolve(&args, &[("OTEL_METRIC_EXPORT_TIMEOUT", "soon")])
            .unwrap_err()
            .to_string();
        for want in [
            "--otlp-protocol",
            "http/json",
            "--otlp-interval",
            "OTEL_METRIC_EXPORT_TIMEOUT",
            "https is not supported",
        ] {
            assert!(e.contains(want), "{want:?} missing from {e}");
        }
        let e = resolve(&flags(Some("collector:4317"), None), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an http://host[:port] URL"), "{e}");
    }
}
