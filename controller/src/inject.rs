//! Sidecar injection: what the admission webhook does to a pod. Pure functions over
//! the pod's JSON, so that they are tested without a server.
//!
//! # Who is injected
//!
//! Two webhook entries of the `MutatingWebhookConfiguration` (deploy/) call two
//! paths, and the Kubernetes API server's selectors do the part the webhook cannot
//! see (an AdmissionReview carries the pod, not its namespace's labels):
//!
//! - `/inject/namespace` is called for every pod of a namespace labelled
//!   `weft.dev/inject=enabled` (its `namespaceSelector`): the pod is injected unless
//!   it says `weft.dev/inject: disabled` (annotation or label).
//! - `/inject` is called elsewhere only for pods labelled `weft.dev/inject=enabled`
//!   (its `objectSelector`; selectors see labels, not annotations — sending every
//!   pod of the cluster to the webhook to read an annotation would put the webhook in
//!   the path of every pod creation): the pod is injected when its annotation or
//!   label says `weft.dev/inject: enabled`.
//!
//! A pod already injected (an init container named `weft-init` or `weft-proxy`, or
//! the `weft.dev/status` annotation) is left alone: re-invocation and replays are no-ops.
//!
//! # What is added
//!
//! - `weft-init` as the first init container: capabilities NET_ADMIN and NET_RAW only,
//!   runs as root once, with the pod's exclusions from the annotations
//!   `weft.dev/exclude-inbound-ports`, `weft.dev/exclude-outbound-ports`,
//!   `weft.dev/exclude-outbound-cidrs`, `weft.dev/exclude-inbound-cidrs` (comma
//!   lists, checked here: a bad value denies the pod with the reason, rather than
//!   starting it half-meshed).
//! - `weft-proxy` right after it, as a native sidecar (an init container with
//!   `restartPolicy: Always`, Kubernetes 1.29+): it starts before the other init
//!   containers and the app (so their first connections have a proxy to go to), and
//!   it does not keep a Job's pod alive. uid/gid 1337 (the uid capture excludes), no
//!   capabilities, read-only root; `startupProbe` on `:15020/live` (the app starts once
//!   the listeners are up: it must not wait on anything that needs the app, and not
//!   on the controller either, so pods still start while it is away),
//!   `readinessProbe` on `:15020/ready` (routes received, and the app accepts on its
//!   service's ports: the pod is not ready while its app does not answer);
//!   ports 15020 (metrics, health) and 15008 (the tunnel peer sidecars dial);
//!   resource requests; environment `WEFT_SERVICE`, `WEFT_CONTROLLER`,
//!   `WEFT_PROXY_ID` (the pod's name), `WEFT_CONTROLLER_TOKEN_FILE`, `POD_NAME`
//!   and `POD_NAMESPACE` (the metrics' resource: `k8s.pod.name`,
//!   `service.namespace`), `WEFT_IDENTITY` when the controller has a CA
//!   (mutual TLS), and with an OTLP collector (the controller's
//!   `--inject-otlp-endpoint`, or the pod's `weft.dev/otlp-endpoint`, `none` for
//!   none) `WEFT_OTLP_ENDPOINT`, `WEFT_OTLP_PROTOCOL` and `WEFT_TRACE_SAMPLE_RATIO`
//!   (`--inject-trace-sample-ratio`, or the pod's `weft.dev/trace-sample-ratio`),
//!   which weft-proxy reads as its flags.
//! - the volume `weft-token`: the pod's ServiceAccount token projected for the
//!   controller's audience (`--token-audience`, one hour, renewed by the kubelet),
//!   mounted read-only in the proxy at [`TOKEN_DIR`]: the proxy's credential for
//!   the controller, checked there with a TokenReview. It names the pod, so the
//!   controller counts each pod's Watches apart.
//! - the annotation `weft.dev/status: injected`.

use std::net::IpAddr;

use serde_json::{json, Value};

