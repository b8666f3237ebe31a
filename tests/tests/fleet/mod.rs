//! The fault suites' fleet: a frontend pod sending an open-loop load to `web`'s
//! replicas and the controller; what the clients saw, classified by whether an
//! application received each failed request, and the rows each suite prints.
//! Shared by `faults.rs` (`web`'s endpoints in the mesh file) and
//! `faults_kubernetes.rs` (`web.shop`'s from a fake Kubernetes API server through
//! the controller's Kubernetes source).
//!
//! A replica is its sidecar and three unmodified apps, all killed together:
//! `httpkit.py serve` (HTTP/1.1, port 8080), `h2kit serve` (plain h2c on 8081,
//! gRPC on 8082; `src/bin/h2kit`) and `tcpkit.py serve-echo-log` (a TCP echo
//! server on 8083). `web` has a port for each: 80 (HTTP/1.1, `auto`), 81 (h2c,
//! `auto`: detected from the HTTP/2 preface), 82 (gRPC, declared `http`) and 83
//! (declared `tcp`: opaque bytes, carried through the replicas' tunnel).
//!
//! The load: five unmodified clients at once, 25 requests/s each (125/s in all):
//! two HTTP/1.1 ones (`faultload.py`), one keeping connections alive and one
//! opening a connection per request; an h2c one (`h2kit h2c-load`, a few
//! long-lived HTTP/2 connections); a gRPC one (`h2kit grpc-load`, unary calls over
//! a few tonic channels); an opaque TCP one (`tcpkit.py echo-load`, a new
//! connection each time that writes its id and expects it echoed). Half the HTTP
//! requests are POSTs; every gRPC call is one. Every request (and every TCP
//! connection) carries an id that the replicas log as they receive it, so each
//! failure a client sees is *never received* (no application saw it: the mesh
//! could have sent it elsewhere) or *after receipt* (an application took it and
//! then died). A request or connection the app's kernel held when the app was
//! killed (in its accept queue or receive buffer: delivered, then reset) counts as
//! received too (`weft_e2e::receipt`): no proxy can know whether an app acted on
//! bytes it was sent.

// Each suite uses its own subset.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use weft_e2e::fakekube::FakeKube;
use weft_e2e::{
    python3, receipt, tool, wait_until, Controller, Mesh, Mode, ModePod, PodProc, ProcSpec, Sidecar,
};

pub const SECS: fn(u64) -> Duration = Duration::from_secs;
pub const MS: fn(u64) -> Duration = Duration::from_millis;

/// The load, per client: requests/s (five clients: 125/s in all), and seconds
/// (longer for the rolling restart).
pub const RATE: &str = "25";
pub const LOAD_SECONDS: u64 = 8;
pub const ROLLING_LOAD_SECONDS: u64 = 22;
/// `web`'s VIP (in the mesh file, or its ClusterIP from Kubernetes) and its
/// replicas' app ports: HTTP/1.1 (the first: the one the controller's health
/// checks probe), h2c and gRPC, behind `web`'s ports 80, 81 and 82.
pub const VIP: &str = "10.96.0.50";
pub const APP_PORT: u16 = 8080;
pub const H2C_PORT: u16 = 8081;
pub const GRPC_PORT: u16 = 8082;
pub const TCP_PORT: u16 = 8083;
/// `web`'s ports (on the VIP) in front of them.
pub const HTTP1_VIP_PORT: u16 = 80;
pub const H2C_VIP_PORT: u16 = 81;
pub const GRPC_VIP_PORT: u16 = 82;
pub const TCP_VIP_PORT: u16 = 83;

static SERIAL: Mutex<()> = Mutex::new(());

/// One fleet at a time in a suite: their loads and timings must not share the CPU.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One replica: its pod, its sidecar (until drained) and its apps (until killed):
/// `httpkit.py serve`, `h2kit serve` and `tcpkit.py serve-echo-log`.
pub struct Replica {
    pub pod: ModePod,
    pub sidecar: Option<Sidecar>,
    pub apps: Vec<PodProc>,
}

