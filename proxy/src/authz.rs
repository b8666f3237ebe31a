//! Authorization at the server side (ARCHITECTURE.md, Authorization): which callers
//! may reach this pod's application, by their sidecar's mutual TLS identity, as the
//! pod's service's `authorization` entries in discovery say. A port no entry covers
//! takes every caller; a covered port takes only those its entries allow, and
//! never a caller without an identity (plaintext, or a peer without a
//! certificate). An opaque connection's verdict is taken once, when it is known
//! where it goes; an HTTP connection's again at each request ([`Caller`]), so an
//! edit of the entries applies to the requests of connections already open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::routes::{RouteTable, Routes, ServiceSpec};

/// The callers allowed on one port of a service (or on every port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Authorization {
    /// A service port (not the target port); `None`: every port the pod is
    /// reached on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Any one of them matching lets the caller in; none: nobody.
    pub allow: Vec<Source>,
}

/// A caller an entry allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Exactly this SPIFFE ID.
    Identity(Box<str>),
    /// The identities discovery names on this service's endpoints.
    Service(Box<str>),
    /// Every SPIFFE ID whose path is `/ns/<namespace>/...`.
    Namespace(Box<str>),
    /// A kind this proxy does not know (from a newer controller): matches no one,
    /// so that the port stays closed rather than open to everybody.
    Unknown,
}

impl Source {
    /// Whether `peer`, a verified SPIFFE ID, is this source, with `table` to
    /// resolve a service's identities.
    fn admits(&self, peer: &str, table: &RouteTable) -> bool {
        match self {
            Source::Identity(id) => **id == *peer,
            Source::Namespace(ns) => namespace_of(peer) == Some(&**ns),
            Source::Service(name) => table
                .service(name)
                .is_some_and(|s| s.identities.iter().any(|(_, id)| **id == *peer)),
            Source::Unknown => false,
        }
    }
}

/// The namespace of a SPIFFE ID of the form `spiffe://<domain>/ns/<namespace>/...`.
pub fn namespace_of(spiffe_id: &str) -> Option<&str> {
    let path = spiffe_id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let mut segments = path.split('/');
    (segments.next()? == "ns")
        .then(|| segments.next())
        .flatten()
        .filter(|ns| !ns.is_empty())
}

/// Whether `peer` (the caller's verified identity, `None` without mutual TLS) may
/// reach `service`'s endpoint on `target_port`. A service discovery does not know
/// has no entries: everyone may.
pub fn authorizes(table: &RouteTable, service: &str, target_port: u16, peer: Option<&str>) -> bool {
    let Some(spec) = table.service(service) else {
        return true;
    };
    let mut covered = false;
    for entry in spec.authorization.iter() {
        if !covers(spec, entry, target_port) {
            continue;
        }
        covered = true;
        if peer.is_some_and(|peer| entry.allow.iter().any(|s| s.admits(peer, table))) {
            return true;
        }
    }
    !covered
}

/// The caller of an inbound HTTP connection, asked about at each request: the
/// verdict is kept with the route table generation it was taken at, so a request
/// pays one atomic load unless discovery changed something since.
#[derive(Debug)]
pub struct Caller {
    routes: Arc<Routes>,
    service: Arc<str>,
    target_port: u16,
    /// Its verified identity; `None` without mutual TLS.
    peer: Option<Arc<str>>,
    /// `generation << 1 | allowed`, of the last verdict (`u64::MAX`: none yet).
    verdict: AtomicU64,
}

impl Caller {
    pub fn new(
        routes: Arc<Routes>,
        service: Arc<str>,
        target_port: u16,
        peer: Option<Arc<str>>,
    ) -> Caller {
        Caller {
            routes,
            service,
            target_port,
            peer,
            verdict: AtomicU64::new(u64::MAX),
        }
    }

    /// The caller's verified identity (SPIFFE ID); `None` without mutual TLS.
    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// Whether the service lets this caller in now.
    pub fn allowed(&self) -> bool {
        let generation = self.routes.generation();
        let last = self.verdict.load(Ordering::Relaxed);
        if last != u64::MAX && last >> 1 == generation {
            return last & 1 == 1;
        }
        let allowed = authorizes(
            &self.routes.load(),
            &self.service,
            self.target_port,
            self.peer.as_deref(),
        );
        self.verdict
            .store(generation << 1 | u64::from(allowed), Ordering::Relaxed);
        allowed
    }
}

