//! Tier 2: opaque TCP through the sidecars' tunnel (ARCHITECTURE.md, Packet path:
//! the tunnel), in both capture modes (`_iptables`, `_ebpf`).
//!
//! `echo` has replicas behind their sidecars, each running two unmodified servers:
//! an echo server (`tcpkit.py serve-echo-log`, 9000, behind `echo`'s port 90) that
//! logs the id each connection sends first, and one that speaks first
//! (`tcpkit.py serve-hello`, 9001, behind port 91: a greeting, then echo). Both
//! ports are `auto`: the echo clients' first bytes are no HTTP, and the greeting
//! makes a silent client's connection opaque. A frontend pod's unmodified clients
//! reach them through `echo`'s VIP.
//!
//! - Under a replica fault (its echo server killed with `kill -9`, then started
//!   again) an open-loop load of short connections (each writes its id and expects
//!   it back) loses no connection that no application received (one established
//!   to an app that died with it in its accept queue counts as received:
//!   `weft_e2e::receipt`): the dead replica's
//!   sidecar answers the tunnel that its application refused, and the frontend's
//!   sidecar establishes the connection to another replica. Prints the row (sent /
//!   succeeded / failed never-received / failed after receipt) and what the
//!   frontend's sidecar did (`weft_tcp_connect_retries_total` and
//!   `weft_endpoint_ejections_total` by reason):
//!   `cargo test -p weft-e2e --test tunnel -- --nocapture --test-threads 1`.
//! - A greeting comes through the tunnel to a client that says nothing.
//! - Older sidecars (one whose capture still takes the tunnel port to its inbound
//!   listener, one with nothing listening there) are dialled directly: every
//!   connection succeeds, none is retried and no endpoint is ejected.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use weft_e2e::{
    python3, receipt, tool, wait_until, Controller, Mesh, Mode, ModePod, PodProc, ProcSpec,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// `echo`'s VIP, its ports, and the replicas' app ports behind them.
const VIP: &str = "10.96.0.60";
const ECHO_VIP_PORT: u16 = 90;
const ECHO_PORT: u16 = 9000;
const BANNER_VIP_PORT: u16 = 91;
const BANNER_PORT: u16 = 9001;
/// The frontend sidecar's admin listener (`/routes`, `/connections`).
const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);
/// The fault run's load: new connections a second, for how long.
const RATE: u64 = 50;
const LOAD_SECONDS: u64 = 8;

static SERIAL: Mutex<()> = Mutex::new(());

/// One fleet at a time: the loads and their timings must not share the CPU.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which weft a replica's sidecar is.
#[derive(Clone, Copy, Debug)]
enum Version {
    /// This one: the tunnel served on 15008, kept out of capture.
    Current,
    /// A proxy serving no tunnel behind this weft-init: nothing listens on 15008,
    /// which capture leaves alone (the peer's connect is refused).
    NoTunnel,
    /// An older weft altogether: no tunnel, and capture redirects 15008 to the
    /// inbound listener like any port (which dials the app port 15008, finds
    /// nothing and resets the connection).
    Older,
}

impl Version {
    fn init_args(self) -> &'static [&'static str] {
        match self {
            Version::Current | Version::NoTunnel => &[],
            // Another port kept out of capture instead: 15008 is captured.
            Version::Older => &["--tunnel-port", "15009"],
        }
    }

    fn proxy_args(self) -> &'static [&'static str] {
        match self {
            Version::Current => &[],
            Version::NoTunnel | Version::Older => &["--tunnel-port", "0"],
        }
    }
}

struct Replica {
    pod: ModePod,
    sidecar: weft_e2e::Sidecar,
    echo: Option<PodProc>,
    _banner: PodProc,
}

/// A frontend pod and `echo`'s replicas, the controller serving the mesh file.
struct Fleet {
    mesh: Mesh,
    _controller: Controller,
    front: ModePod,
    front_sidecar: weft_e2e::Sidecar,
    replicas: Vec<Replica>,
}

