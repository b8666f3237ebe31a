//! weft-controller: the mesh's source of truth and the discovery API served to proxies.
//!
//! - [`model`]: the mesh (services, ports, endpoints, workloads) as validated types.
//! - [`meshfile`]: the YAML mesh file, parsed with line numbers in every error.
//! - [`source`]: the [`source::Source`] trait (one source's [`source::Contribution`])
//!   and the watched [`source::FileSource`].
//! - [`registry`]: the registration API's persisted store, a source too.
//! - [`persist`]: files kept across restarts, replaced crash-safely.
//! - [`kubernetes`]: Services and EndpointSlices (kube-rs) mapped to the mesh, a
//!   source too.
//! - [`merge`]: the sources' contributions merged into one [`merge::Catalog`].
//! - [`health`]: active health checks; failing endpoints are withdrawn.
//! - [`state`]: the served mesh and version, diffs between meshes, status.
//! - [`proxies`]: the subscribed proxies, what each was sent and applied (Acks).
//! - [`grpc`]: the `Discovery` service (full snapshot, then incremental updates).
//! - [`xds`]: Envoy's Aggregated Discovery Service (xDS v3) beside it, for
//!   proxyless gRPC clients.
//! - [`http`]: `/v1/services` (and registration under it), `/v1/status`, `/metrics`,
//!   `/ready`, `/live`, and the mesh page under `/ui`.
//! - [`inject`]: which pods get the sidecar, and the JSONPatch that adds it.
//! - [`webhook`]: the mutating admission webhook serving [`inject`] over TLS.
//! - [`metrics`]: the `weft_controller_*` series, observed from the state.
//! - [`auth`]: who may call the APIs (tokens, Kubernetes ServiceAccounts), their
//!   scopes and per-caller limits.
//! - [`ca`]: the mesh CA (`--ca-dir`): its key and root, workload certificates
//!   (SPIFFE IDs) signed from the proxies' CSRs, served as the `Certificates` gRPC
//!   service.
//! - [`edges`]: the service topology and per-edge golden signals from the
//!   proxies' Prometheus pages (shared with weftctl's `top` and `graph`).
//! - [`ui`]: the mesh page (`/ui`) and the data it shows, gathered from the
//!   subscribed proxies.
//! - [`controller`]: ties them together.

pub mod annotations;
pub mod auth;
pub mod ca;
pub mod controller;
pub mod edges;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod health;
pub mod http;
pub mod inject;
pub mod kubernetes;
pub mod merge;
pub mod meshfile;
pub mod metrics;
pub mod model;
pub mod persist;
pub mod proxies;
pub mod registry;
pub mod source;
pub mod state;
pub mod ui;
pub mod webhook;
pub mod xds;

pub use controller::{Controller, Keepalive, Options};
pub use error::ConfigError;
