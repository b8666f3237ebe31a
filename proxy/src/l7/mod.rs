//! The L7 path: HTTP/1.1 and HTTP/2 (h2c) proxying, beside the L4 path
//! ([`crate::tcp`]), with per-request balancing over pooled upstream connections,
//! retries within a budget, the circuit breaker, and the service's timeouts.
//!
//! A connection comes here once detection ([`crate::detect`]) decided it speaks
//! HTTP; it never goes back to the opaque path. Endpoints are picked by the
//! service's balancer ([`crate::balance`]), the same one opaque connections use.
//!
//! Layout:
//! - [`serve`]: hyper's server on the client socket, idle HTTP/1 connections held
//!   without it ([`head_wait`] tells when hyper waits for a next request); [`io`]:
//!   that socket, replaying the detected prefix and counting bytes.
//! - [`forward`]: one request: pick, strip hop-by-hop [`headers`], send, retry,
//!   stream back, upgrades; [`errors`]: the proxy's own 400/502/503/504.
//! - [`pool`]: pooled HTTP/1.1 and h2c connections to one endpoint (what the
//!   balancer keeps per endpoint for HTTP), and the inbound pools.
//! - [`body`]: the response body (streaming, metrics on completion, pool return);
//!   [`request_body`]: the request body (streamed, or a bounded copy kept for
//!   retries); [`telemetry`]: the `weft_http_*` instruments and labels.

pub mod body;
pub mod errors;
pub mod forward;
pub mod head_wait;
pub mod headers;
pub mod io;
pub mod pool;
pub mod request_body;
pub mod serve;
pub mod telemetry;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::addr::{Direction, EndpointAddr};
use crate::balance::{Balancer, Endpoint};
use crate::conntable::ByteCounters;
pub use crate::detect::HttpVersion;
use crate::policy::{Defaults, Policy};
use crate::tcp::connect::Connector;
use pool::{EndpointPool, InboundPools};
use telemetry::{HttpInstruments, RequestLabels};

/// An endpoint as the balancer keeps it, with its HTTP pool.
pub type HttpEndpoint = Endpoint<Arc<EndpointPool>>;
/// A service's balancer: endpoints with their HTTP pools. Opaque connections use the
/// same one (and ignore the pools), so both paths share breaker state.
pub type ServiceBalancer = Balancer<Arc<EndpointPool>>;
/// A connection's service balancer, followed across routing updates.
pub type ServiceFollow = crate::balance::Follow<Arc<EndpointPool>>;
/// The registry of the balancers both paths use.
pub type Registry = crate::balance::Registry<Arc<EndpointPool>>;

/// Where a connection's requests go.
#[derive(Debug)]
pub enum Target {
    /// A service: its endpoints (as discovery says now) balanced per request.
    Balanced(ServiceFollow),
    /// One address (inbound: the local application).
    Fixed(Arc<EndpointPool>),
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
    /// Timeouts and retries of a fixed target (inbound: the proxy's defaults without
    /// retries); a service's come with its balancer, per request.
    pub policy: Policy,
    /// How long a client has to send a request head (HTTP/1).
    pub header_read_timeout: Duration,
    /// The proxy is draining (see [`L7`]).
    pub draining: Arc<AtomicBool>,
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

/// The L7 state of one proxy: inbound pools, instruments, and how to dial.
#[derive(Debug)]
pub struct L7 {
    /// The proxy is draining: HTTP/1 responses carry `Connection: close`.
    draining: Arc<AtomicBool>,
    inbound: InboundPools,
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
#[derive(Debug)]
pub enum Dest {
    /// A service's endpoints, balanced per request.
    Service(ServiceFollow),
    /// One address (inbound: the local application on the original port).
    Address(EndpointAddr),
}

impl L7 {
    pub fn new(
        draining: Arc<AtomicBool>,
        connector: Connector,
        instruments: HttpInstruments,
        defaults: Defaults,
        header_read_timeout: Duration,
    ) -> Self {
        let mut inbound_policy = Policy::defaults(defaults);
        // One local application: nothing else to try.
        inbound_policy.retries.attempts = 0;
        L7 {
            draining,
            inbound: InboundPools::default(),
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
        dest: Dest,
        edge: Edge<'_>,
        counters: Arc<ByteCounters>,
    ) -> Arc<ConnCtx> {
        let (target, policy) = match dest {
            Dest::Service(follow) => (Target::Balanced(follow), self.inbound_policy),
            Dest::Address(addr) => (Target::Fixed(self.inbound.get(addr)), self.inbound_policy),
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
            draining: self.draining.clone(),
            tunnels: Mutex::new(Vec::new()),
        })
    }
}