impl Fleet {
    /// A replica per entry of `versions`, each with its sidecar and both apps,
    /// all among `echo`'s endpoints; returns once the frontend's sidecar knows
    /// every replica as meshed.
    fn new(mode: Mode, versions: &[Version]) -> Fleet {
        let mesh = Mesh::new().unwrap();
        let front = mode.add_pod(&mesh, "front").unwrap();
        let pods: Vec<ModePod> = (1..=versions.len())
            .map(|i| mode.add_pod(&mesh, &format!("echo{i}")).unwrap())
            .collect();
        let file = mesh.run_dir().join("mesh.yaml");
        let endpoints: Vec<String> = pods.iter().map(|p| p.ipv4().to_string()).collect();
        std::fs::write(
            &file,
            format!(
                "services:\n  frontend:\n    vip: 10.96.0.2\n    ports: [{{ port: 80 }}]\n    \
                 endpoints: [{}]\n  echo:\n    vip: {VIP}\n    ports:\n      \
                 - {{ port: {ECHO_VIP_PORT}, target_port: {ECHO_PORT} }}\n      \
                 - {{ port: {BANNER_VIP_PORT}, target_port: {BANNER_PORT} }}\n    \
                 endpoints: [{}]\n",
                front.ipv4(),
                endpoints.join(", ")
            ),
        )
        .unwrap();
        let controller = Controller::start(&mesh, &file, &[]).unwrap();
        front.add_route("10.96.0.0/16").unwrap();
        let url = controller.url().to_owned();
        let front_sidecar = front
            .sidecar_with(
                &[],
                "frontend",
                // Every connection of a run stays in `/connections` (`receipt`).
                &["--controller", &url, "--closed-history", "8192"],
            )
            .unwrap();
        let mut fleet = Fleet {
            replicas: Vec::new(),
            mesh,
            _controller: controller,
            front,
            front_sidecar,
        };
        for (pod, version) in pods.into_iter().zip(versions) {
            let mut proxy_args = vec!["--controller", url.as_str()];
            proxy_args.extend_from_slice(version.proxy_args());
            let sidecar = pod
                .sidecar_with(version.init_args(), "echo", &proxy_args)
                .unwrap();
            let name = pod.name().to_owned();
            let banner = app(
                &pod,
                "banner",
                &["serve-hello", &BANNER_PORT.to_string(), &name],
            );
            let mut replica = Replica {
                pod,
                sidecar,
                echo: None,
                _banner: banner,
            };
            fleet.start_echo_of(&mut replica);
            fleet.replicas.push(replica);
        }
        fleet.wait_meshed();
        fleet
    }

    /// Where replica `pod`'s echo server logs the ids it receives.
    fn received_log(&self, pod: &str) -> PathBuf {
        self.mesh.run_dir().join(format!("received-{pod}.log"))
    }

    fn start_echo_of(&self, replica: &mut Replica) {
        let log = self.received_log(replica.pod.name());
        let log = log.to_string_lossy();
        let port = ECHO_PORT.to_string();
        replica.echo = Some(app(&replica.pod, "echo", &["serve-echo-log", &port, &log]));
    }

    /// Starts replica `i`'s echo server (again).
    fn start_echo(&mut self, i: usize) {
        let mut replica = self.replicas.remove(i);
        self.start_echo_of(&mut replica);
        self.replicas.insert(i, replica);
    }

    /// `kill -9` of replica `i`'s echo server.
    fn kill_echo(&mut self, i: usize) {
        let echo = self.replicas[i].echo.take().expect("running");
        echo.kill().unwrap();
        echo.wait_timeout(SECS(5));
    }

