//! Tier 2: endpoints registered over the controller's API, and active health checks
//! (issue 7, "must show" 3 and 4), with the real controller in the node namespace and
//! a real sidecar in the client pod.
//!
//! The backends are machines outside any orchestrator, as registered endpoints are:
//! pods running `python3 -m http.server` that names the pod, with no sidecar. The
//! client is curl in the `front` pod, whose sidecar routes the service VIP; the
//! sidecar's admin `/routes` (127.0.0.1:15000 in the pod) shows the table it has.
//! Registration and health-check traffic stays between the node and the pods.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_e2e::Controller;
use weft_e2e::{python3, wait_until, Mesh, Pod, PodProc, ProcSpec, Sidecar};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;
const VIP: &str = "10.96.0.10";
const APP_PORT: u16 = 8080;
const API_PORT: u16 = 15014;
/// The controller's `--health-interval` here.
const INTERVAL: Duration = Duration::from_millis(500);

/// `python3 -m http.server` on 8080 serving an index.html that names the pod.
fn named_http_server(mesh: &Mesh, pod: &Pod) -> PodProc {
    let dir = mesh.run_dir().join(format!("www-{}", pod.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), pod.name()).unwrap();
    let proc = pod
        .spawn(
            ProcSpec::new([
                python3().to_string_lossy().as_ref(),
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
                "--directory",
                dir.to_str().unwrap(),
            ])
            .name("http"),
        )
        .unwrap();
    pod.wait_listening(SocketAddr::new(pod.ipv4().into(), APP_PORT), SECS(10))
        .unwrap();
    proc
}

/// The mesh: `front` (sidecar) and backends `b1`, `b2` (no sidecar), and the
/// controller in the node namespace with a state directory.
struct Setup {
    mesh: Mesh,
    front: Pod,
    backends: Vec<Pod>,
    servers: BTreeMap<String, PodProc>,
    controller: PodProc,
    file: PathBuf,
    state_dir: PathBuf,
    _sidecar: Sidecar,
}

impl Setup {
    fn new() -> Setup {
        let mesh = Mesh::new().unwrap();
        let front = mesh.add_pod("front").unwrap();
        let backends: Vec<Pod> = ["b1", "b2"]
            .iter()
            .map(|n| mesh.add_pod(n).unwrap())
            .collect();
        let servers = backends
            .iter()
            .map(|b| (b.name().to_owned(), named_http_server(&mesh, b)))
            .collect();
        // The service is defined in the mesh file, without endpoints: they register.
        let file = mesh.run_dir().join("mesh.yaml");
        std::fs::write(
            &file,
            format!(
                "services:\n  backend:\n    vip: {VIP}\n    ports: [{{ port: 80, target_port: {APP_PORT}, protocol: tcp }}]\n"
            ),
        )
        .unwrap();
        let state_dir = mesh.run_dir().join("controller-state");
        let controller = start_controller(&mesh, &file, &state_dir);
        front.add_route("10.96.0.0/16").unwrap();
        let url = format!("http://{}:15010", mesh.node().ipv4());
        let sidecar =
            Sidecar::start_with(&front, &[], "frontend", &["--controller", url.as_str()]).unwrap();
        Setup {
            mesh,
            front,
            backends,
            servers,
            controller,
            file,
            state_dir,
            _sidecar: sidecar,
        }
    }

    fn ip(&self, pod: &str) -> Ipv4Addr {
        self.backends
            .iter()
            .find(|b| b.name() == pod)
            .unwrap()
            .ipv4()
    }

