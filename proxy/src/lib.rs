//! weft-proxy: the transparent sidecar's data path.
//!
//! Connections captured in a pod (iptables REDIRECT today, eBPF later) arrive on the
//! outbound listener (15001, the app dialled out) or the inbound listener (15006, a
//! peer dialled the app). For each, the proxy recovers the original destination,
//! connects upstream (as the proxy uid, which capture excludes, so no loop), and relays
//! bytes with TCP semantics intact. Admin (`/connections`, `/config`) listens on
//! 127.0.0.1:15000, metrics and health (`/metrics`, `/ready`, `/live`) on :15020.
//!
//! Layout:
//! - [`addr`]: address newtypes and [`addr::Direction`].
//! - [`orig_dst`]: original-destination recovery behind a trait (kernel or fixed).
//! - [`routes`]: VIP:port → service → round-robin endpoint; peer IP → service.
//! - [`policy`]: a service's timeouts, retries, breaker and lb, defaults applied.
//! - [`discovery`]: the controller's Watch stream → the routing table, with backoff.
//! - [`relay`]: the bidirectional byte copy (half-close, reset propagation).
//! - [`l7`]: protocol detection and HTTP/1.1 + h2c proxying (per-request balancing,
//!   pooled upstream connections, the proxy's own 502/503/504).
//! - [`conntable`]: live and recently closed connections for `/connections`.
//! - [`metrics`]: OpenTelemetry instruments, exported through weft-runtime's
//!   Prometheus pipeline (which adds the `process_*` series).
//! - [`server`]: listeners, per-connection handling and drain.
//! - [`config`]: the configuration a proxy runs with.

pub mod addr;
pub mod config;
pub mod conntable;
pub mod discovery;
pub mod l7;
pub mod metrics;
pub mod orig_dst;
pub mod policy;
pub mod relay;
pub mod routes;
pub mod server;

pub use config::ProxyConfig;
pub use server::{BoundProxy, DrainOutcome, StartError};
