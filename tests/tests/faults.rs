//! Replica faults under a steady open-loop load: what the clients see when one
//! replica's app dies, a sidecar drains, or the service scales down and up.
//!
//! A frontend pod sends 100 requests/s to `web` (three replicas, each a plain
//! `httpkit.py serve` behind its sidecar) from two unmodified HTTP/1.1 clients at
//! once, 50/s each: one that keeps connections alive, one that opens a connection per
//! request; half the requests are POSTs. Every request carries an id that the
//! replicas log as they receive it, so each failure the client sees is classified:
//! *never received* (no application saw it: the mesh could have sent it elsewhere)
//! or *after receipt* (an application took it and then died). The first kind must be
//! zero, whatever the method; the test prints sent / succeeded / failed for each
//! client and fault, and what the frontend's sidecar did to get there (its
//! `weft_http_retries_total` by reason, `weft_endpoint_ejections_total` by reason).
//!
//! Every test runs in both capture modes (`_iptables`, `_ebpf`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use weft_e2e::{
    python3, tool, wait_until, Controller, Mesh, Mode, ModePod, PodProc, ProcSpec, Sidecar,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// The load, per client: requests/s, and seconds (longer for the rolling restart).
const RATE: &str = "50";
const LOAD_SECONDS: u64 = 8;
const ROLLING_LOAD_SECONDS: u64 = 22;
const VIP: &str = "10.96.0.50";
const APP_PORT: u16 = 8080;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One replica: its pod, its sidecar (until drained) and its app (until killed).
struct Replica {
    pod: ModePod,
    sidecar: Option<Sidecar>,
    app: Option<PodProc>,
}

/// A frontend pod and `web`'s replica pods, the controller serving the mesh file.
struct Fleet {
    mesh: Mesh,
    file: PathBuf,
    front: ModePod,
    front_sidecar: Sidecar,
    replicas: Vec<Replica>,
    controller: Controller,
}

impl Fleet {
    /// `pods` replica pods, the first `serving` of them with a sidecar, an app and a
    /// place among `web`'s endpoints.
    fn new(mode: Mode, pods: usize, serving: usize) -> Fleet {
        Fleet::with_controller_args(mode, pods, serving, &[])
    }

    /// [`Fleet::new`], the controller started with `controller_args`.
    fn with_controller_args(
        mode: Mode,
        pods: usize,
        serving: usize,
        controller_args: &[&str],
    ) -> Fleet {
        let mesh = Mesh::new().unwrap();
        let front = mode.add_pod(&mesh, "front").unwrap();
        let replicas: Vec<Replica> = (1..=pods)
            .map(|i| Replica {
                pod: mode.add_pod(&mesh, &format!("web{i}")).unwrap(),
                sidecar: None,
                app: None,
            })
            .collect();
        let file = mesh.run_dir().join("mesh.yaml");
        write_mesh_file(&file, &front, &replicas, &(0..serving).collect::<Vec<_>>());
        let controller = Controller::start(&mesh, &file, controller_args).unwrap();
        front.add_route("10.96.0.0/16").unwrap();
        let front_sidecar = front
            .sidecar_with(&[], "frontend", &["--controller", controller.url()])
            .unwrap();
        let mut fleet = Fleet {
            mesh,
            file,
            front,
            front_sidecar,
            replicas,
            controller,
        };
        for i in 0..serving {
            fleet.start_sidecar(i);
            fleet.start_app(i);
        }
        fleet
    }

    /// Makes `web`'s endpoints the replicas `serving`.
    fn set_endpoints(&self, serving: &[usize]) {
        write_mesh_file(&self.file, &self.front, &self.replicas, serving);
    }

    fn start_sidecar(&mut self, i: usize) {
        let url = self.controller.url().to_owned();
        let r = &mut self.replicas[i];
        r.sidecar = Some(
            r.pod
                .sidecar_with(
                    &[],
                    "web",
                    // The proxy's default drain delay (the harness sets none).
                    &[
                        "--controller",
                        &url,
                        "--drain-grace",
                        "5s",
                        "--drain-delay",
                        "3s",
                    ],
                )
                .unwrap(),
        );
    }

