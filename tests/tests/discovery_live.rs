//! Tier 2: the mesh file is live (the controller issue's acceptance criteria 2 to 4).
//! The real controller follows edits of its mesh file while traffic runs and the
//! sidecars follow the controller, without restarting and without failing a
//! connection; a malformed file is reported with its line and changes nothing; the
//! proxies keep routing while the controller is dead and pick up the file it
//! restarts with.
//!
//! Backends are `tcpkit.py serve-hello`: each connection is greeted with the name of
//! the pod that serves it, then echoed. The client is the test process itself inside
//! the frontend pod (captured like any application): one sequential stream of short
//! connections ([`Traffic`]), plus long-lived streams ([`Stream`]). With a single
//! sequential client, the frontend proxy's round robin is deterministic, which is what
//! the exact counts below rely on.
//!
//! Every test runs in both capture modes (`_iptables`, `_ebpf`). In eBPF mode capture
//! follows the cgroup of the process that makes a socket, so the test process
//! connects through a [`Dialer`]: a helper inside the frontend pod's cgroup makes
//! each connection and hands the socket over; the test then uses it as before.
//! The eBPF variants run without sk_msg (`--no-sockmap`): this client reads with
//! blocking sockets, and on a socket in the sockhash a blocking read can fail with
//! EAGAIN after a spurious wakeup (kernel behaviour, see tcp_fidelity.rs
//! `blocking_reads_after_a_half_close_never_fail_ebpf`); what these tests check —
//! routing following the controller — does not depend on sk_msg.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;
use weft_e2e::dialer::Dialer;
use weft_e2e::Controller;
use weft_e2e::{python3, wait_until, Mesh, Mode, ModePod, PodProc, ProcSpec, Sidecar};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// The service's VIP and port, and the backends' port (the target port).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_PORT: u16 = 80;
const APP_PORT: u16 = 9000;
/// The controller's HTTP API port.
const API_PORT: u16 = 15014;
/// The bound: an edit reaches new connections within this, counted from the
/// moment the file edit is complete. The only wall-clock requirement tested here; the
/// other deadlines are generous liveness bounds.
const PROPAGATION: Duration = Duration::from_secs(2);
/// The controller's `--poll-interval` (its default, stated).
const POLL: &str = "250ms";
/// Pause between two connections of the background client.
const PACE: Duration = Duration::from_millis(20);
/// Bytes per round trip on a long-lived stream.
const CHUNK: usize = 16 * 1024;
/// In [`block_yaml`], the line of `vip:`.
const VIP_LINE: u64 = 4;

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.into(), VIP_PORT)
}

fn tcpkit() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tools/tcpkit.py")
        .to_string_lossy()
        .into_owned()
}

/// How the mesh file is written.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// The service on one line, so that a read cut short inside it cannot parse.
    Flow,
    /// One field per line (see [`block_yaml`]), so errors have distinct lines.
    Block,
}

/// `backend` with `endpoints` on one line.
fn flow_yaml(endpoints: &[Ipv4Addr]) -> String {
    format!(
        "services:\n  backend: {{ vip: {VIP}, \
         ports: [{{ port: {VIP_PORT}, target_port: {APP_PORT}, protocol: tcp }}], \
         endpoints: [{}] }}\n",
        list(endpoints)
    )
}

/// `backend` in block style; `vip` goes verbatim on line [`VIP_LINE`].
fn block_yaml(vip: &str, endpoints: &[Ipv4Addr]) -> String {
    let yaml = format!(
        "# weft mesh file (discovery_live)\n\
         services:\n  \
           backend:\n    \
             vip: {vip}\n    \
             ports:\n      \
               - {{ port: {VIP_PORT}, target_port: {APP_PORT}, protocol: tcp }}\n    \
             endpoints: [{}]\n",
        list(endpoints)
    );
    assert!(yaml
        .lines()
        .nth(VIP_LINE as usize - 1)
        .unwrap()
        .starts_with("    vip: "));
    yaml
}

fn list(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One short connection to the VIP, made as an app of the client pod: the greeting
/// names the backend that served it, a line sent comes back, and a half-close is
/// answered by a clean EOF.
fn hello_from(dialer: &Dialer) -> Result<String> {
    let stream = dialer.connect(vip(), SECS(5)).context("connect")?;
    let mut reader = BufReader::new(stream);
    let mut name = String::new();
    reader.read_line(&mut name).context("read the greeting")?;
    if !name.ends_with('\n') {
        bail!("no greeting, got {name:?} then EOF");
    }
    reader.get_mut().write_all(b"ping\n").context("send")?;
    let mut echo = String::new();
    reader.read_line(&mut echo).context("read the echo")?;
    if echo != "ping\n" {
        bail!("echo {echo:?} from {}", name.trim_end());
    }
    reader.get_mut().shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).context("read to EOF")?;
    if !rest.is_empty() {
        bail!("{} unexpected bytes before EOF", rest.len());
    }
    Ok(name.trim_end().to_owned())
}