/// The annotation (and label) that opts a pod or namespace in or out.
pub const INJECT_KEY: &str = "weft.dev/inject";
/// Set on injected pods.
pub const STATUS_KEY: &str = "weft.dev/status";
/// Names the pod's service (default: label `app.kubernetes.io/name`, then `app`, then
/// the pod's name less its generated suffix).
pub const SERVICE_KEY: &str = "weft.dev/service";
/// A pod's own OTLP collector for its sidecar (`none`: no export), over the
/// controller's `--inject-otlp-endpoint`.
pub const OTLP_ENDPOINT_KEY: &str = "weft.dev/otlp-endpoint";
/// A pod's own share of sampled requests (0 to 1), over the controller's
/// `--inject-trace-sample-ratio`.
pub const TRACE_SAMPLE_RATIO_KEY: &str = "weft.dev/trace-sample-ratio";
/// The names of the containers added.
pub const INIT_NAME: &str = "weft-init";
pub const PROXY_NAME: &str = "weft-proxy";
/// The proxy's uid and gid.
pub const PROXY_UID: u32 = 1337;
/// Where the proxy finds its controller token (file `token`).
pub const TOKEN_DIR: &str = "/var/run/secrets/weft";
/// The projected token's volume.
pub const TOKEN_VOLUME: &str = "weft-token";
/// The projected token's lifetime; the kubelet renews it at 80%.
const TOKEN_SECONDS: u32 = 3600;

/// The exclusion annotations and the weft-init flag each becomes.
pub const EXCLUSIONS: [(&str, &str, Kind); 4] = [
    (
        "weft.dev/exclude-inbound-ports",
        "--exclude-inbound-ports",
        Kind::Ports,
    ),
    (
        "weft.dev/exclude-outbound-ports",
        "--exclude-outbound-ports",
        Kind::Ports,
    ),
    (
        "weft.dev/exclude-outbound-cidrs",
        "--exclude-outbound-cidrs",
        Kind::Cidrs,
    ),
    (
        "weft.dev/exclude-inbound-cidrs",
        "--exclude-inbound-cidrs",
        Kind::Cidrs,
    ),
];

/// What an exclusion annotation lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ports,
    Cidrs,
}

/// How the webhook was reached (which entry of the configuration called it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `/inject`: the pod must opt in itself.
    Pod,
    /// `/inject/namespace`: the namespace opted in; the pod may opt out.
    Namespace,
}

/// What is injected: images, the controller's address, resources.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// The image holding weft-init and weft-proxy.
    pub image: String,
    /// The discovery URL the proxies dial.
    pub controller_url: String,
    /// `imagePullPolicy` of the injected containers.
    pub pull_policy: String,
    /// The audience the proxies' projected tokens are issued for (the controller's
    /// `--token-audience`).
    pub token_audience: String,
    /// The controller has a CA: the proxies keep a workload certificate and take
    /// part in mutual TLS (`WEFT_IDENTITY`).
    pub identity: bool,
    /// Where the sidecars push metrics and request spans over OTLP, mesh-wide.
    pub telemetry: SidecarTelemetry,
}

/// The sidecars' OTLP export, as the controller's `--inject-otlp-*` flags set it
/// for every injected pod; a pod's annotations [`OTLP_ENDPOINT_KEY`] and
/// [`TRACE_SAMPLE_RATIO_KEY`] override it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarTelemetry {
    /// `http://collector:4317`-style; `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; `None`: weft-proxy's default.
    pub otlp_protocol: Option<String>,
    /// `None`: weft-proxy's default (1%).
    pub trace_sample_ratio: Option<f64>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: format!("weft/weft-proxy:{}", env!("CARGO_PKG_VERSION")),
            controller_url: "http://weft-controller.weft-system.svc:15010".to_owned(),
            pull_policy: "IfNotPresent".to_owned(),
            token_audience: crate::auth::review::DEFAULT_AUDIENCE.to_owned(),
            identity: false,
            telemetry: SidecarTelemetry::default(),
        }
    }
}

