//! From the user's mesh file to what the local mesh runs: the pods each workload
//! needs, the mesh the controller serves (endpoints filled in from those pods) and
//! the hosts file that makes service names resolve inside the pods.
//!
//! Pure functions over the controller's own model, so a file `weftctl up` accepts
//! is one the controller accepts, and errors read the same.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use weft_controller::model::Mesh;

/// One replica of a workload, before it has a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// `<workload>-<replica>`, e.g. `backend-0`.
    pub name: String,
    pub workload: String,
    pub service: String,
    pub command: String,
}

/// A pod that exists, with the addresses the mesh gave it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodAddrs {
    pub name: String,
    pub workload: String,
    pub service: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// The pods of every workload, in file order of workload names, replicas counted
/// from 0. Fails if a pod name would not be a valid namespace name.
pub fn plan_pods(mesh: &Mesh) -> Result<Vec<PodPlan>> {
    let mut pods = Vec::new();
    for (workload, spec) in &mesh.workloads {
        for replica in 0..spec.replicas.get() {
            let name = format!("{}-{replica}", workload.as_str());
            weft_localmesh::naming::check_pod_name(&name)
                .with_context(|| format!("workload {}: pod name {name}", workload.as_str()))?;
            pods.push(PodPlan {
                name,
                workload: workload.as_str().to_owned(),
                service: spec.service.as_str().to_owned(),
                command: spec.command.clone(),
            });
        }
    }
    Ok(pods)
}

/// The mesh the controller serves: `user`'s, with each workload-backed service's
/// endpoints extended by its pods' addresses — the pod's IPv4 address for an IPv4
/// VIP, its IPv6 address for an IPv6 VIP, so the app is dialled in the family the
/// client chose. Endpoints listed in the file stay.
pub fn controller_mesh(user: &Mesh, pods: &[PodAddrs]) -> Mesh {
    let mut mesh = user.clone();
    for (name, service) in mesh.services.iter_mut() {
        for pod in pods.iter().filter(|p| p.service == name.as_str()) {
            let addr = match service.vip {
                IpAddr::V4(_) => IpAddr::V4(pod.ipv4),
                IpAddr::V6(_) => IpAddr::V6(pod.ipv6),
            };
            if !service.endpoints.contains(&addr) {
                service.endpoints.push(addr);
            }
        }
    }
    mesh
}

/// [`controller_mesh`] as the YAML text the controller reads, with a header saying
/// where it came from.
pub fn controller_mesh_yaml(user: &Mesh, pods: &[PodAddrs], source: &str) -> Result<String> {
    let body = serde_norway::to_string(&controller_mesh(user, pods))
        .context("serializing the controller's mesh file")?;
    Ok(format!(
        "# Written by `weftctl up` from {source}, with the endpoints of workload-backed\n\
         # services filled in. Edit {source} instead: weftctl rewrites this file.\n{body}"
    ))
}

/// `/etc/hosts` for the pods: localhost, every service name → its VIP, every pod
/// name → its IPv4 address.
pub fn hosts_file(mesh: &Mesh, pods: &[PodAddrs], mesh_prefix: &str) -> String {
    let mut s = format!(
        "# weft local mesh {mesh_prefix}: service names resolve to their VIPs\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    for (name, service) in &mesh.services {
        s.push_str(&format!("{}\t{}\n", service.vip, name.as_str()));
    }
    for pod in pods {
        s.push_str(&format!("{}\t{}\n", pod.ipv4, pod.name));
    }
    s
}

