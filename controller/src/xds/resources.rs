//! weft's served mesh as Envoy xDS v3 resources, as gRPC's xDS client (gRFC A27)
//! reads them (ARCHITECTURE.md, xDS for proxyless gRPC):
//!
//! - a **Listener** per service port, holding in its `api_listener` an
//!   HttpConnectionManager with the route configuration inline (no RDS round trip:
//!   one route, `prefix: ""`, to the port's cluster) and the router filter, which
//!   gRPC requires last;
//! - a **Cluster** per service port: EDS over ADS, round robin;
//! - a **ClusterLoadAssignment** per cluster: the service's served endpoints (those
//!   withdrawn by health checks, draining or not ready are not in the served mesh)
//!   at the port's target port, in one locality of weight 1 (gRPC ignores a
//!   locality without weight).
//!
//! Only the names asked for are made; a name that means nothing in the mesh is
//! left out, which state-of-the-world xDS reads as "does not exist".

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, AggregatedConfigSource, ApiVersion, ConfigSource,
    Locality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::names::{cluster_name, listener_names, resolve_cluster, resolve_listener};
use crate::model::Mesh;

/// The three resource types weft serves, in the order a gRPC client asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Listener,
    Cluster,
    Endpoints,
}

/// `type.googleapis.com/` + a message's full name.
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Listener, Kind::Cluster, Kind::Endpoints];

    /// The kind of a request's `type_url`, if weft serves it.
    pub fn of_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Its `type_url`.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Listener => LISTENER_TYPE,
            Kind::Cluster => CLUSTER_TYPE,
            Kind::Endpoints => ENDPOINTS_TYPE,
        }
    }

    /// Its `type` label on the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Listener => "listener",
            Kind::Cluster => "cluster",
            Kind::Endpoints => "endpoints",
        }
    }

    /// Whether an empty list of names asks for every resource (xDS: Listeners and
    /// Clusters only).
    pub fn has_wildcard(self) -> bool {
        !matches!(self, Kind::Endpoints)
    }
}

/// The resources of `kind` named `names` in `mesh` (every one with `None`, a
/// wildcard), each packed in an `Any`, by name; names that mean nothing are left out.
pub fn resources(mesh: &Mesh, kind: Kind, names: Option<&[String]>) -> Vec<(String, Any)> {
    let all;
    let names = match names {
        Some(names) => names,
        None => {
            all = all_names(mesh, kind);
            &all
        }
    };
    names
        .iter()
        .filter_map(|name| Some((name.clone(), resource(mesh, kind, name)?)))
        .collect()
}

/// Every name of `kind` in `mesh`.
fn all_names(mesh: &Mesh, kind: Kind) -> Vec<String> {
    mesh.services
        .iter()
        .flat_map(|(name, service)| match kind {
            Kind::Listener => listener_names(name, service),
            Kind::Cluster | Kind::Endpoints => service
                .ports
                .iter()
                .map(|p| cluster_name(name, p))
                .collect(),
        })
        .collect()
}

fn resource(mesh: &Mesh, kind: Kind, name: &str) -> Option<Any> {
    match kind {
        Kind::Listener => {
            let (service, _, port) = resolve_listener(mesh, name)?;
            Some(pack_any(listener(name, &cluster_name(service, port))))
        }
        Kind::Cluster => {
            resolve_cluster(mesh, name)?;
            Some(pack_any(cluster(name)))
        }
        Kind::Endpoints => {
            let (_, service, port) = resolve_cluster(mesh, name)?;
            let target = u32::from(port.target_port.get());
            let endpoints = service.endpoints.iter().map(|ip| (ip.to_string(), target));
            Some(pack_any(load_assignment(name, endpoints)))
        }
    }
}

