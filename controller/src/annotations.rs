//! The security policy a Kubernetes Service carries in its annotations, the
//! Kubernetes form of a mesh-file service's `mtls` and `authorization`
//! (ARCHITECTURE.md, Authorization):
//!
//! - `weft.dev/mtls`: `permissive` (the default), `strict` or `disabled`;
//! - `weft.dev/authorization`: the mesh file's `authorization` list, in YAML or
//!   JSON (`[{port: 80, allow: [{service: frontend.shop}, {namespace: ops}]}]`;
//!   a service source names a mesh service, `NAME.NAMESPACE`).
//!
//! A malformed annotation fails closed and says why: a bad `mtls` is `strict`, a
//! bad `authorization` refuses every caller on every port, until it is fixed.

use std::collections::BTreeMap;

use crate::model::{Authorization, MtlsMode, Service};

/// The annotation naming a Service's mutual TLS mode.
pub const MTLS: &str = "weft.dev/mtls";
/// The annotation holding a Service's authorization entries.
pub const AUTHORIZATION: &str = "weft.dev/authorization";

/// Applies `annotations` to `service` (its ports already mapped); returns what was
/// wrong with them, for the log.
pub fn apply(annotations: &BTreeMap<String, String>, service: &mut Service) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(value) = annotations.get(MTLS) {
        service.mtls = match value.trim() {
            "permissive" => MtlsMode::Permissive,
            "strict" => MtlsMode::Strict,
            "disabled" => MtlsMode::Disabled,
            other => {
                problems.push(format!(
                    "annotation {MTLS}: {other:?} is none of permissive, strict, disabled: strict until fixed"
                ));
                MtlsMode::Strict
            }
        };
    }
    if let Some(value) = annotations.get(AUTHORIZATION) {
        let parsed = serde_norway::from_str::<Vec<Authorization>>(value)
            .map_err(|e| e.to_string())
            .and_then(|entries| {
                service.authorization = entries;
                let wrong = service.authorization_problems();
                if wrong.is_empty() {
                    Ok(())
                } else {
                    Err(wrong.join("; "))
                }
            });
        if let Err(why) = parsed {
            problems.push(format!(
                "annotation {AUTHORIZATION}: {why}: every caller refused until fixed"
            ));
            service.authorization = vec![Authorization {
                port: None,
                allow: Vec::new(),
            }];
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Name, Policy, Port, Protocol, Source};
    use std::num::NonZeroU16;

    fn service() -> Service {
        let port = NonZeroU16::new(80).expect("port");
        Service {
            vip: "10.96.0.10".parse().expect("address"),
            ports: vec![Port {
                port,
                target_port: port,
                protocol: Protocol::Auto,
            }],
            endpoints: Vec::new(),
            policy: Policy::default(),
            mtls: MtlsMode::default(),
            authorization: Vec::new(),
        }
    }

    fn annotated(pairs: &[(&str, &str)]) -> (Service, Vec<String>) {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut svc = service();
        let problems = apply(&map, &mut svc);
        (svc, problems)
    }

    #[test]
    fn annotations_set_the_mode_and_the_entries() {
        let (svc, problems) = annotated(&[
            (MTLS, "strict"),
            (
                AUTHORIZATION,
                "[{port: 80, allow: [{service: frontend.shop}, {namespace: ops}]}]",
            ),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(svc.mtls, MtlsMode::Strict);
        assert_eq!(svc.authorization.len(), 1);
        assert_eq!(
            svc.authorization[0].allow,
            [
                Source::Service(Name::try_from("frontend.shop").expect("name")),
                Source::Namespace(Name::try_from("ops").expect("name")),
            ]
        );
        let (svc, problems) = annotated(&[]);
        assert!(problems.is_empty());
        assert_eq!(svc, service());
    }

    #[test]
    fn a_bad_annotation_fails_closed_and_says_why() {
        let (svc, problems) = annotated(&[(MTLS, "sometimes")]);
        assert_eq!(svc.mtls, MtlsMode::Strict);
        assert!(problems[0].contains("sometimes"), "{problems:?}");
        for bad in [
            "[{port: 81, allow: []}]",
            "[{allow: [{identity: nobody}]}]",
            "{not: a list}",
        ] {
            let (svc, problems) = annotated(&[(AUTHORIZATION, bad)]);
            assert_eq!(problems.len(), 1, "{bad}");
            assert!(problems[0].contains(AUTHORIZATION), "{problems:?}");
            assert_eq!(
                svc.authorization,
                [Authorization {
                    port: None,
                    allow: Vec::new()
                }],
                "{bad}"
            );
        }
    }
}