/// The decision for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No patch, and why (for the log).
    Skip(&'static str),
    /// Refuse the pod, with the reason shown to the user.
    Deny(String),
    /// These JSONPatch operations.
    Patch(Vec<Value>),
}

fn meta<'a>(pod: &'a Value, map: &str, key: &str) -> Option<&'a str> {
    pod.get("metadata")?.get(map)?.get(key)?.as_str()
}

/// The pod's own say: the annotation first, then the label.
fn pod_says(pod: &Value) -> Option<&str> {
    meta(pod, "annotations", INJECT_KEY).or_else(|| meta(pod, "labels", INJECT_KEY))
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The proxy's OTLP environment for `pod`: the mesh-wide settings, with the pod's
/// annotations over them (checked: a bad value denies the pod with the reason).
fn telemetry_env(pod: &Value, mesh: &SidecarTelemetry) -> Result<Vec<Value>, String> {
    let endpoint = match meta(pod, "annotations", OTLP_ENDPOINT_KEY).map(str::trim) {
        Some("none") => None,
        Some(url) => {
            weft_runtime::otlp::check_url(url, OTLP_ENDPOINT_KEY)?;
            Some(url.to_owned())
        }
        None => mesh.otlp_endpoint.clone(),
    };
    let ratio = match meta(pod, "annotations", TRACE_SAMPLE_RATIO_KEY).map(str::trim) {
        Some(r) => Some(
            r.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!("{TRACE_SAMPLE_RATIO_KEY}: {r:?} is not a ratio from 0 to 1")
                })?,
        ),
        None => mesh.trace_sample_ratio,
    };
    let Some(endpoint) = endpoint else {
        // No export: nothing to sample for either.
        return Ok(Vec::new());
    };
    let mut env = vec![json!({ "name": "WEFT_OTLP_ENDPOINT", "value": endpoint })];
    if let Some(protocol) = &mesh.otlp_protocol {
        env.push(json!({ "name": "WEFT_OTLP_PROTOCOL", "value": protocol }));
    }
    if let Some(ratio) = ratio {
        env.push(json!({ "name": "WEFT_TRACE_SAMPLE_RATIO", "value": ratio.to_string() }));
    }
    Ok(env)
}

/// Whether `pod` is injected already.
pub fn already_injected(pod: &Value) -> bool {
    meta(pod, "annotations", STATUS_KEY).is_some()
        || ["initContainers", "containers"].iter().any(|list| {
            names(pod, list)
                .iter()
                .any(|n| n == INIT_NAME || n == PROXY_NAME)
        })
}

