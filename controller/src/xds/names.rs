//! The names of weft's xDS resources, and which service port each one means
//! (ARCHITECTURE.md, xDS for proxyless gRPC).
//!
//! A gRPC client asks for the Listener named by its target's host: `xds:///backend`
//! asks for `backend`, `xds:///backend:8080` for `backend:8080`. The bare name means
//! the service's first port (as declared), which is what a one-port service needs;
//! `name:port` names one of its ports (the VIP port, as apps dial it). Clusters, and
//! the endpoint assignments named after them, are `outbound|<port>||<service>`, the
//! form Istio uses, so that operators who know one can read the other.

use crate::model::{Mesh, Name, Port, Service};

/// The Listener names of `service`'s ports: the bare name (its first port) and
/// `name:port` for each.
pub fn listener_names(name: &Name, service: &Service) -> Vec<String> {
    let bare = (!service.ports.is_empty()).then(|| name.to_string());
    bare.into_iter()
        .chain(service.ports.iter().map(|p| format!("{name}:{}", p.port)))
        .collect()
}

/// The Cluster (and ClusterLoadAssignment) name of `service`'s `port`.
pub fn cluster_name(name: &Name, port: &Port) -> String {
    format!("outbound|{}||{name}", port.port)
}

/// The service and port a Listener name means in `mesh`, if any.
pub fn resolve_listener<'m>(
    mesh: &'m Mesh,
    listener: &str,
) -> Option<(&'m Name, &'m Service, &'m Port)> {
    let (host, port) = match listener.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
        None => (listener, None),
    };
    let (name, service) = mesh.services.get_key_value(&Name::try_from(host).ok()?)?;
    let port = match port {
        None => service.ports.first()?,
        Some(p) => service.ports.iter().find(|sp| sp.port.get() == p)?,
    };
    Some((name, service, port))
}

/// The service and port a Cluster name means in `mesh`, if any.
pub fn resolve_cluster<'m>(
    mesh: &'m Mesh,
    cluster: &str,
) -> Option<(&'m Name, &'m Service, &'m Port)> {
    let rest = cluster.strip_prefix("outbound|")?;
    let (port, rest) = rest.split_once('|')?;
    let host = rest.strip_prefix('|')?;
    let port: u16 = port.parse().ok()?;
    let (name, service) = mesh.services.get_key_value(&Name::try_from(host).ok()?)?;
    let port = service.ports.iter().find(|sp| sp.port.get() == port)?;
    Some((name, service, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mesh() -> Mesh {
        serde_norway::from_str(
            "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{ port: 80, target_port: 9000 }, { port: 81 }]\n  web.ns:\n    vip: 10.96.0.11\n    ports: [{ port: 8080 }]\n",
        )
        .unwrap()
    }

    #[test]
    fn a_bare_listener_name_is_the_first_port_and_name_port_any_port() {
        let mesh = mesh();
        let port =
            |l: &str| resolve_listener(&mesh, l).map(|(n, _, p)| (n.to_string(), p.port.get()));
        assert_eq!(port("backend"), Some(("backend".into(), 80)));
        assert_eq!(port("backend:81"), Some(("backend".into(), 81)));
        assert_eq!(port("web.ns"), Some(("web.ns".into(), 8080)));
        assert_eq!(port("backend:82"), None, "not a port of the service");
        assert_eq!(port("backend:x"), None);
        assert_eq!(port("nobody"), None);
    }

    #[test]
    fn cluster_names_round_trip() {
        let mesh = mesh();
        for (name, service) in &mesh.services {
            for p in &service.ports {
                let cluster = cluster_name(name, p);
                let (n, _, q) = resolve_cluster(&mesh, &cluster).unwrap();
                assert_eq!((n, q.port), (name, p.port), "{cluster}");
            }
        }
        assert_eq!(
            cluster_name(
                &"backend".try_into().unwrap(),
                &mesh.services.values().next().unwrap().ports[0]
            ),
            "outbound|80||backend"
        );
        assert!(resolve_cluster(&mesh, "outbound|82||backend").is_none());
        assert!(resolve_cluster(&mesh, "inbound|80||backend").is_none());
        assert!(resolve_cluster(&mesh, "outbound|80|backend").is_none());
    }

    #[test]
    fn every_port_has_a_listener_name() {
        let mesh = mesh();
        let (name, service) = mesh.services.iter().next().unwrap();
        assert_eq!(
            listener_names(name, service),
            ["backend", "backend:80", "backend:81"]
        );
    }
}
