//! Merging the sources' contributions into one [`Catalog`]: every service with every
//! endpoint any source knows of, and where each came from. What proxies receive is
//! the catalog less the endpoints the health checks withdrew ([`Catalog::served`]).
//!
//! Rules, in the order the controller was given its sources (mesh file first, then the
//! registry, then Kubernetes):
//!
//! - A service is defined (VIP, ports, policy) by exactly one source. The same name
//!   from a later source is a conflict: the first definition is served, the later one
//!   ignored and reported in `/v1/status` and `/v1/services` (`conflicts`).
//! - A VIP:port belongs to one service: a later source's service whose VIP:port is
//!   taken is ignored and reported the same way.
//! - Endpoints add up: a service's endpoints are its defining source's plus every
//!   registration naming it. An address known twice (in the file and registered) is
//!   one endpoint with both origins.
//! - A registration naming a service no source defines is kept (the registry is
//!   durable) but not served; it is listed as `unattached` until the service appears.
//! - Endpoints a defining source says are not ready (Kubernetes) are known, not
//!   served: an address another source adds stays a ready endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::model::{Mesh, Name, Registration, Service, SourceKind};
use crate::source::Contribution;

/// One endpoint of a service as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogEndpoint {
    /// Its address.
    pub address: IpAddr,
    /// Where it comes from (in source order, no repeats).
    pub sources: Vec<SourceKind>,
    /// The registration, when it was registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// Ready to be served. `false`: its source knows it but says it is not ready
    /// (see [`Contribution::not_ready`]); never served, never health-checked.
    pub ready: bool,
}

/// One service as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogService {
    /// The source that defines it.
    pub defined_by: SourceKind,
    /// The service with every known endpoint (before health checks).
    pub service: Service,
    /// Every known endpoint, in `service.endpoints` order, with its origins; then
    /// those its source says are not ready (not in `service.endpoints`).
    pub endpoints: Vec<CatalogEndpoint>,
}

/// Every service any source defines, every endpoint any source adds, and what could
/// not be merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Catalog {
    /// Services by name.
    pub services: BTreeMap<Name, CatalogService>,
    /// Registrations whose service no source defines (kept, not served).
    pub unattached: Vec<Registration>,
    /// Definitions that were ignored, and why.
    pub conflicts: Vec<String>,
}

/// Merges `parts` (each source's kind and latest good contribution, in priority
/// order) into a catalog.
pub fn merge<'a>(parts: impl IntoIterator<Item = (SourceKind, &'a Contribution)>) -> Catalog {
    let parts: Vec<(SourceKind, &Contribution)> = parts.into_iter().collect();
    let mut catalog = Catalog::default();
    let mut vip_ports: BTreeMap<SocketAddr, Name> = BTreeMap::new();
    for (kind, part) in &parts {
        for (name, svc) in &part.services {
            if let Some(first) = catalog.services.get(name) {
                catalog.conflicts.push(format!(
                    "service {name} from {kind} ignored: already defined by {}",
                    first.defined_by
                ));
                continue;
            }
            let taken = svc.ports.iter().find_map(|p| {
                let at = SocketAddr::new(svc.vip, p.port.get());
                vip_ports.get(&at).map(|other| (at, other.clone()))
            });
            if let Some((at, other)) = taken {
                catalog.conflicts.push(format!(
                    "service {name} from {kind} ignored: {at} is already used by service {other}"
                ));
                continue;
            }
            for p in &svc.ports {
                vip_ports.insert(SocketAddr::new(svc.vip, p.port.get()), name.clone());
            }
            let endpoints = svc
                .endpoints
                .iter()
                .map(|&address| CatalogEndpoint {
                    address,
                    sources: vec![*kind],
                    registration: None,
                    ready: true,
                })
                .collect();
            catalog.services.insert(
                name.clone(),
                CatalogService {
                    defined_by: *kind,
                    service: svc.clone(),
                    endpoints,
                },
            );
        }
    }
    for (kind, part) in &parts {
        for reg in &part.registrations {
            let Some(entry) = catalog.services.get_mut(&reg.service) else {
                catalog.unattached.push(reg.clone());
                continue;
            };
            match entry
                .endpoints
                .iter_mut()
                .find(|e| e.address == reg.address)
            {
                Some(known) => {
                    if !known.sources.contains(kind) {
                        known.sources.push(*kind);
                    }
                    known.registration.get_or_insert_with(|| reg.clone());
                }
                None => {
                    entry.service.endpoints.push(reg.address);
                    entry.endpoints.push(CatalogEndpoint {
                        address: reg.address,
                        sources: vec![*kind],
                        registration: Some(reg.clone()),
                        ready: true,
                    });
                }
            }
        }
    }
    // Last, so that a ready endpoint at the same address (another source's) wins.
    for (kind, part) in &parts {
        for (name, addresses) in &part.not_ready {
            let Some(entry) = catalog
                .services
                .get_mut(name)
                .filter(|e| e.defined_by == *kind)
            else {
                continue;
            };
            for &address in addresses {
                if entry.endpoints.iter().any(|e| e.address == address) {
                    continue;
                }
                entry.endpoints.push(CatalogEndpoint {
                    address,
                    sources: vec![*kind],
                    registration: None,
                    ready: false,
                });
            }
        }
    }
    catalog
}

impl Catalog {
    /// The mesh proxies receive: every service, less the endpoints `withdrawn` says.
    pub fn served(&self, withdrawn: impl Fn(&Name, IpAddr) -> bool) -> Mesh {
        Mesh {
            services: self
                .services
                .iter()
                .map(|(name, entry)| {
                    let mut svc = entry.service.clone();
                    svc.endpoints.retain(|&ip| !withdrawn(name, ip));
                    (name.clone(), svc)
                })
                .collect(),
            workloads: BTreeMap::new(),
        }
    }

