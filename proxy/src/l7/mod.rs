//! The L7 path: protocol detection, and HTTP/1.1 and HTTP/2 (h2c) proxying with
//! per-request balancing over pooled upstream connections, retries within a
//! budget, a circuit breaker, and the service's timeouts.
//!
//! A routed connection whose port is `auto` goes through [`sniff`]: HTTP is served
//! here, anything else (or a server that speaks first) goes back to the opaque relay
//! with the bytes already read. A port declared `http` skips the opaque outcome; one
//! declared `tcp` never comes here.
//!
//! Layout:
//! - [`detect`]: the byte-prefix classifier (request line, h2 preface, opaque).
//! - [`sniff`]: reading the first bytes, racing a speculative upstream connection.
//! - [`serve`]: hyper's server on the client socket; [`io`]: that socket, replaying
//!   the detected prefix and counting bytes.
//! - [`forward`]: one request: pick, strip hop-by-hop [`headers`], send, retry,
//!   stream back, upgrades; [`errors`]: the proxy's own 502/503/504.
//! - [`balance`]: per-route round robin or P2C/peak-EWMA, the circuit breaker, the
//!   retry budget, and the registry of balancers and pools;
//!   [`pool`]: pooled HTTP/1.1 and h2c connections to one endpoint; [`connect`]:
//!   dialling endpoints.
//! - [`body`]: the response body (streaming, metrics on completion, pool return)
//!   and the request body (streamed, or a bounded copy kept for retries);
//!   [`telemetry`]: the `weft_http_*` instruments and labels.

pub mod balance;
pub mod body;
pub mod connect;
pub mod detect;
pub mod errors;
pub mod forward;
pub mod headers;
pub mod io;
pub mod pool;
pub mod serve;
pub mod sniff;
pub mod telemetry;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::addr::{Direction, EndpointAddr};
use crate::conntable::ByteCounters;
use crate::policy::{Defaults, Policy};
use crate::routes::{PortProtocol, ServiceRoute};
use balance::{Balancer, Registry};
use connect::Connector;
use pool::EndpointPool;
use sniff::Mode;
use telemetry::{HttpInstruments, RequestLabels};

/// The HTTP version a connection speaks, on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.x downstream; HTTP/1.1 keep-alive upstream.
    Http1,
    /// HTTP/2 prior knowledge (h2c) on both sides.
    H2,
}

impl HttpVersion {
    /// The `protocol` shown in `/connections`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http1 => "http1",
            HttpVersion::H2 => "h2",
        }
    }
}

/// How a port's declared protocol is detected; `None`: opaque TCP, no detection.
pub fn mode_of(protocol: PortProtocol) -> Option<Mode> {
    match protocol {
        PortProtocol::Auto => Some(Mode::Auto),
        PortProtocol::Http => Some(Mode::Http),
        PortProtocol::Tcp => None,
    }
}

/// Where a connection's requests go.
#[derive(Debug)]
pub enum Target {
    /// A service: round robin per request over its endpoints.
    Balanced(Arc<Balancer>),
    /// One address (inbound: the local application).
    Fixed(Arc<EndpointPool>),
}

impl Target {
    /// The balancer, for a service.
    pub fn balancer(&self) -> Option<&Balancer> {
        match self {
            Target::Balanced(b) => Some(b),
            Target::Fixed(_) => None,
        }
    }
}

/// What every request of one HTTP connection shares.
#[derive(Debug)]
pub struct ConnCtx {
    pub version: HttpVersion,
    pub target: Target,
    pub labels: RequestLabels,
    pub instruments: HttpInstruments,
    /// The connection's `/connections` counters (`requests` is counted here).
    pub counters: Arc<ByteCounters>,
    pub connector: Connector,
    /// Timeouts and retries: the service's policy, or (inbound) the proxy's
    /// defaults without retries.
    pub policy: Policy,
    /// How long a client has to send a request head (HTTP/1).
    pub header_read_timeout: Duration,
    /// Upgraded (tunnelled) requests still running; the connection ends after them.
    tunnels: Mutex<Vec<JoinHandle<()>>>,
}

impl ConnCtx {
    fn add_tunnel(&self, task: JoinHandle<()>) {
        self.tunnels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    fn take_tunnels(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.tunnels.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The L7 state of one proxy: balancers, pools, and how to dial.
#[derive(Debug)]
pub struct L7 {
    registry: Registry,
    connector: Connector,
    instruments: HttpInstruments,
    /// The policy of traffic to the local application (inbound).
    inbound_policy: Policy,
    header_read_timeout: Duration,
}

/// Who a connection is between, for its request labels.
#[derive(Debug)]
pub struct Edge<'a> {
    pub direction: Direction,
    pub source: &'a Arc<str>,
    pub destination: &'a Arc<str>,
}

/// Where a connection's requests are sent.
#[derive(Clone, Copy, Debug)]
pub enum Dest<'a> {
    /// A service's endpoints, balanced per request.
    Service(&'a Arc<ServiceRoute>),
    /// One address (inbound: the local application on the original port).
    Address(EndpointAddr),
}

impl L7 {
    pub fn new(
        connector: Connector,
        instruments: HttpInstruments,
        defaults: Defaults,
        header_read_timeout: Duration,
    ) -> Self {
        let mut inbound_policy = Policy::defaults(defaults);
        // One local application: nothing else to try.
        inbound_policy.retries.attempts = 0;
        L7 {
            registry: Registry::default(),
            connector,
            instruments,
            inbound_policy,
            header_read_timeout,
        }
    }

    /// The request context of one HTTP connection.
    pub fn conn_ctx(
        &self,
        version: HttpVersion,
        dest: Dest<'_>,
        edge: Edge<'_>,
        counters: Arc<ByteCounters>,
    ) -> Arc<ConnCtx> {
        let (target, policy) = match dest {
            Dest::Service(route) => (
                Target::Balanced(self.registry.balancer(route)),
                route.policy,
            ),
            Dest::Address(addr) => (
                Target::Fixed(self.registry.inbound(addr)),
                self.inbound_policy,
            ),
        };
        Arc::new(ConnCtx {
            version,
            target,
            labels: RequestLabels::new(edge.direction, edge.source, edge.destination),
            instruments: self.instruments.clone(),
            counters,
            connector: self.connector.clone(),
            policy,
            header_read_timeout: self.header_read_timeout,
            tunnels: Mutex::new(Vec::new()),
        })
    }
}
