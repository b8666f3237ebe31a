//! Dialling upstreams: the connect timeout, the error reasons a failed connect is
//! counted under, and the registry of the proxy's own upstream sockets (a captured
//! connection coming from one of them is the proxy's traffic looping back).
//!
//! Every upstream socket, opaque or pooled HTTP, is made by [`Connector`] and stays
//! registered while its [`OwnGuard`] lives: one way to register, so none is missed.
//! A service's endpoint is chosen by its balancer ([`Connector::dial`]), the same
//! picker HTTP requests use, and the connect's outcome feeds that endpoint's breaker.
//! An opaque connection to a *meshed* endpoint is dialled through the peer
//! sidecar's tunnel ([`crate::tunnel`]), so that "connected" means its application
//! accepted; a peer without a tunnel (an older sidecar) is dialled directly.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::net::TcpStream;

use super::liveness::Liveness;
use super::stream::Stream;
use crate::addr::EndpointAddr;
use crate::balance::{Balancer, Endpoint};
use crate::error::ErrorReason;
use crate::mtls::{self, MeshTls};
use crate::tunnel::dial::{handshake, Handshake, TunnelClient};

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

/// A connected upstream socket (`S`: the socket itself, or a [`Stream`] that may
/// be under TLS), registered as the proxy's own while this lives.
#[derive(Debug)]
pub struct Upstream<S = TcpStream> {
    pub stream: S,
    pub own: OwnGuard,
}

impl Upstream {
    /// The same upstream, plaintext, as a [`Stream`].
    fn plain(self) -> Upstream<Stream> {
        Upstream {
            stream: Stream::Plain(self.stream),
            own: self.own,
        }
    }

    /// Secures the socket with `tls` (a peer sidecar's mutual TLS) or leaves it
    /// plaintext (`None`). A failed handshake is counted as `tls_handshake`.
    pub async fn secure(
        self,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Upstream<Stream>, ErrorReason> {
        let Some(config) = tls else {
            return Ok(self.plain());
        };
        let peer = self.stream.peer_addr().ok();
        match mtls::handshake::connect(config, self.stream).await {
            Ok(stream) => Ok(Upstream {
                stream,
                own: self.own,
            }),
            Err(e) => {
                tracing::debug!(?peer, error = %e, "mutual TLS handshake failed");
                Err(ErrorReason::TlsHandshake)
            }
        }
    }
}

/// The outcome of dialling for one opaque connection.
#[derive(Debug)]
pub struct Dialed {
    /// The endpoint chosen (`None`: none could be, e.g. a service without endpoints).
    pub endpoint: Option<EndpointAddr>,
    pub upstream: Result<Upstream<Stream>, ErrorReason>,
}

/// Why a connect to one endpoint failed, as its breaker and the retry counter hear
/// it.
#[derive(Clone, Copy, Debug)]
struct Failure {
    /// What the connection ends with when no other endpoint takes it.
    reason: ErrorReason,
    via: Via,
}

/// Where a connect failed.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// Connecting to the endpoint (or to its sidecar's tunnel port) itself.
    Direct,
    /// The peer sidecar answered that its application could not be reached.
    TunnelAnswer,
    /// The tunnel closed, failed or timed out before answering, on a peer that
    /// speaks it.
    TunnelBroken,
}

impl Failure {
    fn direct(reason: ErrorReason) -> Self {
        Failure {
            reason,
            via: Via::Direct,
        }
    }

    /// Whether nothing is known to listen there: the endpoint is ejected at once. A
    /// refused connect, and any tunnel failure (ARCHITECTURE.md, Data-plane
    /// defaults): a tunnel peer that does not answer in time is as useless.
    fn unreachable(self) -> bool {
        if self.says_nothing_of_the_endpoint() {
            return false;
        }
        match self.via {
            Via::Direct => self.reason == ErrorReason::ConnectRefused,
            Via::TunnelAnswer | Via::TunnelBroken => true,
        }
    }

