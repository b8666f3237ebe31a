//! One ADS stream's state-of-the-world protocol, without I/O: what each request
//! asks for, when to answer it, and what to push when the served mesh changes
//! (ARCHITECTURE.md, xDS for proxyless gRPC).
//!
//! Per resource type the session keeps the names the client subscribes to (or a
//! wildcard: a first Listener or Cluster request without names, or `*`) and the
//! last response sent (its version, nonce and resources):
//!
//! - a request whose `response_nonce` is not the last one sent for its type is
//!   stale (a newer response crossed it on the wire) and is ignored, as the xDS
//!   protocol says: the client answers the newer one;
//! - a request with `error_detail` is a NACK: the client keeps its previous state,
//!   the session records the reason and keeps serving (nothing is resent until the
//!   mesh or the subscription changes);
//! - otherwise it is the first request or an ACK; either way a changed subscription
//!   is answered at once, also when nothing it names exists (for Listeners and
//!   Clusters an absent name is one that does not exist);
//! - a new mesh is pushed for each subscribed type whose resources changed.
//!
//! `version_info` is the controller's epoch and the mesh version the resources
//! were made from (`<epoch>.<version>`), so it says where they came from and is
//! never reused by a restarted controller; nonces count up per stream.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;

use super::resources::{resources, Kind};
use crate::model::Mesh;

/// What a request was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// The first request of its type on the stream.
    Subscribe(Kind),
    /// An ACK of `version`.
    Ack { kind: Kind, version: String },
    /// A NACK: the client rejected `version` (its last good one stays) for `reason`.
    Nack {
        kind: Kind,
        version: String,
        reason: String,
    },
    /// A request answering an older response than the last sent: ignored.
    Stale(Kind),
    /// A type weft does not serve (ignored; the client times it out).
    Unknown(String),
}

/// What a request asked of the session.
#[derive(Debug)]
pub struct Outcome {
    pub heard: Heard,
    /// The answer to send now, if any.
    pub response: Option<DiscoveryResponse>,
}

/// One ADS stream's subscriptions and what was sent on it.
#[derive(Debug, Default)]
pub struct Session {
    types: BTreeMap<Kind, Subscription>,
    nonces: u64,
}

#[derive(Debug, Default)]
struct Subscription {
    /// The names asked for, sorted; `None`: every resource of the type.
    names: Option<Vec<String>>,
    sent: Option<Sent>,
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    resources: Vec<(String, Any)>,
}

/// A mesh as the session sees it: the mesh and its version's name.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub mesh: &'a Mesh,
    /// `<epoch>.<version>`.
    pub version: &'a str,
}

impl Session {
    /// Takes one request from the client.
    pub fn on_request(&mut self, req: &DiscoveryRequest, at: At<'_>) -> Outcome {
        let Some(kind) = Kind::of_type_url(&req.type_url) else {
            return Outcome {
                heard: Heard::Unknown(req.type_url.clone()),
                response: None,
            };
        };
        let sub = self.types.entry(kind).or_default();
        let first = sub.sent.is_none() && req.response_nonce.is_empty();
        if !first {
            let last = sub.sent.as_ref().map(|s| s.nonce.as_str());
            if last != Some(req.response_nonce.as_str()) {
                return Outcome {
                    heard: Heard::Stale(kind),
                    response: None,
                };
            }
        }
        let heard = match &req.error_detail {
            Some(error) if !first => Heard::Nack {
                kind,
                version: req.version_info.clone(),
                reason: error.message.clone(),
            },
            _ if first => Heard::Subscribe(kind),
            _ => Heard::Ack {
                kind,
                version: req.version_info.clone(),
            },
        };
        let names = subscription(kind, &req.resource_names, first, sub.names.is_none());
        let changed = first || names != sub.names;
        sub.names = names;
        let asks_nothing = sub.names.as_ref().is_some_and(Vec::is_empty);
        let response = (changed && !asks_nothing).then(|| self.respond(kind, at));
        Outcome { heard, response }
    }

    /// The responses a new mesh calls for: one per subscribed type whose
    /// resources changed.
    pub fn on_mesh(&mut self, at: At<'_>) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let Some(sub) = self.types.get(&kind) else {
                continue;
            };
            let Some(sent) = &sub.sent else { continue };
            if resources(at.mesh, kind, sub.names.as_deref()) != sent.resources {
                out.push(self.respond(kind, at));
            }
        }
        out
    }

    /// The response for `kind`'s subscription at `at`, recorded as sent.
    fn respond(&mut self, kind: Kind, at: At<'_>) -> DiscoveryResponse {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let sub = self.types.entry(kind).or_default();
        let made = resources(at.mesh, kind, sub.names.as_deref());
        let response = DiscoveryResponse {
            version_info: at.version.to_owned(),
            resources: made.iter().map(|(_, any)| any.clone()).collect(),
            type_url: kind.type_url().to_owned(),
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: "weft-controller".to_owned(),
            }),
            ..Default::default()
        };
        sub.sent = Some(Sent {
            nonce,
            resources: made,
        });
        response
    }
}

