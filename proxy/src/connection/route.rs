//! Where a connection goes and how it is labelled: outbound to a service port (its
//! balancer picks the endpoint) or passthrough to the original destination;
//! inbound to the local application, with the peer's service as the source.

use std::sync::Arc;
use std::time::Duration;

use crate::addr::{ClientAddr, Direction, EndpointAddr, OrigDstAddr};
use crate::detect::{self, Detection, Sniffed};
use crate::l7::ServiceBalancer;
use crate::routes::{PortProtocol, Resolved, ServiceRoute};
use crate::state::Shared;
use crate::tcp::relay::RelayLimits;

/// Outbound destinations that are no known service are forwarded as-is and labelled so.
pub const PASSTHROUGH_SERVICE: &str = "passthrough";
/// The label for a peer whose service is not known.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// Where one connection goes.
pub enum Routing {
    /// Outbound to a service port: the endpoint is picked by its balancer (per
    /// connection when opaque, per request when HTTP).
    Service {
        route: Arc<ServiceRoute>,
        balancer: Arc<ServiceBalancer>,
        /// The routing table's generation the route was found in.
        generation: u64,
        orig_dst: OrigDstAddr,
        /// `None`: the port is declared `tcp`.
        detection: Option<Detection>,
    },
    /// Outbound to no known service: forwarded as-is, opaque (no service, so no L7
    /// behaviour to apply).
    Passthrough(EndpointAddr),
    /// Inbound: the local application on the original port.
    Local {
        app: EndpointAddr,
        /// The service of the peer that connected ([`UNKNOWN_SERVICE`] if none).
        peer_service: Arc<str>,
        /// From the own service's declaration of this target port (`auto` when
        /// undeclared).
        detection: Option<Detection>,
    },
}

impl Routing {
    /// Routes a connection from `client` to `orig_dst` by the current table.
    pub fn of(
        shared: &Shared,
        direction: Direction,
        client: ClientAddr,
        orig_dst: OrigDstAddr,
    ) -> Routing {
        let generation = shared.routes.generation();
        let table = shared.routes.load();
        match direction {
            Direction::Outbound => match table.resolve(orig_dst) {
                Resolved::Service(route) => Routing::Service {
                    balancer: shared.balancers.balancer(&route),
                    generation,
                    orig_dst,
                    detection: Detection::of_port(route.protocol),
                    route,
                },
                Resolved::Passthrough => Routing::Passthrough(EndpointAddr(orig_dst.0)),
            },
            Direction::Inbound => Routing::Local {
                app: EndpointAddr(orig_dst.0),
                peer_service: table
                    .service_of_peer(client.0.ip())
                    .unwrap_or_else(|| Arc::from(UNKNOWN_SERVICE)),
                detection: Detection::of_port(
                    table
                        .target_port_protocol(&shared.own_service, orig_dst.0.port())
                        .unwrap_or(PortProtocol::Auto),
                ),
            },
        }
    }

    /// Outbound for a service or passthrough, inbound to the local application.
    pub fn direction(&self) -> Direction {
        match self {
            Routing::Service { .. } | Routing::Passthrough(_) => Direction::Outbound,
            Routing::Local { .. } => Direction::Inbound,
        }
    }

    /// The same routing, opaque from the first byte (no detection), for a
    /// tunnelled connection: its peer sidecar already found it not to be HTTP.
    pub fn opaque(self) -> Routing {
        match self {
            Routing::Local {
                app, peer_service, ..
            } => Routing::Local {
                app,
                peer_service,
                detection: None,
            },
            other => other,
        }
    }

    /// The `source_service` label.
    pub fn source_service(&self, own: &Arc<str>) -> Arc<str> {
        match self {
            Routing::Service { .. } | Routing::Passthrough(_) => own.clone(),
            Routing::Local { peer_service, .. } => peer_service.clone(),
        }
    }

    /// The `destination_service` label.
    pub fn destination_service(&self, own: &Arc<str>) -> Arc<str> {
        match self {
            Routing::Service { route, .. } => route.service.clone(),
            Routing::Passthrough(_) => Arc::from(PASSTHROUGH_SERVICE),
            Routing::Local { .. } => own.clone(),
        }
    }

    /// How the protocol is detected; `None`: opaque TCP from the first byte.
    pub fn detection(&self) -> Option<Detection> {
        match self {
            Routing::Service { detection, .. } | Routing::Local { detection, .. } => *detection,
            Routing::Passthrough(_) => None,
        }
    }

