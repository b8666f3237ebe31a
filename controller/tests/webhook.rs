//! In-process: the admission webhook over real TLS (a certificate made by rcgen for
//! the test), fed AdmissionReview JSON shaped as the Kubernetes API server sends it.
//! An opted-in pod gets a JSONPatch adding weft-init and the weft-proxy native
//! sidecar; a pod that does not opt in, and one already injected, get none; garbage
//! gets a 400 and the server keeps serving. Then the injected containers' flags and
//! environment are checked against the real weft-init and weft-proxy binaries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_controller::inject::{decide, Decision, InjectConfig, Via};
use weft_controller::webhook::Webhook;
use weft_controller::{Controller, Options};

mod common;
use common::IN_TIME;

/// A pod as `kubectl apply` of a Deployment's ReplicaSet makes it, inside the
/// AdmissionReview the API server posts (fields as in admission.k8s.io/v1).
fn review(uid: &str, annotations: Value, init_containers: Option<Value>) -> Value {
    let mut pod = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "web-7d4b9c8f6b-",
            "namespace": "shop",
            "creationTimestamp": null,
            "labels": { "app": "web", "pod-template-hash": "7d4b9c8f6b" },
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6b",
                "uid": "5f0c1a7e-6c1b-4a8e-9a53-4a1f7c2b9d10", "controller": true,
                "blockOwnerDeletion": true
            }],
            "managedFields": []
        },
        "spec": {
            "volumes": [{ "name": "kube-api-access-x7k2p", "projected": { "sources": [], "defaultMode": 420 } }],
            "containers": [{
                "name": "web", "image": "nginx:1.27",
                "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                "resources": {},
                "volumeMounts": [{ "name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    });
    if let Some(inits) = init_containers {
        pod["spec"]["initContainers"] = inits;
    }
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "2b4c6d8e-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" }
        }
    })
}