    /// Waits until the frontend's sidecar has every replica among `echo`'s meshed
    /// endpoints (its `/routes`): each replica's sidecar subscribed.
    fn wait_meshed(&self) {
        let want: BTreeSet<String> = self
            .replicas
            .iter()
            .map(|r| r.pod.ipv4().to_string())
            .collect();
        let mut last = Value::Null;
        wait_until(SECS(10), MS(50), || {
            let (_, body) = self.front.http_get(ADMIN, "/routes").unwrap();
            last = serde_json::from_str(&body).unwrap();
            let meshed: BTreeSet<String> = last["services"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["name"] == "echo")
                .flat_map(|s| s["meshed"].as_array().cloned().unwrap_or_default())
                .filter_map(|ip| ip.as_str().map(str::to_owned))
                .collect();
            meshed == want
        })
        .unwrap_or_else(|e| panic!("the replicas never became meshed ({e}): {last:#}"));
    }

    /// Runs `echo-load` from the frontend pod (RATE connections a second for
    /// `seconds`) while `during` acts on the fleet; what the client saw.
    fn under_load(&mut self, rate: u64, seconds: u64, during: impl FnOnce(&mut Fleet)) -> Outcome {
        let argv = [
            python3().to_string_lossy().into_owned(),
            tool("tcpkit.py"),
            "echo-load".into(),
            VIP.into(),
            ECHO_VIP_PORT.to_string(),
            rate.to_string(),
            seconds.to_string(),
        ];
        let load = self
            .front
            .spawn(ProcSpec::new(&argv).name("echo-load"))
            .unwrap();
        during(self);
        let status = load
            .wait_timeout(SECS(seconds + 40))
            .unwrap_or_else(|| panic!("the load never ended: {}", load.logs()));
        assert!(status.success(), "{status:?}: {}", load.logs());
        let logs = load.logs();
        let line = logs
            .lines()
            .rfind(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no result from the load: {logs}"));
        let result: Value = serde_json::from_str(line).unwrap();
        // Read once the load has ended: an id an app logged late still counts,
        // and so does a connection established to an app that died with it in
        // its accept queue.
        let mut received: BTreeSet<u64> = self
            .replicas
            .iter()
            .flat_map(|r| read_ids(&self.received_log(r.pod.name())))
            .collect();
        let (_, body) = self.front.http_get(ADMIN, "/connections").unwrap();
        let table: Value = serde_json::from_str(&body).unwrap();
        let vip_port = format!("{VIP}:{ECHO_VIP_PORT}");
        received.extend(receipt::established_then_reset(&table, &vip_port, &result));
        Outcome::classify(&result, &received)
    }

    /// How many ids replica `i`'s echo server received.
    fn received_by(&self, i: usize) -> usize {
        read_ids(&self.received_log(self.replicas[i].pod.name())).len()
    }

    /// `name`'s value (summed over samples with `labels`) on the frontend's sidecar.
    fn front_metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.front_sidecar.metric(name, labels).unwrap() as u64
    }

