//! One captured connection, from accept to its end: recover where it was going (and
//! refuse loops, [`destination`]), decide where it goes ([`route`]), detect its
//! protocol when the port asks for it ([`crate::detect`]), take a peer sidecar's
//! mutual TLS or refuse plaintext ([`secure`]), take the service's authorization
//! verdict on the caller ([`crate::authz`]), then hand it to the
//! opaque relay ([`crate::tcp`]) or the HTTP path ([`crate::l7`]). The flow only
//! goes forward: nothing hands a connection back here.
//!
//! A connection a peer sidecar opened on the tunnel port ([`serve_tunnelled`])
//! takes the same path as an inbound one redirected to the application port its
//! preface names, opaque from the first byte (the peer decided that), with the
//! tunnel's answer written once the application is dialled: one inbound path, one
//! set of telemetry and `/connections` rows for both.

pub mod destination;
pub mod route;
pub mod secure;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::addr::{ClientAddr, Direction, OrigDstAddr};
use crate::balance::Follow;
use crate::conntable::{ByteCounters, ConnGuard, ConnInfo};
use crate::detect::{self, Sniffed};
use crate::error::{ConnEnd, ErrorReason, Side};
use crate::l7::{Dest, Edge};
use crate::metrics::TcpSeries;
use crate::state::Shared;
use crate::tcp::connect::Dialed;
use crate::tcp::relay::{self, RelayObserver};
use crate::tcp::stream::Stream;
use crate::tunnel;
use route::{Routing, UNKNOWN_SERVICE};

/// Serves one accepted connection to its end; `listen_port`: the port of the
/// listener that accepted it, when known; `_permit` counts it as in service until
/// then.
///
/// Each path's future is boxed: the task of a connection is as large as the
/// largest state of this function, and an idle HTTP connection (the most common
/// state by far) should not carry the detection's and the opaque relay's.
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub fn serve(
    shared: Arc<Shared>,
    direction: Direction,
    client: TcpStream,
    client_addr: ClientAddr,
    listen_port: Option<u16>,
    permit: OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> {
    // An async block, not an async fn: its captures are used in place, where an
    // async fn's arguments take room twice in every state of the future (once as
    // arguments, once as the locals they are moved into), which every idle
    // connection pays.
    async move {
        // Named, so that the block captures it: a block takes only what it uses,
        // and the permit must be held until the connection ends (the drain waits
        // for it).
        let _permit = permit;
        // In a block that ends before the connection is served: its locals (moved
        // into `serve_routed`) would otherwise keep their room in the task for the
        // connection's whole life.
        let routed = {
            let orig_dst = match destination::recover(&shared, &client, client_addr, listen_port) {
                Ok(o) => o,
                Err(reason) => {
                    tracing::debug!(%client_addr, %direction, reason = reason.as_str(), "refused");
                    shared.metrics.error(direction, UNKNOWN_SERVICE, reason);
                    relay::reset(&client);
                    return;
                }
            };
            let routing = Routing::of(&shared, direction, client_addr, orig_dst);
            // Only a connection to this pod's application may open with a peer's
            // handshake: the boxed future (one allocation) is made for those alone.
            let client = match routing {
                Routing::Local { .. } => {
                    Box::pin(secure::take_inbound(&shared, client, &routing)).await
                }
                _ => Some(Stream::Plain(client)),
            };
            let Some(client) = client else {
                return;
            };
            serve_routed(
                shared,
                client,
                client_addr,
                orig_dst,
                routing,
                Entry::Captured,
            )
        };
        routed.await;
    }
}

/// Serves a connection a peer sidecar opened on the tunnel port: its preface names
/// the pod's application port; a bad preface is counted, logged and closed.
pub async fn serve_tunnelled(
    shared: Arc<Shared>,
    client: TcpStream,
    client_addr: ClientAddr,
    _permit: OwnedSemaphorePermit,
) {
    let taken = secure::take_tunnelled(&shared, client).await;
    let Some(mut client) = taken else {
        return;
    };
    let target = match tunnel::listen::read_target(&mut client, &shared.own_ports).await {
        Ok(target) => OrigDstAddr(target),
        Err(e) => {
            tracing::warn!(%client_addr, error = %e, "tunnel connection refused");
            shared.metrics.error(
                Direction::Inbound,
                &shared.own_service,
                ErrorReason::BadTunnelPreface,
            );
            return;
        }
    };
    let routing = Routing::of(&shared, Direction::Inbound, client_addr, target).opaque();
    serve_routed(
        shared,
        client,
        client_addr,
        target,
        routing,
        Entry::Tunnelled,
    )
    .await;
}

/// How a connection came to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// Redirected by capture.
    Captured,
    /// Through the tunnel: answered once its upstream is dialled.
    Tunnelled,
}

