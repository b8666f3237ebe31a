//! Dialling upstreams: the connect timeout, the error reasons a failed connect is
//! counted under, and the registry of the proxy's own upstream sockets (a captured
//! connection coming from one of them is the proxy's traffic looping back).
//!
//! Every upstream socket, opaque or pooled HTTP, is made by [`Connector`] and stays
//! registered while its [`OwnGuard`] lives: one way to register, so none is missed.
//! A service's endpoint is chosen by its balancer ([`Connector::dial`]), the same
//! picker HTTP requests use, and the connect's outcome feeds that endpoint's breaker.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::addr::EndpointAddr;
use crate::balance::{Balancer, Endpoint};
use crate::error::ErrorReason;

/// The proxy's upstream sockets as (local, peer) address pairs, shared by the
/// opaque relay and the HTTP pools. The pair, not the local address alone: the
/// kernel hands the same ephemeral port to sockets with different peers, so an
/// app's connection can share a local address with one of ours.
type OwnUpstreams = Arc<Mutex<HashSet<(SocketAddr, SocketAddr)>>>;

/// The (local, peer) pair of a connected socket, as the own-upstream set keys it.
fn socket_pair(stream: &TcpStream) -> Option<(SocketAddr, SocketAddr)> {
    Some((stream.local_addr().ok()?, stream.peer_addr().ok()?))
}

/// Connects to `endpoint` within `timeout`, with Nagle off.
async fn connect(endpoint: EndpointAddr, timeout: Duration) -> Result<TcpStream, ErrorReason> {
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

/// A connected upstream socket, registered as the proxy's own while this lives.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    pub own: OwnGuard,
}

/// The outcome of dialling for one opaque connection.
#[derive(Debug)]
pub struct Dialed {
    /// The endpoint chosen (`None`: none could be, e.g. a service without endpoints).
    pub endpoint: Option<EndpointAddr>,
    pub upstream: Result<Upstream, ErrorReason>,
}

/// Dials upstreams and registers the sockets as the proxy's own.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    own: OwnUpstreams,
}

impl Connector {
    /// Connects within `timeout`; the returned guard keeps the socket registered
    /// until dropped.
    pub async fn connect(
        &self,
        endpoint: EndpointAddr,
        timeout: Duration,
    ) -> Result<Upstream, ErrorReason> {
        let stream = connect(endpoint, timeout).await?;
        let pair = socket_pair(&stream);
        if let Some(pair) = pair {
            lock(&self.own).insert(pair);
        }
        Ok(Upstream {
            stream,
            own: OwnGuard {
                own: self.own.clone(),
                pair,
            },
        })
    }

    /// Connects to one fixed address (passthrough, or the local application).
    pub async fn dial_addr(&self, endpoint: EndpointAddr, timeout: Duration) -> Dialed {
        Dialed {
            endpoint: Some(endpoint),
            upstream: self.connect(endpoint, timeout).await,
        }
    }

    /// Connects to the endpoint `balancer` picks; a failed connect counts as a
    /// failure of that endpoint (a refused one ejects it at once), a connect as a
    /// success (the breaker applies to TCP as to HTTP). A connect that failed is
    /// tried on another endpoint, as the route's retry policy allows for connect
    /// failures (nothing was sent: safe for any protocol), each retry paid from its
    /// budget.
    pub async fn dial<C>(&self, balancer: &Balancer<C>, timeout: Duration) -> Dialed {
        let retry = &balancer.policy.retries;
        let mut left = if retry.on.connect_failure {
            retry.attempts
        } else {
            0
        };
        balancer.budget.deposit();
        // The endpoint whose connect just failed, and why.
        let mut failed: Option<(&Arc<Endpoint<C>>, ErrorReason)> = None;
        loop {
            let pick = match balancer.pick(failed.map(|f| f.0)) {
                Ok(pick) => pick,
                Err(reason) => {
                    return Dialed {
                        endpoint: None,
                        upstream: Err(reason),
                    }
                }
            };
            if let Some((endpoint, reason)) = failed.filter(|f| Arc::ptr_eq(f.0, pick.endpoint)) {
                // Nothing else to try: the failure stands (the breaker has heard of
                // it already; this pick is not an attempt).
                return Dialed {
                    endpoint: Some(endpoint.addr()),
                    upstream: Err(reason),
                };
            }
            let endpoint = pick.endpoint.addr();
            let mut attempt = ConnectAttempt {
                balancer,
                endpoint: pick.endpoint,
                probe: pick.probe,
                started: Instant::now(),
                done: false,
            };
            balancer.start(pick.endpoint);
            let upstream = self.connect(endpoint, timeout).await;
            attempt.finish(&upstream);
            match upstream {
                Err(reason) if left > 0 && balancer.endpoints().len() > 1 => {
                    if !balancer.budget.withdraw() {
                        return Dialed {
                            endpoint: Some(endpoint),
                            upstream: Err(reason),
                        };
                    }
                    tracing::debug!(%endpoint, ?reason, left, "connect failed; trying another endpoint");
                    left -= 1;
                    failed = Some((pick.endpoint, reason));
                }
                upstream => {
                    return Dialed {
                        endpoint: Some(endpoint),
                        upstream,
                    }
                }
            }
        }
    }

