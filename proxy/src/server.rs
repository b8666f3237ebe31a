//! The running proxy: binds the capture listeners and the admin and metrics
//! endpoints, accepts captured connections, routes each to its upstream, and drains
//! on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::addr::{ClientAddr, Direction, EndpointAddr, OrigDstAddr};
use crate::config::ProxyConfig;
use crate::conntable::{ByteCounters, ConnGuard};
use crate::conntable::{ConnInfo, ConnTable};
use crate::discovery::{DiscoveryStatus, StatusReport};
use crate::l7::connect::{socket_pair, Connector, OwnUpstreams};
use crate::l7::sniff::{self, Mode, Sniffed, Upstream};
use crate::l7::{Dest, Edge, L7};
use crate::metrics::{ErrorReason, Metrics, MetricsError, TcpLabels};
use crate::orig_dst::OrigDstSource;
use crate::relay::{self, RelayObserver};
use crate::routes::{PortProtocol, Resolved, Routes, ServiceRoute};
use weft_runtime::http::{self as http_endpoint, respond, text};

/// Outbound destinations that are no known service are forwarded as-is and labelled so.
pub const PASSTHROUGH_SERVICE: &str = "passthrough";
/// The label for a peer whose service is not known.
pub const UNKNOWN_SERVICE: &str = "unknown";

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

/// State shared by every task of one proxy.
struct Shared {
    config: ProxyConfig,
    metrics: Metrics,
    conns: Arc<ConnTable>,
    orig_dst: Arc<dyn OrigDstSource>,
    /// Services and endpoints from discovery; empty (all passthrough) without one.
    routes: Arc<Routes>,
    /// Local addresses of the proxy's own upstream sockets: a captured connection
    /// coming *from* one of them is the proxy's traffic looping back through capture.
    own_upstreams: OwnUpstreams,
    /// HTTP balancers, pools and instruments (the L7 path).
    l7: L7,
    /// One permit per connection in service; drain waits until all are back.
    permits: Arc<Semaphore>,
    draining: AtomicBool,
    /// Turns true when the drain begins (HTTP connections stop keep-alive, GOAWAY).
    stop: watch::Sender<bool>,
    /// This proxy's service name, shared by every connection's labels.
    own_service: Arc<str>,
    /// Whether the first discovery snapshot arrived (always true without discovery).
    synced: Arc<AtomicBool>,
    /// What discovery has done, for `/routes` (idle without discovery).
    discovery: Arc<DiscoveryStatus>,
}

/// A proxy whose sockets are bound; [`BoundProxy::run`] serves them.
pub struct BoundProxy {
    shared: Arc<Shared>,
    outbound: Vec<TcpListener>,
    inbound: Vec<TcpListener>,
    admin: TcpListener,
    metrics: TcpListener,
}

