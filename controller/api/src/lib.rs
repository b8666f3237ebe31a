//! weft's discovery API (`weft.discovery.v1`), generated from
//! `proto/discovery.proto` at build time by `protox` + `tonic-prost-build` (no system
//! `protoc` needed).
//!
//! A proxy calls [`discovery::discovery_client::DiscoveryClient::subscribe`] with
//! its own service name and keeps the stream open: the first
//! [`discovery::MeshUpdate`] is a full snapshot, later ones upsert changed services
//! and name removed ones, and the proxy answers each with an [`discovery::Ack`]
//! (`watch` is the same without Acks). The controller implements
//! [`encoded::server::discovery_server::Discovery`]: the same service, sending each
//! update encoded once for all its streams ([`encoded::EncodedMeshUpdate`]); the
//! plain [`discovery::discovery_server`] serves test doubles.
//!
//! The identity API (`weft.identity.v1`, `proto/identity.proto`): a proxy sends a
//! CSR for a key it keeps to [`identity::certificates_client::CertificatesClient::certify`]
//! and gets a certificate naming its workload's SPIFFE ID, signed by the mesh CA.

/// Messages, client and server of `weft.discovery.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod discovery {
    tonic::include_proto!("weft.discovery.v1");
}

pub use discovery::discovery_client::DiscoveryClient;
pub use discovery::discovery_server::{Discovery, DiscoveryServer};

pub mod encoded;

/// Messages, client and server of `weft.identity.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod identity {
    tonic::include_proto!("weft.identity.v1");
}

pub use identity::certificates_client::CertificatesClient;
pub use identity::certificates_server::{Certificates, CertificatesServer};