    /// Starts replica `i`'s app and waits until it listens.
    fn start_app(&mut self, i: usize) {
        let log = self.received_log(i);
        let r = &mut self.replicas[i];
        let name = r.pod.name().to_owned();
        let app = r
            .pod
            .spawn(
                ProcSpec::new([
                    python3().to_string_lossy().as_ref(),
                    tool("httpkit.py").as_str(),
                    "serve",
                    &APP_PORT.to_string(),
                    &name,
                    &log.to_string_lossy(),
                ])
                .name("app"),
            )
            .unwrap();
        wait_until(SECS(10), MS(20), || app.logs().contains("listening"))
            .unwrap_or_else(|e| panic!("app of {name}: {e}: {}", app.logs()));
        r.app = Some(app);
    }

    /// `kill -9` of replica `i`'s app.
    fn kill_app(&mut self, i: usize) {
        if let Some(app) = self.replicas[i].app.take() {
            app.kill().unwrap();
            app.wait_timeout(SECS(5));
        }
    }

    /// SIGTERM to replica `i`'s sidecar; waits until it has drained and exited.
    fn drain_sidecar(&mut self, i: usize) {
        if let Some(sidecar) = self.replicas[i].sidecar.take() {
            let proxy = sidecar.proxy();
            proxy.kill_term().unwrap();
            proxy
                .wait_timeout(SECS(10))
                .unwrap_or_else(|| panic!("sidecar still draining: {}", proxy.logs()));
        }
    }

    /// `kill -9` of the controller, and a new one on the same mesh file a second
    /// later (it knows nothing of the old one's health checks or drains).
    fn restart_controller(&mut self) {
        let old = self.controller.proc();
        old.kill().unwrap();
        old.wait_timeout(SECS(5));
        std::thread::sleep(SECS(1));
        self.controller = Controller::start(&self.mesh, &self.file, &[]).unwrap();
    }

    /// Where replica `i`'s app logs the ids it receives (kept across restarts).
    fn received_log(&self, i: usize) -> PathBuf {
        self.mesh
            .run_dir()
            .join(format!("received-web{}.log", i + 1))
    }

    /// Every request id any replica's app received.
    fn received(&self) -> BTreeSet<u64> {
        (0..self.replicas.len())
            .flat_map(|i| read_ids(&self.received_log(i)))
            .collect()
    }

    /// Runs both clients' loads while `fault` acts on the fleet (timing itself with
    /// sleeps); each client's outcome.
    fn under_load(&mut self, seconds: u64, fault: impl FnOnce(&mut Fleet)) -> [Outcome; 2] {
        let clients = [
            ("keep-alive", "keepalive", "0"),
            ("new-conn", "new", "1000000"),
        ];
        let loads: Vec<PodProc> = clients
            .iter()
            .map(|(_, mode, first_id)| {
                self.front
                    .spawn(
                        ProcSpec::new([
                            python3().to_string_lossy().as_ref(),
                            tool("faultload.py").as_str(),
                            &format!("http://{VIP}/"),
                            RATE,
                            &seconds.to_string(),
                            mode,
                            first_id,
                        ])
                        .name("load"),
                    )
                    .unwrap()
            })
            .collect();
        fault(self);
        let received = self.received();
        let mut outcomes = clients.iter().zip(&loads).map(|((client, ..), load)| {
            let status = load
                .wait_timeout(SECS(seconds + 40))
                .unwrap_or_else(|| panic!("the load never ended: {}", load.logs()));
            assert!(status.success(), "{status:?}: {}", load.logs());
            let logs = load.logs();
            let line = logs
                .lines()
                .rfind(|l| l.starts_with('{'))
                .unwrap_or_else(|| panic!("no result from the load: {logs}"));
            Outcome::classify(client, &serde_json::from_str(line).unwrap(), &received)
        });
        [outcomes.next().unwrap(), outcomes.next().unwrap()]
    }

    fn logs(&self) -> String {
        self.mesh.logs_report()
    }

    /// What the frontend's sidecar counted: retries and ejections, by reason.
    fn recovery(&self) -> Recovery {
        let metrics = self.front_sidecar.metrics().unwrap();
        let by_reason = |name: &str, reasons: &[&'static str]| {
            reasons
                .iter()
                .map(|r| {
                    let v = weft_runtime::prom_text::value(&metrics, name, &[("reason", r)]);
                    (*r, v.unwrap_or(0.0) as u64)
                })
                .collect()
        };
        Recovery {
            retries: by_reason(
                "weft_http_retries_total",
                &["unsent", "app_unreachable", "reset", "status"],
            ),
            ejections: by_reason(
                "weft_endpoint_ejections_total",
                &["unreachable", "failures"],
            ),
        }
    }
}

