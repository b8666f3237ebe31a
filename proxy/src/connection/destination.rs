//! Where a captured connection was going, and whether it may be proxied at all: a
//! connection that was not redirected, or that is the proxy's own upstream
//! connection captured again, would loop.

use tokio::net::TcpStream;

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::error::ErrorReason;
use crate::state::Shared;

/// The original destination, or why the connection must not be proxied;
/// `listen_port`: the port of the listener that accepted it, when known.
pub fn recover(
    shared: &Shared,
    client: &TcpStream,
    client_addr: ClientAddr,
    listen_port: Option<u16>,
) -> Result<OrigDstAddr, ErrorReason> {
    let orig = shared
        .orig_dst
        .orig_dst(client, client_addr.0)
        .map_err(|_| ErrorReason::NoOrigDst)?;
    // A connection made straight to the listener (not redirected) "originally" went
    // to the listener itself; forwarding it would connect back to ourselves. Only
    // one headed for the listener's port can be that, so the socket's own address
    // is asked for only then: a system call fewer for every other connection.
    if listen_port.is_none_or(|port| port == orig.0.port()) {
        let local = client.local_addr().map_err(|_| ErrorReason::NoOrigDst)?;
        if local == orig.0 {
            return Err(ErrorReason::Loop);
        }
    }
    // The proxy's own upstream connection was captured again: the proxy does not run
    // as the excluded uid, or capture does not exclude it.
    if shared.connector.is_own(client_addr.0, orig.0) {
        tracing::error!(%client_addr, %orig, "capture loop: the proxy's own upstream connection was redirected back to it; is the proxy running as the excluded uid?");
        return Err(ErrorReason::Loop);
    }
    Ok(orig)
}