/// The Listener `name`: an API listener routing every call to `cluster`.
fn listener(name: &str, cluster: &str) -> Listener {
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: name.to_owned(),
                virtual_hosts: vec![VirtualHost {
                    name: name.to_owned(),
                    // gRPC picks the virtual host by the target's authority; the
                    // listener is already the service's, so any authority matches.
                    domains: vec!["*".to_owned()],
                    routes: vec![route],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    }
}

/// The Cluster `name`: its endpoints by EDS over this same ADS stream, balanced
/// round robin.
fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                resource_api_version: ApiVersion::V3 as i32,
                ..Default::default()
            }),
            // Empty: the assignment is named as the cluster.
            service_name: String::new(),
        }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        connect_timeout: Some(Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The ClusterLoadAssignment `name`: `endpoints` (address, port), one locality.
fn load_assignment(
    name: &str,
    endpoints: impl Iterator<Item = (String, u32)>,
) -> ClusterLoadAssignment {
    let lb_endpoints: Vec<LbEndpoint> = endpoints
        .map(|(address, port)| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address,
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            // Served endpoints are the healthy ones (weft withdraws the rest).
            health_status: envoy_types::pb::envoy::config::core::v3::HealthStatus::Healthy as i32,
            ..Default::default()
        })
        .collect();
    let localities = (!lb_endpoints.is_empty()).then(|| LocalityLbEndpoints {
        locality: Some(Locality::default()),
        lb_endpoints,
        load_balancing_weight: Some(UInt32Value { value: 1 }),
        priority: 0,
        ..Default::default()
    });
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: localities.into_iter().collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use prost::Message as _;

    use super::*;

    fn mesh(endpoints: &str) -> Mesh {
        crate::meshfile::parse(
            "test",
            &format!(
                "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 9000 }}, {{ port: 81 }}]\n    endpoints: [{endpoints}]\n"
            ),
        )
        .unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_listener_routes_everything_to_its_ports_cluster_through_the_router() {
        let mesh = mesh("10.211.0.2");
        let got = resources(
            &mesh,
            Kind::Listener,
            Some(&names(&["backend", "nobody", "backend:81"])),
        );
        let got: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(got, ["backend", "backend:81"], "a missing name is left out");
        let (_, any) = &resources(&mesh, Kind::Listener, Some(&names(&["backend"])))[0];
        assert_eq!(any.type_url, LISTENER_TYPE);
        let listener = Listener::decode(any.value.as_slice()).unwrap();
        assert_eq!(listener.name, "backend");
        let hcm = listener.api_listener.unwrap().api_listener.unwrap();
        assert_eq!(hcm.type_url, "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
        let hcm = HttpConnectionManager::decode(hcm.value.as_slice()).unwrap();
        let last = hcm.http_filters.last().unwrap();
        let Some(http_filter::ConfigType::TypedConfig(router)) = &last.config_type else {
            panic!("no typed config")
        };
        assert_eq!(
            router.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        );
        let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier
        else {
            panic!("route configuration not inline")
        };
        let route = &rc.virtual_hosts[0].routes[0];
        assert_eq!(
            route.r#match.as_ref().unwrap().path_specifier,
            Some(route_match::PathSpecifier::Prefix(String::new()))
        );
        let Some(route::Action::Route(action)) = &route.action else {
            panic!("no route action")
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                "outbound|80||backend".into()
            ))
        );
    }

    #[test]
    fn a_cluster_is_eds_over_ads_round_robin() {
        let mesh = mesh("");
        let all = resources(&mesh, Kind::Cluster, None);
        let got: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(got, ["outbound|80||backend", "outbound|81||backend"]);
        let c = Cluster::decode(all[0].1.value.as_slice()).unwrap();
        assert_eq!(c.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        let eds = c.eds_cluster_config.unwrap().eds_config.unwrap();
        assert!(matches!(
            eds.config_source_specifier,
            Some(config_source::ConfigSourceSpecifier::Ads(_))
        ));
    }

    #[test]
    fn an_assignment_lists_the_served_endpoints_at_the_target_port() {
        let mesh = mesh("10.211.0.2, 10.211.0.3");
        let got = resources(
            &mesh,
            Kind::Endpoints,
            Some(&names(&["outbound|80||backend"])),
        );
        let cla = ClusterLoadAssignment::decode(got[0].1.value.as_slice()).unwrap();
        assert_eq!(cla.cluster_name, "outbound|80||backend");
        let locality = &cla.endpoints[0];
        assert_eq!(
            locality.load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        let addrs: Vec<(String, u32)> = locality
            .lb_endpoints
            .iter()
            .map(|e| {
                let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    panic!()
                };
                let Some(address::Address::SocketAddress(sa)) =
                    &ep.address.as_ref().unwrap().address
                else {
                    panic!()
                };
                let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                    panic!()
                };
                (sa.address.clone(), port)
            })
            .collect();
        assert_eq!(
            addrs,
            [("10.211.0.2".into(), 9000), ("10.211.0.3".into(), 9000)]
        );
        // No endpoints: an assignment with none (calls fail), not a missing one.
        let empty = resources(
            &mesh_without(),
            Kind::Endpoints,
            Some(&names(&["outbound|81||backend"])),
        );
        let cla = ClusterLoadAssignment::decode(empty[0].1.value.as_slice()).unwrap();
        assert!(cla.endpoints.is_empty());
        // EDS has no wildcard.
        assert!(!Kind::Endpoints.has_wildcard());
    }

    fn mesh_without() -> Mesh {
        mesh("")
    }
}
