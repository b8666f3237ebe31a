//! Tier 2: acknowledged discovery (the control-plane issue's "must show"). Three
//! sidecars subscribe to the real controller and answer every update with an Ack;
//! `/v1/status` shows each one's applied version and `subscribers` counts them.
//! One sidecar takes at most two services (`--max-services 2`): an edit to three
//! services is rejected by it and shown as such, with the reason, while the others
//! apply it; the edit back is applied by all. Then the controller is killed, the file
//! edited twice while it is away, and a new controller started: every proxy converges
//! to the new controller's epoch and version (checked on each proxy's `/routes`), and
//! `/v1/status` shows the three applied.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use weft_e2e::{wait_until, Controller, Mesh, Mode, ModePod, Sidecar};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;
const ADMIN: &str = "127.0.0.1:15000";

fn mesh_yaml(backend_endpoints: &[&str], extra: bool) -> String {
    let mut text = format!(
        "services:\n  backend:\n    vip: 10.96.0.10\n    ports: [{{ port: 80, target_port: 8080 }}]\n    endpoints: [{}]\n  frontend:\n    vip: 10.96.0.20\n    ports: [{{ port: 80 }}]\n",
        backend_endpoints.join(", ")
    );
    if extra {
        text.push_str("  extra:\n    vip: 10.96.0.30\n    ports: [{ port: 80 }]\n");
    }
    text
}