    /// A counter of the frontend's sidecar by each of `reasons`.
    fn by_reason(&self, name: &str, reasons: &[&'static str]) -> Vec<(&'static str, u64)> {
        reasons
            .iter()
            .map(|r| (*r, self.front_metric(name, &[("reason", r)])))
            .collect()
    }
}

/// Starts `tcpkit.py ARGS` in `pod` and waits until it listens.
fn app(pod: &ModePod, name: &str, args: &[&str]) -> PodProc {
    let mut argv = vec![python3().to_string_lossy().into_owned(), tool("tcpkit.py")];
    argv.extend(args.iter().map(|a| a.to_string()));
    let proc = pod.spawn(ProcSpec::new(&argv).name(name)).unwrap();
    wait_until(SECS(10), MS(20), || proc.logs().contains("listening"))
        .unwrap_or_else(|e| panic!("{name} in {}: {e}: {}", pod.name(), proc.logs()));
    proc
}

fn read_ids(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// What the load's client saw.
#[derive(Debug)]
struct Outcome {
    sent: u64,
    succeeded: u64,
    /// Failed, and no application received its id: the mesh could have sent it
    /// elsewhere.
    never_received: Vec<Value>,
    /// Failed after an application received it (and died with it).
    after_receipt: Vec<Value>,
}

impl Outcome {
    fn classify(v: &Value, received: &BTreeSet<u64>) -> Outcome {
        let (after_receipt, never_received) = v["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .cloned()
            .partition(|f| f["id"].as_u64().is_some_and(|id| received.contains(&id)));
        let o = Outcome {
            sent: v["sent"].as_u64().expect("sent"),
            succeeded: v["succeeded"].as_u64().expect("succeeded"),
            never_received,
            after_receipt,
        };
        assert_eq!(
            o.sent,
            o.succeeded + o.never_received.len() as u64 + o.after_receipt.len() as u64
        );
        o
    }
}

fn list(l: &[(&str, u64)]) -> String {
    l.iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const RETRY_REASONS: [&str; 5] = [
    "connect_refused",
    "connect_timeout",
    "connect_error",
    "app_unreachable",
    "tunnel_reset",
];

/// A replica's echo server is killed (`kill -9`) 2 s into the load and started
/// again 3 s later: no connection fails that no application received.
fn a_dead_apps_connections_are_established_elsewhere(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, &[Version::Current; 3]);
    let outcome = fleet.under_load(RATE, LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(2));
        f.kill_echo(0);
        std::thread::sleep(SECS(3));
        f.start_echo(0);
    });
    let retries = fleet.by_reason("weft_tcp_connect_retries_total", &RETRY_REASONS);
    let ejections = fleet.by_reason(
        "weft_endpoint_ejections_total",
        &["unreachable", "failures"],
    );
    println!(
        "fault app killed, restarted (opaque TCP) {mode:<8} sidecar    retried: {}; ejected: {}",
        list(&retries),
        list(&ejections)
    );
    println!(
        "fault app killed, restarted (opaque TCP) {mode:<8} echo-load  sent {:>4}  succeeded {:>4}  failed never-received {:>3}  failed after receipt {:>3}",
        outcome.sent,
        outcome.succeeded,
        outcome.never_received.len(),
        outcome.after_receipt.len()
    );
    assert!(
        outcome.never_received.is_empty(),
        "{mode}: {} connections failed that no application received: {:?}\n{}",
        outcome.never_received.len(),
        outcome.never_received,
        fleet.mesh.logs_report()
    );
    // The fault was met, not dodged: a connection reached the dead replica's
    // sidecar through the tunnel, was refused there (counted as the inbound
    // connection its app refused) and established elsewhere; the replica was
    // ejected at once.
    let get = |l: &[(&str, u64)], r: &str| l.iter().find(|(k, _)| *k == r).map_or(0, |x| x.1);
    assert!(get(&retries, "app_unreachable") > 0, "{retries:?}");
    assert!(get(&ejections, "unreachable") > 0, "{ejections:?}");
    let refused = fleet.replicas[0]
        .sidecar
        .metric(
            "weft_proxy_errors_total",
            &[("direction", "inbound"), ("reason", "connect_refused")],
        )
        .unwrap();
    assert!(refused > 0.0, "the dead replica's sidecar refused none");
    // Every replica served, the dead one before its death.
    for i in 0..3 {
        assert!(fleet.received_by(i) > 0, "replica {i} received nothing");
    }
}

#[test]
fn a_dead_apps_connections_are_established_elsewhere_iptables() {
    a_dead_apps_connections_are_established_elsewhere(Mode::Iptables);
}

#[test]
fn a_dead_apps_connections_are_established_elsewhere_ebpf() {
    a_dead_apps_connections_are_established_elsewhere(Mode::Ebpf);
}

/// A server that speaks first greets a client that says nothing, through the
/// tunnel: while the connection is open, the replica's end of it is its sidecar's
/// tunnel port, and its sidecar counts it as an inbound connection from
/// `frontend`.
fn a_greeting_comes_through_the_tunnel(mode: Mode) {
    let _serial = serial();
    let fleet = Fleet::new(mode, &[Version::Current]);
    let replica = &fleet.replicas[0];
    let dialer = fleet.front.dialer().unwrap();
    let vip: IpAddr = VIP.parse().unwrap();
    let mut conn = dialer
        .connect(SocketAddr::new(vip, BANNER_VIP_PORT), SECS(10))
        .unwrap();
    let mut greeting = String::new();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    std::io::BufRead::read_line(&mut reader, &mut greeting).unwrap();
    assert_eq!(greeting, format!("{}\n", replica.pod.name()));

    let tunnelled = replica
        .pod
        .run_ok(
            ["ss", "-Htn", "state", "established", "( sport = :15008 )"],
            None,
            SECS(10),
        )
        .unwrap();
    assert!(
        tunnelled.contains(&fleet.front.ipv4().to_string()),
        "no tunnel connection from the frontend on the replica:\n{tunnelled}"
    );

    std::io::Write::write_all(&mut conn, b"ping\n").unwrap();
    let mut echo = String::new();
    std::io::BufRead::read_line(&mut reader, &mut echo).unwrap();
    assert_eq!(echo, "ping\n");
    drop((conn, reader));

    let dst = SocketAddr::new(IpAddr::V4(replica.pod.ipv4()), BANNER_PORT);
    let rows = replica.sidecar.wait_closed(dst).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["direction"], "inbound", "{rows:?}");
    assert_eq!(rows[0]["end"], "eof", "{rows:?}");
    assert_eq!(
        replica
            .sidecar
            .metric(
                "weft_tcp_connections_opened_total",
                &[("direction", "inbound"), ("source_service", "frontend")],
            )
            .unwrap(),
        1.0
    );
}