fn write_mesh_file(file: &Path, front: &ModePod, replicas: &[Replica], serving: &[usize]) {
    let endpoints: Vec<String> = serving
        .iter()
        .map(|&i| replicas[i].pod.ipv4().to_string())
        .collect();
    let yaml = format!(
        "services:\n  frontend:\n    vip: 10.96.0.2\n    ports: [{{ port: 80 }}]\n    endpoints: [{}]\n  web:\n    vip: {VIP}\n    ports: [{{ port: 80, target_port: {APP_PORT} }}]\n    endpoints: [{}]\n",
        front.ipv4(),
        endpoints.join(", ")
    );
    // An atomic rename, as an editor or a config manager writes it.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn read_ids(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// What the client-side sidecar did under one fault.
#[derive(Debug)]
struct Recovery {
    retries: Vec<(&'static str, u64)>,
    ejections: Vec<(&'static str, u64)>,
}

impl Recovery {
    fn get(list: &[(&'static str, u64)], reason: &str) -> u64 {
        list.iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// What one client saw under one fault.
#[derive(Debug)]
struct Outcome {
    client: &'static str,
    sent: u64,
    succeeded: u64,
    /// Failed, and no application received it.
    never_received: Vec<Value>,
    /// Failed after an application received it.
    after_receipt: Vec<Value>,
}

impl Outcome {
    fn classify(client: &'static str, v: &Value, received: &BTreeSet<u64>) -> Outcome {
        let (after_receipt, never_received) = v["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .cloned()
            .partition(|f| f["id"].as_u64().is_some_and(|id| received.contains(&id)));
        Outcome {
            client,
            sent: v["sent"].as_u64().expect("sent"),
            succeeded: v["succeeded"].as_u64().expect("succeeded"),
            never_received,
            after_receipt,
        }
    }
}

/// Prints each client's row and what the sidecar did, and asserts that no request
/// failed that no app received; returns the sidecar's counts.
fn report(fault: &str, mode: Mode, outcomes: &[Outcome], fleet: &Fleet) -> Recovery {
    let recovery = fleet.recovery();
    let list = |l: &[(&str, u64)]| {
        l.iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "fault {fault:<28} {mode:<8} sidecar    retried: {}; ejected: {}",
        list(&recovery.retries),
        list(&recovery.ejections)
    );
    for o in outcomes {
        println!(
            "fault {fault:<28} {mode:<8} {:<10} sent {:>4}  succeeded {:>4}  failed never-received {:>3}  failed after receipt {:>3}",
            o.client,
            o.sent,
            o.succeeded,
            o.never_received.len(),
            o.after_receipt.len()
        );
    }
    for o in outcomes {
        assert!(
            o.never_received.is_empty(),
            "{fault} ({mode}, {}): {} requests failed that no application received: {:?}\n{}",
            o.client,
            o.never_received.len(),
            o.never_received,
            fleet.logs()
        );
        assert_eq!(
            o.sent,
            o.succeeded + o.never_received.len() as u64 + o.after_receipt.len() as u64
        );
    }
    recovery
}

/// Fault 1: one replica's app is killed (`kill -9`) and restarted 3 s later.
fn app_killed_and_restarted(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 3, 3);
    let outcomes = fleet.under_load(LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(2));
        f.kill_app(0);
        std::thread::sleep(SECS(3));
        f.start_app(0);
    });
    let recovery = report("app killed, restarted", mode, &outcomes, &fleet);
    // The fault was met, not dodged: some request reached the dead replica, was
    // answered by its sidecar, sent elsewhere, and the replica was ejected.
    assert!(
        Recovery::get(&recovery.retries, "app_unreachable") > 0,
        "{recovery:?}"
    );
    assert!(
        Recovery::get(&recovery.ejections, "unreachable") > 0,
        "{recovery:?}"
    );
}

#[test]
fn an_apps_death_and_restart_fail_no_request_iptables() {
    app_killed_and_restarted(Mode::Iptables);
}

#[test]
fn an_apps_death_and_restart_fail_no_request_ebpf() {
    app_killed_and_restarted(Mode::Ebpf);
}

/// Fault 2: one replica's app dies, then another replica's sidecar is sent SIGTERM
/// (what a rolling update does) and, once it has exited, that pod is removed.
fn sidecar_drained_then_pod_removed(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 3, 3);
    let outcomes = fleet.under_load(LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(1));
        f.kill_app(0);
        std::thread::sleep(SECS(1));
        f.drain_sidecar(1);
        f.kill_app(1);
        f.set_endpoints(&[0, 2]);
    });
    report("app dead + sidecar drained", mode, &outcomes, &fleet);
}

#[test]
fn a_draining_sidecar_and_a_removed_pod_fail_no_request_iptables() {
    sidecar_drained_then_pod_removed(Mode::Iptables);
}

#[test]
fn a_draining_sidecar_and_a_removed_pod_fail_no_request_ebpf() {
    sidecar_drained_then_pod_removed(Mode::Ebpf);
}

/// Fault 4: scale from 3 to 1 and back to 5 replicas: a replica leaves the
/// endpoints first and is stopped a moment later (its sidecar drains); new
/// replicas are up before they are added.
fn scale_down_and_up(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 5, 3);
    let outcomes = fleet.under_load(LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(2));
        f.set_endpoints(&[0]);
        std::thread::sleep(MS(500));
        for i in [1, 2] {
            f.drain_sidecar(i);
            f.kill_app(i);
        }
        std::thread::sleep(SECS(1));
        for i in 1..5 {
            f.start_sidecar(i);
            f.start_app(i);
        }
        f.set_endpoints(&[0, 1, 2, 3, 4]);
    });
    report("scale 3 -> 1 -> 5", mode, &outcomes, &fleet);
}