struct Server {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    _dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A controller with the webhook on loopback, its certificate and key read from PEM
/// files as `--webhook-cert` / `--webhook-key` are.
async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "services: {}\n").expect("write");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let (cert_pem, key_pem) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("write");
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).expect("write");
    let webhook =
        Webhook::from_pem_files(&cert_pem, &key_pem, InjectConfig::default()).expect("webhook");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let controller = Controller::load(&Options::new(&mesh))
        .await
        .expect("load")
        .with_webhook(listener, webhook);
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.serve(grpc, http, async {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The key type rcgen made is one rustls reads back (checked here, too).
    let _ = PrivateKeyDer::try_from(cert.key_pair.serialize_der()).expect("key der");
    Server {
        addr,
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        _dir: dir,
        stop,
        task,
    }
}

impl Server {
    /// POSTs `body` to `path` over TLS: status and body.
    async fn post(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = self
            .connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: weft-controller.weft-system.svc:443\r\nContent-Type: application/json\r\nAccept: application/json, */*\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.expect("write");
        tls.write_all(body).await.expect("write");
        let mut resp = Vec::new();
        // A TLS peer may close without close_notify after Connection: close.
        let _ = tokio::time::timeout(IN_TIME, tls.read_to_end(&mut resp)).await;
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("headers");
        let code = std::str::from_utf8(&resp[9..12])
            .expect("utf8")
            .parse()
            .expect("code");
        (code, resp[split + 4..].to_vec())
    }

    /// Posts a review; the answering review's response.
    async fn review(&self, path: &str, review: &Value) -> Value {
        let (code, body) = self.post(path, review.to_string().as_bytes()).await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        answer["response"].clone()
    }
}

/// The JSONPatch in a response, decoded.
fn patch_of(response: &Value) -> Vec<Value> {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("patch"))
        .expect("base64");
    serde_json::from_slice(&bytes).expect("patch json")
}

/// Applies `add` operations (all the webhook emits) to `doc`, as the API server
/// would (RFC 6902: an array index inserts before; `-` appends).
fn apply(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().expect("path");
        let (parent, last) = path.rsplit_once('/').expect("pointer");
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc.pointer_mut(parent).expect("parent exists");
        match target {
            Value::Array(a) if last == "-" => a.push(op["value"].clone()),
            Value::Array(a) => a.insert(last.parse().expect("index"), op["value"].clone()),
            Value::Object(o) => {
                o.insert(last, op["value"].clone());
            }
            other => panic!("cannot add under {other}"),
        }
    }
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_pods_get_both_containers_others_nothing_and_garbage_a_400() {
    let s = start().await;

    // Opted in by annotation, with exclusions and an init container of its own.
    let opted = review(
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        json!({
            "weft.dev/inject": "enabled",
            "weft.dev/exclude-inbound-ports": "9090",
            "weft.dev/exclude-outbound-cidrs": "169.254.169.254/32"
        }),
        Some(json!([{ "name": "migrate", "image": "migrate:1" }])),
    );
    let response = s.review("/inject", &opted).await;
    let ops = patch_of(&response);
    let mut pod = opted["request"]["object"].clone();
    apply(&mut pod, &ops);
    let order: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .expect("inits")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(order, ["weft-init", "weft-proxy", "migrate"]);
    let init = container(&pod, "initContainers", "weft-init");
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let args: Vec<&str> = init["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("str"))
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--exclude-inbound-ports", "9090"]),
        "{args:?}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--exclude-outbound-cidrs", "169.254.169.254/32"]),
        "{args:?}"
    );
    let proxy = container(&pod, "initContainers", "weft-proxy");
    assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15020);
    // `/ready` is 503 while the app does not answer; the startup probe, which holds
    // the app container back, must not wait for the app.
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 15020);
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/live");
    assert!(proxy["resources"]["requests"]["cpu"].is_string());
    assert!(proxy["resources"]["requests"]["memory"].is_string());
    let env: Vec<(&str, &Value)> = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("name"), e))
        .collect();
    assert_eq!(
        env[0],
        (
            "WEFT_SERVICE",
            &json!({ "name": "WEFT_SERVICE", "value": "web.shop" })
        )
    );
    assert_eq!(env[1].1["value"], InjectConfig::default().controller_url);
    assert_eq!(
        env[2].1["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["weft.dev/status"],
        "injected"
    );
    assert_eq!(
        pod["spec"]["containers"], opted["request"]["object"]["spec"]["containers"],
        "the app is untouched"
    );

    // Injected already (the patched pod again, as on a reinvocation): no patch.
    let mut again = opted.clone();
    again["request"]["object"] = pod;
    let response = s.review("/inject", &again).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");

    // Not opted in, or opting out of an opted-in namespace: allowed, no patch.
    for (path, annotations) in [
        ("/inject", json!({})),
        ("/inject", json!({ "weft.dev/inject": "disabled" })),
        (
            "/inject/namespace",
            json!({ "weft.dev/inject": "disabled" }),
        ),
    ] {
        let r = s
            .review(path, &review("a-uid", annotations.clone(), None))
            .await;
        assert_eq!(r["allowed"], true, "{path} {annotations}");
        assert!(r.get("patch").is_none(), "{path} {annotations}: {r}");
    }
    // A namespace that opted in: a pod saying nothing is injected.
    let r = s
        .review("/inject/namespace", &review("ns-uid", json!({}), None))
        .await;
    let mut pod = review("ns-uid", json!({}), None)["request"]["object"].clone();
    apply(&mut pod, &patch_of(&r));
    assert_eq!(
        pod["spec"]["initContainers"].as_array().map(Vec::len),
        Some(2)
    );

    // A bad exclusion: the pod is refused with the reason.
    let r = s
        .review(
            "/inject",
            &review(
                "bad-uid",
                json!({ "weft.dev/inject": "enabled", "weft.dev/exclude-inbound-ports": "http" }),
                None,
            ),
        )
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exclude-inbound-ports")),
        "{r}"
    );

    // Garbage: 400 with a reason, and the server goes on.
    for garbage in [
        &b"not json"[..],
        br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}"#,
        br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
        br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}"#,
    ] {
        let (code, body) = s.post("/inject", garbage).await;
        assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
        assert!(!body.is_empty());
    }
    // An object it was not asked about (a Deployment, from a misconfigured webhook
    // configuration): refused, not waved through unseen.
    let mut deployment = review("deploy-uid", json!({ "weft.dev/inject": "enabled" }), None);
    deployment["request"]["kind"] =
        json!({ "group": "apps", "version": "v1", "kind": "Deployment" });
    let (code, body) = s.post("/inject", deployment.to_string().as_bytes()).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Pods only, not apps/v1 Deployment"), "{body}");

    // Plain HTTP on the TLS port fails that connection only.
    let mut plain = TcpStream::connect(s.addr).await.expect("connect");
    let _ = plain.write_all(b"POST /inject HTTP/1.1\r\n\r\n").await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(IN_TIME, plain.read_to_end(&mut sink)).await;
    let r = s.review("/inject", &opted).await;
    assert!(!patch_of(&r).is_empty(), "still serving");

    s.stop.send(()).expect("stop");
    tokio::time::timeout(IN_TIME, s.task)
        .await
        .expect("stops")
        .expect("task")
        .expect("serve ok");
}

/// Where the workspace's binaries are: `$WEFT_BIN_DIR`, else the target directory of
/// this test executable. Missing binaries fail the test (build them first, as
/// `cargo xtask test` does).
fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEFT_BIN_DIR").map_or_else(
        || {
            let exe = std::env::current_exe().expect("current_exe");
            let deps = exe.parent().expect("deps dir").to_path_buf();
            deps.parent()
                .map_or(deps.clone(), std::path::Path::to_path_buf)
        },
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (cargo build -p {name} --bins, or cargo xtask test)",
        path.display()
    );
    path
}

/// The injected containers' command lines and environment are accepted by the real
/// binaries: weft-init runs them in `--dry-run` (every flag and value parsed and
/// validated, the rules printed, nothing changed); weft-proxy parses the flags
/// (`--help` at the end stops it after parsing), and every variable set is one its
/// `--help` lists (the values are a name, a URL and the pod's name: strings).
#[test]
fn injected_flags_and_env_are_what_the_binaries_accept() {
    let pod = json!({
        "metadata": {
            "name": "web-0",
            "annotations": {
                "weft.dev/inject": "enabled",
                "weft.dev/exclude-inbound-ports": "9090, 9091",
                "weft.dev/exclude-outbound-ports": "5432",
                "weft.dev/exclude-outbound-cidrs": "169.254.169.254/32,fd00:ec2::254/128",
                "weft.dev/exclude-inbound-cidrs": "10.0.0.0/8"
            }
        },
        "spec": { "containers": [{ "name": "web", "image": "x" }] }
    });
    let Decision::Patch(ops) = decide(&pod, "shop", Via::Pod, &InjectConfig::default()) else {
        panic!("no patch");
    };
    let inits = ops[0]["value"].as_array().expect("both containers");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("str").to_owned())
            .collect()
    };

    let init = &inits[0];
    assert_eq!(strings(&init["command"]), ["weft-init"]);
    let out = std::process::Command::new(bin("weft-init"))
        .args(strings(&init["args"]))
        .arg("--dry-run")
        .output()
        .expect("run weft-init");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weft-init {:?} --dry-run: {}{stdout}",
        init["args"],
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "--uid-owner 1337",
        "9090,9091",
        "5432",
        "169.254.169.254/32",
        "10.0.0.0/8",
    ] {
        assert!(stdout.contains(needle), "{needle} not in:\n{stdout}");
    }

    let proxy = &inits[1];
    assert_eq!(strings(&proxy["command"]), ["weft-proxy"]);
    let mut args: Vec<String> = proxy.get("args").map(strings).unwrap_or_default();
    args.push("--help".to_owned());
    let out = std::process::Command::new(bin("weft-proxy"))
        .args(&args)
        .env_clear()
        .output()
        .expect("run weft-proxy");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weft-proxy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for var in proxy["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("name");
        assert!(
            help.contains(&format!("[env: {name}=")),
            "weft-proxy does not read {name}:\n{help}"
        );
    }
}