/// [`hello_from`], which must succeed.
fn hello(dialer: &Dialer) -> String {
    hello_from(dialer).unwrap_or_else(|e| {
        panic!(
            "connection to {} from {}: {e:#}",
            vip(),
            dialer.pod().name()
        )
    })
}

/// `n` sequential connections from the dialer's pod: how many each backend served.
fn tally(dialer: &Dialer, n: usize) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for _ in 0..n {
        *served.entry(hello(dialer)).or_default() += 1;
    }
    served
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// One connection of the background client.
#[derive(Debug, Clone)]
struct Conn {
    started: Instant,
    /// The backend that greeted it, or what went wrong.
    served_by: Result<String, String>,
}

/// A client in a pod that keeps making [`hello_from`] connections to the VIP, one
/// at a time, [`PACE`] apart, until stopped; every outcome is kept, in order.
struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Conn>>>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(dialer: &Dialer) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (dialer, stop2, log2) = (dialer.clone(), stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let started = Instant::now();
                let served_by = hello_from(&dialer).map_err(|e| format!("{e:#}"));
                log2.lock().unwrap().push(Conn { started, served_by });
                std::thread::sleep(PACE);
            }
        });
        Traffic {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn log(&self) -> Vec<Conn> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `cond` holds for the log so far.
    fn wait(&self, timeout: Duration, what: &str, cond: impl Fn(&[Conn]) -> bool) {
        let t0 = Instant::now();
        wait_until(timeout, MS(10), || cond(&self.log())).unwrap_or_else(|e| {
            let failed: Vec<_> = self
                .log()
                .into_iter()
                .filter_map(|c| c.served_by.err())
                .collect();
            panic!(
                "{what}: {e}; connections (time from the wait): {}; failures: {failed:?}",
                show(&self.log(), t0)
            )
        });
    }

    /// Waits up to [`PROPAGATION`] for a connection started at or after `edit` that
    /// `name` served.
    fn wait_served_by(&self, name: &str, edit: Instant) {
        wait_until(PROPAGATION, MS(5), || {
            self.log()
                .iter()
                .any(|c| c.started >= edit && c.served_by.as_deref() == Ok(name))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{name} served no new connection within {PROPAGATION:?} of the edit: {e}; \
                 connections (time from the edit): {}",
                show(&self.log(), edit)
            )
        });
    }

    /// Stops the client and returns who served each connection, in order; panics
    /// if any connection failed.
    fn stop(mut self) -> Vec<String> {
        self.halt();
        let log = self.log();
        let failed: Vec<_> = log.iter().filter(|c| c.served_by.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} connections failed: {failed:?}\n{}",
            failed.len(),
            log.len(),
            show(&log, log[0].started)
        );
        log.into_iter().map(|c| c.served_by.unwrap()).collect()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The log for a failure message: who served each connection, and when it started
