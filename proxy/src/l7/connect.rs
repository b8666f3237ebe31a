//! Dialling an endpoint: the connect timeout, the error reasons a failed connect is
//! counted under, and the registry of the proxy's own upstream sockets (a captured
//! connection coming from one of them is the proxy's traffic looping back).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::addr::EndpointAddr;
use crate::metrics::ErrorReason;

/// The proxy's upstream sockets as (local, peer) address pairs, shared by the
/// opaque relay and the HTTP pools. The pair, not the local address alone: the
/// kernel hands the same ephemeral port to sockets with different peers, so an
/// app's connection can share a local address with one of ours.
pub type OwnUpstreams = Arc<Mutex<HashSet<(SocketAddr, SocketAddr)>>>;

/// The (local, peer) pair of a connected socket, as [`OwnUpstreams`] keys it.
pub fn socket_pair(stream: &TcpStream) -> Option<(SocketAddr, SocketAddr)> {
    Some((stream.local_addr().ok()?, stream.peer_addr().ok()?))
}

/// Connects to `endpoint` within `timeout`, with Nagle off.
pub async fn connect(endpoint: EndpointAddr, timeout: Duration) -> Result<TcpStream, ErrorReason> {
    match tokio::time::timeout(timeout, TcpStream::connect(endpoint.0)).await {
        Err(_) => Err(ErrorReason::ConnectTimeout),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(ErrorReason::ConnectRefused)
        }
        Ok(Err(e)) => {
            tracing::debug!(%endpoint, error = %e, "connect failed");
            Err(ErrorReason::ConnectError)
        }
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// Dials endpoints for the HTTP pools and registers the sockets as the proxy's own.
#[derive(Clone, Debug)]
pub struct Connector {
    own: OwnUpstreams,
}

impl Connector {
    pub fn new(own: OwnUpstreams) -> Self {
        Connector { own }
    }

    /// Connects within `timeout`; the returned guard keeps the socket registered
    /// until dropped.
    pub async fn connect(
        &self,
        endpoint: EndpointAddr,
        timeout: Duration,
    ) -> Result<(TcpStream, OwnGuard), ErrorReason> {
        let stream = connect(endpoint, timeout).await?;
        let pair = socket_pair(&stream);
        if let Some(pair) = pair {
            lock(&self.own).insert(pair);
        }
        Ok((
            stream,
            OwnGuard {
                own: self.own.clone(),
                pair,
            },
        ))
    }
}

/// Unregisters an upstream socket when the connection ends.
#[derive(Debug)]
pub struct OwnGuard {
    own: OwnUpstreams,
    pair: Option<(SocketAddr, SocketAddr)>,
}

impl Drop for OwnGuard {
    fn drop(&mut self) {
        if let Some(pair) = self.pair {
            lock(&self.own).remove(&pair);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
