//! `weftctl status` and `weftctl conns POD`: the local mesh as the controller and
//! the proxies see it, read from their HTTP endpoints inside the namespaces.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Deserialize;
use serde_json::Value;
use weft_controller::model::Service;

use crate::podhttp;
use crate::state::{self, MeshState};
use crate::table;

/// A proxy's admin endpoint, on each pod's loopback (ARCHITECTURE.md, Ports).
const PROXY_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
/// A proxy's metrics and health endpoint.
const PROXY_METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15020);

/// One row of a services table: name, VIP, `port→target/protocol` list, endpoints.
pub fn service_row(name: &str, s: &Service) -> Vec<String> {
    let ports = s
        .ports
        .iter()
        .map(|p| {
            let proto = serde_json::to_value(p.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!("{}→{}/{proto}", p.port, p.target_port)
        })
        .collect::<Vec<_>>()
        .join(",");
    let endpoints = if s.endpoints.is_empty() {
        "(none)".to_owned()
    } else {
        s.endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![name.to_owned(), s.vip.to_string(), ports, endpoints]
}

#[derive(Deserialize)]
struct ServicesAnswer {
    version: u64,
    services: BTreeMap<String, Service>,
    /// Every known endpoint per service, served or not.
    #[serde(default)]
    endpoints: BTreeMap<String, Vec<KnownEndpoint>>,
}

/// An endpoint as `/v1/services` lists it under `endpoints`.
#[derive(Deserialize)]
struct KnownEndpoint {
    address: String,
    served: bool,
    /// Its source (Kubernetes) says it is ready.
    #[serde(default = "yes")]
    ready: bool,
    #[serde(default)]
    draining: bool,
    #[serde(default)]
    check: Option<Value>,
}

fn yes() -> bool {
    true
}

impl KnownEndpoint {
    /// `ADDR (why it is not served)`, for one that is not.
    fn withdrawn(&self) -> Option<String> {
        if self.served {
            return None;
        }
        let why = if !self.ready {
            "not ready".to_owned()
        } else if self.draining {
            "draining".to_owned()
        } else {
            let error = self
                .check
                .as_ref()
                .and_then(|c| c["last_error"].as_str())
                .unwrap_or("failing its health checks");
            format!("withdrawn: {error}")
        };
        Some(format!("{} ({why})", self.address))
    }
}

/// Prints the pods (with their proxy's readiness), the controller's state and
/// the services it serves.
pub fn status(state_dir: &Path) -> Result<()> {
    let mesh = state::require(state_dir)?;
    let running = if state::is_running(mesh.pid) {
        format!("weftctl up pid {}", mesh.pid)
    } else {
        "weftctl up is gone: run `weftctl down` to clean up".to_owned()
    };
    println!(
        "local mesh {} ({running}; file {}; logs in {})\n",
        mesh.prefix,
        mesh.file.display(),
        mesh.run_dir.display()
    );
    let pods: Vec<Vec<String>> = mesh
        .pods
        .iter()
        .map(|p| {
            let proxy = match podhttp::get(&p.netns, PROXY_METRICS, "/ready") {
                Ok((200, _)) => "ready".to_owned(),
                Ok((code, body)) => not_ready(code, &body),
                Err(_) => "unreachable".to_owned(),
            };
            vec![
                p.addrs.name.clone(),
                p.addrs.service.clone(),
                p.addrs.ipv4.to_string(),
                p.addrs.ipv6.to_string(),
                proxy,
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["POD", "SERVICE", "IPV4", "IPV6", "PROXY"], &pods)
    );
    println!();
    match controller_view(&mesh) {
        Ok((status, services)) => {
            let rows: Vec<Vec<String>> = services
                .services
                .iter()
                .map(|(n, s)| {
                    let mut row = service_row(n, s);
                    // Endpoints the controller withholds, and why.
                    let withheld: Vec<String> = services
                        .endpoints
                        .get(n)
                        .into_iter()
                        .flatten()
                        .filter_map(KnownEndpoint::withdrawn)
                        .collect();
                    if !withheld.is_empty() {
                        let served = if s.endpoints.is_empty() {
                            Vec::new()
                        } else {
                            vec![row[3].clone()]
                        };
                        row[3] = served
                            .into_iter()
                            .chain(withheld)
                            .collect::<Vec<_>>()
                            .join(", ");
                    }
                    row
                })
                .collect();
            println!(
                "controller {}: configuration version {}, {} proxies subscribed",
                mesh.controller_http,
                services.version,
                status["subscribers"].as_u64().unwrap_or(0)
            );
            if let Some(err) = status["current_error"]["display"].as_str() {
                println!("  the file on disk is bad, the last good configuration is served: {err}");
            }
            println!();
            print!(
                "{}",
                table::render(&["SERVICE", "VIP", "PORTS", "ENDPOINTS"], &rows)
            );
        }
        Err(e) => println!("controller {}: unreachable: {e:#}", mesh.controller_http),
    }
    Ok(())
}

/// A proxy's `/ready` that did not answer 200, with the reason it gave (draining,
/// no routes yet, its app port not answering), which is what the operator acts on.
fn not_ready(code: u16, body: &str) -> String {
    match body.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(why) => format!("not ready: {why}"),
        None => format!("not ready ({code})"),
    }
}

/// The controller's `/v1/status` and `/v1/services`, read with the mesh's operator
/// token.
fn controller_view(mesh: &MeshState) -> Result<(Value, ServicesAnswer)> {
    let token = weft_localmesh::credentials::operator_token(&mesh.run_dir)?;
    let get = |path| podhttp::get_json(&mesh.node_netns, mesh.controller_http, path, Some(&token));
    let status = get("/v1/status")?;
    let services = get("/v1/services")?;
    let services = serde_json::from_value(services).context("/v1/services")?;
    Ok((status, services))
}

/// The pod's proxy's `/connections` list.
pub fn connections(mesh: &MeshState, pod: &str) -> Result<Vec<Value>> {
    let pod = mesh.pod(pod)?;
    let v = podhttp::get_json(&pod.netns, PROXY_ADMIN, "/connections", None)?;
    Ok(v["connections"].as_array().cloned().unwrap_or_default())
}

/// Prints the pod's proxy connections, as a table or as the proxy's JSON.
pub fn conns(state_dir: &Path, pod: &str, json: bool) -> Result<()> {
    let mesh = state::require(state_dir)?;
    let list = connections(&mesh, pod)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    print!("{}", conns_table(&mesh, &list));
    Ok(())
}

/// `/connections` rows as a table; endpoints that are pods of the mesh are named.
pub fn conns_table(mesh: &MeshState, list: &[Value]) -> String {
    let pod_of = |endpoint: &str| -> Option<&str> {
        let ip: IpAddr = endpoint.parse::<SocketAddr>().ok()?.ip();
        mesh.pods
            .iter()
            .find(|p| IpAddr::V4(p.addrs.ipv4) == ip || IpAddr::V6(p.addrs.ipv6) == ip)
            .map(|p| p.addrs.name.as_str())
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let endpoint = text(&c["endpoint"]);
            let endpoint = match pod_of(&endpoint) {
                Some(pod) => format!("{endpoint} ({pod})"),
                None => endpoint,
            };
            vec![
                text(&c["id"]),
                text(&c["direction"]),
                text(&c["state"]),
                text(&c["source"]),
                text(&c["original_destination"]),
                text(&c["service"]),
                endpoint,
                text(&c["protocol"]),
                // The peer sidecar's identity under mutual TLS, else plaintext.
                match (&c["tls"], c["peer_identity"].as_str()) {
                    (Value::Bool(true), Some(id)) if !id.is_empty() => format!("mtls {id}"),
                    (Value::Bool(true), _) => "mtls".to_owned(),
                    _ => "-".to_owned(),
                },
                text(&c["requests"]),
                text(&c["bytes_from_client"]),
                text(&c["bytes_to_client"]),
                format!("{}ms", text(&c["age_ms"])),
                c["end"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    table::render(
        &[
            "ID",
            "DIR",
            "STATE",
            "SOURCE",
            "DESTINATION",
            "SERVICE",
            "ENDPOINT",
            "PROTO",
            "TLS",
            "REQS",
            "SENT",
            "RECEIVED",
            "AGE",
            "END",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::render::PodAddrs;
    use crate::state::PodState;

    #[test]
    fn connection_rows_name_the_pod_that_served() {
        let mesh = MeshState {
            pid: 1,
            prefix: "wf12345".into(),
            file: "f".into(),
            run_dir: "/tmp/x".into(),
            netns: vec![],
            node_netns: "wf12345-node".into(),
            controller_http: "10.211.0.1:15014".parse().unwrap(),
            pods: vec![PodState {
                addrs: PodAddrs {
                    name: "backend-1".into(),
                    workload: "backend".into(),
                    service: "backend".into(),
                    ipv4: "10.211.0.4".parse().unwrap(),
                    ipv6: "fd00:211::4".parse().unwrap(),
                },
                netns: "wf12345-backend-1".into(),
                cgroup: None,
            }],
            hosts_file: "/tmp/x/hosts".into(),
            mode: "iptables".into(),
        };
        let list: Vec<Value> = serde_json::from_str(
            r#"[{"id":7,"state":"closed","direction":"outbound","source":"10.211.0.2:40000",
                 "original_destination":"10.96.0.10:80","service":"backend",
                 "endpoint":"10.211.0.4:8080","bytes_from_client":78,"bytes_to_client":300,
                 "age_ms":3,"end":"eof"},
                {"id":8,"state":"open","direction":"outbound","source":"10.211.0.2:40001",
                 "original_destination":"10.0.0.1:80","service":"passthrough",
                 "endpoint":null,"bytes_from_client":0,"bytes_to_client":0,"age_ms":1}]"#,
        )
        .unwrap();
        let out = conns_table(&mesh, &list);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("ID  DIR"), "{out}");
        assert!(lines[1].contains("10.211.0.4:8080 (backend-1)"), "{out}");
        assert!(lines[1].ends_with("eof"), "{out}");
        assert!(lines[2].contains("open"), "{out}");
    }

    #[test]
    fn service_rows_show_ports_and_endpoints() {
        let m = weft_controller::meshfile::parse(
            "x",
            "services:\n  b:\n    vip: 10.96.0.10\n    ports: [{ port: 80, target_port: 8080 }]\n    endpoints: [10.211.0.3]\n  c:\n    vip: 10.96.0.11\n    ports: [{ port: 5432, protocol: tcp }]\n",
        )
        .unwrap();
        let rows: Vec<_> = m
            .services
            .iter()
            .map(|(n, s)| service_row(n.as_str(), s))
            .collect();
        assert_eq!(rows[0], ["b", "10.96.0.10", "80→8080/auto", "10.211.0.3"]);
        assert_eq!(rows[1], ["c", "10.96.0.11", "5432→5432/tcp", "(none)"]);
    }

    #[test]
    fn a_proxy_not_ready_says_why() {
        assert_eq!(
            not_ready(503, "app port 8080: connect_refused\n"),
            "not ready: app port 8080: connect_refused"
        );
        assert_eq!(not_ready(503, ""), "not ready (503)");
    }

    #[test]
    fn withheld_endpoints_say_why() {
        let parse = |v: serde_json::Value| -> KnownEndpoint { serde_json::from_value(v).unwrap() };
        let served = parse(serde_json::json!({"address": "10.211.0.3", "served": true}));
        assert_eq!(served.withdrawn(), None);
        let unhealthy = parse(serde_json::json!({
            "address": "10.211.0.4", "served": false, "draining": false,
            "check": {"last_error": "GET /app-health/8080: status 503: app port 8080: connect_refused"}
        }));
        assert_eq!(
            unhealthy.withdrawn().as_deref(),
            Some("10.211.0.4 (withdrawn: GET /app-health/8080: status 503: app port 8080: connect_refused)")
        );
        let draining =
            parse(serde_json::json!({"address": "10.211.0.5", "served": false, "draining": true}));
        assert_eq!(
            draining.withdrawn().as_deref(),
            Some("10.211.0.5 (draining)")
        );
        let terminating = parse(serde_json::json!({
            "address": "10.244.1.5", "served": false, "ready": false, "draining": true
        }));
        assert_eq!(
            terminating.withdrawn().as_deref(),
            Some("10.244.1.5 (not ready)")
        );
    }
}