    /// The peer's sidecar does not let this caller in (the endpoint is up, and
    /// another of the service's, under the same authorization, would say the
    /// same), or this proxy has no certificate to dial it with: no failure to the
    /// endpoint's breaker, no retry.
    fn says_nothing_of_the_endpoint(self) -> bool {
        matches!(
            self.reason,
            ErrorReason::Unauthorized | ErrorReason::NoCertificate
        )
    }

    /// The `reason` label of `weft_tcp_connect_retries_total` when another endpoint
    /// is tried after it.
    fn retry_reason(self) -> &'static str {
        match (self.via, self.reason) {
            (Via::TunnelAnswer, _) => "app_unreachable",
            (Via::TunnelBroken, ErrorReason::ConnectTimeout) | (Via::Direct, _) => {
                self.reason.as_str()
            }
            (Via::TunnelBroken, _) => "tunnel_reset",
        }
    }
}

/// How a connect through a peer's tunnel ended.
enum Tunnelled {
    /// Connected, or failed for good (the tunnel spoke, or broke after the peer had
    /// spoken it before).
    Done(Result<Upstream<Stream>, Failure>),
    /// The peer speaks no tunnel (refused its port, or answered something else):
    /// dial the endpoint directly.
    Absent,
}

/// Dials upstreams and registers the sockets as the proxy's own.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    own: OwnUpstreams,
    /// Set on every upstream socket.
    liveness: Liveness,
    /// Dials meshed endpoints of opaque connections through their sidecar's tunnel;
    /// `None`: never (`--tunnel-port 0`).
    tunnel: Option<Arc<TunnelClient>>,
    /// This proxy's certificate, for mutual TLS to meshed endpoints with an
    /// identity (none without `--identity`: plaintext).
    tls: Arc<MeshTls>,
}

impl Connector {
    /// A connector that dials opaque connections to meshed endpoints through the
    /// peer sidecars' tunnel port `tunnel_port` (0: directly).
    pub fn new(tunnel_port: u16) -> Self {
        Connector {
            own: OwnUpstreams::default(),
            liveness: Liveness::default(),
            tunnel: (tunnel_port != 0).then(|| Arc::new(TunnelClient::new(tunnel_port))),
            tls: Arc::default(),
        }
    }

