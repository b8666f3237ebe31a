//! weft-proxy: the transparent sidecar's data path.
//!
//! Connections captured in a pod (by iptables REDIRECT or by eBPF) arrive on the
//! outbound listener (15001, the app dialled out) or the inbound listener (15006, a
//! peer dialled the app); peer sidecars' opaque connections to the pod's apps
//! arrive on the tunnel listener (15008). For each, the proxy recovers the original destination,
//! picks the upstream, connects (as the proxy uid, which capture excludes, so no
//! loop), and either relays bytes with TCP semantics intact or proxies HTTP per
//! request. Admin (`/connections`, `/config`, `/routes`) listens on 127.0.0.1:15000,
//! metrics and health (`/metrics`, `/ready`, `/ready/proxy`, `/live`) on :15020.
//!
//! Layout, in the order a connection meets it:
//! - [`server`]: binds the listeners, accepts, drains on shutdown.
//! - `connection`: one connection's pipeline: original destination and loop
//!   checks, routing, detection, dispatch to `tcp` or `l7`.
//! - [`detect`]: protocol detection (the byte classifier and the wait for it).
//! - [`tcp`]: the L4 path: dialling upstreams ([`tcp::connect`]) and the byte relay
//!   ([`tcp::relay`]).
//! - [`tunnel`]: the sidecar-to-sidecar connect handshake of opaque TCP (port
//!   15008): its wire format, the client's handshake, the server's preface.
//! - [`l7`]: the HTTP/1.1 + h2c path (per-request balancing, pooled upstream
//!   connections, retries, the proxy's own 4xx/5xx).
//! - [`balance`]: the one endpoint picker for TCP and HTTP (round robin or
//!   P2C/peak-EWMA), the circuit breaker, the retry budget, the registry.
//! - [`routes`]: VIP:port → service and endpoints; peer IP → service.
//! - [`policy`]: a service's timeouts, retries, breaker and lb, defaults applied.
//! - [`discovery`]: the controller's Watch stream → the routing table, with backoff.
//! - [`orig_dst`]: original-destination recovery behind a trait (kernel or fixed).
//! - [`addr`]: address newtypes and [`addr::Direction`].
//! - [`error`]: why the proxy failed something, and how a connection ended.
//! - `state`: what every task of one proxy shares.
//! - `admin`: the admin, metrics and health routes; `app_health`: the probe of the
//!   pod's application they serve (`/app-health/<port>`); `readiness`: the app's
//!   part of `/ready` (which ports, and a short-lived cache of the check).
//! - [`conntable`]: live and recently closed connections for `/connections`.
//! - `memory`: hands freed memory back to the kernel once a wave of connections
//!   has receded.
//! - [`metrics`]: OpenTelemetry instruments, exported through weft-runtime's
//!   Prometheus pipeline (which adds the `process_*` series).
//! - [`config`]: the configuration a proxy runs with.
//! - [`identity`]: with `--identity`, the workload certificate kept from the
//!   controller's CA (groundwork for mutual TLS).
//! - [`mtls`]: that certificate as rustls configurations (TLS 1.3, the peer's
//!   SPIFFE ID checked); not on the data path yet.

pub mod addr;
pub(crate) mod admin;
pub(crate) mod app_health;
pub mod authz;
pub mod balance;
pub mod config;
pub(crate) mod connection;
pub mod conntable;
pub mod detect;
pub mod discovery;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod l7;
pub(crate) mod memory;
pub mod metrics;
pub mod mtls;
pub mod orig_dst;
pub mod policy;
pub(crate) mod readiness;
pub mod routes;
pub mod server;
pub(crate) mod state;
pub mod tcp;
pub mod tunnel;

pub use config::ProxyConfig;
pub use server::{BoundProxy, DrainOutcome, StartError};