/// A frontend pod and `web`'s replica pods, the controller serving the mesh file
/// (and, for a Kubernetes fleet, the fake API server).
pub struct Fleet {
    pub mesh: Mesh,
    pub file: PathBuf,
    pub front: ModePod,
    pub front_sidecar: Sidecar,
    pub replicas: Vec<Replica>,
    pub controller: Controller,
    /// The replicas' service: `web` from the mesh file, `web.shop` from Kubernetes.
    pub service: &'static str,
    /// The controller's flags and environment, kept for a restart.
    controller_args: Vec<String>,
    controller_env: Vec<(String, String)>,
    /// The fake API server, for a Kubernetes fleet.
    pub kube: Option<FakeKube>,
}

/// What a fleet's controller follows for `web`'s endpoints.
enum WebSource<'a> {
    /// The mesh file, with the replicas `serving` at the start.
    File,
    /// Kubernetes: the fake API server serving the ServiceList and
    /// EndpointSliceList this makes from the replicas' addresses.
    Kubernetes(&'a dyn Fn(&[Ipv4Addr]) -> (Value, Value)),
}

impl Fleet {
    /// `pods` replica pods, the first `serving` of them with a sidecar, an app and a
    /// place among `web`'s endpoints.
    pub fn new(mode: Mode, pods: usize, serving: usize) -> Fleet {
        Fleet::with_controller_args(mode, pods, serving, &[])
    }

    /// [`Fleet::new`], the controller started with `controller_args`.
    pub fn with_controller_args(
        mode: Mode,
        pods: usize,
        serving: usize,
        controller_args: &[&str],
    ) -> Fleet {
        Fleet::build(mode, pods, serving, controller_args, WebSource::File)
    }

    /// `pods` replica pods of the Kubernetes Service `web` in namespace `shop`
    /// (the mesh's `web.shop`), the first `serving` of them with a sidecar and an
    /// app: the controller runs with `--kubernetes` against a fake API server that
    /// serves what `objects` makes of the replicas' addresses (a ServiceList and
    /// an EndpointSliceList). The mesh file defines only the frontend.
    pub fn kubernetes(
        mode: Mode,
        pods: usize,
        serving: usize,
        objects: &dyn Fn(&[Ipv4Addr]) -> (Value, Value),
    ) -> Fleet {
        Fleet::build(mode, pods, serving, &[], WebSource::Kubernetes(objects))
    }

    fn build(
        mode: Mode,
        pods: usize,
        serving: usize,
        controller_args: &[&str],
        web: WebSource<'_>,
    ) -> Fleet {
        let mesh = Mesh::new().unwrap();
        let front = mode.add_pod(&mesh, "front").unwrap();
        let replicas: Vec<Replica> = (1..=pods)
            .map(|i| Replica {
                pod: mode.add_pod(&mesh, &format!("web{i}")).unwrap(),
                sidecar: None,
                apps: Vec::new(),
            })
            .collect();
        let file = mesh.run_dir().join("mesh.yaml");
        let mut args: Vec<String> = controller_args.iter().map(|a| a.to_string()).collect();
        let mut env = Vec::new();
        let (service, kube) = match web {
            WebSource::File => {
                let serving: Vec<usize> = (0..serving).collect();
                write_mesh_file(&file, &front, &replicas, Some(&serving));
                ("web", None)
            }
            WebSource::Kubernetes(objects) => {
                write_mesh_file(&file, &front, &replicas, None);
                let ips: Vec<Ipv4Addr> = replicas.iter().map(|r| r.pod.ipv4()).collect();
                let (services, slices) = objects(&ips);
                let kube = FakeKube::start(&mesh, &services, &slices).unwrap();
                args.push("--kubernetes".into());
                env.push((
                    "KUBECONFIG".to_owned(),
                    kube.kubeconfig().to_string_lossy().into_owned(),
                ));
                ("web.shop", Some(kube))
            }
        };
        let controller = start_controller(&mesh, &file, &args, &env);
        front.add_route("10.96.0.0/16").unwrap();
        let front_sidecar = front
            .sidecar_with(
                &[],
                "frontend",
                // Every connection of a run stays in `/connections` (`receipt`).
                &["--controller", controller.url(), "--closed-history", "8192"],
            )
            .unwrap();
        let mut fleet = Fleet {
            mesh,
            file,
            front,
            front_sidecar,
            replicas,
            controller,
            service,
            controller_args: args,
            controller_env: env,
            kube,
        };
        for i in 0..serving {
            fleet.start_sidecar(i);
            fleet.start_app(i);
        }
        fleet
    }