#[test]
fn scaling_down_and_up_fails_no_request_iptables() {
    scale_down_and_up(Mode::Iptables);
}

#[test]
fn scaling_down_and_up_fails_no_request_ebpf() {
    scale_down_and_up(Mode::Ebpf);
}

/// Faults 3 and 5: a rolling restart of all three replicas, one at a time, each new
/// replica up (and among the endpoints) before the old one drains; the old pod
/// leaves the endpoints once its sidecar has exited. With `controller_restart`, the
/// controller is killed (`kill -9`) after the first replacement and started again a
/// second later, in the middle of the rollout.
fn rolling_restart(mode: Mode, controller_restart: bool) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 6, 3);
    let outcomes = fleet.under_load(ROLLING_LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(1));
        let mut serving = vec![0, 1, 2];
        for (old, new) in [(0, 3), (1, 4), (2, 5)] {
            f.start_sidecar(new);
            f.start_app(new);
            serving.push(new);
            f.set_endpoints(&serving);
            std::thread::sleep(MS(500));
            f.drain_sidecar(old);
            f.kill_app(old);
            serving.retain(|&i| i != old);
            f.set_endpoints(&serving);
            if controller_restart && old == 0 {
                f.restart_controller();
            }
        }
    });
    let fault = if controller_restart {
        "rolling restart + controller"
    } else {
        "rolling restart"
    };
    report(fault, mode, &outcomes, &fleet);
}

#[test]
fn a_rolling_restart_fails_no_request_iptables() {
    rolling_restart(Mode::Iptables, false);
}

#[test]
fn a_rolling_restart_fails_no_request_ebpf() {
    rolling_restart(Mode::Ebpf, false);
}

#[test]
fn a_controller_restart_during_a_rolling_restart_fails_no_request_iptables() {
    rolling_restart(Mode::Iptables, true);
}

#[test]
fn a_controller_restart_during_a_rolling_restart_fails_no_request_ebpf() {
    rolling_restart(Mode::Ebpf, true);
}