/// The host route (`/32` or `/128`) that sends a VIP out of a pod's interface,
/// where the pod's capture rules catch it.
pub fn vip_route(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FILE: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports: [{ port: 80, target_port: 8080 }]
    endpoints: [10.0.0.9]
  backend6:
    vip: fd00:96::10
    ports: [{ port: 80, target_port: 8080, protocol: tcp }]
  frontend:
    vip: 10.96.0.20
    ports: [{ port: 80 }]
workloads:
  backend: { service: backend, replicas: 2, command: python3 -m http.server 8080 }
  web: { service: frontend, command: sleep 1000 }
";

    fn mesh() -> Mesh {
        weft_controller::meshfile::parse("demo.yaml", FILE).unwrap()
    }

    fn addrs(name: &str, service: &str, host: u8) -> PodAddrs {
        PodAddrs {
            name: name.into(),
            workload: name.split('-').next().unwrap().into(),
            service: service.into(),
            ipv4: Ipv4Addr::new(10, 211, 0, host),
            ipv6: Ipv6Addr::new(0xfd00, 0x211, 0, 0, 0, 0, 0, host.into()),
        }
    }

    #[test]
    fn one_pod_per_replica() {
        let names: Vec<_> = plan_pods(&mesh())
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.service))
            .collect();
        assert_eq!(
            names,
            [
                ("backend-0".to_owned(), "backend".to_owned()),
                ("backend-1".to_owned(), "backend".to_owned()),
                ("web-0".to_owned(), "frontend".to_owned()),
            ]
        );
    }

    #[test]
    fn pod_names_too_long_for_a_namespace_are_refused() {
        let text = FILE.replace("  web:", "  a-very-long-workload-name-indeed:");
        let m = weft_controller::meshfile::parse("x", &text).unwrap();
        let err = format!("{:#}", plan_pods(&m).unwrap_err());
        assert!(err.contains("a-very-long-workload-name-indeed-0"), "{err}");
    }

    #[test]
    fn workload_pods_become_endpoints_in_the_vip_family() {
        let pods = [
            addrs("backend-0", "backend", 3),
            addrs("backend-1", "backend", 4),
            addrs("web-0", "frontend", 5),
        ];
        let m = controller_mesh(&mesh(), &pods);
        let eps = |s: &str| -> Vec<String> {
            m.services
                .iter()
                .find(|(n, _)| n.as_str() == s)
                .unwrap()
                .1
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(eps("backend"), ["10.0.0.9", "10.211.0.3", "10.211.0.4"]);
        assert_eq!(eps("frontend"), ["10.211.0.5"]);
        assert!(eps("backend6").is_empty());
        let six = [PodAddrs {
            service: "backend6".into(),
            ..addrs("backend-0", "backend", 3)
        }];
        let m = controller_mesh(&mesh(), &six);
        let b6 = &m
            .services
            .iter()
            .find(|(n, _)| n.as_str() == "backend6")
            .unwrap()
            .1;
        assert_eq!(b6.endpoints, ["fd00:211::3".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn the_controller_file_parses_back_to_the_filled_mesh() {
        let pods = [addrs("backend-0", "backend", 3)];
        let text = controller_mesh_yaml(&mesh(), &pods, "demo.yaml").unwrap();
        let back = weft_controller::meshfile::parse("rendered", &text).unwrap();
        assert_eq!(back, controller_mesh(&mesh(), &pods));
        assert!(text.starts_with("# Written by `weftctl up` from demo.yaml"));
    }

    #[test]
    fn hosts_name_services_and_pods() {
        let pods = [addrs("backend-0", "backend", 3)];
        let hosts = hosts_file(&mesh(), &pods, "wf12345");
        assert!(hosts.contains("\n10.96.0.10\tbackend\n"), "{hosts}");
        assert!(hosts.contains("\nfd00:96::10\tbackend6\n"), "{hosts}");
        assert!(hosts.contains("\n10.211.0.3\tbackend-0\n"), "{hosts}");
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
    }

    #[test]
    fn vip_routes_are_host_routes() {
        assert_eq!(vip_route("10.96.0.10".parse().unwrap()), "10.96.0.10/32");
        assert_eq!(vip_route("fd00:96::10".parse().unwrap()), "fd00:96::10/128");
    }
}