/// Serves a connection whose destination and routing are known, to its end.
#[allow(clippy::manual_async_fn)] // see the comment in the body
fn serve_routed(
    shared: Arc<Shared>,
    mut client: Stream,
    client_addr: ClientAddr,
    orig_dst: OrigDstAddr,
    routing: Routing,
    entry: Entry,
) -> impl std::future::Future<Output = ()> {
    // An async block, not an async fn: its captures are used in place, where an
    // async fn's arguments take room twice in every state of the future (once as
    // arguments, once as the locals they are moved into), which every idle
    // connection pays.
    async move {
        let direction = routing.direction();
        let destination = routing.destination_service(&shared.own_service);
        // Everything up to the HTTP server in a future of its own, boxed and gone
        // once an HTTP connection is served: the task of a connection is as large
        // as its largest state, and what detection, dialling and the opaque relay
        // hold (the detection's result, the caller, the observer) would otherwise
        // be carried by every idle keep-alive connection.
        let (tcp_series, mut conn, step) = Box::pin(async {
            let source = routing.source_service(&shared.own_service);
            let peer = tls_peer(&client);
            let tcp_series = shared.metrics.tcp_series(
                direction,
                &source,
                &destination,
                secured(&shared, &routing, &client),
            );
            // Inbound, who the caller is to the pod's service's authorization. One it
            // does not let in reaches nothing: nothing is dialled, its TCP is reset
            // (through the tunnel: told so, and its sidecar resets), and its HTTP
            // requests are answered 403 (the same `Caller` asked again at each one,
            // its verdict kept until discovery changes something).
            let caller = match &routing {
                Routing::Local { app, .. } => Some(crate::authz::Caller::new(
                    shared.routes.clone(),
                    shared.own_service.clone(),
                    app.0.port(),
                    peer.clone().filter(|id| !id.is_empty()),
                )),
                _ => None,
            };
            let refused = caller
                .as_ref()
                .is_some_and(|c| !c.allowed())
                .then_some(ErrorReason::Unauthorized);
            let conn = shared.conns.open(ConnInfo {
                direction,
                client: client_addr,
                orig_dst,
                service: destination.clone(),
                // A refused caller reaches no endpoint.
                endpoint: routing.fixed_endpoint().filter(|_| refused.is_none()),
                protocol: if routing.detection().is_some() {
                    "detecting"
                } else {
                    "tcp"
                },
                tls_peer: peer,
            });
            tcp_series.opened();
            let observer = ConnObserver {
                direction,
                destination: destination.clone(),
                shared: shared.clone(),
                tcp_series: tcp_series.clone(),
                bytes: conn.bytes().clone(),
            };
            let dial_unless_refused = || async {
                match refused {
                    Some(reason) => Dialed {
                        endpoint: None,
                        upstream: Err(reason),
                    },
                    None => dial(&shared, &routing).await,
                }
            };
            let step = match routing.detection() {
                None => {
                    let dialed = Box::pin(dial_unless_refused()).await;
                    Step::Ended(match entry {
                        Entry::Tunnelled => {
                            Box::pin(answer_then_relay(
                                &mut client,
                                dialed,
                                &routing,
                                &conn,
                                &observer,
                            ))
                            .await
                        }
                        Entry::Captured => {
                            Box::pin(opaque(&mut client, &[], dialed, &routing, &conn, &observer))
                                .await
                        }
                    })
                }
                Some(detection) => {
                    let sniffed = Box::pin(detect::sniff(
                        &mut client,
                        detection,
                        routing.speculate_after(),
                        dial_unless_refused,
                    ));
                    let sniffed = sniffed.await;
                    routing.learn(&sniffed);
                    match sniffed {
                        Sniffed::Opaque {
                            prefix, upstream, ..
                        } => {
                            conn.set_protocol("tcp");
                            Step::Ended(
                                Box::pin(opaque(
                                    &mut client,
                                    &prefix,
                                    upstream,
                                    &routing,
                                    &conn,
                                    &observer,
                                ))
                                .await,
                            )
                        }
                        Sniffed::Http {
                            version, prefix, ..
                        } => {
                            conn.set_protocol(version.as_str());
                            let dest = match &routing {
                                Routing::Service {
                                    balancer,
                                    generation,
                                    orig_dst,
                                    ..
                                } => Dest::Service(Follow::new(
                                    shared.routes.clone(),
                                    shared.balancers.clone(),
                                    *orig_dst,
                                    *generation,
                                    balancer.clone(),
                                )),
                                Routing::Passthrough(addr) | Routing::Local { app: addr, .. } => {
                                    Dest::Address(*addr)
                                }
                            };
                            let edge = Edge {
                                direction,
                                source: &source,
                                destination: &destination,
                            };
                            let ctx = shared.l7.conn_ctx(
                                version,
                                dest,
                                edge,
                                observer.bytes.clone(),
                                client.is_tls(),
                                caller,
                            );
                            let stop = shared.stop.subscribe();
                            let observer = Arc::new(observer);
                            Step::Http(Box::pin(crate::l7::serve::serve(
                                client, prefix, ctx, observer, stop,
                            )))
                        }
                        Sniffed::ClientFailed { error, upstream } => {
                            if let Some(Ok(up)) = upstream.as_ref().map(|u| &u.upstream) {
                                relay::reset(up.stream.tcp());
                            }
                            relay::reset(client.tcp());
                            Step::Ended(ConnEnd::Failed {
                                side: Side::Client,
                                error,
                            })
                        }
                    }
                }
            };
            (tcp_series, conn, step)
        })
        .await;
        let end = match step {
            Step::Ended(end) => end,
            Step::Http(serving) => {
                let end = serving.await;
                // A client cut off mid-head: counted like the proxy's other errors.
                if let Some(reason) = end.http_error() {
                    shared.metrics.error(direction, &destination, reason);
                }
                end
            }
        };
        tracing::debug!(id = conn.id(), %client_addr, %orig_dst, %direction, end = %end, "closed");
        conn.set_end(end);
        tcp_series.closed();
    }
}

