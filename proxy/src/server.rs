//! The running proxy's sockets: binds the capture listeners, the tunnel listener
//! and the admin and metrics endpoints, accepts captured and tunnelled connections
//! (each is then `connection`'s), and drains on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::addr::{ClientAddr, Direction};
use crate::config::ProxyConfig;
use crate::connection::route::UNKNOWN_SERVICE;
use crate::error::ErrorReason;
use crate::metrics::MetricsError;
use crate::orig_dst::OrigDstSource;
use crate::routes::Routes;
use crate::state::Shared;
use crate::tcp::liveness::Liveness;
use crate::tcp::relay;

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// A proxy whose sockets are bound; [`BoundProxy::run`] serves them.
pub struct BoundProxy {
    shared: Arc<Shared>,
    outbound: Vec<TcpListener>,
    inbound: Vec<TcpListener>,
    tunnel: Vec<TcpListener>,
    admin: TcpListener,
    metrics: TcpListener,
}

impl std::fmt::Debug for BoundProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundProxy")
            .field("outbound", &self.outbound_addrs())
            .field("inbound", &self.inbound_addrs())
            .field("tunnel", &self.tunnel_addrs())
            .finish()
    }
}

/// What happened during shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Connections still open when the grace period ended (0 = clean drain).
    pub abandoned: u32,
}

impl BoundProxy {
    /// Binds every listener of `config`. IPv6 listeners are skipped (with a log line)
    /// when the namespace has no IPv6; any other bind failure is an error.
    pub async fn bind(
        config: ProxyConfig,
        orig_dst: Arc<dyn OrigDstSource>,
    ) -> Result<Self, StartError> {
        // The relayed sockets' options are given once to their listeners: accepted
        // sockets inherit them (tcp::liveness).
        let relayed = Some(config.liveness());
        let outbound = bind_all("outbound listener", &config.outbound_listen, relayed)?;
        let inbound = bind_all("inbound listener", &config.inbound_listen, relayed)?;
        let tunnel = bind_all("tunnel listener", &config.tunnel_listen, relayed)?;
        let admin = bind_one("admin endpoint", config.admin_listen, None)?;
        let metrics_listener = bind_one("metrics endpoint", config.metrics_listen, None)?;
        // As bound (a port 0 of the configuration is the kernel's pick).
        let mut own_ports: Vec<u16> = [&outbound, &inbound, &tunnel]
            .into_iter()
            .flatten()
            .chain([&admin, &metrics_listener])
            .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
            .collect();
        own_ports.sort_unstable();
        own_ports.dedup();
        let shared = Arc::new(Shared::new(config, orig_dst, own_ports)?);
        Ok(BoundProxy {
            shared,
            outbound,
            inbound,
            tunnel,
            admin,
            metrics: metrics_listener,
        })
    }

    /// The routing table discovery updates; connections accepted after an update
    /// route by it.
    pub fn routes(&self) -> Arc<Routes> {
        self.shared.routes.clone()
    }