    /// Every (service, endpoint) pair.
    pub fn endpoints(&self) -> impl Iterator<Item = (&Name, &CatalogService, &CatalogEndpoint)> {
        self.services
            .iter()
            .flat_map(|(n, s)| s.endpoints.iter().map(move |e| (n, s, e)))
    }

    /// The addresses of `service`'s endpoints, when it exists.
    pub fn addresses(&self, service: &Name) -> Option<BTreeSet<IpAddr>> {
        self.services
            .get(service)
            .map(|s| s.endpoints.iter().map(|e| e.address).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meshfile::parse;
    use std::num::NonZeroU32;

    fn name(s: &str) -> Name {
        Name::try_from(s).expect("name")
    }

    fn file(text: &str) -> Contribution {
        Contribution::services(parse("m", text).expect("valid").services)
    }

    fn reg(service: &str, ip: &str) -> Registration {
        Registration {
            service: name(service),
            address: ip.parse().expect("ip"),
            port: None,
            weight: NonZeroU32::MIN,
            labels: BTreeMap::new(),
        }
    }

    const FILE: &str = "services:
  a: { vip: 10.0.0.1, ports: [{ port: 80, target_port: 8080 }], endpoints: [10.1.0.1] }
  b: { vip: 10.0.0.2, ports: [{ port: 80 }] }
";

    #[test]
    fn registrations_add_to_defined_services_and_unknown_ones_wait() {
        let f = file(FILE);
        let r = Contribution {
            services: BTreeMap::new(),
            not_ready: BTreeMap::new(),
            registrations: vec![
                reg("a", "10.1.0.2"),
                reg("a", "10.1.0.1"),
                reg("b", "fd00::9"),
                reg("ghost", "10.1.0.3"),
            ],
        };
        let c = merge([(SourceKind::File, &f), (SourceKind::Registry, &r)]);
        let a = &c.services[&name("a")];
        assert_eq!(a.defined_by, SourceKind::File);
        let ips: Vec<String> = a.service.endpoints.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            ips,
            ["10.1.0.1", "10.1.0.2"],
            "the duplicate is one endpoint"
        );
        assert_eq!(
            a.endpoints[0].sources,
            [SourceKind::File, SourceKind::Registry]
        );
        assert!(a.endpoints[0].registration.is_some());
        assert_eq!(a.endpoints[1].sources, [SourceKind::Registry]);
        assert_eq!(c.services[&name("b")].service.endpoints.len(), 1);
        assert_eq!(c.unattached, vec![reg("ghost", "10.1.0.3")]);
        assert!(c.conflicts.is_empty());

        let served = c.served(|n, ip| n.as_str() == "a" && ip.to_string() == "10.1.0.1");
        let a = &served.services[&name("a")];
        assert_eq!(a.endpoints, vec!["10.1.0.2".parse::<IpAddr>().expect("ip")]);
        assert_eq!(served.services[&name("b")].endpoints.len(), 1);
    }

    #[test]
    fn the_first_source_wins_names_and_vip_ports() {
        let f = file(FILE);
        let k = file(
            "services:
  a: { vip: 10.0.0.9, ports: [{ port: 80 }] }
  c: { vip: 10.0.0.2, ports: [{ port: 80 }] }
  d: { vip: 10.0.0.2, ports: [{ port: 81 }] }
",
        );
        let c = merge([(SourceKind::File, &f), (SourceKind::Kubernetes, &k)]);
        assert_eq!(c.services[&name("a")].service.vip.to_string(), "10.0.0.1");
        assert!(!c.services.contains_key(&name("c")));
        assert!(c.services.contains_key(&name("d")), "another port is fine");
        assert_eq!(c.conflicts.len(), 2, "{:?}", c.conflicts);
        assert!(c.conflicts[0].contains("already defined by file"));
        assert!(c.conflicts[1].contains("10.0.0.2:80 is already used by service b"));
    }

    #[test]
    fn not_ready_endpoints_are_known_but_never_served() {
        let mut k = file(
            "services:
  web: { vip: 10.0.0.5, ports: [{ port: 80 }], endpoints: [10.1.0.1] }
",
        );
        k.not_ready.insert(
            name("web"),
            vec![
                "10.1.0.2".parse().expect("ip"),
                "10.1.0.1".parse().expect("ip"),
            ],
        );
        // Not ready for a service another source defines: ignored.
        k.not_ready
            .insert(name("a"), vec!["10.1.0.9".parse().expect("ip")]);
        let r = Contribution {
            registrations: vec![reg("web", "10.1.0.3")],
            ..Contribution::default()
        };
        let f = file(FILE);
        let c = merge([
            (SourceKind::File, &f),
            (SourceKind::Registry, &r),
            (SourceKind::Kubernetes, &k),
        ]);
        let web = &c.services[&name("web")];
        let known: Vec<(String, bool)> = web
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.ready))
            .collect();
        assert_eq!(
            known,
            [
                ("10.1.0.1".to_owned(), true),
                ("10.1.0.3".to_owned(), true),
                ("10.1.0.2".to_owned(), false)
            ],
            "a ready address is not made unready"
        );
        let served = c.served(|_, _| false);
        assert_eq!(
            served.services[&name("web")].endpoints,
            ["10.1.0.1", "10.1.0.3"]
                .map(|a| a.parse::<IpAddr>().expect("ip"))
                .to_vec()
        );
        assert_eq!(c.services[&name("a")].endpoints.len(), 1);
    }
}