/// The subscription a request's `names` make: a wildcard (`None`) for `*`, or for
/// no names on a type's first request (or while it is a wildcard already) where the
/// type has one; else the names, sorted and deduplicated.
fn subscription(
    kind: Kind,
    names: &[String],
    first: bool,
    was_wildcard: bool,
) -> Option<Vec<String>> {
    let wildcard = kind.has_wildcard()
        && (names.iter().any(|n| n == "*") || (names.is_empty() && (first || was_wildcard)));
    if wildcard {
        return None;
    }
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    use super::*;

    fn mesh(endpoints: &str) -> Mesh {
        crate::meshfile::parse(
            "test",
            &format!(
                "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 9000 }}]\n    endpoints: [{endpoints}]\n  other:\n    vip: 10.96.0.11\n    ports: [{{ port: 80 }}]\n"
            ),
        )
        .unwrap()
    }

    fn req(kind: Kind, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(kind: Kind, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad listener".into(),
                details: vec![],
            }),
            ..req(kind, names, version, nonce)
        }
    }

    #[test]
    fn subscribe_ack_and_push_on_change_only() {
        let (m1, m2) = (mesh("10.211.0.2, 10.211.0.3"), mesh("10.211.0.2"));
        let v1 = At {
            mesh: &m1,
            version: "7.1",
        };
        let v2 = At {
            mesh: &m2,
            version: "7.2",
        };
        let mut s = Session::default();
        let out = s.on_request(&req(Kind::Listener, &["backend"], "", ""), v1);
        assert_eq!(out.heard, Heard::Subscribe(Kind::Listener));
        let lds = out.response.unwrap();
        assert_eq!(
            (
                lds.version_info.as_str(),
                lds.nonce.as_str(),
                lds.resources.len()
            ),
            ("7.1", "1", 1)
        );
        let out = s.on_request(&req(Kind::Listener, &["backend"], "7.1", "1"), v1);
        assert_eq!(
            out.heard,
            Heard::Ack {
                kind: Kind::Listener,
                version: "7.1".into()
            }
        );
        assert!(
            out.response.is_none(),
            "an ACK of the same names is not answered"
        );
        let eds = s
            .on_request(&req(Kind::Endpoints, &["outbound|80||backend"], "", ""), v1)
            .response
            .unwrap();
        assert_eq!(eds.nonce, "2", "nonces count up across types");
        // An endpoint goes: only EDS is pushed (the listener did not change).
        let pushed = s.on_mesh(v2);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].type_url, Kind::Endpoints.type_url());
        assert_eq!(
            (pushed[0].version_info.as_str(), pushed[0].nonce.as_str()),
            ("7.2", "3")
        );
        assert!(s.on_mesh(v2).is_empty(), "nothing new, nothing pushed");
    }

    #[test]
    fn a_nack_is_recorded_and_nothing_is_resent_until_something_changes() {
        let m = mesh("10.211.0.2");
        let at = At {
            mesh: &m,
            version: "1.1",
        };
        let mut s = Session::default();
        s.on_request(&req(Kind::Listener, &["backend"], "", ""), at);
        let out = s.on_request(&nack(Kind::Listener, &["backend"], "", "1"), at);
        assert_eq!(
            out.heard,
            Heard::Nack {
                kind: Kind::Listener,
                version: String::new(),
                reason: "bad listener".into()
            }
        );
        assert!(out.response.is_none());
        assert!(s.on_mesh(at).is_empty());
        // A new name in a NACK is still answered.
        let out = s.on_request(&nack(Kind::Listener, &["backend", "other"], "", "1"), at);
        assert_eq!(out.response.unwrap().resources.len(), 2);
    }

    #[test]
    fn a_stale_nonce_is_ignored() {
        let (m1, m2) = (mesh("10.211.0.2"), mesh("10.211.0.3"));
        let mut s = Session::default();
        s.on_request(
            &req(Kind::Endpoints, &["outbound|80||backend"], "", ""),
            At {
                mesh: &m1,
                version: "1.1",
            },
        );
        s.on_mesh(At {
            mesh: &m2,
            version: "1.2",
        });
        // The ACK of nonce 1 crossed the push of nonce 2.
        let out = s.on_request(
            &req(Kind::Endpoints, &["outbound|80||backend", "x"], "1.1", "1"),
            At {
                mesh: &m2,
                version: "1.2",
            },
        );
        assert_eq!(out.heard, Heard::Stale(Kind::Endpoints));
        assert!(out.response.is_none());
    }

    #[test]
    fn missing_names_are_answered_empty_and_wildcards_get_everything() {
        let m = mesh("");
        let at = At {
            mesh: &m,
            version: "1.1",
        };
        let mut s = Session::default();
        let out = s.on_request(&req(Kind::Listener, &["nobody"], "", ""), at);
        assert!(
            out.response.unwrap().resources.is_empty(),
            "answered: it does not exist"
        );
        let out = s.on_request(&req(Kind::Cluster, &[], "", ""), at);
        assert_eq!(
            out.response.unwrap().resources.len(),
            2,
            "wildcard: both services' clusters"
        );
        // EDS without names asks for nothing.
        let out = s.on_request(&req(Kind::Endpoints, &[], "", ""), at);
        assert!(out.response.is_none());
        let out = s.on_request(&req(Kind::Listener, &["nobody"], "1.1", "1"), at);
        assert!(out.response.is_none(), "an ACK with the same names");
        let unknown = DiscoveryRequest {
            type_url: "type.googleapis.com/x.Y".into(),
            ..Default::default()
        };
        assert_eq!(
            s.on_request(&unknown, at).heard,
            Heard::Unknown("type.googleapis.com/x.Y".into())
        );
    }
}