    /// Whether `(local, peer)` is one of the proxy's own upstream sockets.
    pub fn is_own(&self, local: SocketAddr, peer: SocketAddr) -> bool {
        lock(&self.own).contains(&(local, peer))
    }
}

/// A connect in progress on a picked endpoint; dropped unfinished (detection decided
/// HTTP while the speculative connect was still running) it gives no verdict.
struct ConnectAttempt<'a, C> {
    balancer: &'a Balancer<C>,
    endpoint: &'a Arc<Endpoint<C>>,
    probe: bool,
    started: Instant,
    done: bool,
}

impl<C> ConnectAttempt<'_, C> {
    fn finish<T>(&mut self, upstream: &Result<T, ErrorReason>) {
        self.done = true;
        self.balancer.end(self.endpoint);
        let latency = self.started.elapsed();
        match upstream {
            Err(ErrorReason::ConnectRefused) => {
                self.balancer
                    .observe_unreachable(self.endpoint, self.probe, latency)
            }
            outcome => self
                .balancer
                .observe(self.endpoint, self.probe, outcome.is_ok(), latency),
        }
    }
}

impl<C> Drop for ConnectAttempt<'_, C> {
    fn drop(&mut self) {
        if !self.done {
            self.balancer.end(self.endpoint);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::OrigDstAddr;
    use crate::balance::Registry;
    use crate::policy::Policy;
    use crate::routes::{PortProtocol, Resolved, RouteTable, ServicePort, ServiceSpec};

    /// A balancer over 127.0.0.1 (refuses) and 127.0.0.2 (listens) with `policy`.
    async fn one_dead_one_alive(policy: Policy) -> (tokio::net::TcpListener, Arc<Balancer<()>>) {
        let up = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind");
        let port = up.local_addr().expect("addr").port();
        let table = RouteTable::from_services([ServiceSpec {
            name: "b".into(),
            vip: "10.96.0.1".parse().expect("vip"),
            ports: vec![ServicePort {
                port: 80,
                target_port: port,
                protocol: PortProtocol::Tcp,
            }],
            endpoints: vec![
                "127.0.0.1".parse().expect("ip"),
                "127.0.0.2".parse().expect("ip"),
            ],
            meshed: Vec::new(),
            withheld: Vec::new(),
            policy,
        }]);
        let Resolved::Service(route) =
            table.resolve(OrigDstAddr("10.96.0.1:80".parse().expect("addr")))
        else {
            panic!("no route");
        };
        (up, Registry::<()>::default().balancer(&route))
    }

    fn ip_of(d: &Dialed) -> Option<String> {
        d.endpoint.map(|e| e.0.ip().to_string())
    }

    #[tokio::test]
    async fn a_refused_connect_ejects_the_endpoint_at_once_and_is_tried_on_another() {
        // Default policy: 5 failures eject, at most 50% ejected; a refused connect
        // needs neither.
        let (_up, balancer) = one_dead_one_alive(Policy::default()).await;
        let connector = Connector::default();
        let timeout = Duration::from_secs(1);
        let first = connector.dial(&balancer, timeout).await;
        assert_eq!(ip_of(&first).as_deref(), Some("127.0.0.2"), "tried again");
        assert!(first.upstream.is_ok());
        assert!(balancer.endpoints()[0].health.ejected(), "out at once");
        // Ejected: the next connections all go to the endpoint that accepts, and
        // every socket is the proxy's own while it lives.
        for _ in 0..4 {
            let next = connector.dial(&balancer, timeout).await;
            assert_eq!(ip_of(&next).as_deref(), Some("127.0.0.2"));
            let own = next.upstream.expect("connected");
            let pair = socket_pair(&own.stream).expect("pair");
            assert!(
                connector.is_own(pair.0, pair.1),
                "registered while it lives"
            );
            drop(own);
            assert!(!connector.is_own(pair.0, pair.1), "unregistered with it");
        }
    }

    #[tokio::test]
    async fn without_retries_a_refused_connect_is_the_connections_failure() {
        let mut policy = Policy::default();
        policy.retries.attempts = 0;
        let (_up, balancer) = one_dead_one_alive(policy).await;
        let first = Connector::default()
            .dial(&balancer, Duration::from_secs(1))
            .await;
        assert_eq!(ip_of(&first).as_deref(), Some("127.0.0.1"));
        assert_eq!(
            first.upstream.err().map(|e| e.as_str()),
            Some("connect_refused")
        );
        assert!(balancer.endpoints()[0].health.ejected());
    }
}