impl std::fmt::Debug for BoundProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundProxy")
            .field("outbound", &self.outbound_addrs())
            .field("inbound", &self.inbound_addrs())
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
        let outbound = bind_all("outbound listener", &config.outbound_listen)?;
        let inbound = bind_all("inbound listener", &config.inbound_listen)?;
        let admin = bind_one("admin endpoint", config.admin_listen)?;
        let metrics_listener = bind_one("metrics endpoint", config.metrics_listen)?;
        let metrics = Metrics::new(&config.service, config.traffic_metrics)?;
        let discovery = Arc::new(DiscoveryStatus::default());
        if config.discovery.is_some() {
            metrics.observe_discovery(discovery.clone());
        }
        let config_has_no_discovery = config.discovery.is_none();
        let own_service: Arc<str> = Arc::from(config.service.as_str());
        let own_upstreams = OwnUpstreams::default();
        let l7 = L7::new(
            Connector::new(own_upstreams.clone()),
            metrics.http().clone(),
            config.policy_defaults(),
            config.header_read_timeout,
        );
        let shared = Arc::new(Shared {
            own_service,
            conns: Arc::new(ConnTable::new(config.closed_history)),
            permits: Arc::new(Semaphore::new(config.max_connections as usize)),
            config,
            metrics,
            orig_dst,
            routes: Arc::new(Routes::default()),
            own_upstreams,
            l7,
            draining: AtomicBool::new(false),
            stop: watch::channel(false).0,
            synced: Arc::new(AtomicBool::new(config_has_no_discovery)),
            discovery,
        });
        Ok(BoundProxy {
            shared,
            outbound,
            inbound,
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
                self.shared.routes.clone(),
                self.shared.synced.clone(),
                self.shared.discovery.clone(),
                self.shared.config.policy_defaults(),
            ))
        });
        let mut accept_tasks = Vec::new();
        for (listeners, direction) in [
            (self.outbound, Direction::Outbound),
            (self.inbound, Direction::Inbound),
        ] {
            for listener in listeners {
                accept_tasks.push(tokio::spawn(accept_loop(
                    self.shared.clone(),
                    listener,
                    direction,
                    stop_rx.clone(),
                )));
            }
        }
        let admin_shared = self.shared.clone();
        tokio::spawn(http_endpoint::serve(
            self.admin,
            move |path| admin_route(&admin_shared, path),
            wait_stop(stop_rx.clone()),
        ));
        // The metrics endpoint keeps serving during the drain so `/ready` can say 503
        // and the last scrape sees the final counts; it ends with the process.
        let metrics_shared = self.shared.clone();
        tokio::spawn(http_endpoint::serve(
            self.metrics,
            move |path| metrics_route(&metrics_shared, path),
            std::future::pending(),
        ));

        shutdown.await;
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.stop.send_replace(true);
        for task in accept_tasks {
            let _ = task.await;
        }
        if let Some(task) = discovery_task {
            task.abort();
        }
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

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn bind_all(what: &'static str, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut out = Vec::new();
    for addr in addrs {
        match bind_one(what, *addr) {
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

fn bind_one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    if addr.is_ipv6() {
        // The IPv4 listener is separate; a dual-stack socket would collide with it.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    direction: Direction,
    mut stop: watch::Receiver<bool>,
) {
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
        tokio::spawn(serve_connection(
            shared.clone(),
            direction,
            stream,
            ClientAddr(peer),
            permit,
        ));
    }
}

/// Where a connection goes and how it is labelled.
struct Routing {
    source_service: Arc<str>,
    destination_service: Arc<str>,
    /// `None`: the destination is a service without endpoints, or (with `detect`) a
    /// service whose endpoint is chosen per request, or when the traffic proves opaque.
    endpoint: Option<EndpointAddr>,
    /// The service route of an outbound connection to a service.
    route: Option<Arc<ServiceRoute>>,
    /// How to detect the protocol; `None`: opaque TCP (declared `tcp`, passthrough).
    detect: Option<Mode>,
}

/// Outbound: the original destination's service (round robin over its endpoints) or
/// passthrough. Inbound: the local app, with the peer's service as the source.
fn route(
    shared: &Shared,
    direction: Direction,
    client: ClientAddr,
    orig_dst: OrigDstAddr,
) -> Routing {
    let own = shared.own_service.clone();
    let table = shared.routes.load();
    match direction {
        Direction::Outbound => match table.resolve(orig_dst) {
            Resolved::Service(route) => {
                let detect = crate::l7::mode_of(route.protocol);
                Routing {
                    source_service: own,
                    destination_service: route.service.clone(),
                    // Opaque ports balance per connection, detected ones per request.
                    endpoint: if detect.is_none() { route.pick() } else { None },
                    route: Some(route),
                    detect,
                }
            }
            // Passthrough stays opaque: no service, so no L7 behaviour to apply.
            Resolved::Passthrough => Routing {
                source_service: own,
                destination_service: Arc::from(PASSTHROUGH_SERVICE),
                endpoint: Some(EndpointAddr(orig_dst.0)),
                route: None,
                detect: None,
            },
        },
        Direction::Inbound => Routing {
            source_service: table
                .service_of_peer(client.0.ip())
                .unwrap_or_else(|| Arc::from(UNKNOWN_SERVICE)),
            // The own service's port declaration for this target port; `auto` when
            // undeclared.
            detect: crate::l7::mode_of(
                table
                    .target_port_protocol(&own, orig_dst.0.port())
                    .unwrap_or(PortProtocol::Auto),
            ),
            destination_service: own,
            endpoint: Some(EndpointAddr(orig_dst.0)),
            route: None,
        },
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    direction: Direction,
    client: TcpStream,
    client_addr: ClientAddr,
    _permit: OwnedSemaphorePermit,
) {
    let orig_dst = match recover_orig_dst(&shared, &client, client_addr) {
        Ok(o) => o,
        Err(reason) => {
            tracing::debug!(%client_addr, %direction, reason = reason.as_str(), "refused");
            shared.metrics.error(direction, UNKNOWN_SERVICE, reason);
            relay::reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let routing = route(&shared, direction, client_addr, orig_dst);
    let labels = Arc::new(TcpLabels::new(
        direction,
        &routing.source_service,
        &routing.destination_service,
    ));
    let mut conn = shared.conns.open(ConnInfo {
        direction,
        client: client_addr,
        orig_dst,
        service: routing.destination_service.to_string(),
        endpoint: routing.endpoint,
        protocol: if routing.detect.is_some() {
            "detecting"
        } else {
            "tcp"
        },
    });
    shared.metrics.tcp_opened(&labels);
    let observer = ConnObserver {
        direction,
        shared: shared.clone(),
        labels: labels.clone(),
        bytes: conn.bytes().clone(),
    };

    let end = match routing.detect {
        None => {
            let connected = match routing.endpoint {
                Some(endpoint) => connect_upstream(&shared, &routing, endpoint).await,
                None => Err(ErrorReason::NoEndpoints),
            };
            relay_opaque(&shared, &routing, &client, &[], connected, &observer).await
        }
        Some(mode) => serve_detected(&shared, &routing, mode, client, &conn, observer).await,
    };
    tracing::debug!(id = conn.id(), %client_addr, %orig_dst, %direction, end, "closed");
    conn.set_end(end);
    shared.metrics.tcp_closed(&labels);
}

/// Relays a connection as opaque TCP to `connected` (or fails it), after writing
/// `prefix` — bytes protocol detection already read from the client — upstream.
async fn relay_opaque(
    shared: &Shared,
    routing: &Routing,
    client: &TcpStream,
    prefix: &[u8],
    connected: Result<TcpStream, ErrorReason>,
    observer: &ConnObserver,
) -> String {
    match connected {
        Ok(upstream) => {
            let pair = socket_pair(&upstream);
            if let Some(pair) = pair {
                lock(&shared.own_upstreams).insert(pair);
            }
            let end = relay::relay_after(prefix, client, &upstream, observer).await;
            if let Some(pair) = pair {
                lock(&shared.own_upstreams).remove(&pair);
            }
            end.describe()
        }
        Err(reason) => {
            let direction = observer.direction;
            shared
                .metrics
                .error(direction, &routing.destination_service, reason);
            relay::reset(client);
            reason.as_str().to_string()
        }
    }
}

/// A connection to a port that is not declared `tcp`: detect HTTP, then serve it
/// on the L7 path, or relay opaque TCP (to an upstream possibly dialled already
/// because the client was silent).
async fn serve_detected(
    shared: &Arc<Shared>,
    routing: &Routing,
    mode: Mode,
    client: TcpStream,
    conn: &ConnGuard,
    observer: ConnObserver,
) -> String {
    let sniffed = sniff::sniff(&client, mode, || async {
        let endpoint = match &routing.route {
            Some(route) => route.pick(),
            None => routing.endpoint,
        };
        let stream = match endpoint {
            Some(endpoint) => connect_upstream(shared, routing, endpoint).await,
            None => Err(ErrorReason::NoEndpoints),
        };
        Upstream { endpoint, stream }
    })
    .await;
    match sniffed {
        Sniffed::Opaque { prefix, upstream } => {
            conn.set_protocol("tcp");
            conn.set_endpoint(upstream.endpoint);
            relay_opaque(
                shared,
                routing,
                &client,
                &prefix,
                upstream.stream,
                &observer,
            )
            .await
        }
        Sniffed::Http { version, prefix } => {
            conn.set_protocol(version.as_str());
            let dest = match (&routing.route, routing.endpoint) {
                (Some(route), _) => Dest::Service(route),
                (None, Some(addr)) => Dest::Address(addr),
                (None, None) => return "no_destination".to_string(),
            };
            let edge = Edge {
                direction: observer.direction,
                source: &routing.source_service,
                destination: &routing.destination_service,
            };
            let ctx = shared
                .l7
                .conn_ctx(version, dest, edge, observer.bytes.clone());
            let stop = shared.stop.subscribe();
            crate::l7::serve::serve(client, prefix, ctx, Arc::new(observer), stop).await
        }
        Sniffed::ClientFailed { error, upstream } => {
            if let Some(Ok(stream)) = upstream.as_ref().map(|u| &u.stream) {
                relay::reset(stream);
            }
            relay::reset(&client);
            relay::RelayEnd::Failed {
                side: relay::Side::Client,
                error,
            }
            .describe()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The original destination, or why the connection must not be proxied.
fn recover_orig_dst(
    shared: &Shared,
    client: &TcpStream,
    client_addr: ClientAddr,
) -> Result<OrigDstAddr, ErrorReason> {
    let orig = shared
        .orig_dst
        .orig_dst(client)
        .map_err(|_| ErrorReason::NoOrigDst)?;
    // A connection made straight to the listener (not redirected) "originally" went
    // to the listener itself; forwarding it would connect back to ourselves.
    if client.local_addr().ok() == Some(orig.0) {
        return Err(ErrorReason::Loop);
    }
    // The proxy's own upstream connection was captured again: the proxy does not run
    // as the excluded uid, or capture does not exclude it.
    if lock(&shared.own_upstreams).contains(&(client_addr.0, orig.0)) {
        tracing::error!(%client_addr, %orig, "capture loop: the proxy's own upstream connection was redirected back to it; is the proxy running as the excluded uid?");
        return Err(ErrorReason::Loop);
    }
    Ok(orig)
}

/// Connects an opaque connection's upstream within the service's connect timeout
/// (the proxy's for passthrough and inbound).
async fn connect_upstream(
    shared: &Shared,
    routing: &Routing,
    endpoint: EndpointAddr,
) -> Result<TcpStream, ErrorReason> {
    let timeout = routing
        .route
        .as_ref()
        .map_or(shared.config.connect_timeout, |r| r.policy.connect_timeout);
    crate::l7::connect::connect(endpoint, timeout).await
}

/// Counts a connection's bytes into `/connections` and the `weft_tcp_*` series;
/// owned, so the HTTP path's socket wrapper can keep it.
struct ConnObserver {
    direction: Direction,
    shared: Arc<Shared>,
    labels: Arc<TcpLabels>,
    bytes: Arc<ByteCounters>,
}

impl RelayObserver for ConnObserver {
    fn relayed_from_client(&self, n: u64) {
        self.bytes.from_client.fetch_add(n, Ordering::Relaxed);
        self.shared.metrics.tcp_received(&self.labels, n);
    }
    fn relayed_to_client(&self, n: u64) {
        self.bytes.to_client.fetch_add(n, Ordering::Relaxed);
        self.shared.metrics.tcp_sent(&self.labels, n);
    }
}

fn admin_route(shared: &Shared, path: &str) -> http::Response<http_endpoint::Body> {
    match path {
        "/connections" => json(&serde_json::json!({ "connections": shared.conns.snapshot() })),
        "/config" => json(&shared.config),
        "/routes" => routes_report(shared),
        "/" => text(
            StatusCode::OK,
            "weft-proxy admin\n  /connections  live and recently closed connections (JSON)\n  /config       the running configuration (JSON)\n  /routes       discovery status and the route table it applied (JSON)\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/routes`: what discovery applied (version, when, connection state) and the table
/// itself, read as one snapshot so the version matches the table shown.
fn routes_report(shared: &Shared) -> http::Response<http_endpoint::Body> {
    let (table, applied) = shared.routes.load_applied();
    let controller = shared
        .config
        .discovery
        .as_ref()
        .map(|d| d.controller.as_str());
    let discovery = StatusReport::new(
        controller,
        &shared.discovery,
        shared.synced.load(Ordering::SeqCst),
        applied,
    );
    json(&RoutesReport {
        discovery,
        services: table.view(),
    })
}

/// The body of `/routes`; serialized straight from the table (no intermediate JSON
/// tree: with thousands of endpoints that would double the work).
#[derive(serde::Serialize)]
struct RoutesReport<'a> {
    discovery: StatusReport,
    services: Vec<crate::routes::ServiceView<'a>>,
}

fn metrics_route(shared: &Shared, path: &str) -> http::Response<http_endpoint::Body> {
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if shared.draining.load(Ordering::SeqCst) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/ready" if !shared.synced.load(Ordering::SeqCst) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first discovery snapshot\n",
        ),
        "/ready" => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn json(value: &impl serde::Serialize) -> http::Response<http_endpoint::Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        ),
    }
}