fn write_renamed(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn routes(pod: &ModePod) -> Value {
    let (code, body) = pod.http_get(ADMIN.parse().unwrap(), "/routes").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn backend_endpoints(routes: &Value) -> Vec<String> {
    routes["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "backend")
        .map(|s| {
            s["routes"][0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn status(controller: &Controller) -> Value {
    controller.get_json("/v1/status").unwrap()
}

/// Waits until every proxy on `/v1/status` applied `version`; returns the status.
fn all_applied(controller: &Controller, version: u64, proxies: usize) -> Value {
    let mut last = Value::Null;
    wait_until(SECS(15), MS(50), || {
        last = status(controller);
        let list = last["proxies"].as_array().cloned().unwrap_or_default();
        list.len() == proxies && list.iter().all(|p| p["applied_version"] == version)
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    last
}

#[test]
fn proxies_acknowledge_reject_with_a_reason_and_follow_a_restarted_controller() {
    let mode = Mode::Iptables;
    let mesh = Mesh::new().unwrap();
    let file = mesh.run_dir().join("mesh.yaml");
    write_renamed(&file, &mesh_yaml(&["10.211.0.50"], false));
    let controller = Controller::start(&mesh, &file, &[]).unwrap();
    let url = controller.url().to_owned();
    let mut pods: Vec<(ModePod, Sidecar)> = Vec::new();
    for (name, limited) in [("p1", false), ("p2", false), ("small", true)] {
        let pod = mode.add_pod(&mesh, name).unwrap();
        let mut args = vec!["--controller", url.as_str()];
        if limited {
            args.extend(["--max-services", "2"]);
        }
        let sidecar = pod.sidecar_with(&[], "frontend", &args).unwrap();
        pods.push((pod, sidecar));
    }
    let v = status(&controller)["version"].as_u64().unwrap();
    let st = all_applied(&controller, v, 3);
    assert_eq!(st["subscribers"], 3, "{st}");
    for p in st["proxies"].as_array().unwrap() {
        assert_eq!(p["acknowledging"], true, "{p}");
        assert_eq!(p["lag_versions"], 0, "{p}");
        assert!(
            p["caller"].as_str().unwrap().starts_with("token \"pod-"),
            "{p}"
        );
    }

    // Three services: the small proxy rejects the update, says why, keeps its table.
    write_renamed(&file, &mesh_yaml(&["10.211.0.50", "10.211.0.51"], true));
    let mut st = Value::Null;
    wait_until(SECS(10), MS(50), || {
        st = status(&controller);
        st["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["proxy_id"] == "small" && !p["rejected"].is_null())
    })
    .unwrap_or_else(|e| panic!("{e}: {st}"));
    let v_extra = st["version"].as_u64().unwrap();
    let small = st["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proxy_id"] == "small")
        .unwrap()
        .clone();
    let reason = small["rejected"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("3 services") && reason.contains("--max-services"),
        "{small}"
    );
    assert_eq!(small["rejected"]["version"], v_extra, "{small}");
    assert!(
        small["applied_version"].as_u64().unwrap() < v_extra,
        "{small}"
    );
    println!("rejected: {small}");
    let (small_pod, small_sidecar) = &pods[2];
    let small_routes = routes(small_pod);
    assert_eq!(
        small_routes["discovery"]["updates_rejected"], 1,
        "{small_routes}"
    );
    assert_eq!(backend_endpoints(&small_routes), ["10.211.0.50:8080"]);
    assert!(small_sidecar
        .proxy()
        .logs()
        .contains("discovery update rejected"));
    for (pod, _) in &pods[..2] {
        wait_until(SECS(5), MS(50), || {
            routes(pod)["discovery"]["version"] == v_extra
        })
        .unwrap();
    }
    let (_, metrics) = mesh
        .node()
        .http_get(controller.http_addr(), "/metrics")
        .unwrap();
    let rejected = weft_runtime::prom_text::value(
        &metrics,
        "weft_controller_acks_total",
        &[("result", "rejected")],
    );
    assert_eq!(rejected, Some(1.0), "{metrics}");

    // Back to two: everyone applies it, the rejection is cleared.
    write_renamed(&file, &mesh_yaml(&["10.211.0.50", "10.211.0.52"], false));
    wait_until(SECS(10), MS(50), || {
        status(&controller)["version"].as_u64() > Some(v_extra)
    })
    .unwrap();
    let v_back = status(&controller)["version"].as_u64().unwrap();
    let st = all_applied(&controller, v_back, 3);
    assert!(
        st["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["rejected"].is_null()),
        "{st}"
    );

    // The controller killed; two edits while it is away; a new controller.
    let old_epoch = st["epoch"].as_u64().unwrap();
    controller.proc().signal(Signal::SIGKILL).unwrap();
    controller.proc().wait_timeout(SECS(5)).expect("killed");
    write_renamed(&file, &mesh_yaml(&["10.211.0.53"], false));
    write_renamed(&file, &mesh_yaml(&["10.211.0.53", "10.211.0.54"], false));
    let controller = Controller::start(&mesh, &file, &[]).unwrap();
    let fresh = status(&controller);
    let epoch = fresh["epoch"].as_u64().unwrap();
    assert!(epoch > old_epoch, "{old_epoch} then {epoch}");
    // Reconnecting may wait out the proxies' backoff (at most 5 s); subscribing
    // marks their addresses meshed, which makes versions: follow the latest.
    let mut st = Value::Null;
    wait_until(SECS(20), MS(100), || {
        st = status(&controller);
        let v = st["version"].clone();
        st["subscribers"] == 3
            && st["proxies"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["applied_version"] == v && p["lag_versions"] == 0)
    })
    .unwrap_or_else(|e| panic!("the proxies did not converge on the new controller: {e}: {st}"));
    let version = st["version"].clone();
    for (pod, _) in &pods {
        let r = routes(pod);
        assert_eq!(r["discovery"]["epoch"], epoch, "{}: {r}", pod.name());
        assert_eq!(r["discovery"]["version"], version, "{}: {r}", pod.name());
        assert_eq!(
            backend_endpoints(&r),
            ["10.211.0.53:8080", "10.211.0.54:8080"],
            "{}",
            pod.name()
        );
    }
    println!(
        "after the restart: epoch {old_epoch} -> {epoch}, version {version}, subscribers {}",
        st["subscribers"]
    );
}
