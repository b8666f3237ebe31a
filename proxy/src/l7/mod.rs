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
//!   [`request_body`]: the request body (streamed, with a bounded copy kept as it
//!   streams for retries); [`telemetry`]: the `weft_http_*` instruments and labels;
//!   [`trace`]: request spans and `traceparent`.

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
pub mod trace;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::addr::{Direction, EndpointAddr};
use crate::authz::Caller;
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

/// What every request of one HTTP connection shares. Kept small: an idle HTTP/1
/// connection is little more than this and its socket.
#[derive(Debug)]
pub struct ConnCtx {
    pub version: HttpVersion,
    pub target: Target,
    /// Shared by the connections of the same edge.
    pub labels: Arc<RequestLabels>,
    /// The connection's `/connections` counters (`requests` is counted here).
    pub counters: Arc<ByteCounters>,
    /// The client is a peer sidecar under mutual TLS (inbound).
    pub client_tls: bool,
    /// Inbound: who the client is, asked about at each request (the service's
    /// authorization).
    pub caller: Option<Box<Caller>>,
    /// Shared by every HTTP connection of the proxy.
    pub common: Arc<L7Common>,
    /// Upgraded (tunnelled) requests still running; the connection ends after them.
    tunnels: Mutex<Vec<JoinHandle<()>>>,
}

/// What every HTTP connection of one proxy shares.
#[derive(Debug)]
pub struct L7Common {
    pub instruments: HttpInstruments,
    pub connector: Connector,
    /// Timeouts and retries of a fixed target (inbound: the proxy's defaults without
    /// retries); a service's come with its balancer, per request.
    pub policy: Policy,
    /// How long a client has to send a request head (HTTP/1).
    pub header_read_timeout: Duration,
    /// The proxy is draining: HTTP/1 responses carry `Connection: close`.
    pub draining: Arc<AtomicBool>,
    /// Request spans, with a trace export configured.
    pub tracing: Option<trace::Tracing>,
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

/// The L7 state of one proxy: inbound pools, what its connections share, and the
/// request labels of each edge.
#[derive(Debug)]
pub struct L7 {
    inbound: InboundPools,
    common: Arc<L7Common>,
    labels: Mutex<HashMap<EdgeKey, Arc<RequestLabels>>>,
}

/// An edge, as the key of its request labels.
type EdgeKey = (Direction, Arc<str>, Arc<str>);

/// Edges whose labels are kept; past it the map starts again (services come and go
/// with discovery, and the labels are cheap to make).
const MAX_EDGES: usize = 4096;

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
    /// Closes idle inbound pooled connections beyond a few per application address
    /// ([`pool::EndpointPool::shed_idle`]); returns how many.
    pub fn shed_idle_inbound(&self) -> usize {
        let mut shed = 0;
        self.inbound
            .each(|pool| shed += pool.shed_idle(pool::KEEP_IDLE_H1_AFTER_LOAD));
        shed
    }

    pub fn new(
        draining: Arc<AtomicBool>,
        connector: Connector,
        instruments: HttpInstruments,
        defaults: Defaults,
        header_read_timeout: Duration,
        tracing: Option<trace::Tracing>,
    ) -> Self {
        let mut policy = Policy::defaults(defaults);
        // One local application: nothing else to try.
        policy.retries.attempts = 0;
        L7 {
            inbound: InboundPools::default(),
            common: Arc::new(L7Common {
                instruments,
                connector,
                policy,
                header_read_timeout,
                draining,
                tracing,
            }),
            labels: Mutex::new(HashMap::new()),
        }
    }

    /// The request labels of `edge`, made once.
    fn labels(&self, edge: &Edge<'_>) -> Arc<RequestLabels> {
        let key = (
            edge.direction,
            edge.source.clone(),
            edge.destination.clone(),
        );
        let mut labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = labels.get(&key) {
            return l.clone();
        }
        if labels.len() >= MAX_EDGES {
            labels.clear();
        }
        let made = Arc::new(RequestLabels::new(
            edge.direction,
            edge.source,
            edge.destination,
        ));
        labels.insert(key, made.clone());
        made
    }

    /// The request context of one HTTP connection.
    pub fn conn_ctx(
        &self,
        version: HttpVersion,
        dest: Dest,
        edge: Edge<'_>,
        counters: Arc<ByteCounters>,
        client_tls: bool,
        caller: Option<Caller>,
    ) -> Arc<ConnCtx> {
        let target = match dest {
            Dest::Service(follow) => Target::Balanced(follow),
            Dest::Address(addr) => Target::Fixed(self.inbound.get(addr)),
        };
        Arc::new(ConnCtx {
            version,
            target,
            labels: self.labels(&edge),
            counters,
            client_tls,
            caller: caller.map(Box::new),
            common: self.common.clone(),
            tunnels: Mutex::new(Vec::new()),
        })
    }
}