/// relative to `edit` (e.g. `b2@-40ms b4@+310ms`).
fn show(log: &[Conn], edit: Instant) -> String {
    log.iter()
        .map(|c| {
            let who = c.served_by.as_deref().unwrap_or("FAILED");
            match c.started.checked_duration_since(edit) {
                Some(d) => format!("{who}@+{}ms", d.as_millis()),
                None => format!("{who}@-{}ms", (edit - c.started).as_millis()),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first connection, at or after `from`, that `name` served.
fn first_served_by(log: &[Conn], from: usize, name: &str) -> Option<usize> {
    (from..log.len()).find(|&i| log[i].served_by.as_deref() == Ok(name))
}

/// A long-lived connection to the VIP: the greeting, then round trips of
/// [`CHUNK`] bytes, each checked.
struct Stream {
    reader: BufReader<TcpStream>,
    served_by: String,
    sent: u64,
}

impl Stream {
    fn open(dialer: &Dialer) -> Stream {
        let stream = dialer.connect(vip(), SECS(5)).unwrap();
        let mut reader = BufReader::new(stream);
        let mut name = String::new();
        reader.read_line(&mut name).unwrap();
        assert!(name.ends_with('\n'), "no greeting: {name:?}");
        Stream {
            reader,
            served_by: name.trim_end().to_owned(),
            sent: 0,
        }
    }

    /// `n` round trips: each chunk (a pattern that depends on the offset, so a lost
    /// or repeated chunk shows) must come back intact.
    fn exchange(&mut self, n: usize) {
        for _ in 0..n {
            let chunk: Vec<u8> = (self.sent..self.sent + CHUNK as u64)
                .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
                .collect();
            self.reader.get_mut().write_all(&chunk).unwrap();
            let mut back = vec![0; CHUNK];
            self.reader.read_exact(&mut back).unwrap_or_else(|e| {
                panic!(
                    "stream to {} after {} bytes: {e}",
                    self.served_by, self.sent
                )
            });
            assert!(
                back == chunk,
                "stream to {}: corrupted echo",
                self.served_by
            );
            self.sent += CHUNK as u64;
        }
    }

    /// Half-closes; the server finishes, so the stream ends with a clean EOF and
    /// nothing more. Returns the bytes sent (all of which came back).
    fn finish(mut self) -> u64 {
        self.reader.get_mut().shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes after the last echo", rest.len());
        self.sent
    }
}

/// A mesh with a controller serving `mesh.yaml` from the run dir; backends named
/// `b1`, `b2`, ... each running serve-hello with a sidecar (service `backend`); and
/// a `front` pod with a sidecar (service `frontend`) as the client; every pod in
/// the capture mode `mode`.
struct Live {
    mesh: Mesh,
    mode: Mode,
    file: PathBuf,
    style: Style,
    controller: PodProc,
    /// Connections from the front pod, as its app.
    front: Dialer,
    /// Every pod by name (in eBPF mode each holds its cgroup).
    pods: BTreeMap<String, ModePod>,
    sidecars: BTreeMap<String, Sidecar>,
    servers: Vec<PodProc>,
}

impl Live {
    /// Backend pods `pods`, the mesh file listing `endpoints` (pod names).
    fn start(mode: Mode, pods: &[&str], endpoints: &[&str], style: Style) -> Live {
        let mesh = Mesh::new().unwrap();
        let py = python3().to_string_lossy().into_owned();
        let mut servers = Vec::new();
        let mut all = BTreeMap::new();
        for name in pods {
            let pod = mode.add_pod(&mesh, name).unwrap();
            let argv = [
                py.clone(),
                tcpkit(),
                "serve-hello".into(),
                APP_PORT.to_string(),
                name.to_string(),
            ];
            let server = pod.spawn(ProcSpec::new(argv).name("hello")).unwrap();
            wait_until(SECS(10), MS(20), || server.logs().contains("listening")).unwrap();
            servers.push(server);
            all.insert(name.to_string(), pod);
        }
        let file = mesh.run_dir().join("mesh.yaml");
        let ips: Vec<Ipv4Addr> = endpoints
            .iter()
            .map(|n| mesh.pod(n).unwrap().ipv4())
            .collect();
        let first = match style {
            Style::Flow => flow_yaml(&ips),
            Style::Block => block_yaml(&VIP.to_string(), &ips),
        };
        std::fs::write(&file, first).unwrap();
        let controller = spawn_controller(&mesh, &file);
        let front = mode.add_pod(&mesh, "front").unwrap();
        front.add_route("10.96.0.0/16").unwrap();
        let dialer = front.dialer().unwrap();
        all.insert("front".to_owned(), front);
        let mut live = Live {
            mesh,
            mode,
            file,
            style,
            controller,
            front: dialer,
            pods: all,
            sidecars: BTreeMap::new(),
            servers,
        };
        live.add_sidecar("front", "frontend");
        for name in pods {
            live.add_sidecar(name, "backend");
        }
        live
    }

    /// Adds a client pod `name` (with the VIP route) and returns its dialer; give it
    /// a sidecar with [`Live::add_sidecar`].
    fn add_client(&mut self, name: &str) -> Dialer {
        let pod = self.mode.add_pod(&self.mesh, name).unwrap();
        pod.add_route("10.96.0.0/16").unwrap();
        let dialer = pod.dialer().unwrap();
        self.pods.insert(name.to_owned(), pod);
        dialer
    }

    fn add_sidecar(&mut self, name: &str, service: &str) {
        let url = format!("http://{}:15010", self.mesh.node().ipv4());
        // See the module docs for why not sk_msg.
        let init: &[&str] = match self.mode {
            Mode::Iptables => &[],
            Mode::Ebpf => &["--no-sockmap"],
        };
        let sidecar = self.pods[name]
            .sidecar_with(init, service, &["--controller", &url])
            .unwrap();
        self.sidecars.insert(name.to_owned(), sidecar);
    }

    fn ip(&self, name: &str) -> Ipv4Addr {
        self.mesh.pod(name).unwrap().ipv4()
    }

    fn ips(&self, names: &[&str]) -> Vec<Ipv4Addr> {
        names.iter().map(|n| self.ip(n)).collect()
    }

    /// The mesh file listing `endpoints`, in this mesh's style.
    fn yaml(&self, endpoints: &[&str]) -> String {
        match self.style {
            Style::Flow => flow_yaml(&self.ips(endpoints)),
            Style::Block => block_yaml(&VIP.to_string(), &self.ips(endpoints)),
        }
    }

    /// The way an editor saves: a temporary file beside it, renamed over it.
    fn write_renamed(&self, text: &str) {
        let tmp = self.file.with_file_name(".mesh.yaml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    /// Rewritten in place (truncate, write), as `echo ... > mesh.yaml` does.
    fn write_in_place(&self, text: &str) {
        std::fs::write(&self.file, text).unwrap();
    }

    fn sidecar(&self, pod: &str) -> &Sidecar {
        &self.sidecars[pod]
    }

    fn api(&self, path: &str) -> Value {
        let node = self.mesh.node();
        let (status, body) = node
            .http_get_as_operator(SocketAddr::new(node.ipv4().into(), API_PORT), path)
            .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `/v1/status`.
    fn status(&self) -> Value {
        self.api("/v1/status")
    }

    /// The controller's current version. Start-up makes several (each backend's
    /// sidecar subscribing marks its endpoint meshed), so tests count from here.
    fn version(&self) -> u64 {
        self.status()["version"].as_u64().expect("version")
    }

    /// `/v1/services`.
    fn services(&self) -> Value {
        self.api("/v1/services")
    }

    /// The backend endpoints the controller serves.
    fn served_endpoints(&self) -> Vec<String> {
        self.services()["services"]["backend"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect()
    }

    fn endpoint_strings(&self, names: &[&str]) -> Vec<String> {
        self.ips(names).iter().map(|ip| ip.to_string()).collect()
    }

    /// Connections `pod`'s sidecar accepted inbound (each backend's own count).
    fn inbound(&self, pod: &str) -> usize {
        let opened = "weft_tcp_connections_opened_total";
        self.sidecar(pod)
            .metric(opened, &[("direction", "inbound")])
            .unwrap() as usize
    }

    /// Connections the frontend's sidecar opened to the service.
    fn outbound_to_backend(&self) -> usize {
        let labels = [
            ("direction", "outbound"),
            ("destination_service", "backend"),
        ];
        self.sidecar("front")
            .metric("weft_tcp_connections_opened_total", &labels)
            .unwrap() as usize
    }

    /// Every proxy is the process started at the beginning (never exited, so the
    /// same pid) and counted no error; every backend server still runs, error-free.
    fn assert_proxies_untouched(&self) {
        for (pod, sidecar) in &self.sidecars {
            let proxy = sidecar.proxy();
            assert!(
                proxy.try_wait().is_none(),
                "the proxy in {pod} (pid {}) exited: {:?}\n{}",
                proxy.pid(),
                proxy.try_wait(),
                proxy.logs()
            );
            let errors = sidecar.metric("weft_proxy_errors_total", &[]).unwrap();
            assert_eq!(
                errors,
                0.0,
                "proxy errors in {pod}:\n{}",
                sidecar.metrics().unwrap()
            );
        }
        for server in &self.servers {
            assert!(server.try_wait().is_none(), "a backend server exited");
            assert!(!server.logs().contains("error"), "{}", server.logs());
        }
    }

    /// The frontend's record of the long-lived connection to `backend` that carried
    /// `sent` bytes, once closed.
    fn closed_stream(&self, backend: &str, sent: u64) -> Value {
        let endpoint = SocketAddr::new(self.ip(backend).into(), APP_PORT).to_string();
        let mut found = None;
        wait_until(SECS(10), MS(20), || {
            found = self
                .sidecar("front")
                .connections()
                .unwrap()
                .into_iter()
                .find(|c| c["endpoint"] == endpoint.as_str() && c["bytes_from_client"] == sent);
            found.as_ref().is_some_and(|c| c["state"] == "closed")
        })
        .unwrap_or_else(|e| panic!("stream to {endpoint} not closed: {e}: {found:?}"));
        found.unwrap()
    }
}

/// Starts weft-controller in the node namespace on `file` and waits until its API
/// answers.
fn spawn_controller(mesh: &Mesh, file: &std::path::Path) -> PodProc {
    Controller::start(mesh, file, &["--poll-interval", POLL])
        .unwrap()
        .proc()
        .clone()
}

/// Criterion 2, saved the way an editor saves (temporary file renamed over the mesh
/// file), while a client keeps connecting to the VIP: endpoint b1 is replaced by b4
/// in one edit. b4 serves new connections within 2 s of the rename; from the first
/// connection b4 served on (the proxy's table is swapped whole, so the edit is
/// applied from there) b1 gets none, while a stream opened on b1 before the edit
/// keeps flowing after it and ends with every byte echoed and a clean EOF. No
/// connection fails, no proxy restarts or counts an error, every backend saw exactly
/// the connections the client says it served, and the controller never saw a bad
/// file.
#[test]
fn editor_save_replaces_an_endpoint_while_traffic_runs_iptables() {
    editor_save_replaces_an_endpoint_while_traffic_runs(Mode::Iptables);
}

#[test]
fn editor_save_replaces_an_endpoint_while_traffic_runs_ebpf() {
    editor_save_replaces_an_endpoint_while_traffic_runs(Mode::Ebpf);
}

fn editor_save_replaces_an_endpoint_while_traffic_runs(mode: Mode) {
    let live = Live::start(
        mode,
        &["b1", "b2", "b3", "b4"],
        &["b1", "b2", "b3"],
        Style::Flow,
    );
    let started = live.version();
    // The first connection through a fresh proxy takes the first endpoint.
    let mut stream = Stream::open(&live.front);
    assert_eq!(stream.served_by, "b1");
    stream.exchange(8);

    let traffic = Traffic::start(&live.front);
    traffic.wait(SECS(10), "warm-up", |log| log.len() >= 6);
    live.write_renamed(&live.yaml(&["b2", "b3", "b4"]));
    let edited = Instant::now();
    traffic.wait_served_by("b4", edited);
    // Keep the traffic going well past the change.
    traffic.wait(SECS(10), "traffic after the edit", |log| {
        first_served_by(log, 0, "b4").is_some_and(|i| log.len() >= i + 12)
    });
    // The stream on b1 outlives b1's removal.
    stream.exchange(8);
    let log = traffic.stop();
    let sent = stream.finish();
    assert_eq!(sent, 16 * CHUNK as u64);

    let served: Vec<&str> = log.iter().map(String::as_str).collect();
    let applied = served.iter().position(|s| *s == "b4").unwrap();
    let before: BTreeSet<String> = served[..applied].iter().map(|s| s.to_string()).collect();
    let after: BTreeSet<String> = served[applied..].iter().map(|s| s.to_string()).collect();
    assert_eq!(before, set(&["b1", "b2", "b3"]), "{served:?}");
    assert_eq!(
        after,
        set(&["b2", "b3", "b4"]),
        "b1 served after the edit applied: {served:?}"
    );

    // Each backend's own sidecar saw exactly the connections it served.
    for name in ["b1", "b2", "b3", "b4"] {
        let stream = usize::from(name == "b1");
        let n = served.iter().filter(|s| **s == name).count();
        assert_eq!(live.inbound(name), n + stream, "{name}: {served:?}");
    }
    assert_eq!(live.outbound_to_backend(), served.len() + 1);
    let record = live.closed_stream("b1", sent);
    assert_eq!(record["end"], "eof", "{record}");
    assert_eq!(
        record["bytes_to_client"],
        sent + "b1\n".len() as u64,
        "{record}"
    );

    live.assert_proxies_untouched();
    assert_eq!(
        live.served_endpoints(),
        live.endpoint_strings(&["b2", "b3", "b4"])
    );
    let status = live.status();
    assert_eq!(status["version"], started + 1, "one edit: {status}");
    assert_eq!(status["reload_errors_total"], 0, "{status}");
    assert!(status["current_error"].is_null(), "{status}");
}

/// Criterion 2, the file rewritten in place (truncated and written again, as a
/// shell redirect does) while a client keeps connecting: adding b3 to [b1, b2] makes
/// it serve new connections within 2 s; then removing b1: once the proxy routes by
/// the new list (three connections in a row without b1, impossible under round robin
/// over the old three), b1 gets no new connection, while a stream opened on b1 before
/// both edits keeps flowing and ends with every byte echoed. No connection fails, no
/// proxy restarts or counts an error.
#[test]
fn in_place_rewrites_add_then_remove_endpoints_while_traffic_runs_iptables() {
    in_place_rewrites_add_then_remove_endpoints_while_traffic_runs(Mode::Iptables);
}

#[test]
fn in_place_rewrites_add_then_remove_endpoints_while_traffic_runs_ebpf() {
    in_place_rewrites_add_then_remove_endpoints_while_traffic_runs(Mode::Ebpf);
}

fn in_place_rewrites_add_then_remove_endpoints_while_traffic_runs(mode: Mode) {
    let live = Live::start(mode, &["b1", "b2", "b3"], &["b1", "b2"], Style::Flow);
    let started = live.version();
    let mut stream = Stream::open(&live.front);
    assert_eq!(stream.served_by, "b1");
    stream.exchange(4);

    let traffic = Traffic::start(&live.front);
    traffic.wait(SECS(10), "warm-up", |log| log.len() >= 4);
    live.write_in_place(&live.yaml(&["b1", "b2", "b3"]));
    let added = Instant::now();
    traffic.wait_served_by("b3", added);
    traffic.wait(SECS(10), "traffic after the addition", |log| {
        first_served_by(log, 0, "b3").is_some_and(|i| log.len() >= i + 6)
    });
    stream.exchange(4);

    let removal_from = traffic.log().len();
    live.write_in_place(&live.yaml(&["b2", "b3"]));
    let removed = Instant::now();
    // Applied: three connections in a row, all made after the rewrite, none to b1.
    let run_end = |log: &[Conn]| {
        let not_b1 = |c: &Conn| c.served_by.as_deref() != Ok("b1");
        (removal_from..log.len().saturating_sub(2))
            .find(|&i| log[i].started >= removed && log[i..i + 3].iter().all(not_b1))
            .map(|i| i + 3)
    };
    traffic.wait(SECS(10), "the removal of b1 applied", |log| {
        run_end(log).is_some()
    });
    traffic.wait(SECS(10), "traffic after the removal", |log| {
        run_end(log).is_some_and(|end| log.len() >= end + 8)
    });
    stream.exchange(4);
    let end = run_end(&traffic.log()).unwrap();
    let log = traffic.stop();
    let sent = stream.finish();
    assert_eq!(sent, 12 * CHUNK as u64);

    let served: Vec<&str> = log.iter().map(String::as_str).collect();
    let first_b3 = served.iter().position(|s| *s == "b3").unwrap();
    let names = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(names(&served[..first_b3]), set(&["b1", "b2"]), "{served:?}");
    assert_eq!(
        names(&served[first_b3..removal_from]),
        set(&["b1", "b2", "b3"]),
        "{served:?}"
    );
    assert_eq!(
        names(&served[end..]),
        set(&["b2", "b3"]),
        "b1 served after its removal: {served:?}"
    );
    // After the removal, round robin over the two left, exactly.
    let tail = &served[end..end + 8];
    assert_eq!(tail.iter().filter(|s| **s == "b2").count(), 4, "{tail:?}");

    for name in ["b1", "b2", "b3"] {
        let stream = usize::from(name == "b1");
        let n = served.iter().filter(|s| **s == name).count();
        assert_eq!(live.inbound(name), n + stream, "{name}: {served:?}");
    }
    let record = live.closed_stream("b1", sent);
    assert_eq!(record["end"], "eof", "{record}");

    live.assert_proxies_untouched();
    assert_eq!(
        live.served_endpoints(),
        live.endpoint_strings(&["b2", "b3"])
    );
    let status = live.status();
    assert_eq!(status["version"], started + 2, "two edits: {status}");
    assert!(status["current_error"].is_null(), "{status}");
}

/// Waits until the controller reports `origin:line[:column]: ...` as its current
/// error, on `/v1/status` and in its log; returns that error.
fn wait_current_error(live: &Live, line: u64, column: Option<u64>, needle: &str) -> Value {
    let mut status = Value::Null;
    wait_until(SECS(10), MS(20), || {
        status = live.status();
        status["current_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(needle))
    })
    .unwrap_or_else(|e| panic!("no error containing {needle:?} on /v1/status: {e}: {status}"));
    let err = status["current_error"].clone();
    assert_eq!(err["line"], line, "{err}");
    assert_eq!(
        err["column"],
        column.map_or(Value::Null, Value::from),
        "{err}"
    );
    let at = match column {
        Some(c) => format!("{}:{line}:{c}: ", live.file.display()),
        None => format!("{}:{line}: ", live.file.display()),
    };
    let display = err["display"].as_str().unwrap();
    assert!(
        display.starts_with(&at) && display.contains(needle),
        "{err}"
    );
    wait_until(SECS(5), MS(20), || live.controller.logs().contains(display))
        .unwrap_or_else(|e| panic!("{e}: the controller did not log {display:?}"));
    err
}

/// Criterion 3: a mesh file with a YAML syntax error (a stray `:` on the `vip:`
/// line), then one that parses but has an unusable VIP (0.0.0.0); both also move the
/// service to endpoint b3. Each time, the controller's `/v1/status` and its log name
/// the file and the offending line, `/v1/services` stays exactly as it was, the
/// client's connections keep alternating strictly between b1 and b2 (the proxy got
/// nothing: not even its round-robin position moved), and a proxy that subscribes
/// while the file is bad gets the last good configuration. Then a good file (b2, b3)
/// applies: b3 serves new connections within 2 s and b1 none after that. Neither
/// the controller nor any proxy restarts; no connection fails.
#[test]
fn malformed_mesh_files_are_reported_by_line_and_change_nothing_iptables() {
    malformed_mesh_files_are_reported_by_line_and_change_nothing(Mode::Iptables);
}

#[test]
fn malformed_mesh_files_are_reported_by_line_and_change_nothing_ebpf() {
    malformed_mesh_files_are_reported_by_line_and_change_nothing(Mode::Ebpf);
}

fn malformed_mesh_files_are_reported_by_line_and_change_nothing(mode: Mode) {
    let mut live = Live::start(mode, &["b1", "b2", "b3"], &["b1", "b2"], Style::Block);
    let good = live.services();
    let started = live.version();
    assert_eq!(good["version"], started, "{good}");
    let traffic = Traffic::start(&live.front);
    traffic.wait(SECS(10), "warm-up", |log| log.len() >= 4);
    let b3 = live.ips(&["b3"]);

    // A syntax error.
    live.write_renamed(&block_yaml(&format!("{VIP}: x"), &b3));
    let syntax = wait_current_error(&live, VIP_LINE, Some(20), "mapping values are not allowed");
    assert_eq!(served_part(&live.services()), served_part(&good));
    // A proxy that subscribes now gets the last good configuration.
    let late = live.add_client("late");
    live.add_sidecar("late", "frontend");
    assert_eq!(tally(&late, 4), counts(&[("b1", 2), ("b2", 2)]));

    // A bad VIP: valid YAML, invalid mesh.
    live.write_renamed(&block_yaml("0.0.0.0", &b3));
    let semantic = wait_current_error(
        &live,
        VIP_LINE,
        None,
        "vip 0.0.0.0 is not a usable unicast address",
    );
    assert_ne!(syntax["display"], semantic["display"]);
    assert_eq!(served_part(&live.services()), served_part(&good));
    assert_eq!(live.status()["reload_errors_total"], 2);
    traffic.wait(SECS(10), "traffic on the bad files", |log| log.len() >= 16);
    assert_eq!(tally(&late, 4), counts(&[("b1", 2), ("b2", 2)]));
    live.assert_proxies_untouched();

    // The fix.
    let fixed_from = traffic.log().len();
    live.write_renamed(&live.yaml(&["b2", "b3"]));
    let fixed = Instant::now();
    traffic.wait_served_by("b3", fixed);
    traffic.wait(SECS(10), "traffic after the fix", |log| {
        first_served_by(log, 0, "b3").is_some_and(|i| log.len() >= i + 8)
    });
    let log = traffic.stop();

    let served: Vec<&str> = log.iter().map(String::as_str).collect();
    // Until the fix was written, strict alternation between the old endpoints.
    let bad = &served[..fixed_from];
    assert!(
        bad.windows(2).all(|w| w[0] != w[1]) && bad.iter().all(|s| ["b1", "b2"].contains(s)),
        "{bad:?}"
    );
    let applied = served.iter().position(|s| *s == "b3").unwrap();
    assert!(
        served[fixed_from..applied]
            .iter()
            .all(|s| ["b1", "b2"].contains(s)),
        "{served:?}"
    );
    let after: BTreeSet<String> = served[applied..].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        after,
        set(&["b2", "b3"]),
        "b1 served after the fix applied: {served:?}"
    );
    // b3 got nothing but what the client saw after the fix (none from `late`).
    assert_eq!(
        live.inbound("b3"),
        served.iter().filter(|s| **s == "b3").count()
    );
    assert_eq!(
        live.inbound("b1"),
        served.iter().filter(|s| **s == "b1").count() + 4
    );

    live.assert_proxies_untouched();
    assert!(
        live.controller.try_wait().is_none(),
        "the controller exited"
    );
    assert_eq!(
        live.served_endpoints(),
        live.endpoint_strings(&["b2", "b3"])
    );
    let status = live.status();
    assert_eq!(status["version"], started + 1, "{status}");
    assert!(status["current_error"].is_null(), "{status}");
    assert_eq!(
        status["last_error"]["display"], semantic["display"],
        "{status}"
    );
    assert_eq!(status["reload_errors_total"], 2, "{status}");
    assert_eq!(status["subscribers"], live.sidecars.len(), "{status}");
}

/// Criterion 4: the controller is SIGKILLed; the proxies notice (they log that they
/// keep the last known routes, and retry with backoff) and keep routing with them:
/// every new connection succeeds, balanced exactly round robin over b1, b2, b3
/// (30 connections, 10 each). The controller is then
/// restarted on a changed file (b1 removed, b4 added): once the proxies have
/// resubscribed, new connections go to b2, b3 and b4, exactly round robin, none to
/// b1 — and every proxy is still the process started at the beginning.
#[test]
fn proxies_route_through_a_controller_kill_and_follow_its_restart_iptables() {
    proxies_route_through_a_controller_kill_and_follow_its_restart(Mode::Iptables);
}

#[test]
fn proxies_route_through_a_controller_kill_and_follow_its_restart_ebpf() {
    proxies_route_through_a_controller_kill_and_follow_its_restart(Mode::Ebpf);
}

fn proxies_route_through_a_controller_kill_and_follow_its_restart(mode: Mode) {
    let mut live = Live::start(
        mode,
        &["b1", "b2", "b3", "b4"],
        &["b1", "b2", "b3"],
        Style::Flow,
    );
    let all = live.sidecars.len();
    // A subscriber counts once its Ack of the snapshot is in, which may come just
    // after its sidecar turned ready (it applied the snapshot first).
    wait_until(SECS(5), MS(20), || live.status()["subscribers"] == all)
        .unwrap_or_else(|e| panic!("not every proxy subscribed: {e}: {}", live.status()));
    assert_eq!(
        tally(&live.front, 6),
        counts(&[("b1", 2), ("b2", 2), ("b3", 2)])
    );

    live.controller.signal(Signal::SIGKILL).unwrap();
    let exit = live
        .controller
        .wait_timeout(SECS(5))
        .expect("the controller survived SIGKILL");
    assert_eq!(exit.signal(), Some(Signal::SIGKILL as i32), "{exit:?}");
    // Every proxy notices; the frontend's has retried (and failed) three times.
    for (pod, sidecar) in &live.sidecars {
        let retries = if pod == "front" { 3 } else { 1 };
        wait_until(SECS(10), MS(20), || {
            let logs = sidecar.proxy().logs();
            logs.matches("keeping the last known routes").count() >= retries
        })
        .unwrap_or_else(|e| panic!("{pod}'s proxy never noticed the controller was gone: {e}"));
    }
    assert_eq!(
        tally(&live.front, 30),
        counts(&[("b1", 10), ("b2", 10), ("b3", 10)])
    );
    live.assert_proxies_untouched();

    live.write_renamed(&live.yaml(&["b2", "b3", "b4"]));
    live.controller = spawn_controller(&live.mesh, &live.file);
    // Reconnecting may wait out the proxies' backoff (at most 5 s).
    wait_until(SECS(15), MS(50), || live.status()["subscribers"] == all)
        .unwrap_or_else(|e| panic!("the proxies did not resubscribe: {e}: {}", live.status()));
    let mut until_b4 = Vec::new();
    wait_until(SECS(5), MS(50), || {
        until_b4.push(hello(&live.front));
        until_b4.last().unwrap() == "b4"
    })
    .unwrap_or_else(|e| panic!("b4 never served after the restart: {e}: {until_b4:?}"));

    // (Subscribed is not yet applied: the first few may still follow the old list.)
    let (b4, old) = until_b4.split_last().unwrap();
    assert_eq!(b4, "b4");
    assert!(
        old.iter().all(|s| ["b1", "b2", "b3"].contains(&s.as_str())),
        "{until_b4:?}"
    );
    assert_eq!(
        tally(&live.front, 9),
        counts(&[("b2", 3), ("b3", 3), ("b4", 3)])
    );

    live.assert_proxies_untouched();
    // b1 saw no connection once the new list applied; b4 none before it.
    let old_b1 = old.iter().filter(|s| *s == "b1").count();
    assert_eq!(live.inbound("b1"), 2 + 10 + old_b1);
    assert_eq!(live.inbound("b4"), 1 + 3);
    assert_eq!(live.outbound_to_backend(), 6 + 30 + until_b4.len() + 9);
}

/// What a configuration decides in `/v1/services`: the version, the served services
/// and the known endpoints, without the health checks' running counters (meshed
/// endpoints are checked through their sidecars whatever the file says).
fn served_part(services: &Value) -> Value {
    let mut v = services.clone();
    if let Some(by_service) = v["endpoints"].as_object_mut() {
        for endpoints in by_service.values_mut() {
            for e in endpoints.as_array_mut().into_iter().flatten() {
                if let Some(e) = e.as_object_mut() {
                    e.remove("check");
                }
            }
        }
    }
    v
}
