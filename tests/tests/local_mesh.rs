//! Tier 2: `weftctl`, the user's local mesh, driven the way a user drives it — the
//! real binary, real pods, real sidecars and unmodified apps calling each other by
//! service name. Each test uses a state directory of its own, so it never touches
//! a mesh the user is running, and a guard runs `weftctl down` even on panic.
//! Both tests run in both capture modes (`weftctl up --mode iptables|ebpf`); in
//! eBPF mode they also check each pod's cgroup: its proxy and app run in it, its
//! programs are pinned, and `down` removes it with its pins.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use weft_e2e::weftctl::WeftctlUp as Up;
use weft_e2e::{netns, wait_until};

const MESH_FILE: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports: [{ port: 80, target_port: 8080 }]
  frontend:
    vip: 10.96.0.20
    ports: [{ port: 80, target_port: 8000 }]
workloads:
  backend:
    service: backend
    replicas: 3
    command: echo \"hello from $WEFT_POD\" > index.html && exec python3 -m http.server 8080
  frontend:
    service: frontend
    command: exec python3 -m http.server 8000
";

fn mesh_file(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// The namespaces a state file names, and the processes inside them now.
fn namespaces_and_pids(state: &Value) -> (Vec<String>, Vec<i32>) {
    let names: Vec<String> = state["netns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    let pids = names
        .iter()
        .filter_map(|n| netns::ns_id(&netns::path(n)).ok())
        .flat_map(netns::pids_in)
        .collect();
    (names, pids)
}

fn assert_gone(names: &[String], pids: &[i32]) {
    for n in names {
        assert!(!netns::path(n).exists(), "namespace {n} left behind");
    }
    let alive: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
                .unwrap_or(false)
        })
        .collect();
    assert!(alive.is_empty(), "processes left running: {alive:?}");
}

/// The pods' cgroups a state file names (eBPF mode), with the pids in each now.
fn cgroups_and_pids(state: &Value) -> Vec<(PathBuf, Vec<i32>)> {
    state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["cgroup"].as_str())
        .map(|c| {
            let procs = std::fs::read_to_string(Path::new(c).join("cgroup.procs")).unwrap();
            let pids = procs.lines().map(|l| l.trim().parse().unwrap()).collect();
            (PathBuf::from(c), pids)
        })
        .collect()
}

/// `/sys/fs/bpf/weft/<cgroup name>`: where weft-init pins a pod's programs.
fn pin_dir(cgroup: &Path) -> PathBuf {
    Path::new(weft_e2e::cgroup::PIN_ROOT).join(cgroup.file_name().unwrap())
}

/// In eBPF mode: every pod has a cgroup holding its proxy and its app, and its
/// programs pinned; returns the cgroups. In iptables mode: no pod has one.
fn check_cgroups(up: &Up, mode: &str, pods: usize) -> Vec<PathBuf> {
    let state = up.state();
    assert_eq!(state["mode"], mode);
    let cgroups = cgroups_and_pids(&state);
    if mode == "iptables" {
        assert!(cgroups.is_empty(), "{cgroups:?}");
        return Vec::new();
    }
    assert_eq!(cgroups.len(), pods, "{state}");
    for (cg, pids) in &cgroups {
        let name = cg.file_name().unwrap().to_string_lossy().into_owned();
        let prefix = state["prefix"].as_str().unwrap();
        assert!(name.starts_with(&format!("{prefix}-")), "{name}");
        let comms: Vec<String> = pids
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
            .map(|c| c.trim().to_owned())
            .collect();
        assert!(comms.iter().any(|c| c == "weft-proxy"), "{name}: {comms:?}");
        assert!(
            comms.iter().any(|c| c.starts_with("python3")),
            "{name}: {comms:?}"
        );
        assert!(pin_dir(cg).join("link_weft_connect4").exists(), "{name}");
    }
    cgroups.into_iter().map(|(cg, _)| cg).collect()
}

fn assert_cgroups_gone(cgroups: &[PathBuf]) {
    for cg in cgroups {
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
        assert!(
            !pin_dir(cg).exists(),
            "pins of {} left behind",
            cg.display()
        );
    }
}

/// Must-show 1 through the user's CLI: the frontend app dials `backend` by name and
/// 9 connections land 3/3/3 on the replicas; `status` and `conns` show the mesh; a
/// good edit of the file reaches the controller, a bad one is reported with its
/// line and changes nothing; `weftctl down` removes every namespace and process.
#[test]
fn weftctl_up_runs_a_mesh_that_routes_by_service_name_and_down_removes_it() {
    up_routes_by_service_name_and_down_removes_it("iptables");
}

/// The same in eBPF mode, where `down` removes the pods' cgroups and pins too.
#[test]
fn weftctl_up_runs_a_mesh_that_routes_by_service_name_and_down_removes_it_ebpf() {
    up_routes_by_service_name_and_down_removes_it("ebpf");
}

