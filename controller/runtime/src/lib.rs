//! weft-runtime: what every weft binary needs around its own job, written once.
//!
//! weft-proxy, weft-controller and weftctl each log, stop on signals, serve a few
//! HTTP/1 endpoints of their own (admin, `/metrics`, the controller's API and its
//! TLS webhook), export OpenTelemetry metrics in the Prometheus text format with the
//! standard `process_*` series, or read that format back. Before this crate each
//! binary carried its own copy, and the controller compiled one of the proxy's
//! source files into itself; here each job has one home that no binary has to link
//! another binary's crate for. It holds no mesh logic: nothing here knows about services, routes or
//! pods.
//!
//! - [`logging`]: `tracing` to stderr under the `--log` filter.
//! - [`signals`]: `shutdown_signal()` (SIGTERM/SIGINT as a future, for the async
//!   binaries) and the stop flag weftctl's blocking loop polls.
//! - [`http`]: the one HTTP/1 serve loop behind every admin, metrics and API
//!   listener, over plain TCP or any acceptor (the webhook's TLS), with a
//!   path-to-response router or a whole-request handler; small response helpers.
//! - [`metrics`]: the OpenTelemetry-to-Prometheus exporter set-up and rendering,
//!   and the resource every binary describes itself with.
//! - [`otlp`]: the optional OTLP push beside it (`--otlp-endpoint`, the standard
//!   `OTEL_EXPORTER_OTLP_*` variables), on a thread of its own.
//! - [`process_metrics`]: RSS, CPU, fds and threads from `/proc/self`.
//! - [`memory`]: handing the allocator's free pages back once a wave (of
//!   connections, of tasks) has receded.
//! - [`prom_text`]: reading samples back from a Prometheus text page (weftctl's
//!   live views, the tests).

pub mod http;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod otlp;
pub mod process_metrics;
pub mod prom_text;
pub mod signals;
pub mod traces;