    /// The same connector, securing connections to peers with `tls`'s certificate
    /// once it has one.
    pub fn with_tls(mut self, tls: Arc<MeshTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Whether this proxy holds a valid certificate (so dials the peers discovery
    /// names an identity for under mutual TLS).
    pub fn holds_certificate(&self) -> bool {
        self.tls.current().is_some()
    }

    /// The TLS configuration that dials a peer sidecar holding `identity`: `None`
    /// (plaintext) for a peer discovery names no identity for, or from a proxy
    /// without `--identity`. Fails closed, never plaintext to a peer that expects
    /// mutual TLS: `no_certificate` while this proxy (with `--identity`) holds no
    /// valid certificate, `tls_handshake` when no configuration can be made for
    /// the identity.
    pub fn tls_for(
        &self,
        identity: Option<&Arc<str>>,
    ) -> Result<Option<Arc<ClientConfig>>, ErrorReason> {
        let Some(identity) = identity else {
            return Ok(None);
        };
        let Some(credentials) = self.tls.current() else {
            return if self.tls.is_required() {
                Err(ErrorReason::NoCertificate)
            } else {
                Ok(None)
            };
        };
        credentials.client_config(identity).map(Some).map_err(|e| {
            tracing::warn!(%identity, error = %e, "no TLS configuration for the peer");
            ErrorReason::TlsHandshake
        })
    }

    /// The same connector, setting `liveness` on every upstream socket.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// Connects within `timeout`; the returned guard keeps the socket registered
    /// until dropped.
    pub async fn connect(
        &self,
        endpoint: EndpointAddr,
        timeout: Duration,
    ) -> Result<Upstream, ErrorReason> {
        let stream = connect(endpoint, timeout).await?;
        self.liveness.apply(&stream);
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
            upstream: self.connect(endpoint, timeout).await.map(Upstream::plain),
        }
    }

    /// Connects an opaque connection to the endpoint `balancer` picks (through its
    /// sidecar's tunnel when it is meshed); a failed connect counts as a failure of
    /// that endpoint (a refused one, or a tunnel's refusal, ejects it at once), a
    /// connect as a success (the breaker applies to TCP as to HTTP). A connect that
    /// failed is tried on another endpoint, as the route's retry policy allows for
    /// connect failures (nothing was sent: safe for any protocol), each retry paid
    /// from its budget and told to `retried` with why the last one failed.
    pub async fn dial<C>(
        &self,
        balancer: &Balancer<C>,
        timeout: Duration,
        retried: &(dyn Fn(&'static str) + Sync),
    ) -> Dialed {
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
            let meshed = self.tunnel.is_some() && balancer.is_meshed(pick.endpoint);
            let upstream = match meshed
                .then(|| self.tls_for(balancer.identity(pick.endpoint)))
                .transpose()
            {
                Ok(tls) => {
                    self.connect_endpoint(endpoint, meshed, tls.flatten(), timeout)
                        .await
                }
                Err(reason) => Err(Failure::direct(reason)),
            };
            attempt.finish(&upstream);
            match upstream {
                Err(failure)
                    if left > 0
                        && balancer.endpoints().len() > 1
                        && !failure.says_nothing_of_the_endpoint() =>
                {
                    if !balancer.budget.withdraw() {
                        return Dialed {
                            endpoint: Some(endpoint),
                            upstream: Err(failure.reason),
                        };
                    }
                    tracing::debug!(%endpoint, ?failure, left, "connect failed; trying another endpoint");
                    retried(failure.retry_reason());
                    left -= 1;
                    failed = Some((pick.endpoint, failure.reason));
                }
                upstream => {
                    return Dialed {
                        endpoint: Some(endpoint),
                        upstream: upstream.map_err(|f| f.reason),
                    }
                }
            }
        }
    }

    /// Connects to `endpoint` within `timeout`: through its sidecar's tunnel when it
    /// is `meshed` and the sidecar is not known to lack one (under `tls`, mutual TLS
    /// with the peer, when given), else directly.
    async fn connect_endpoint(
        &self,
        endpoint: EndpointAddr,
        meshed: bool,
        tls: Option<Arc<ClientConfig>>,
        timeout: Duration,
    ) -> Result<Upstream<Stream>, Failure> {
        let started = Instant::now();
        let peer = endpoint.0.ip();
        let tunnel = self
            .tunnel
            .as_deref()
            .filter(|t| meshed && t.worth_trying(peer));
        let Some(tunnel) = tunnel else {
            return self
                .connect(endpoint, timeout)
                .await
                .map(Upstream::plain)
                .map_err(Failure::direct);
        };
        match self.through_tunnel(tunnel, endpoint, tls, timeout).await {
            Tunnelled::Done(outcome) => outcome,
            Tunnelled::Absent => {
                let left = timeout.saturating_sub(started.elapsed());
                let direct = self
                    .connect(endpoint, left)
                    .await
                    .map(Upstream::plain)
                    .map_err(Failure::direct);
                // Only a sidecar that is there is an older one; a pod that refuses
                // both ports is just down, and may come back with a tunnel.
                if direct.is_ok() {
                    tunnel.absent(peer);
                }
                direct
            }
        }
    }

    /// Connects to `endpoint`'s sidecar's tunnel port and asks it for the endpoint's
    /// port (under `tls`, when given), the connect, the handshakes and the answer
    /// all within `timeout`.
    async fn through_tunnel(
        &self,
        tunnel: &TunnelClient,
        endpoint: EndpointAddr,
        tls: Option<Arc<ClientConfig>>,
        timeout: Duration,
    ) -> Tunnelled {
        let peer = endpoint.0.ip();
        let port = EndpointAddr(std::net::SocketAddr::new(peer, tunnel.port()));
        let handshaken = tokio::time::timeout(timeout, async {
            let upstream = match self.connect(port, timeout).await {
                Ok(upstream) => upstream,
                // Nothing listens on the tunnel port: an older sidecar (or none).
                Err(ErrorReason::ConnectRefused) => return Tunnelled::Absent,
                Err(reason) => return Tunnelled::Done(Err(Failure::direct(reason))),
            };
            let broken = Failure {
                reason: ErrorReason::ConnectError,
                via: Via::TunnelBroken,
            };
            // A peer that fails the handshake on a certificate (the wrong identity,
            // another CA) fails the connect: never a fall back to plaintext. One
            // that closes on it never having answered the tunnel is an older
            // sidecar, which reads a ClientHello as a bad preface.
            let mut upstream = match tls {
                None => upstream.plain(),
                Some(config) => match mtls::handshake::connect(config, upstream.stream).await {
                    Ok(stream) => Upstream {
                        stream,
                        own: upstream.own,
                    },
                    Err(e)
                        if e.kind() == io::ErrorKind::InvalidData
                            || tunnel.answered_before(peer) =>
                    {
                        tracing::debug!(%endpoint, error = %e, "mutual TLS handshake with the tunnel failed");
                        return Tunnelled::Done(Err(Failure {
                            reason: ErrorReason::TlsHandshake,
                            via: Via::TunnelBroken,
                        }));
                    }
                    Err(_) => return Tunnelled::Absent,
                },
            };
            match handshake(&mut upstream.stream, endpoint.0.port()).await {
                Handshake::Connected => {
                    tunnel.answered(peer);
                    Tunnelled::Done(Ok(upstream))
                }
                Handshake::Refused(reason) => {
                    tunnel.answered(peer);
                    Tunnelled::Done(Err(Failure {
                        reason,
                        via: Via::TunnelAnswer,
                    }))
                }
                // A peer that answered before broke: it failed (it is dying, or
                // overloaded). One that never did may be an older sidecar whose
                // capture took the tunnel port for an application port and reset it.
                Handshake::Broken if tunnel.answered_before(peer) => Tunnelled::Done(Err(broken)),
                Handshake::Broken | Handshake::NotTunnel => Tunnelled::Absent,
            }
        })
        .await;
        handshaken.unwrap_or(Tunnelled::Done(Err(Failure {
            reason: ErrorReason::ConnectTimeout,
            via: Via::TunnelBroken,
        })))
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
    fn finish<T>(&mut self, upstream: &Result<T, Failure>) {
        self.done = true;
        self.balancer.end(self.endpoint);
        let latency = self.started.elapsed();
        match upstream {
            Err(failure) if failure.unreachable() => {
                self.balancer
                    .observe_unreachable(self.endpoint, self.probe, latency)
            }
            Err(failure) if failure.says_nothing_of_the_endpoint() => {
                self.balancer
                    .observe(self.endpoint, self.probe, true, latency)
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
        (up, balancer(port, &[], policy))
    }

    /// A balancer over 127.0.0.1 and 127.0.0.2 at `port`, the `meshed` ones served
    /// by a sidecar.
    fn balancer(port: u16, meshed: &[&str], policy: Policy) -> Arc<Balancer<()>> {
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
            meshed: meshed.iter().map(|ip| ip.parse().expect("ip")).collect(),
            identities: Vec::new(),
            withheld: Vec::new(),
            mtls: Default::default(),
            authorization: Vec::new(),
            policy,
        }]);
        let Resolved::Service(route) =
            table.resolve(OrigDstAddr("10.96.0.1:80".parse().expect("addr")))
        else {
            panic!("no route");
        };
        Registry::<()>::default().balancer(&route)
    }

    /// Retries are not counted here.
    fn uncounted(_: &'static str) {}

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
        let first = connector.dial(&balancer, timeout, &uncounted).await;
        assert_eq!(ip_of(&first).as_deref(), Some("127.0.0.2"), "tried again");
        assert!(first.upstream.is_ok());
        assert!(balancer.endpoints()[0].health.ejected(), "out at once");
        // Ejected: the next connections all go to the endpoint that accepts, and
        // every socket is the proxy's own while it lives.
        for _ in 0..4 {
            let next = connector.dial(&balancer, timeout, &uncounted).await;
            assert_eq!(ip_of(&next).as_deref(), Some("127.0.0.2"));
            let own = next.upstream.expect("connected");
            let pair = socket_pair(own.stream.tcp()).expect("pair");
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
            .dial(&balancer, Duration::from_secs(1), &uncounted)
            .await;
        assert_eq!(ip_of(&first).as_deref(), Some("127.0.0.1"));
        assert_eq!(
            first.upstream.err().map(|e| e.as_str()),
            Some("connect_refused")
        );
        assert!(balancer.endpoints()[0].health.ejected());
    }

    /// A sidecar's tunnel listener on `ip:port`, as [`crate::server`] serves it
    /// without the relay: it reads the preface, dials the target and answers.
    async fn tunnel_peer(ip: &str, port: u16) -> tokio::task::JoinHandle<()> {
        let l = tokio::net::TcpListener::bind((ip, port))
            .await
            .expect("bind tunnel");
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    return;
                };
                let mut s = Stream::Plain(s);
                tokio::spawn(async move {
                    let target = crate::tunnel::listen::read_target(&mut s, &[port])
                        .await
                        .expect("preface");
                    let app = TcpStream::connect(target).await;
                    let status = crate::tunnel::listen::status_of(
                        app.as_ref()
                            .map(drop)
                            .map_err(|_| ErrorReason::ConnectRefused),
                    );
                    crate::tunnel::listen::answer(&mut s, status)
                        .await
                        .expect("answer");
                    // Held until the client closes.
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
                });
            }
        })
    }

    /// A port free on 127.0.0.1 and 127.0.0.2 alike (both are asked).
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn a_tunnel_refusal_ejects_at_once_and_another_endpoint_takes_the_connection() {
        // Only 127.0.0.2's application listens; both sidecars answer on the tunnel.
        let app = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind");
        let tunnel_port = free_port();
        let _peers = [
            tunnel_peer("127.0.0.1", tunnel_port).await,
            tunnel_peer("127.0.0.2", tunnel_port).await,
        ];
        let balancer = balancer(
            app.local_addr().expect("addr").port(),
            &["127.0.0.1", "127.0.0.2"],
            Policy::default(),
        );
        let connector = Connector::new(tunnel_port);
        let retries = Mutex::new(Vec::new());
        let first = connector
            .dial(&balancer, Duration::from_secs(1), &|r| {
                lock(&retries).push(r)
            })
            .await;
        assert_eq!(ip_of(&first).as_deref(), Some("127.0.0.2"), "tried again");
        let up = first.upstream.expect("connected through the tunnel");
        assert_eq!(
            up.stream.tcp().peer_addr().expect("peer").port(),
            tunnel_port,
            "through the peer's tunnel, not straight to the app"
        );
        assert!(app.accept().await.is_ok(), "the app took it");
        assert_eq!(*lock(&retries), ["app_unreachable"]);
        assert!(
            balancer.endpoints()[0].health.ejected(),
            "out at the first refusal"
        );
    }

    #[tokio::test]
    async fn a_sidecar_without_a_tunnel_is_dialled_directly_and_not_ejected() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let app_port = app.local_addr().expect("addr").port();
        // Nothing listens on the tunnel port: an older sidecar.
        let tunnel_port = free_port();
        let balancer = balancer(app_port, &["127.0.0.1"], Policy::default());
        let connector = Connector::new(tunnel_port);
        // Round robin picks 127.0.0.1 first.
        let dialed = connector
            .dial(&balancer, Duration::from_secs(1), &|r| {
                panic!("retried ({r}): the direct dial works")
            })
            .await;
        assert_eq!(ip_of(&dialed).as_deref(), Some("127.0.0.1"));
        let up = dialed.upstream.expect("connected directly");
        assert_eq!(up.stream.tcp().peer_addr().expect("peer").port(), app_port);
        assert!(!balancer.endpoints()[0].health.ejected());
        let peer = "127.0.0.1".parse().expect("ip");
        let tunnel = connector.tunnel.as_ref().expect("tunnel");
        assert!(!tunnel.worth_trying(peer), "remembered as without a tunnel");
    }
}
