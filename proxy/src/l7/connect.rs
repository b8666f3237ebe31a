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

/// Local addresses of the proxy's upstream sockets, shared by the opaque relay and
/// the HTTP pools.
pub type OwnUpstreams = Arc<Mutex<HashSet<SocketAddr>>>;

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
        let local = stream.local_addr().ok();
        if let Some(local) = local {
            lock(&self.own).insert(local);
        }
        Ok((
            stream,
            OwnGuard {
                own: self.own.clone(),
                local,
            },
        ))
    }
}

/// Unregisters an upstream socket's local address when the connection ends.
#[derive(Debug)]
pub struct OwnGuard {
    own: OwnUpstreams,
    local: Option<SocketAddr>,
}

impl Drop for OwnGuard {
    fn drop(&mut self) {
        if let Some(local) = self.local {
            lock(&self.own).remove(&local);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