/// Decides what to do with `pod` (the AdmissionRequest's `object`) in `namespace`.
pub fn decide(pod: &Value, namespace: &str, via: Via, config: &InjectConfig) -> Decision {
    let says = pod_says(pod);
    let wanted = match (via, says) {
        (_, Some("disabled")) => false,
        (_, Some("enabled")) => true,
        (Via::Namespace, None) => true,
        (Via::Pod, None) => false,
        (_, Some(_)) => {
            return Decision::Deny(format!(
                "{INJECT_KEY}: {:?}: use enabled or disabled",
                says.unwrap_or_default()
            ))
        }
    };
    if !wanted {
        return Decision::Skip(if says == Some("disabled") {
            "the pod opts out"
        } else {
            "the pod does not opt in"
        });
    }
    if already_injected(pod) {
        return Decision::Skip("already injected");
    }
    if !pod.get("spec").is_some_and(Value::is_object) {
        return Decision::Deny("the pod has no spec".to_owned());
    }
    let mut init_args = vec![
        "--proxy-uid".to_owned(),
        PROXY_UID.to_string(),
        "--proxy-gid".to_owned(),
        PROXY_UID.to_string(),
    ];
    for (annotation, flag, kind) in EXCLUSIONS {
        let Some(value) = meta(pod, "annotations", annotation) else {
            continue;
        };
        match check_list(value, kind) {
            Ok(list) if list.is_empty() => {}
            Ok(list) => {
                init_args.push(flag.to_owned());
                init_args.push(list);
            }
            Err(e) => return Decision::Deny(format!("{annotation}: {e}")),
        }
    }
    let telemetry_env = match telemetry_env(pod, &config.telemetry) {
        Ok(env) => env,
        Err(e) => return Decision::Deny(e),
    };
    let service = service_name(pod, namespace);
    let init = json!({
        "name": INIT_NAME,
        "image": config.image,
        "imagePullPolicy": config.pull_policy,
        "command": ["weft-init"],
        "args": init_args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            "limits": { "cpu": "100m", "memory": "64Mi" },
        },
    });
    let mut proxy = json!({
        "name": PROXY_NAME,
        "image": config.image,
        "imagePullPolicy": config.pull_policy,
        "command": ["weft-proxy"],
        "restartPolicy": "Always",
        "env": [
            { "name": "WEFT_SERVICE", "value": service },
            { "name": "WEFT_CONTROLLER", "value": config.controller_url },
            { "name": "WEFT_PROXY_ID", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
            { "name": "WEFT_CONTROLLER_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token") },
            // The metrics' resource (k8s.pod.name, service.namespace), OTLP's too.
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
            { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
        ],
        "volumeMounts": [
            { "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true },
        ],
        // 15008: where peer sidecars open opaque connections to the pod's apps
        // (weft-init keeps it out of capture); declared so that NetworkPolicies
        // and readers of the pod see it.
        "ports": [
            { "name": "weft-metrics", "containerPort": 15020, "protocol": "TCP" },
            { "name": "weft-tunnel", "containerPort": 15008, "protocol": "TCP" },
        ],
        "startupProbe": {
            "httpGet": { "path": "/live", "port": 15020 },
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        "readinessProbe": {
            "httpGet": { "path": "/ready", "port": 15020 },
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "resources": {
            "requests": { "cpu": "50m", "memory": "32Mi" },
            "limits": { "memory": "256Mi" },
        },
    });
    if let Some(env) = proxy["env"].as_array_mut() {
        if config.identity {
            env.push(json!({ "name": "WEFT_IDENTITY", "value": "true" }));
        }
        env.extend(telemetry_env);
    }
    let mut ops = Vec::new();
    if pod
        .pointer("/spec/initContainers")
        .is_some_and(Value::is_array)
    {
        // Inserted at 0, the proxy then weft-init: weft-init runs first, the proxy
        // second, the pod's own init containers after them (captured, and proxied).
        ops.push(json!({ "op": "add", "path": "/spec/initContainers/0", "value": proxy }));
        ops.push(json!({ "op": "add", "path": "/spec/initContainers/0", "value": init }));
    } else {
        ops.push(json!({ "op": "add", "path": "/spec/initContainers", "value": [init, proxy] }));
    }
    let token = json!({
        "name": TOKEN_VOLUME,
        "projected": {
            // Readable by the proxy's uid whatever the pod's fsGroup; the pod's
            // other containers run as the same ServiceAccount and could ask the
            // kubelet for such a token anyway.
            "defaultMode": 0o444,
            "sources": [{ "serviceAccountToken": {
                "audience": config.token_audience,
                "expirationSeconds": TOKEN_SECONDS,
                "path": "token",
            } }],
        },
    });
    if pod.pointer("/spec/volumes").is_some_and(Value::is_array) {
        ops.push(json!({ "op": "add", "path": "/spec/volumes/-", "value": token }));
    } else {
        ops.push(json!({ "op": "add", "path": "/spec/volumes", "value": [token] }));
    }
    if pod
        .pointer("/metadata/annotations")
        .is_some_and(Value::is_object)
    {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", STATUS_KEY.replace('~', "~0").replace('/', "~1")),
            "value": "injected",
        }));
    } else {
        ops.push(json!({
            "op": "add",
            "path": "/metadata/annotations",
            "value": { STATUS_KEY: "injected" },
        }));
    }
    Decision::Patch(ops)
}