/// Whether `entry` applies to a connection to `target_port` of `spec`'s endpoint.
fn covers(spec: &ServiceSpec, entry: &Authorization, target_port: u16) -> bool {
    match entry.port {
        None => true,
        Some(port) => spec
            .ports
            .iter()
            .any(|p| p.port == port && p.target_port == target_port),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::Policy;
    use crate::routes::{MtlsMode, PortProtocol, ServicePort};

    const FRONT: &str = "spiffe://weft.local/ns/local/sa/frontend";
    const OPS: &str = "spiffe://weft.local/ns/tools/sa/ops";

    fn spec(name: &str, ports: &[(u16, u16)], ids: &[(&str, &str)]) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            vip: "10.96.0.1".parse().expect("address"),
            ports: ports
                .iter()
                .map(|&(port, target_port)| ServicePort {
                    port,
                    target_port,
                    protocol: PortProtocol::Auto,
                })
                .collect(),
            endpoints: ids
                .iter()
                .map(|(ip, _)| ip.parse().expect("address"))
                .collect(),
            meshed: ids
                .iter()
                .map(|(ip, _)| ip.parse().expect("address"))
                .collect(),
            identities: ids
                .iter()
                .map(|(ip, id)| (ip.parse().expect("address"), Arc::from(*id)))
                .collect(),
            withheld: Vec::new(),
            policy: Policy::default(),
            mtls: MtlsMode::Permissive,
            authorization: Vec::new(),
        }
    }

    fn table(authorization: Vec<Authorization>) -> RouteTable {
        let mut backend = spec("backend", &[(80, 8080), (5432, 5432)], &[]);
        backend.authorization = authorization;
        let frontend = spec("frontend", &[(80, 8080)], &[("10.0.0.7", FRONT)]);
        RouteTable::from_services([backend, frontend])
    }

    #[test]
    fn no_entry_lets_everyone_in() {
        let t = table(Vec::new());
        assert!(authorizes(&t, "backend", 8080, None));
        assert!(authorizes(&t, "backend", 8080, Some(OPS)));
        assert!(authorizes(&t, "unknown", 8080, None));
    }

    #[test]
    fn a_covered_port_takes_only_its_callers() {
        let t = table(vec![Authorization {
            port: Some(80),
            allow: vec![Source::Service("frontend".into())],
        }]);
        assert!(authorizes(&t, "backend", 8080, Some(FRONT)));
        assert!(!authorizes(&t, "backend", 8080, Some(OPS)));
        assert!(!authorizes(&t, "backend", 8080, None), "plaintext");
        // The other port has no entry.
        assert!(authorizes(&t, "backend", 5432, None));
    }

    #[test]
    fn entries_add_up_and_sources_match_as_named() {
        let t = table(vec![
            Authorization {
                port: None,
                allow: vec![Source::Namespace("tools".into())],
            },
            Authorization {
                port: Some(5432),
                allow: vec![Source::Identity(FRONT.into())],
            },
        ]);
        assert!(authorizes(&t, "backend", 8080, Some(OPS)));
        assert!(!authorizes(&t, "backend", 8080, Some(FRONT)));
        assert!(authorizes(&t, "backend", 5432, Some(FRONT)));
        assert!(authorizes(&t, "backend", 5432, Some(OPS)));
        // Every port: one the service does not declare as well.
        assert!(!authorizes(&t, "backend", 9999, Some(FRONT)));
    }

    #[test]
    fn nobody_and_unknown_sources_admit_no_one() {
        let t = table(vec![Authorization {
            port: None,
            allow: vec![Source::Unknown],
        }]);
        assert!(!authorizes(&t, "backend", 8080, Some(FRONT)));
        let t = table(vec![Authorization {
            port: None,
            allow: Vec::new(),
        }]);
        assert!(!authorizes(&t, "backend", 8080, Some(FRONT)));
    }

    #[test]
    fn namespaces_come_from_the_path() {
        assert_eq!(namespace_of(OPS), Some("tools"));
        assert_eq!(namespace_of("spiffe://weft.local/ns//sa/x"), None);
        assert_eq!(namespace_of("spiffe://weft.local/sa/ns/x"), None);
        assert_eq!(namespace_of("https://weft.local/ns/tools"), None);
    }
}