/// What the controller says of replica `i`'s endpoint of `web`: (served, health).
fn endpoint_state(fleet: &Fleet, i: usize) -> (bool, String) {
    let (status, body) = fleet
        .mesh
        .node()
        .http_get(fleet.controller.http_addr(), "/v1/services")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    let ip = fleet.replicas[i].pod.ipv4().to_string();
    let ep = doc["endpoints"]["web"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints of web: {doc}"))
        .iter()
        .find(|e| e["address"] == ip.as_str())
        .unwrap_or_else(|| panic!("no {ip}: {doc}"));
    (
        ep["served"].as_bool().expect("served"),
        ep["health"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A replica's app dies and comes back: its sidecar's `/app-health/<port>` says so,
/// the controller (checking every second through it) withdraws the endpoint and
/// serves it again.
fn a_dead_app_is_withdrawn_and_comes_back(mode: Mode) {
    let _serial = serial();
    let interval = SECS(1);
    let mut fleet = Fleet::with_controller_args(mode, 2, 2, &["--health-interval", "1s"]);
    let probe = |fleet: &Fleet, path: &str| {
        let addr = std::net::SocketAddr::new(fleet.replicas[0].pod.ipv4().into(), 15020);
        fleet.front.http_get(addr, path).unwrap()
    };
    let app = format!("/app-health/{APP_PORT}");
    assert_eq!(probe(&fleet, &app).0, 200);
    assert_eq!(probe(&fleet, &format!("{app}/status/204")).0, 200);
    let (status, body) = probe(&fleet, &format!("{app}/status/500"));
    assert_eq!(
        (status, body.trim()),
        (503, "app answered 500 on /status/500")
    );
    // A check's query goes on to the app with its path.
    let (status, body) = probe(&fleet, &format!("{app}/status/500?probe=1"));
    assert_eq!(
        (status, body.trim()),
        (503, "app answered 500 on /status/500?probe=1")
    );
    assert_eq!(probe(&fleet, "/app-health/x").0, 400);

    fleet.kill_app(0);
    let (status, body) = probe(&fleet, &app);
    assert_eq!(
        (status, body.trim()),
        (503, "app port 8080: connect_refused")
    );
    let killed = std::time::Instant::now();
    wait_until(interval * 10, MS(100), || !endpoint_state(&fleet, 0).0)
        .unwrap_or_else(|e| panic!("never withdrawn: {e}: {:?}", endpoint_state(&fleet, 0)));
    println!(
        "{mode}: app killed -> endpoint withdrawn after {:?} (health interval {interval:?}, 2 failures)",
        killed.elapsed()
    );
    assert_eq!(endpoint_state(&fleet, 0).1, "unhealthy");

    fleet.start_app(0);
    let restarted = std::time::Instant::now();
    wait_until(interval * 10, MS(100), || endpoint_state(&fleet, 0).0)
        .unwrap_or_else(|e| panic!("never back: {e}: {:?}", endpoint_state(&fleet, 0)));
    println!(
        "{mode}: app restarted -> endpoint served again after {:?}",
        restarted.elapsed()
    );
    assert_eq!(probe(&fleet, &app).0, 200);
}

#[test]
fn a_dead_app_is_withdrawn_and_comes_back_iptables() {
    a_dead_app_is_withdrawn_and_comes_back(Mode::Iptables);
}

#[test]
fn a_dead_app_is_withdrawn_and_comes_back_ebpf() {
    a_dead_app_is_withdrawn_and_comes_back(Mode::Ebpf);
}

/// The sidecar's own `/ready` follows its app: 503 naming the port while the app
/// does not accept, 200 once it is back; `/ready/proxy` and `/live`, which need no
/// app, stay 200. A sidecar whose pod is no endpoint of its service (no app port to
/// check) is ready without any app.
fn a_sidecars_ready_follows_its_app(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 3, 2);
    let get = |fleet: &Fleet, i: usize, path: &str| {
        let addr = std::net::SocketAddr::new(fleet.replicas[i].pod.ipv4().into(), 15020);
        let (status, body) = fleet.front.http_get(addr, path).unwrap();
        (status, body.trim().to_owned())
    };
    assert_eq!(get(&fleet, 0, "/ready"), (200, "ready".to_owned()));

    fleet.kill_app(0);
    let mut last = (0, String::new());
    wait_until(SECS(5), MS(100), || {
        last = get(&fleet, 0, "/ready");
        last.0 == 503
    })
    .unwrap_or_else(|e| panic!("/ready stayed {last:?}: {e}"));
    assert_eq!(last, (503, format!("app port {APP_PORT}: connect_refused")));
    assert_eq!(get(&fleet, 0, "/ready/proxy"), (200, "ready".to_owned()));
    assert_eq!(get(&fleet, 0, "/live").0, 200);
    assert_eq!(
        get(&fleet, 1, "/ready").0,
        200,
        "the other replica's app lives"
    );

    fleet.start_app(0);
    wait_until(SECS(5), MS(100), || {
        last = get(&fleet, 0, "/ready");
        last.0 == 200
    })
    .unwrap_or_else(|e| panic!("/ready stayed {last:?} after the app came back: {e}"));

    // Pod 3 is no endpoint of `web`: its sidecar has no app port to check.
    fleet.start_sidecar(2);
    assert_eq!(get(&fleet, 2, "/ready"), (200, "ready".to_owned()));
}

#[test]
fn a_sidecars_ready_follows_its_app_iptables() {
    a_sidecars_ready_follows_its_app(Mode::Iptables);
}

#[test]
fn a_sidecars_ready_follows_its_app_ebpf() {
    a_sidecars_ready_follows_its_app(Mode::Ebpf);
}
