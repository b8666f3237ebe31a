//! The L4 path: opaque TCP, beside [`crate::l7`]. A connection whose port is
//! declared `tcp`, that goes passthrough, or that detection found not to be HTTP is
//! dialled here and relayed byte for byte with TCP semantics intact.
//!
//! - [`connect`]: dialling (the endpoint from the service's balancer, the connect
//!   timeout, the registry of the proxy's own upstream sockets); the HTTP pools dial
//!   through it too.
//! - [`relay`]: the bidirectional byte copy (half-close, reset propagation, the
//!   idle and half-close timeouts).
//! - [`splice`]: a bulk direction of the relay moved inside the kernel.
//! - [`stream`]: a socket, plaintext or under the mesh's TLS.
//! - [`liveness`]: keepalive and `TCP_USER_TIMEOUT`, so dead peers are noticed.

pub mod connect;
pub mod liveness;
pub mod relay;
pub mod splice;
pub mod stream;