fn up_routes_by_service_name_and_down_removes_it(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = mesh_file(dir.path(), MESH_FILE);
    let mut up = Up::start_ready(&file, mode);
    let cgroups = check_cgroups(&up, mode, 4);

    let mut served = BTreeMap::<String, usize>::new();
    for _ in 0..9 {
        *served
            .entry(up.curl("frontend-0", "http://backend/"))
            .or_default() += 1;
    }
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        [
            ("hello from backend-0".to_owned(), 3),
            ("hello from backend-1".to_owned(), 3),
            ("hello from backend-2".to_owned(), 3),
        ]
    );

    let status = up.weftctl_ok(&["status"]);
    for expected in [
        "backend-2",
        "frontend-0",
        "ready",
        "4 proxies subscribed",
        "10.96.0.10",
    ] {
        assert!(
            status.contains(expected),
            "{expected:?} missing from status:\n{status}"
        );
    }
    let conns = up.weftctl_ok(&["conns", "frontend-0", "--json"]);
    let conns: Vec<Value> = serde_json::from_str(&conns).unwrap();
    let to_backend = conns
        .iter()
        .filter(|c| c["original_destination"] == "10.96.0.10:80")
        .count();
    assert_eq!(to_backend, 9, "{conns:?}");
    let table = up.weftctl_ok(&["conns", "frontend-0"]);
    assert_eq!(table.matches("10.96.0.10:80").count(), 9, "{table}");
    let graph = up.weftctl_ok(&["graph"]);
    assert!(graph.contains("\"frontend\" -> \"backend\""), "{graph}");
    let top = up.weftctl_ok(&["top", "--once", "--interval", "200ms"]);
    assert!(top.starts_with("SOURCE"), "{top}");
    assert!(top.contains("frontend  backend"), "{top}");

    // A good edit: a new service appears at the controller.
    let edited = MESH_FILE.replace(
        "workloads:",
        "  extra:\n    vip: 10.96.0.30\n    ports: [{ port: 80 }]\n    endpoints: [10.211.0.99]\nworkloads:",
    );
    std::fs::write(&file, &edited).unwrap();
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        up.weftctl_ok(&["status"]).contains("10.96.0.30")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", up.output()));

    // A bad edit: reported with file and line, the mesh keeps working unchanged.
    std::fs::write(&file, edited.replace("vip: 10.96.0.30", "vip: 10.96.0.300")).unwrap();
    let needle = format!("{}:", file.display());
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        up.output()
            .lines()
            .any(|l| l.contains(&needle) && l.contains("extra.vip"))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", up.output()));
    let line = up
        .output()
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap()
        .to_owned();
    let vip_line = edited
        .lines()
        .position(|l| l.contains("10.96.0.30"))
        .unwrap()
        + 1;
    assert!(line.contains(&format!("{needle}{vip_line}")), "{line}");
    assert!(up.weftctl_ok(&["status"]).contains("10.96.0.30"));
    assert_eq!(
        up.curl("frontend-0", "http://backend/"),
        "hello from backend-0"
    );

    let (names, pids) = namespaces_and_pids(&up.state());
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(pids.len() >= 9, "controller + 4 proxies + 4 apps: {pids:?}");
    let down = up.weftctl_ok(&["down"]);
    assert!(down.contains("is down"), "{down}");
    let status = up.wait();
    assert!(
        status.success(),
        "weftctl up exited {status}: {}",
        up.output()
    );
    assert_gone(&names, &pids);
    assert_cgroups_gone(&cgroups);
    assert!(!up.state_dir().join("local-mesh.json").exists());
    let after = up.weftctl_ok(&["down"]);
    assert!(after.contains("no local mesh is running"), "{after}");
}

/// A `weftctl up` killed with SIGKILL tears nothing down; `weftctl down` then
/// removes what it left (namespaces, processes, the state file), and `status`
/// says the mesh is unmanaged before that.
#[test]
fn weftctl_down_cleans_up_after_a_crashed_up() {
    down_cleans_up_after_a_crashed_up("iptables");
}

/// The same in eBPF mode: `down` also removes the cgroups and pins the crashed `up`
/// left.
#[test]
fn weftctl_down_cleans_up_after_a_crashed_up_ebpf() {
    down_cleans_up_after_a_crashed_up("ebpf");
}

fn down_cleans_up_after_a_crashed_up(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = mesh_file(dir.path(), &MESH_FILE.replace("replicas: 3", "replicas: 1"));
    let mut up = Up::start_ready(&file, mode);
    let cgroups = check_cgroups(&up, mode, 2);
    let (names, pids) = namespaces_and_pids(&up.state());
    assert_eq!(names.len(), 3, "{names:?}");

    kill(Pid::from_raw(up.pid() as i32), Signal::SIGKILL).unwrap();
    up.wait();
    let status = up.weftctl_ok(&["status"]);
    assert!(status.contains("weftctl up is gone"), "{status}");
    assert_eq!(
        up.curl("frontend-0", "http://backend/"),
        "hello from backend-0",
        "the orphaned mesh still routes"
    );

    let down = up.weftctl_ok(&["down"]);
    assert!(down.contains("is down"), "{down}");
    assert_gone(&names, &pids);
    assert_cgroups_gone(&cgroups);
    assert!(!up.state_dir().join("local-mesh.json").exists());
}