/// The pod's service: `weft.dev/service`, else the label `app.kubernetes.io/name`,
/// else `app`, else the pod's name (or `generateName`) less a ReplicaSet's hash;
/// then `.<namespace>`, the way the Kubernetes source names services.
pub fn service_name(pod: &Value, namespace: &str) -> String {
    let base = meta(pod, "annotations", SERVICE_KEY)
        .or_else(|| meta(pod, "labels", "app.kubernetes.io/name"))
        .or_else(|| meta(pod, "labels", "app"))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let from = pod
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .or_else(|| pod.pointer("/metadata/name").and_then(Value::as_str))
                .unwrap_or("unknown");
            let trimmed = from.trim_end_matches('-');
            // `web-7d4b9c8f6b-` → `web`: drop a pod-template-hash segment.
            let hash = meta(pod, "labels", "pod-template-hash");
            match (hash, trimmed.rsplit_once('-')) {
                (Some(h), Some((head, tail))) if tail == h => head.to_owned(),
                _ => trimmed.to_owned(),
            }
        });
    if namespace.is_empty() {
        base
    } else {
        format!("{base}.{namespace}")
    }
}

/// Checks a comma list of ports (1..=65535) or CIDRs; returns it normalized (no
/// spaces).
pub fn check_list(value: &str, kind: Kind) -> Result<String, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ok = match kind {
            Kind::Ports => item.parse::<u16>().is_ok_and(|p| p > 0),
            Kind::Cidrs => is_cidr(item),
        };
        if !ok {
            let what = match kind {
                Kind::Ports => "a port (1-65535)",
                Kind::Cidrs => "a CIDR (address/prefix)",
            };
            return Err(format!("{item:?} is not {what}"));
        }
        out.push(item);
    }
    Ok(out.join(","))
}