    /// Makes `web`'s endpoints the replicas `serving` (in the mesh file).
    pub fn set_endpoints(&self, serving: &[usize]) {
        assert!(
            self.kube.is_none(),
            "a Kubernetes fleet's endpoints are slices"
        );
        write_mesh_file(&self.file, &self.front, &self.replicas, Some(serving));
    }

    /// The fake API server of a Kubernetes fleet.
    pub fn kube(&self) -> &FakeKube {
        self.kube.as_ref().expect("a Kubernetes fleet")
    }

    /// Starts replica `i`'s sidecar (the proxy's default drain delay, 3 s) and
    /// waits until it is ready (`/ready/proxy`).
    pub fn start_sidecar(&mut self, i: usize) {
        let url = self.controller.url().to_owned();
        let service = self.service;
        let r = &mut self.replicas[i];
        r.sidecar = Some(
            r.pod
                .sidecar_with(
                    &[],
                    service,
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

    /// Starts replica `i`'s apps (HTTP/1.1; h2c and gRPC; TCP echo) and waits
    /// until they listen. All log the ids they receive to the same file.
    pub fn start_app(&mut self, i: usize) {
        let log = self.received_log(i);
        let log = log.to_string_lossy();
        let r = &mut self.replicas[i];
        let name = r.pod.name().to_owned();
        let python = python3();
        let (httpkit, tcpkit) = (tool("httpkit.py"), tool("tcpkit.py"));
        let (app_port, h2c_port, grpc_port, tcp_port) = (
            APP_PORT.to_string(),
            H2C_PORT.to_string(),
            GRPC_PORT.to_string(),
            TCP_PORT.to_string(),
        );
        let specs = [
            ProcSpec::new([
                python.to_string_lossy().as_ref(),
                httpkit.as_str(),
                "serve",
                &app_port,
                &name,
                &log,
            ])
            .name("app"),
            ProcSpec::new([H2KIT, "serve", &h2c_port, &grpc_port, &name, &log]).name("app-h2"),
            ProcSpec::new([
                python.to_string_lossy().as_ref(),
                tcpkit.as_str(),
                "serve-echo-log",
                &tcp_port,
                &log,
            ])
            .name("app-tcp"),
        ];
        for spec in specs {
            let app = r.pod.spawn(spec).unwrap();
            wait_until(SECS(10), MS(20), || app.logs().contains("listening"))
                .unwrap_or_else(|e| panic!("app {} of {name}: {e}: {}", app.name(), app.logs()));
            r.apps.push(app);
        }
    }

    /// `kill -9` of replica `i`'s apps, all at once (each its own process group).
    pub fn kill_app(&mut self, i: usize) {
        let apps = std::mem::take(&mut self.replicas[i].apps);
        for app in &apps {
            app.kill().unwrap();
        }
        for app in &apps {
            app.wait_timeout(SECS(5));
        }
    }

    /// SIGTERM to replica `i`'s sidecar; waits until it has drained and exited.
    pub fn drain_sidecar(&mut self, i: usize) {
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
    pub fn restart_controller(&mut self) {
        let old = self.controller.proc();
        old.kill().unwrap();
        old.wait_timeout(SECS(5));
        std::thread::sleep(SECS(1));
        self.controller = start_controller(
            &self.mesh,
            &self.file,
            &self.controller_args,
            &self.controller_env,
        );
    }

    /// Where replica `i`'s app logs the ids it receives (kept across restarts).
    pub fn received_log(&self, i: usize) -> PathBuf {
        self.mesh
            .run_dir()
            .join(format!("received-web{}.log", i + 1))
    }

    /// How many requests replica `i`'s app received.
    pub fn received_by(&self, i: usize) -> usize {
        read_ids(&self.received_log(i)).len()
    }

    /// Every request id any replica's app received.
    pub fn received(&self) -> BTreeSet<u64> {
        (0..self.replicas.len())
            .flat_map(|i| read_ids(&self.received_log(i)))
            .collect()
    }

    /// Runs every client's load while `fault` acts on the fleet (timing itself
    /// with sleeps); each client's outcome, in [`CLIENTS`] order. Before the fault,
    /// it waits until the frontend's sidecar carries the h2c and gRPC loads as
    /// HTTP/2 (L7, not opaque bytes).
    pub fn under_load(&mut self, seconds: u64, fault: impl FnOnce(&mut Fleet)) -> Vec<Outcome> {
        let seconds_arg = seconds.to_string();
        let loads: Vec<PodProc> = CLIENTS
            .iter()
            .map(|client| {
                let argv = client.argv(&seconds_arg);
                self.front.spawn(ProcSpec::new(&argv).name("load")).unwrap()
            })
            .collect();
        self.wait_for_h2_loads();
        fault(self);
        let results: Vec<Value> = loads
            .iter()
            .map(|load| {
                let status = load
                    .wait_timeout(SECS(seconds + 40))
                    .unwrap_or_else(|| panic!("the load never ended: {}", load.logs()));
                assert!(status.success(), "{status:?}: {}", load.logs());
                let logs = load.logs();
                let line = logs
                    .lines()
                    .rfind(|l| l.starts_with('{'))
                    .unwrap_or_else(|| panic!("no result from the load: {logs}"));
                serde_json::from_str(line).unwrap()
            })
            .collect();
        // Read once every load has ended: a request an app received late still
        // counts as received.
        let received = self.received();
        CLIENTS
            .iter()
            .zip(&results)
            .map(|(client, v)| match client.kind {
                ClientKind::Tcp => {
                    let mut received = received.clone();
                    let vip_port = format!("{VIP}:{TCP_VIP_PORT}");
                    let table = self.front_connections();
                    received.extend(receipt::established_then_reset(&table, &vip_port, v));
                    Outcome::classify(client.name, v, &received)
                }
                _ => Outcome::classify(client.name, v, &received),
            })
            .collect()
    }

    /// Waits until the frontend's sidecar has a live `h2` connection (detected
    /// HTTP/2, proxied per request) from the h2c and from the gRPC load, from its
    /// `/connections`.
    fn wait_for_h2_loads(&self) {
        let mut last = Value::Null;
        let vip_ports = [H2C_VIP_PORT, GRPC_VIP_PORT].map(|p| format!("{VIP}:{p}"));
        wait_until(SECS(5), MS(20), || {
            last = self.front_connections();
            vip_ports.iter().all(|vp| {
                last["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["state"] == "open"
                            && c["original_destination"] == vp.as_str()
                            && c["protocol"] == "h2"
                    })
            })
        })
        .unwrap_or_else(|e| {
            panic!("the h2c and gRPC loads are not proxied as HTTP/2 ({e}): {last:#}")
        });
    }

    /// The frontend's sidecar's `/connections`.
    pub fn front_connections(&self) -> Value {
        let admin = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
        let (status, body) = self.front.http_get(admin, "/connections").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Every process's log, and the fake API server's requests.
    pub fn logs(&self) -> String {
        match &self.kube {
            Some(kube) => format!("{}\nfakekube:\n{}", self.mesh.logs_report(), kube.logs()),
            None => self.mesh.logs_report(),
        }
    }

    /// The endpoints (`ip:port`) the frontend's sidecar routes `web`'s VIP to now,
    /// from its `/routes`.
    pub fn front_endpoints(&self) -> Vec<String> {
        let admin = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
        let (status, body) = self.front.http_get(admin, "/routes").unwrap();
        assert_eq!(status, 200, "{body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        let vip_port = format!("{VIP}:{HTTP1_VIP_PORT}");
        doc["services"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["routes"].as_array().into_iter().flatten())
            .filter(|r| r["vip_port"] == vip_port.as_str())
            .flat_map(|r| r["endpoints"].as_array().into_iter().flatten())
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect()
    }

    /// `GET path` on replica `i`'s sidecar's metrics and health port (`/ready`,
    /// `/app-health/<port>`...), from the frontend pod: status and trimmed body.
    pub fn sidecar_get(&self, i: usize, path: &str) -> (u16, String) {
        let addr = SocketAddr::new(self.replicas[i].pod.ipv4().into(), 15020);
        let (status, body) = self.front.http_get(addr, path).unwrap();
        (status, body.trim().to_owned())
    }

    /// Replica `i`'s endpoint as the proxies route to it.
    pub fn endpoint(&self, i: usize) -> String {
        format!("{}:{APP_PORT}", self.replicas[i].pod.ipv4())
    }

    /// `/v1/services`: the controller's view.
    pub fn controller_services(&self) -> Value {
        let (status, body) = self
            .mesh
            .node()
            .http_get_as_operator(self.controller.http_addr(), "/v1/services")
            .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// What the frontend's sidecar counted: retries and ejections, by reason.
    pub fn recovery(&self) -> Recovery {
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
                &["unsent", "refused", "app_unreachable", "reset", "status"],
            ),
            connect_retries: by_reason(
                "weft_tcp_connect_retries_total",
                &[
                    "connect_refused",
                    "connect_timeout",
                    "connect_error",
                    "app_unreachable",
                    "tunnel_reset",
                ],
            ),
            ejections: by_reason(
                "weft_endpoint_ejections_total",
                &["unreachable", "failures"],
            ),
        }
    }
}

fn start_controller(
    mesh: &Mesh,
    file: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Controller {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Controller::start_with_env(mesh, file, &args, &env).unwrap()
}

/// The mesh file: `frontend`, and `web` with the replicas `serving` unless `web`
/// comes from elsewhere (`None`).
fn write_mesh_file(file: &Path, front: &ModePod, replicas: &[Replica], serving: Option<&[usize]>) {
    let mut yaml = format!(
        "services:\n  frontend:\n    vip: 10.96.0.2\n    ports: [{{ port: 80 }}]\n    endpoints: [{}]\n",
        front.ipv4()
    );
    if let Some(serving) = serving {
        let endpoints: Vec<String> = serving
            .iter()
            .map(|&i| replicas[i].pod.ipv4().to_string())
            .collect();
        // h2c on `auto` (detected by its preface), gRPC declared `http`, the echo
        // `tcp`.
        yaml.push_str(&format!(
            "  web:\n    vip: {VIP}\n    ports:\n      \
             - {{ port: {HTTP1_VIP_PORT}, target_port: {APP_PORT} }}\n      \
             - {{ port: {H2C_VIP_PORT}, target_port: {H2C_PORT} }}\n      \
             - {{ port: {GRPC_VIP_PORT}, target_port: {GRPC_PORT}, protocol: http }}\n      \
             - {{ port: {TCP_VIP_PORT}, target_port: {TCP_PORT}, protocol: tcp }}\n    \
             endpoints: [{}]\n",
            endpoints.join(", ")
        ));
    }
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

/// The h2kit tool binary (`src/bin/h2kit`), built with the tests.
pub const H2KIT: &str = env!("CARGO_BIN_EXE_h2kit");

/// One load client: its row's name and how it is run.
pub struct Client {
    pub name: &'static str,
    kind: ClientKind,
    /// Its ids count from here, so every client's are apart.
    first_id: &'static str,
}

enum ClientKind {
    /// `faultload.py` in a mode: `keepalive` or `new`.
    Http1(&'static str),
    H2c,
    Grpc,
    /// `tcpkit.py echo-load`: opaque TCP, a connection per id.
    Tcp,
}

/// The clients every fault runs under, all at once.
pub const CLIENTS: [Client; 5] = [
    Client {
        name: "keep-alive",
        kind: ClientKind::Http1("keepalive"),
        first_id: "0",
    },
    Client {
        name: "new-conn",
        kind: ClientKind::Http1("new"),
        first_id: "1000000",
    },
    Client {
        name: "h2c",
        kind: ClientKind::H2c,
        first_id: "2000000",
    },
    Client {
        name: "grpc",
        kind: ClientKind::Grpc,
        first_id: "3000000",
    },
    Client {
        name: "tcp",
        kind: ClientKind::Tcp,
        first_id: "4000000",
    },
];

impl Client {
    /// Its command line, for a load of `seconds`.
    fn argv(&self, seconds: &str) -> Vec<String> {
        let mut argv: Vec<String> = match self.kind {
            ClientKind::Http1(_) => vec![
                python3().to_string_lossy().into_owned(),
                tool("faultload.py"),
                format!("http://{VIP}:{HTTP1_VIP_PORT}/"),
            ],
            ClientKind::H2c => vec![
                H2KIT.to_owned(),
                "h2c-load".to_owned(),
                format!("http://{VIP}:{H2C_VIP_PORT}/"),
            ],
            ClientKind::Grpc => vec![
                H2KIT.to_owned(),
                "grpc-load".to_owned(),
                format!("http://{VIP}:{GRPC_VIP_PORT}"),
            ],
            ClientKind::Tcp => vec![
                python3().to_string_lossy().into_owned(),
                tool("tcpkit.py"),
                "echo-load".to_owned(),
                VIP.to_owned(),
                TCP_VIP_PORT.to_string(),
            ],
        };
        argv.extend([RATE.to_owned(), seconds.to_owned()]);
        if let ClientKind::Http1(mode) = self.kind {
            argv.push(mode.to_owned());
        }
        argv.push(self.first_id.to_owned());
        argv
    }
}

/// What the client-side sidecar did under one fault.
#[derive(Debug)]
pub struct Recovery {
    /// HTTP requests sent again (`weft_http_retries_total`).
    pub retries: Vec<(&'static str, u64)>,
    /// Opaque connections established elsewhere (`weft_tcp_connect_retries_total`).
    pub connect_retries: Vec<(&'static str, u64)>,
    pub ejections: Vec<(&'static str, u64)>,
}

impl Recovery {
    pub fn get(list: &[(&'static str, u64)], reason: &str) -> u64 {
        list.iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// What one client saw under one fault.
#[derive(Debug)]
pub struct Outcome {
    pub client: &'static str,
    pub sent: u64,
    pub succeeded: u64,
    /// Failed, and no application received it.
    pub never_received: Vec<Value>,
    /// Failed after an application received it.
    pub after_receipt: Vec<Value>,
}

impl Outcome {
    fn classify(client: &'static str, v: &Value, received: &BTreeSet<u64>) -> Outcome {
        let (after_receipt, never_received) = v["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .cloned()
            .partition(|f| {
                f["id"].as_u64().is_some_and(|id| received.contains(&id))
                    || receipt::delivered_then_reset(f)
            });
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
pub fn report(fault: &str, mode: Mode, outcomes: &[Outcome], fleet: &Fleet) -> Recovery {
    let recovery = fleet.recovery();
    let list = |l: &[(&str, u64)]| {
        l.iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "fault {fault:<28} {mode:<8} sidecar    retried: {}; tcp connects retried: {}; ejected: {}",
        list(&recovery.retries),
        list(&recovery.connect_retries),
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