/// A backend whose app exits and is started again 5 s later by its own command (a
/// restart loop, as a container runtime restarts a crashed container), with a 1 s
/// health interval in the mesh file.
const RESTARTING_MESH: &str = "\
services:
  backend:
    vip: 10.96.0.10
    ports: [{ port: 80, target_port: 8080 }]
    policy: { health_check: { interval: 1s } }
workloads:
  backend:
    service: backend
    replicas: 2
    command: echo \"hello from $WEFT_POD\" > index.html; while :; do python3 -m http.server 8080 & echo $! > app.pid; wait; sleep 5; done
";

/// The health interval `RESTARTING_MESH` asks for.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// The ENDPOINTS cell of `service`'s row in `weftctl status`.
fn status_endpoints(up: &Up, service: &str) -> String {
    let status = up.weftctl_ok(&["status"]);
    let row = status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(service))
        .unwrap_or_else(|| panic!("no row for {service} in status:\n{status}"))
        .to_owned();
    // SERVICE VIP PORTS ENDPOINTS...: the endpoints are the rest of the row.
    row.split_whitespace().skip(3).collect::<Vec<_>>().join(" ")
}

/// The "weftctl up with an app that exits": `weftctl status` shows the
/// endpoint withdrawn, and why, within 3 health intervals of the app's exit (and the
/// pod's proxy not ready, naming the port), the other replica alone serves the
/// service meanwhile, and the endpoint is served again once the app is back.
#[test]
fn weftctl_status_shows_an_exited_app_withdrawn_and_back() {
    exited_app_withdrawn_and_back("iptables");
}

/// The same in eBPF mode.
#[test]
fn weftctl_status_shows_an_exited_app_withdrawn_and_back_ebpf() {
    exited_app_withdrawn_and_back("ebpf");
}

fn exited_app_withdrawn_and_back(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = mesh_file(dir.path(), RESTARTING_MESH);
    let up = Up::start_ready(&file, mode);
    let state = up.state();
    let pod_ip = |name: &str| -> String {
        state["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["ipv4"].as_str())
            .unwrap_or_else(|| panic!("no {name} in {state}"))
            .to_owned()
    };
    let (ip0, ip1) = (pod_ip("backend-0"), pod_ip("backend-1"));
    let served = status_endpoints(&up, "backend");
    assert!(
        served.contains(&ip0) && served.contains(&ip1) && !served.contains("withdrawn"),
        "{served}"
    );

    // The app of backend-0 exits (its pid is in its working directory).
    let pid_file = Path::new(state["run_dir"].as_str().unwrap()).join("pods/backend-0/app.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let exited = std::time::Instant::now();
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .unwrap_or_else(|e| panic!("the app did not exit: {e}"));

    let withdrawn = format!("{ip0} (withdrawn: ");
    let mut last = String::new();
    wait_until(HEALTH_INTERVAL * 3, Duration::from_millis(50), || {
        last = status_endpoints(&up, "backend");
        last.contains(&withdrawn)
    })
    .unwrap_or_else(|e| {
        panic!(
            "not withdrawn within 3 health intervals: {e}\nlast status: {last}\nup's output:\n{}",
            up.output()
        )
    });
    println!(
        "{mode}: app exited -> `weftctl status` shows it withdrawn after {:?} (health interval {HEALTH_INTERVAL:?}): {last}",
        exited.elapsed()
    );
    assert!(last.contains("app port 8080: connect_refused"), "{last}");
    assert!(
        last.contains(&ip1) && !last.contains(&format!("{ip1} (")),
        "{last}"
    );
    // The pod's own sidecar says the same in the pods table (its `/ready`).
    let proxy_column = || {
        let status = up.weftctl_ok(&["status"]);
        status
            .lines()
            .find(|l| l.starts_with("backend-0 "))
            .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no backend-0 in status:\n{status}"))
    };
    let mut proxy = String::new();
    // `/ready` keeps a check's result for a second.
    wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
        proxy = proxy_column();
        proxy != "ready"
    })
    .unwrap_or_else(|e| panic!("backend-0's proxy still ready: {e}"));
    assert_eq!(proxy, "not ready: app port 8080: connect_refused");
    for _ in 0..2 {
        assert_eq!(
            up.curl("backend-1", "http://backend/"),
            "hello from backend-1"
        );
    }

    // The command starts the app again 5 s after it exited.
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        last = status_endpoints(&up, "backend");
        !last.contains("withdrawn")
    })
    .unwrap_or_else(|e| panic!("never served again: {e}\nlast status: {last}"));
    println!(
        "{mode}: app back -> served again {:?} after it exited: {last}",
        exited.elapsed()
    );
    assert!(last.contains(&ip0) && last.contains(&ip1), "{last}");
    assert_eq!(proxy_column(), "ready");
    // And the proxies send to it again.
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        up.curl("backend-1", "http://backend/") == "hello from backend-0"
    })
    .unwrap_or_else(|e| panic!("backend-0 never answered again: {e}"));
}
