//! deploy/: every Kubernetes manifest parses (multi-document YAML, with serde_norway)
//! and holds sane objects; the kustomizations name files that exist; the RBAC is
//! read-only on exactly what the controller watches (plus creating TokenReviews,
//! which change nothing); the webhook configuration
//! points at the controller's Service and at the paths the webhook serves; the
//! Deployment's flags are ones the real weft-controller accepts; the Dockerfiles put
//! the binaries the injected containers run on their PATH.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under deploy/kubernetes, by file.
fn documents() -> BTreeMap<PathBuf, Vec<Value>> {
    let mut files = Vec::new();
    yaml_files(&deploy().join("kubernetes"), &mut files);
    assert!(!files.is_empty());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read");
            let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
                .map(|doc| {
                    Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                })
                .filter(|v| !v.is_null())
                .collect();
            (path, docs)
        })
        .collect()
}

/// The objects of the base, by kind then name.
fn base() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (path, docs) in documents() {
        if !path.starts_with(deploy().join("kubernetes/base")) {
            continue;
        }
        for doc in docs {
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            if kind == "Kustomization" {
                continue;
            }
            let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
            assert!(
                out.insert((kind.clone(), name.clone()), doc).is_none(),
                "{kind} {name} twice"
            );
        }
    }
    out
}

fn get<'a>(objects: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strs(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn every_manifest_parses_and_names_its_kind() {
    for (path, docs) in documents() {
        assert!(!docs.is_empty(), "{}: no document", path.display());
        for doc in &docs {
            let kind = doc["kind"].as_str();
            let api = doc["apiVersion"].as_str();
            assert!(kind.is_some() && api.is_some(), "{}: {doc}", path.display());
            if kind == Some("Kustomization") {
                // Every resource it names exists beside it.
                for r in strs(&doc["resources"]) {
                    let target = path.parent().expect("dir").join(&r);
                    assert!(target.exists(), "{}: {r} does not exist", path.display());
                }
            } else {
                assert!(
                    doc["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty()),
                    "{}: {doc}",
                    path.display()
                );
            }
        }
    }
    let kinds: BTreeSet<String> = base().keys().map(|(k, _)| k.clone()).collect();
    for want in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(want), "no {want} in the base: {kinds:?}");
    }
}

#[test]
fn rbac_is_read_only_on_what_the_controller_watches() {
    let b = base();
    let role = get(&b, "ClusterRole", "weft-controller");
    let mut covered = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let verbs = strs(&rule["verbs"]);
        let reviews = strs(&rule["resources"]).iter().eq(["tokenreviews"].iter());
        let allowed: &[&str] = if reviews {
            &["create"]
        } else {
            &["get", "list", "watch"]
        };
        assert!(
            verbs.iter().all(|v| allowed.contains(&v.as_str())),
            "{rule}"
        );
        for group in strs(&rule["apiGroups"]) {
            for resource in strs(&rule["resources"]) {
                covered.insert(format!("{group}/{resource}"));
            }
        }
    }
    let want: BTreeSet<String> = [
        "/services",
        "/pods",
        "discovery.k8s.io/endpointslices",
        "authentication.k8s.io/tokenreviews",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(covered, want, "exactly these, nothing else");
    let binding = get(&b, "ClusterRoleBinding", "weft-controller");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], "weft-controller");
    let subject = &binding["subjects"][0];
    assert_eq!(subject["kind"], "ServiceAccount");
    let sa = get(
        &b,
        "ServiceAccount",
        subject["name"].as_str().expect("name"),
    );
    assert_eq!(sa["metadata"]["namespace"], subject["namespace"]);
}