    /// How long a silent client is given before its upstream is dialled: shorter
    /// for a service port whose server was last seen to speak first.
    pub fn speculate_after(&self) -> Duration {
        match self {
            Routing::Service { balancer, .. } if balancer.server_first() => {
                detect::SPECULATE_AFTER_KNOWN
            }
            _ => detect::SPECULATE_AFTER,
        }
    }

    /// Remembers, for a service port, what detection saw of a client that was
    /// silent at first: its server spoke first, or it went on to speak HTTP.
    pub fn learn(&self, sniffed: &Sniffed) {
        let Routing::Service { balancer, .. } = self else {
            return;
        };
        match sniffed {
            Sniffed::Opaque {
                server_first: true, ..
            } => balancer.note_server_first(true),
            Sniffed::Http {
                speculated: true, ..
            } => balancer.note_server_first(false),
            _ => {}
        }
    }

    /// The upstream address when it is known before any pick.
    pub fn fixed_endpoint(&self) -> Option<EndpointAddr> {
        match self {
            Routing::Service { .. } => None,
            Routing::Passthrough(addr) | Routing::Local { app: addr, .. } => Some(*addr),
        }
    }

    /// How long the opaque relay may go without a byte: the service's policy, or
    /// `defaults` (the proxy's) for passthrough and inbound.
    pub fn relay_limits(&self, defaults: RelayLimits) -> RelayLimits {
        match self {
            Routing::Service { route, .. } => RelayLimits {
                idle: route.policy.tcp_idle_timeout,
                half_close: route.policy.half_close_timeout,
            },
            Routing::Passthrough(_) | Routing::Local { .. } => defaults,
        }
    }

    /// The connect timeout: the service's, or the proxy's for passthrough and inbound.
    pub fn connect_timeout(&self, proxy_default: Duration) -> Duration {
        match self {
            Routing::Service { route, .. } => route.policy.connect_timeout,
            Routing::Passthrough(_) | Routing::Local { .. } => proxy_default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorReason;
    use crate::l7::Registry;
    use crate::routes::{test_spec, RouteTable};
    use crate::tcp::connect::Dialed;
    use bytes::BytesMut;

    fn service_routing() -> Routing {
        let table = RouteTable::from_services([test_spec("b", "10.96.0.1", &["127.0.0.1"])]);
        let orig_dst = OrigDstAddr("10.96.0.1:80".parse().expect("addr"));
        let Resolved::Service(route) = table.resolve(orig_dst) else {
            panic!("no route");
        };
        Routing::Service {
            balancer: Registry::default().balancer(&route),
            generation: 0,
            orig_dst,
            detection: Some(Detection::Auto),
            route,
        }
    }

    fn opaque(server_first: bool) -> Sniffed {
        Sniffed::Opaque {
            prefix: BytesMut::new(),
            upstream: Dialed {
                endpoint: None,
                upstream: Err(ErrorReason::ConnectRefused),
            },
            server_first,
        }
    }

    fn http(speculated: bool) -> Sniffed {
        Sniffed::Http {
            version: crate::detect::HttpVersion::Http1,
            prefix: BytesMut::new(),
            speculated,
        }
    }

    #[test]
    fn a_port_whose_server_spoke_first_is_dialled_at_once_until_a_client_speaks_http() {
        let routing = service_routing();
        assert_eq!(routing.speculate_after(), detect::SPECULATE_AFTER);
        // A client that spoke first, opaque or HTTP, teaches nothing.
        routing.learn(&opaque(false));
        routing.learn(&http(false));
        assert_eq!(routing.speculate_after(), detect::SPECULATE_AFTER);
        routing.learn(&opaque(true));
        assert_eq!(routing.speculate_after(), detect::SPECULATE_AFTER_KNOWN);
        // A fast HTTP client on the same port does not unlearn it...
        routing.learn(&http(false));
        assert_eq!(routing.speculate_after(), detect::SPECULATE_AFTER_KNOWN);
        // ...one whose upstream was dialled for nothing does.
        routing.learn(&http(true));
        assert_eq!(routing.speculate_after(), detect::SPECULATE_AFTER);
    }

    #[test]
    fn inbound_and_passthrough_always_wait_the_full_time() {
        let passthrough = Routing::Passthrough(EndpointAddr("10.0.0.1:25".parse().expect("a")));
        passthrough.learn(&opaque(true));
        assert_eq!(passthrough.speculate_after(), detect::SPECULATE_AFTER);
    }
}
