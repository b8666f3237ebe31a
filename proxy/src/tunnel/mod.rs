//! The sidecar-to-sidecar connect handshake for opaque TCP (ARCHITECTURE.md, Packet
//! path: the tunnel), Istio's HBONE port without TLS yet.
//!
//! A redirected connection to a meshed endpoint is accepted by the kernel for the
//! peer's sidecar before the sidecar has reached its application, so a client-side
//! sidecar cannot tell "the application never got it" from "it took it and died".
//! Through the tunnel it can: the client sidecar dials the peer's tunnel port
//! (15008) instead of the endpoint, names the application port in a preface, and
//! sends the client's bytes only once the peer sidecar answered that its
//! application accepted; a refusal is tried on another endpoint like a refused
//! connect. HTTP does not need it (a peer sidecar answers a request it could not
//! deliver with its own 502/503) and keeps the direct path.
//!
//! - [`preface`]: the wire format (preface and answer), pure.
//! - [`dial`]: the client's handshake and its memory of peers without a tunnel.
//! - [`listen`]: the server's preface reading, target check and answer.

pub mod dial;
pub mod listen;
pub mod preface;