fn is_cidr(s: &str) -> bool {
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    if len.is_empty() {
        return true;
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>().is_ok_and(|l| l <= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value, labels: Value) -> Value {
        json!({
            "metadata": {
                "generateName": "web-7d4b9c8f6b-",
                "annotations": annotations,
                "labels": labels,
            },
            "spec": { "containers": [{ "name": "app", "image": "nginx" }] },
        })
    }

    fn patch(d: Decision) -> Vec<Value> {
        match d {
            Decision::Patch(p) => p,
            other => panic!("no patch: {other:?}"),
        }
    }

    #[test]
    fn opt_in_and_out() {
        let c = InjectConfig::default();
        let none = pod(json!({}), json!({}));
        let on = pod(json!({ INJECT_KEY: "enabled" }), json!({}));
        let off = pod(
            json!({ INJECT_KEY: "disabled" }),
            json!({ INJECT_KEY: "enabled" }),
        );
        let label_on = pod(json!({}), json!({ INJECT_KEY: "enabled" }));
        assert!(matches!(
            decide(&none, "ns", Via::Pod, &c),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(&on, "ns", Via::Pod, &c),
            Decision::Patch(_)
        ));
        assert!(matches!(
            decide(&label_on, "ns", Via::Pod, &c),
            Decision::Patch(_)
        ));
        assert!(
            matches!(decide(&off, "ns", Via::Pod, &c), Decision::Skip(_)),
            "the annotation wins"
        );
        assert!(matches!(
            decide(&none, "ns", Via::Namespace, &c),
            Decision::Patch(_)
        ));
        assert!(matches!(
            decide(&off, "ns", Via::Namespace, &c),
            Decision::Skip(_)
        ));
        let odd = pod(json!({ INJECT_KEY: "yes" }), json!({}));
        assert!(matches!(
            decide(&odd, "ns", Via::Namespace, &c),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn the_patch_puts_init_then_proxy_first_and_marks_the_pod() {
        let c = InjectConfig::default();
        let mut p = pod(
            json!({ INJECT_KEY: "enabled", "weft.dev/exclude-inbound-ports": "8081, 9000" }),
            json!({ "app": "web", "pod-template-hash": "7d4b9c8f6b" }),
        );
        p["spec"]["initContainers"] = json!([{ "name": "migrate", "image": "x" }]);
        let ops = patch(decide(&p, "shop", Via::Pod, &c));
        assert_eq!(ops[0]["path"], "/spec/initContainers/0");
        assert_eq!(ops[0]["value"]["name"], PROXY_NAME);
        assert_eq!(ops[1]["value"]["name"], INIT_NAME);
        assert_eq!(ops[2]["path"], "/spec/volumes");
        let projected = &ops[2]["value"][0]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(projected["audience"], "weft-controller");
        assert_eq!(ops[0]["value"]["volumeMounts"][0]["name"], TOKEN_VOLUME);
        assert_eq!(
            ops[0]["value"]["env"][3]["value"],
            "/var/run/secrets/weft/token"
        );
        assert_eq!(ops[3]["path"], "/metadata/annotations/weft.dev~1status");
        let args = ops[1]["value"]["args"].as_array().expect("args");
        let i = args
            .iter()
            .position(|a| a == "--exclude-inbound-ports")
            .expect("flag");
        assert_eq!(args[i + 1], "8081,9000");
        assert_eq!(ops[0]["value"]["env"][0]["value"], "web.shop");
        let has_identity = |ops: &[Value]| {
            ops[0]["value"]["env"]
                .as_array()
                .expect("env")
                .iter()
                .any(|e| e["name"] == "WEFT_IDENTITY" && e["value"] == "true")
        };
        assert!(!has_identity(&ops), "no CA: no mutual TLS");
        let with_ca = InjectConfig {
            identity: true,
            ..InjectConfig::default()
        };
        assert!(has_identity(&patch(decide(&p, "shop", Via::Pod, &with_ca))));
        // The probe that holds the app container back needs neither the app (it
        // starts after) nor the controller; readiness includes the app.
        let probe = |kind: &str| ops[0]["value"][kind]["httpGet"]["path"].clone();
        assert_eq!(probe("startupProbe"), "/live");
        assert_eq!(probe("readinessProbe"), "/ready");
        // Its ports: metrics, and the tunnel peer sidecars dial.
        let ports: Vec<(String, u64)> = ops[0]["value"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["containerPort"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("weft-metrics".to_owned(), 15020),
                ("weft-tunnel".to_owned(), 15008)
            ]
        );
        // Applied, the result is injected already.
        let mut applied = p.clone();
        let inits = applied["spec"]["initContainers"]
            .as_array_mut()
            .expect("array");
        inits.insert(0, ops[0]["value"].clone());
        inits.insert(0, ops[1]["value"].clone());
        assert!(already_injected(&applied));
        assert!(matches!(
            decide(&applied, "shop", Via::Pod, &c),
            Decision::Skip("already injected")
        ));
    }

    #[test]
    fn bad_exclusions_deny_the_pod() {
        let c = InjectConfig::default();
        for (k, v) in [
            ("weft.dev/exclude-inbound-ports", "80,http"),
            ("weft.dev/exclude-outbound-ports", "0"),
            ("weft.dev/exclude-outbound-cidrs", "10.0.0.0/33"),
            ("weft.dev/exclude-inbound-cidrs", "fd00::/129"),
        ] {
            let p = pod(json!({ INJECT_KEY: "enabled", k: v }), json!({}));
            match decide(&p, "ns", Via::Pod, &c) {
                Decision::Deny(reason) => assert!(reason.starts_with(k), "{reason}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
        assert_eq!(
            check_list("10.0.0.0/8, fd00::/8,1.2.3.4", Kind::Cidrs).as_deref(),
            Ok("10.0.0.0/8,fd00::/8,1.2.3.4")
        );
    }

    /// The proxy's environment value `name`, if set.
    fn env_of(ops: &[Value], name: &str) -> Option<String> {
        // The proxy is added alone, or in a new initContainers list.
        let proxy = ops
            .iter()
            .flat_map(|op| match &op["value"] {
                Value::Array(list) => list.iter().collect(),
                one => vec![one],
            })
            .find(|c| c["name"] == PROXY_NAME)
            .expect("the proxy container");
        proxy["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(str::to_owned))
    }

    #[test]
    fn the_mesh_wide_otlp_settings_reach_every_sidecar_and_a_pod_may_override_them() {
        let mesh = InjectConfig {
            telemetry: SidecarTelemetry {
                otlp_endpoint: Some("http://collector.obs:4317".to_owned()),
                otlp_protocol: Some("grpc".to_owned()),
                trace_sample_ratio: Some(0.05),
            },
            ..InjectConfig::default()
        };
        let plain = pod(json!({ INJECT_KEY: "enabled" }), json!({}));
        let ops = patch(decide(&plain, "shop", Via::Pod, &mesh));
        assert_eq!(
            env_of(&ops, "WEFT_OTLP_ENDPOINT").as_deref(),
            Some("http://collector.obs:4317")
        );
        assert_eq!(env_of(&ops, "WEFT_OTLP_PROTOCOL").as_deref(), Some("grpc"));
        assert_eq!(
            env_of(&ops, "WEFT_TRACE_SAMPLE_RATIO").as_deref(),
            Some("0.05")
        );
        // Without settings, nothing: weft-proxy exports nothing.
        let ops = patch(decide(&plain, "shop", Via::Pod, &InjectConfig::default()));
        assert_eq!(env_of(&ops, "WEFT_OTLP_ENDPOINT"), None);
        assert_eq!(env_of(&ops, "WEFT_TRACE_SAMPLE_RATIO"), None);
        // A pod's own ratio and collector; `none` opts out.
        let own = pod(
            json!({
                INJECT_KEY: "enabled",
                TRACE_SAMPLE_RATIO_KEY: "1",
                OTLP_ENDPOINT_KEY: "http://agent.local:4317",
            }),
            json!({}),
        );
        let ops = patch(decide(&own, "shop", Via::Pod, &mesh));
        assert_eq!(
            env_of(&ops, "WEFT_TRACE_SAMPLE_RATIO").as_deref(),
            Some("1")
        );
        assert_eq!(
            env_of(&ops, "WEFT_OTLP_ENDPOINT").as_deref(),
            Some("http://agent.local:4317")
        );
        let out = pod(
            json!({ INJECT_KEY: "enabled", OTLP_ENDPOINT_KEY: "none" }),
            json!({}),
        );
        let ops = patch(decide(&out, "shop", Via::Pod, &mesh));
        assert_eq!(env_of(&ops, "WEFT_OTLP_ENDPOINT"), None);
        assert_eq!(env_of(&ops, "WEFT_TRACE_SAMPLE_RATIO"), None);
    }

    #[test]
    fn bad_telemetry_annotations_deny_the_pod() {
        for (k, v) in [
            (TRACE_SAMPLE_RATIO_KEY, "2"),
            (TRACE_SAMPLE_RATIO_KEY, "some"),
            (OTLP_ENDPOINT_KEY, "https://collector:4317"),
            (OTLP_ENDPOINT_KEY, "collector:4317"),
        ] {
            let p = pod(json!({ INJECT_KEY: "enabled", k: v }), json!({}));
            match decide(&p, "ns", Via::Pod, &InjectConfig::default()) {
                Decision::Deny(reason) => assert!(reason.starts_with(k), "{reason}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }

    #[test]
    fn service_names() {
        let p = pod(json!({}), json!({ "pod-template-hash": "7d4b9c8f6b" }));
        assert_eq!(service_name(&p, "shop"), "web.shop");
        let p = pod(json!({ SERVICE_KEY: "api" }), json!({ "app": "web" }));
        assert_eq!(service_name(&p, "shop"), "api.shop");
        let p = json!({ "metadata": { "name": "solo" } });
        assert_eq!(service_name(&p, ""), "solo");
    }
}