/// Where a connection is once its path is known: ended (an opaque relay, a failed
/// detection), or an HTTP connection to serve.
enum Step<H> {
    Ended(ConnEnd),
    Http(std::pin::Pin<Box<H>>),
}

/// Relays an opaque connection to what was dialled for it (after `prefix`, what
/// detection read), or fails it, counted, when nothing could be.
async fn opaque(
    client: &mut Stream,
    prefix: &[u8],
    dialed: Dialed,
    routing: &Routing,
    conn: &ConnGuard,
    observer: &ConnObserver,
) -> ConnEnd {
    // A service's endpoint is known once picked (`/connections` showed none yet).
    if dialed.endpoint != routing.fixed_endpoint() {
        conn.set_endpoint(dialed.endpoint);
    }
    if let Some(peer) = dialed
        .upstream
        .as_ref()
        .ok()
        .and_then(|u| tls_peer(&u.stream))
    {
        conn.set_tls_peer(peer);
    }
    if let Err(reason) = &dialed.upstream {
        observer
            .shared
            .metrics
            .error(observer.direction, &observer.destination, *reason);
    }
    let limits = routing.relay_limits(observer.shared.tcp_limits);
    let end = relay::relay_opaque(client, prefix, dialed.upstream, limits, observer).await;
    // A bound that fired, or a dead peer: counted like the proxy's other errors.
    if let Some(reason) = end.opaque_error() {
        observer
            .shared
            .metrics
            .error(observer.direction, &observer.destination, reason);
    }
    end
}

