//! weft-controller: the mesh's source of truth and the discovery API served to proxies.
//!
//! - [`model`]: the mesh (services, ports, endpoints, workloads) as validated types.
//! - [`meshfile`]: the YAML mesh file, parsed with line numbers in every error.
//! - [`source`]: the [`source::Source`] trait and the watched [`source::FileSource`].
//! - [`state`]: the current mesh and version, diffs between meshes, status.
//! - [`grpc`]: the `Discovery` service (full snapshot, then incremental updates).
//! - [`http`]: `/v1/services`, `/v1/status`, `/metrics`, `/ready`, `/live`.
//! - [`metrics`]: the `weft_controller_*` series, observed from the state.
//! - [`controller`]: ties them together.

pub mod controller;
pub mod error;
pub mod grpc;
pub mod http;
pub mod meshfile;
pub mod metrics;
pub mod model;
pub mod source;
pub mod state;

pub use controller::{Controller, Options};
pub use error::ConfigError;