#[test]
fn the_deployment_runs_flags_the_controller_accepts() {
    let b = base();
    let dep = get(&b, "Deployment", "weft-controller");
    let pod = &dep["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    for (k, v) in dep["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(&labels[k], v, "the selector matches the template");
    }
    assert_eq!(pod["metadata"]["labels"]["weft.dev/inject"], "disabled");
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        get(&b, "ServiceAccount", "weft-controller")["metadata"]["name"]
    );
    let c = &pod["spec"]["containers"][0];
    let args: Vec<String> = strs(&c["args"]).into_iter().collect();
    // The real binary parses them (`--help` last: it stops after parsing).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .args(&args)
        .arg("--help")
        .output()
        .expect("run weft-controller");
    assert!(
        out.status.success(),
        "weft-controller {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every file or directory it is given is under a mount; every port it listens
    // on is a declared container port, and the probes use the HTTP API's.
    let mounts: Vec<String> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["mountPath"].as_str().expect("path").to_owned())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name}"))
            .to_owned()
    };
    for f in [
        "config",
        "state-dir",
        "ca-dir",
        "webhook-cert",
        "webhook-key",
    ] {
        let path = flag(f);
        assert!(
            mounts.iter().any(|m| path.starts_with(m.as_str())),
            "--{f}={path}: not mounted"
        );
    }
    let ports: BTreeMap<String, u64> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_owned(),
                p["containerPort"].as_u64().expect("port"),
            )
        })
        .collect();
    for (f, name) in [
        ("grpc-listen", "grpc"),
        ("http-listen", "http"),
        ("webhook-listen", "webhook"),
    ] {
        let listen = flag(f);
        assert!(
            listen.ends_with(&format!(":{}", ports[name])),
            "--{f}={listen}"
        );
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    // The Service selects the pod and targets its named ports.
    let svc = get(&b, "Service", "weft-controller");
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[k], v);
    }
    for p in svc["spec"]["ports"].as_array().expect("ports") {
        let target = p["targetPort"].as_str().expect("named");
        assert!(ports.contains_key(target), "{p}");
    }
    // The injected proxies dial this Service's gRPC port.
    assert_eq!(
        flag("inject-controller"),
        format!(
            "http://{}.{}.svc:15010",
            svc["metadata"]["name"].as_str().expect("name"),
            svc["metadata"]["namespace"].as_str().expect("ns")
        )
    );
}

#[test]
fn the_webhook_configuration_is_deliberate_and_points_at_the_controller() {
    let b = base();
    let cfg = get(&b, "MutatingWebhookConfiguration", "weft-sidecar-injector");
    let svc = get(&b, "Service", "weft-controller");
    let webhook_port = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["targetPort"] == "webhook")
        .expect("a webhook port")["port"]
        .clone();
    let mut paths = BTreeSet::new();
    for w in cfg["webhooks"].as_array().expect("webhooks") {
        let name = w["name"].as_str().expect("name");
        assert!(name.ends_with(".weft.dev"), "{name}");
        assert!(
            ["Ignore", "Fail"].contains(&w["failurePolicy"].as_str().unwrap_or("")),
            "{name}: failurePolicy must be explicit"
        );
        assert_eq!(w["sideEffects"], "None", "{name}");
        assert!(strs(&w["admissionReviewVersions"]).contains("v1"), "{name}");
        assert!(
            w["timeoutSeconds"].as_u64().is_some_and(|t| t <= 10),
            "{name}"
        );
        let target = &w["clientConfig"]["service"];
        assert_eq!(target["name"], svc["metadata"]["name"], "{name}");
        assert_eq!(target["namespace"], svc["metadata"]["namespace"], "{name}");
        assert_eq!(target["port"], webhook_port, "{name}");
        paths.insert(target["path"].as_str().expect("path").to_owned());
        let rule = &w["rules"][0];
        assert_eq!(
            strs(&rule["operations"]),
            BTreeSet::from(["CREATE".to_owned()])
        );
        assert_eq!(
            strs(&rule["resources"]),
            BTreeSet::from(["pods".to_owned()])
        );
        // The controller's own namespace and the system ones are never selected.
        let excluded = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .expect("namespaceSelector")
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
            .map(|e| strs(&e["values"]))
            .unwrap_or_default();
        for ns in ["kube-system", "weft-system"] {
            assert!(excluded.contains(ns), "{name} may select {ns}");
        }
        assert!(w["objectSelector"].is_object(), "{name}");
    }
    assert_eq!(
        paths,
        BTreeSet::from(["/inject".to_owned(), "/inject/namespace".to_owned()]),
        "the paths weft_controller::webhook serves"
    );
    let ns = get(&b, "Namespace", "weft-system");
    assert_eq!(ns["metadata"]["labels"]["weft.dev/inject"], "disabled");
}

#[test]
fn the_dockerfiles_ship_what_the_manifests_run() {
    let docker = deploy().join("docker");
    let controller = std::fs::read_to_string(docker.join("controller.Dockerfile")).expect("read");
    assert!(controller.contains("/usr/local/bin/weft-controller"));
    let proxy = std::fs::read_to_string(docker.join("proxy.Dockerfile")).expect("read");
    // The injected containers' commands (weft_controller::inject) are on the PATH.
    for bin in [
        weft_controller::inject::INIT_NAME,
        weft_controller::inject::PROXY_NAME,
    ] {
        assert!(proxy.contains(&format!("/usr/local/bin/{bin}")), "{bin}");
    }
    assert!(
        proxy.contains("iptables"),
        "weft-init needs iptables in the image"
    );
    for text in [&controller, &proxy] {
        let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
        assert!(froms >= 2, "a build stage and a slim runtime stage");
    }
}