#[test]
fn a_greeting_comes_through_the_tunnel_iptables() {
    a_greeting_comes_through_the_tunnel(Mode::Iptables);
}

#[test]
fn a_greeting_comes_through_the_tunnel_ebpf() {
    a_greeting_comes_through_the_tunnel(Mode::Ebpf);
}

/// Replicas behind older sidecars (one whose capture takes 15008 to its inbound
/// listener, one where nothing listens on 15008) beside a current one: every
/// connection is established, none retried, no endpoint ejected, each replica
/// served.
fn older_sidecars_are_dialled_directly(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, &[Version::Older, Version::NoTunnel, Version::Current]);
    let outcome = fleet.under_load(20, 3, |_| {});
    println!(
        "mixed versions (opaque TCP) {mode:<8} echo-load  sent {:>4}  succeeded {:>4}",
        outcome.sent, outcome.succeeded
    );
    assert_eq!(outcome.succeeded, outcome.sent, "{outcome:?}");
    let retries = fleet.by_reason("weft_tcp_connect_retries_total", &RETRY_REASONS);
    assert!(retries.iter().all(|(_, n)| *n == 0), "{retries:?}");
    assert_eq!(
        fleet.front_metric("weft_endpoint_ejections_total", &[]),
        0,
        "an older sidecar was ejected"
    );
    for i in 0..3 {
        assert!(fleet.received_by(i) > 0, "replica {i} received nothing");
    }
    // The tunnel was tried once on each older sidecar, which was then remembered
    // as without one: the oldest's inbound listener took that try for a
    // connection to an app port 15008, and refused it once.
    let logs = fleet.front_sidecar.proxy().logs();
    for replica in &fleet.replicas[..2] {
        let peer = format!("peer={}", replica.pod.ipv4());
        assert_eq!(
            logs.lines()
                .filter(|l| {
                    l.contains("speaks no tunnel") && l.split_whitespace().any(|w| w == peer)
                })
                .count(),
            1,
            "{logs}"
        );
    }
    let captured = fleet.replicas[0]
        .sidecar
        .metric(
            "weft_proxy_errors_total",
            &[("direction", "inbound"), ("reason", "connect_refused")],
        )
        .unwrap();
    assert_eq!(captured, 1.0);
}

#[test]
fn older_sidecars_are_dialled_directly_iptables() {
    older_sidecars_are_dialled_directly(Mode::Iptables);
}

#[test]
fn older_sidecars_are_dialled_directly_ebpf() {
    older_sidecars_are_dialled_directly(Mode::Ebpf);
}
