//! Address newtypes, so the three addresses a proxied connection carries cannot be
//! mixed up: who connected to us, where they meant to go, and where we actually went.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

macro_rules! socket_addr_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub SocketAddr);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

socket_addr_newtype!(
    /// The peer address of an accepted (captured) connection: the application side.
    ClientAddr
);
socket_addr_newtype!(
    /// The address the application dialled before capture rewrote it
    /// (`SO_ORIGINAL_DST`).
    OrigDstAddr
);
socket_addr_newtype!(
    /// The address the proxy connects to upstream. Today it always equals the original
    /// destination (passthrough); with service discovery it becomes the chosen endpoint.
    EndpointAddr
);

/// Which way a connection crosses the pod boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Leaving the pod: the local application dialled out.
    Outbound,
    /// Entering the pod: a remote peer dialled the local application.
    Inbound,
}

impl Direction {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
