//! The mesh model: services (VIP, ports, endpoints, policy) and workloads, as validated
//! types. Field-level rules (address syntax, port ranges, name syntax, replicas >= 1)
//! are enforced by the types themselves when deserializing; rules across fields and
//! entries (unique VIP:port, workloads referring to existing services, ...) by
//! [`Mesh::validate`], whose errors say where ([`Locus`]) so a source can name the line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::num::{NonZeroU16, NonZeroU32};

use serde::{Deserialize, Serialize};

/// The whole mesh: every service, and the workloads the local mesh runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    /// Services by name (required, so that a file that lost it is not an empty mesh).
    pub services: BTreeMap<Name, Service>,
    /// Workloads by name (used by the local mesh, `weftctl up`).
    #[serde(default)]
    pub workloads: BTreeMap<Name, Workload>,
}

/// A service or workload name: a DNS label, 1 to 63 of `[a-z0-9-]`, starting and
/// ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if s.is_empty() || s.len() > 63 || !ok_chars || s.starts_with('-') || s.ends_with('-') {
            return Err(format!(
                "invalid name {s:?}: use 1 to 63 of [a-z0-9-], starting and ending with a letter or digit"
            ));
        }
        Ok(Name(s))
    }
}

impl TryFrom<&str> for Name {
    type Error = String;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Name::try_from(s.to_owned())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service: the VIP apps dial, its ports, the endpoints behind it, its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The virtual IP (IPv4 or IPv6) apps dial.
    pub vip: IpAddr,
    /// The ports served on the VIP.
    pub ports: Vec<Port>,
    /// Endpoint addresses; each port's `target_port` applies.
    #[serde(default)]
    pub endpoints: Vec<IpAddr>,
    /// Per-service policy (timeouts, retries, breaker, lb: later).
    #[serde(default)]
    pub policy: Policy,
}

/// One port of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PortSpec")]
pub struct Port {
    /// The port on the VIP, 1..=65535.
    pub port: NonZeroU16,
    /// The port on the endpoints, 1..=65535 (defaults to `port`).
    pub target_port: NonZeroU16,
    /// How the proxy treats the traffic.
    pub protocol: Protocol,
}

/// The port as written in the mesh file (`target_port` optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSpec {
    port: NonZeroU16,
    target_port: Option<NonZeroU16>,
    #[serde(default)]
    protocol: Protocol,
}

impl From<PortSpec> for Port {
    fn from(p: PortSpec) -> Self {
        Port {
            port: p.port,
            target_port: p.target_port.unwrap_or(p.port),
            protocol: p.protocol,
        }
    }
}

/// How the proxy treats a port's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect HTTP/1 and HTTP/2, else TCP.
    #[default]
    Auto,
    /// HTTP.
    Http,
    /// Opaque TCP.
    Tcp,
}

/// Per-service policy. Empty for now; timeouts, retries, breaker and lb come later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {}

/// A workload the local mesh runs: replicas of a command, endpoints of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The service the replicas serve.
    pub service: Name,
    /// How many replicas, >= 1.
    #[serde(default = "one")]
    pub replicas: NonZeroU32,
    /// The command each replica runs.
    pub command: String,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// Where in the mesh a validation error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locus {
    /// A service's field (`vip`, `ports`, `endpoints`, ...).
    ServiceField(Name, &'static str),
    /// The `index`-th port of a service.
    Port(Name, usize),
    /// The `index`-th endpoint of a service.
    Endpoint(Name, usize),
    /// A workload's field.
    WorkloadField(Name, &'static str),
}

/// A rule across fields or entries that the mesh breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Where.
    pub locus: Locus,
    /// What is wrong.
    pub message: String,
}

impl Mesh {
    /// Checks the rules the types alone do not: the VIP is a usable unicast address;
    /// each VIP:port belongs to one service and one port entry; a service's endpoints
    /// are distinct, usable addresses; a workload refers to an existing service and
    /// has a command. Returns every broken rule, in mesh order.
    pub fn validate(&self) -> Vec<ValidationError> {
        let mut errors = Vec::new();
        let mut err = |locus, message: String| errors.push(ValidationError { locus, message });
        let mut vip_ports: BTreeMap<(IpAddr, u16), &Name> = BTreeMap::new();
        for (name, svc) in &self.services {
            if !usable(svc.vip) {
                err(
                    Locus::ServiceField(name.clone(), "vip"),
                    format!(
                        "service {name}: vip {} is not a usable unicast address",
                        svc.vip
                    ),
                );
            }
            if svc.ports.is_empty() {
                err(
                    Locus::ServiceField(name.clone(), "ports"),
                    format!("service {name}: needs at least one port"),
                );
            }
            for (i, p) in svc.ports.iter().enumerate() {
                match vip_ports.get(&(svc.vip, p.port.get())) {
                    Some(other) => err(
                        Locus::Port(name.clone(), i),
                        format!(
                            "service {name}: {} is already used by service {other}",
                            std::net::SocketAddr::new(svc.vip, p.port.get())
                        ),
                    ),
                    None => {
                        vip_ports.insert((svc.vip, p.port.get()), name);
                    }
                }
            }
            let mut seen = BTreeSet::new();
            for (i, ep) in svc.endpoints.iter().enumerate() {
                if !usable(*ep) {
                    err(
                        Locus::Endpoint(name.clone(), i),
                        format!("service {name}: endpoint {ep} is not a usable unicast address"),
                    );
                } else if !seen.insert(*ep) {
                    err(
                        Locus::Endpoint(name.clone(), i),
                        format!("service {name}: endpoint {ep} is listed twice"),
                    );
                }
            }
        }
        for (name, w) in &self.workloads {
            if !self.services.contains_key(&w.service) {
                err(
                    Locus::WorkloadField(name.clone(), "service"),
                    format!("workload {name}: no service named {:?}", w.service.as_str()),
                );
            }
            if w.command.trim().is_empty() {
                err(
                    Locus::WorkloadField(name.clone(), "command"),
                    format!("workload {name}: command is empty"),
                );
            }
        }
        errors
    }
}

/// Not unspecified, multicast or broadcast.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "backend", "api-v2", "0", &"a".repeat(63)] {
            assert!(Name::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Backend", "a_b", "a.b", &"a".repeat(64)] {
            assert!(Name::try_from(bad).is_err(), "{bad}");
        }
    }
}
