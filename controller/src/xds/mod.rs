//! xDS for proxyless gRPC: Envoy's Aggregated Discovery Service (v3, state of the
//! world) served on the controller's gRPC port, so that gRPC's own xDS client
//! (gRFC A27) balances across the mesh's endpoints without a sidecar
//! (ARCHITECTURE.md, xDS for proxyless gRPC).
//!
//! - [`names`]: Listener and Cluster names, and which service port each means.
//! - [`resources`]: the served mesh as Listeners, Clusters and
//!   ClusterLoadAssignments.
//! - [`session`]: one stream's protocol (subscriptions, versions, nonces,
//!   ACK/NACK), without I/O.
//! - [`service`]: the tonic service: authentication, and a task per stream that
//!   feeds its session with requests and new meshes.
//! - [`stats`]: streams, pushes, ACKs and NACKs, for `/v1/status` and `/metrics`.

pub mod names;
pub mod resources;
pub mod service;
pub mod session;
pub mod stats;

pub use service::{AdsService, TOKEN_METADATA_KEY};
pub use stats::Stats;