    /// Addresses the outbound listeners are bound to.
    pub fn outbound_addrs(&self) -> Vec<SocketAddr> {
        self.outbound
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Addresses the inbound listeners are bound to.
    pub fn inbound_addrs(&self) -> Vec<SocketAddr> {
        self.inbound
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Addresses the tunnel listeners are bound to.
    pub fn tunnel_addrs(&self) -> Vec<SocketAddr> {
        self.tunnel
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The metrics endpoint's address.
    pub fn metrics_addr(&self) -> io::Result<SocketAddr> {
        self.metrics.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, reports
    /// not-ready, and waits up to the grace period for open connections to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> DrainOutcome {
        let stop_rx = self.shared.stop.subscribe();
        let discovery_task = self.shared.config.discovery.clone().map(|config| {
            tokio::spawn(crate::discovery::run(
                config,
                crate::discovery::Targets {
                    routes: self.shared.routes.clone(),
                    synced: self.shared.synced.clone(),
                    status: self.shared.discovery.clone(),
                    identity: self.shared.identity.clone(),
                },
                self.shared.config.policy_defaults(),
                self.shared.draining.clone(),
            ))
        });
        let identity_task = self
            .shared
            .config
            .discovery
            .clone()
            .filter(|d| d.identity)
            .map(|config| {
                let status = self.shared.identity.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::identity::run(config, status).await {
                        tracing::error!(error = %e, "no key for a workload certificate");
                    }
                })
            });
        let mut accept_tasks = Vec::new();
        for (listeners, arrival) in [
            (self.outbound, Arrival::Captured(Direction::Outbound)),
            (self.inbound, Arrival::Captured(Direction::Inbound)),
            (self.tunnel, Arrival::Tunnel),
        ] {
            for listener in listeners {
                accept_tasks.push(tokio::spawn(accept_loop(
                    self.shared.clone(),
                    listener,
                    arrival,
                    stop_rx.clone(),
                )));
            }
        }
        tokio::spawn(crate::admin::serve_admin(
            self.shared.clone(),
            self.admin,
            wait_stop(stop_rx.clone()),
        ));
        tokio::spawn(crate::admin::serve_metrics(
            self.shared.clone(),
            self.metrics,
        ));
        let reclaim = tokio::spawn(crate::memory::reclaim_after_waves(self.shared.clone()));

        shutdown.await;
        self.shared.draining.store(true, Ordering::SeqCst);
        announce_drain(&self.shared).await;
        self.shared.stop.send_replace(true);
        for task in accept_tasks {
            let _ = task.await;
        }
        for task in discovery_task.into_iter().chain(identity_task) {
            task.abort();
        }
        reclaim.abort();
        let max = self.shared.config.max_connections;
        tracing::info!(
            open = self.shared.conns.live_count(),
            grace = %humantime::format_duration(self.shared.config.drain_grace),
            "draining: no longer accepting"
        );
        let all_back = self.shared.permits.clone().acquire_many_owned(max);
        match tokio::time::timeout(self.shared.config.drain_grace, all_back).await {
            Ok(_) => DrainOutcome { abandoned: 0 },
            Err(_) => DrainOutcome {
                abandoned: (max as usize - self.shared.permits.available_permits()) as u32,
            },
        }
    }
}

/// The drain's first step, with a controller: it is told (and withdraws this pod's
/// endpoints at once), and the proxy goes on serving for the drain delay, HTTP/1
/// responses saying `Connection: close`, while peers learn of it. The delay holds
/// also when the controller could not be told (it may be restarting): the
/// connections that carry a request meanwhile still learn to go elsewhere.
async fn announce_drain(shared: &Shared) {
    let config = &shared.config;
    let (Some(discovery), delay) = (&config.discovery, config.drain_delay) else {
        return;
    };
    if delay.is_zero() {
        return;
    }
    let started = tokio::time::Instant::now();
    match crate::discovery::announce_drain(discovery, delay).await {
        Ok(()) => tracing::info!(
            delay = %humantime::format_duration(delay),
            "draining: withdrawn from discovery; still serving for the drain delay"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            delay = %humantime::format_duration(delay),
            "draining: the controller could not be told; still serving for the drain delay"
        ),
    }
    tokio::time::sleep_until(started + delay).await;
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Binds a listener on each of `addrs`; `relayed`: the options of the sockets it
/// accepts, which the proxy relays.
fn bind_all(
    what: &'static str,
    addrs: &[SocketAddr],
    relayed: Option<Liveness>,
) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::new();
    for addr in addrs {
        match bind_one(what, *addr, relayed) {
            Ok(l) => out.push(l),
            Err(StartError::Bind { source, .. }) if addr.is_ipv6() && ipv6_unavailable(&source) => {
                tracing::info!(%addr, "no IPv6 in this namespace; {what} serves IPv4 only");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EAFNOSUPPORT) | Some(libc_errno::EADDRNOTAVAIL)
    )
}

mod libc_errno {
    pub const EAFNOSUPPORT: i32 = nix::errno::Errno::EAFNOSUPPORT as i32;
    pub const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
}

fn bind_one(
    what: &'static str,
    addr: SocketAddr,
    relayed: Option<Liveness>,
) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    if addr.is_ipv6() {
        // The IPv4 listener is separate; a dual-stack socket would collide with it.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    if let Some(liveness) = relayed {
        liveness.apply_to_listener(&socket).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// How connections reach a listener.
#[derive(Clone, Copy, Debug)]
enum Arrival {
    /// Redirected by capture (outbound or inbound).
    Captured(Direction),
    /// Opened by a peer sidecar on the tunnel port (inbound, with a preface).
    Tunnel,
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    arrival: Arrival,
    mut stop: watch::Receiver<bool>,
) {
    let direction = match arrival {
        Arrival::Captured(direction) => direction,
        Arrival::Tunnel => Direction::Inbound,
    };
    // Every connection of this listener arrives on its port; one whose original
    // destination has another was redirected (connection::destination).
    let listen_port = listener.local_addr().ok().map(|a| a.port());
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, %direction, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared
                    .metrics
                    .error(direction, UNKNOWN_SERVICE, ErrorReason::Overload);
                relay::reset(&stream);
                continue;
            }
        };
        let (shared, peer) = (shared.clone(), ClientAddr(peer));
        match arrival {
            Arrival::Captured(direction) => tokio::spawn(crate::connection::serve(
                shared,
                direction,
                stream,
                peer,
                listen_port,
                permit,
            )),
            Arrival::Tunnel => tokio::spawn(crate::connection::serve_tunnelled(
                shared, stream, peer, permit,
            )),
        };
    }
}