    /// `method path` with `body` on the controller's API, from the node namespace.
    fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let addr = SocketAddr::new(self.mesh.node().ipv4().into(), API_PORT);
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
            self.mesh.credentials().operator_token(),
            body.len()
        );
        let answer = self
            .mesh
            .node()
            .in_netns(move || -> std::io::Result<String> {
                let mut s = TcpStream::connect_timeout(&addr, SECS(5))?;
                s.set_read_timeout(Some(SECS(5)))?;
                s.write_all(request.as_bytes())?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            });
        let answer = answer.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head[9..12].parse().unwrap(), body.to_owned())
    }

    fn register(&self, pod: &str) {
        let path = format!("/v1/services/backend/endpoints/{}", self.ip(pod));
        let (code, body) = self.api("PUT", &path, r#"{"port": 8080, "labels": {"host": "vm"}}"#);
        assert_eq!(code, 201, "PUT {path}: {body}");
    }

    fn services(&self) -> Value {
        let (code, body) = self.api("GET", "/v1/services", "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The backend endpoints the front sidecar routes to, from its `/routes`.
    fn routed(&self) -> BTreeSet<String> {
        let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let Ok((200, body)) = self.front.http_get(admin, "/routes") else {
            return BTreeSet::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == "backend")
            .flat_map(|s| {
                s["routes"][0]["endpoints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|e| e.as_str().unwrap().to_owned())
            .collect()
    }

    fn endpoints(&self, pods: &[&str]) -> BTreeSet<String> {
        pods.iter()
            .map(|p| format!("{}:{APP_PORT}", self.ip(p)))
            .collect()
    }

    /// Waits until the front sidecar routes to exactly `pods`; returns how long it took.
    fn wait_routed(&self, pods: &[&str], within: Duration) -> Duration {
        let want = self.endpoints(pods);
        let start = Instant::now();
        wait_until(within, MS(50), || self.routed() == want).unwrap_or_else(|e| {
            panic!(
                "{e}: front routes {:?}, want {want:?}; controller: {}\n{}",
                self.routed(),
                self.services(),
                self.controller.logs()
            )
        });
        start.elapsed()
    }

    /// `n` sequential requests to the VIP from the front pod: how many each backend
    /// served.
    fn tally(&self, n: usize) -> BTreeMap<String, usize> {
        let mut served = BTreeMap::new();
        for _ in 0..n {
            let body = self
                .front
                .run_ok(
                    ["curl", "-sS", "--max-time", "5", &format!("http://{VIP}/")],
                    None,
                    SECS(10),
                )
                .unwrap();
            *served.entry(body.trim().to_owned()).or_default() += 1;
        }
        served
    }
}

fn start_controller(mesh: &Mesh, file: &Path, state_dir: &Path) -> PodProc {
    let interval = humantime_ms(INTERVAL);
    let args = [
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--health-interval",
        &interval,
        "--health-timeout",
        "300ms",
        "--health-unhealthy-threshold",
        "2",
        "--health-healthy-threshold",
        "1",
    ];
    Controller::start(mesh, file, &args).unwrap().proc().clone()
}

fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// Must-show 3: two endpoints registered over the API receive traffic from a pod
/// through its sidecar; after `kill -9` and a restart of the controller they are
/// still listed and served; a deregistered one receives nothing.
#[test]
fn registered_endpoints_serve_survive_a_controller_kill_and_deregister() {
    let mut s = Setup::new();
    s.register("b1");
    s.register("b2");
    s.wait_routed(&["b1", "b2"], SECS(10));
    assert_eq!(s.tally(4), counts(&[("b1", 2), ("b2", 2)]));

    // kill -9, and a new controller on the same file and state directory.
    s.controller.kill().unwrap();
    assert!(s.controller.wait_timeout(SECS(5)).is_some(), "killed");
    s.controller = start_controller(&s.mesh, &s.file, &s.state_dir);
    let listed = s.services();
    assert_eq!(
        listed["services"]["backend"]["endpoints"],
        serde_json::json!([s.ip("b1").to_string(), s.ip("b2").to_string()]),
        "{listed}"
    );
    let eps = listed["endpoints"]["backend"].as_array().unwrap();
    assert!(
        eps.iter()
            .all(|e| e["sources"] == serde_json::json!(["registry"]) && e["labels"]["host"] == "vm"),
        "{listed}"
    );
    // The sidecar reconnects to the new controller (a fresh snapshot, version 1) and
    // routes as before.
    wait_until(SECS(15), MS(100), || {
        let (code, body) = s.api("GET", "/v1/status", "");
        code == 200 && serde_json::from_str::<Value>(&body).unwrap()["subscribers"] == 1
    })
    .unwrap_or_else(|e| panic!("{e}: the sidecar did not resubscribe"));
    s.wait_routed(&["b1", "b2"], SECS(5));
    assert_eq!(s.tally(4), counts(&[("b1", 2), ("b2", 2)]));

    // Deregistered: b1 gets nothing.
    let path = format!("/v1/services/backend/endpoints/{}", s.ip("b1"));
    let (code, body) = s.api("DELETE", &path, "");
    assert_eq!(code, 204, "{body}");
    s.wait_routed(&["b2"], SECS(5));
    assert_eq!(s.tally(4), counts(&[("b2", 4)]));
    let (code, body) = s.api("DELETE", &path, "");
    assert_eq!(code, 404, "{body}");
}

/// Must-show 4: an endpoint whose server stops is withdrawn within 3 check intervals
/// (the controller's view and the sidecar's routes) and gets no traffic; when its
/// server comes back it serves again.
#[test]
fn an_endpoint_whose_server_stops_is_withdrawn_and_returns() {
    let mut s = Setup::new();
    s.register("b1");
    s.register("b2");
    s.wait_routed(&["b1", "b2"], SECS(10));
    assert_eq!(s.tally(4), counts(&[("b1", 2), ("b2", 2)]));

    // b2's server dies.
    let server = s.servers.remove("b2").unwrap();
    server.kill().unwrap();
    assert!(server.wait_timeout(SECS(5)).is_some());
    let took = s.wait_routed(&["b1"], INTERVAL * 6);
    // Two failed checks (at most 2 intervals) plus the push: within 3 intervals.
    assert!(took <= INTERVAL * 3, "withdrawn after {took:?}");
    let listed = s.services();
    let b2 = listed["endpoints"]["backend"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == s.ip("b2").to_string())
        .cloned()
        .unwrap();
    assert_eq!(b2["health"], "unhealthy", "{listed}");
    assert_eq!(b2["served"], false, "{listed}");
    assert!(
        b2["check"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{listed}"
    );
    assert_eq!(
        listed["services"]["backend"]["endpoints"],
        serde_json::json!([s.ip("b1").to_string()]),
        "{listed}"
    );
    let (_, metrics) = s.api("GET", "/metrics", "");
    let withdrawn = "weft_controller_endpoints_withdrawn{service=\"backend\"} 1";
    assert!(
        metrics.contains(withdrawn),
        "{withdrawn} not in:\n{metrics}"
    );
    assert_eq!(s.tally(4), counts(&[("b1", 4)]), "no traffic to b2");

    // It comes back.
    let b2_pod = s.backends[1].clone();
    s.servers
        .insert("b2".into(), named_http_server(&s.mesh, &b2_pod));
    s.wait_routed(&["b1", "b2"], INTERVAL * 6);
    assert_eq!(s.tally(4), counts(&[("b1", 2), ("b2", 2)]));
    let listed = s.services();
    assert!(
        listed["endpoints"]["backend"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["health"] == "healthy" && e["served"] == true),
        "{listed}"
    );
}
