//! Mutual TLS between sidecars (ARCHITECTURE.md, The mesh CA): the rustls
//! configurations made from this proxy's workload certificate (`identity`), and the
//! check of a peer's SPIFFE ID.
//!
//! TLS 1.3 only, rustls with the ring provider (the workspace's one: it builds
//! without cmake or NASM). Both sides present a certificate from the mesh CA and
//! verify the other's chain to the trust bundle the controller sent with it. The
//! client also demands the SPIFFE ID discovery names the endpoint with
//! ([`crate::routes::ServiceRoute::identity`]): a certificate for another workload,
//! however valid, is refused. Both offer the ALPN protocol [`ALPN`], which tells a
//! weft peer's handshake from an application's own TLS on the same port.
//!
//! - [`credentials`]: one certificate's server and client configurations, and
//!   [`MeshTls`], the current ones, swapped when the certificate is renewed
//!   (connections already up keep theirs).
//! - [`handshake`]: securing a socket to a peer, and telling a peer's handshake
//!   from anything else on the inbound port.
//! - [`verify`]: the client's check of the server (chain, usage, SPIFFE ID) and the
//!   peer identity read from a handshake.

pub mod credentials;
pub mod handshake;
pub mod verify;

pub use credentials::{Credentials, MeshTls, MtlsError};
pub use verify::peer_identity;

/// The ALPN protocol sidecars offer each other.
pub const ALPN: &[u8] = b"weft/1";

/// The server name a client passes to rustls: never sent (no SNI) nor checked (the
/// SPIFFE ID is), but the API wants one.
pub fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::DnsName(
        rustls::pki_types::DnsName::try_from("peer.weft.invalid").expect("a valid DNS name"),
    )
}

#[cfg(test)]
mod tests;