/// A tunnelled connection: tells the peer sidecar whether the application accepted,
/// then relays as any opaque connection. A refusal is counted as an inbound
/// connection's failed dial is, and the connection closed normally (a reset could
/// overtake the answer).
async fn answer_then_relay(
    client: &mut Stream,
    dialed: Dialed,
    routing: &Routing,
    conn: &ConnGuard,
    observer: &ConnObserver,
) -> ConnEnd {
    let outcome = dialed.upstream.as_ref().map(drop).map_err(|reason| *reason);
    if let Err(error) = tunnel::listen::answer(client, tunnel::listen::status_of(outcome)).await {
        if let Ok(up) = &dialed.upstream {
            relay::reset(up.stream.tcp());
        }
        relay::reset(client.tcp());
        return ConnEnd::Failed {
            side: Side::Client,
            error,
        };
    }
    match dialed.upstream {
        Err(reason) => {
            observer
                .shared
                .metrics
                .error(observer.direction, &observer.destination, reason);
            ConnEnd::Refused(reason)
        }
        Ok(_) => opaque(client, &[], dialed, routing, conn, observer).await,
    }
}

/// The `tls` label of a connection's series: inbound, whether the peer's
/// connection is mutual TLS; outbound, whether its service's endpoints are all
/// dialled under mutual TLS (exact for opaque TCP but for a service whose
/// endpoints are partly meshed; HTTP requests carry their own).
fn secured(shared: &Shared, routing: &Routing, client: &Stream) -> bool {
    match routing {
        Routing::Local { .. } => client.is_tls(),
        Routing::Service { balancer, .. } => {
            balancer.all_identified() && shared.connector.holds_certificate()
        }
        Routing::Passthrough(_) => false,
    }
}

/// The peer sidecar's identity for `/connections`, when `stream` is under mutual
/// TLS (empty when its certificate names none).
fn tls_peer(stream: &Stream) -> Option<Arc<str>> {
    stream
        .is_tls()
        .then(|| Arc::from(stream.peer_identity().unwrap_or_default()))
}

/// Dials the upstream of an opaque connection (or, during detection, speculatively):
/// a service's endpoint through its balancer (each retry on another endpoint
/// counted), else the one fixed address.
async fn dial(shared: &Shared, routing: &Routing) -> Dialed {
    let timeout = routing.connect_timeout(shared.config.connect_timeout);
    match routing {
        Routing::Service {
            balancer, route, ..
        } => {
            let retried = |reason| {
                shared
                    .metrics
                    .tcp_connect_retry(Direction::Outbound, &route.service, reason)
            };
            shared.connector.dial(balancer, timeout, &retried).await
        }
        Routing::Passthrough(addr) | Routing::Local { app: addr, .. } => {
            shared.connector.dial_addr(*addr, timeout).await
        }
    }
}

/// Counts a connection's bytes into `/connections` and the `weft_tcp_*` series;
/// owned, so the HTTP path's socket wrapper can keep it.
struct ConnObserver {
    direction: Direction,
    /// The `destination_service` label, for the errors counted on the way.
    destination: Arc<str>,
    shared: Arc<Shared>,
    tcp_series: Arc<TcpSeries>,
    bytes: Arc<ByteCounters>,
}

impl RelayObserver for ConnObserver {
    fn relayed_from_client(&self, n: u64) {
        self.bytes.from_client.fetch_add(n, Ordering::Relaxed);
        self.tcp_series.received(n);
    }
    fn relayed_to_client(&self, n: u64) {
        self.bytes.to_client.fetch_add(n, Ordering::Relaxed);
        self.tcp_series.sent(n);
    }
}
