//! `weftctl up -f FILE`: the local mesh in the foreground.
//!
//! A node namespace with a bridge (the harness's [`Mesh`]), the controller in it,
//! and per workload replica a pod: weft-init, weft-proxy as uid 1337 and the
//! workload's command, which sees an `/etc/hosts` naming every service. The
//! endpoints of workload-backed services are the pods' addresses. The user's file
//! is watched: service changes reach the controller (and so the proxies) at once;
//! a file that does not parse is reported with its line and the last good one
//! stays. Ctrl-C, SIGTERM or SIGHUP tear everything down.
//!
//! `--mode ebpf`: each pod is also a cgroup v2 (`<cgroup2 root>/<prefix>-<pod>`,
//! named in the state file before it is created); weft-init runs with `--mode ebpf
//! --cgroup` and the proxy and the workload (and `weftctl exec`) run inside it.
//! Teardown removes the cgroups with their eBPF pins after the namespaces; a cgroup
//! that cannot be removed keeps the state file, so `weftctl down` can try again.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use weft_controller::model::Mesh as MeshFile;
use weft_localmesh::cgroup::PodCgroup;
use weft_localmesh::controller::{GRPC_PORT, HTTP_PORT};
use weft_localmesh::{Controller, Mesh, Pod, PodProc, ProcSpec, Sidecar};

use crate::render::{self, PodAddrs, PodPlan};
use crate::state::{self, MeshState, PodState};
use crate::table;
use weft_runtime::signals;

/// How often the loop checks the file, the processes and the signals.
const TICK: Duration = Duration::from_millis(200);
/// The sidecars' admin address in the local mesh (see [`LocalMesh::bring_up`]).
const ADMIN_LISTEN: &str = "0.0.0.0:15000";
/// How long a workload gets to listen on its service's target ports.
const WORKLOAD_LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// How the local mesh's pods capture traffic (`weftctl up --mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureMode {
    /// iptables REDIRECT in each pod's network namespace.
    Iptables,
    /// eBPF programs on each pod's cgroup v2 for outbound, iptables for inbound.
    Ebpf,
}

impl CaptureMode {
    fn name(self) -> &'static str {
        match self {
            CaptureMode::Iptables => "iptables",
            CaptureMode::Ebpf => "ebpf",
        }
    }
}

/// What `up` was asked to do.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub mode: CaptureMode,
}

/// Runs the mesh until a signal, then tears it down. Fails (having torn down what
/// it made) if the mesh cannot be brought up.
pub fn run(opts: &UpOptions) -> Result<()> {
    require_root()?;
    signals::install()?;
    clear_previous(&opts.state_dir)?;
    let user = weft_controller::meshfile::load(&opts.file).map_err(anyhow::Error::new)?;
    let plans = render::plan_pods(&user)?;
    let mut local = LocalMesh::create(opts)?;
    let brought_up = local.bring_up(&user, &plans);
    if let Err(e) = brought_up {
        eprintln!("weftctl: bringing the mesh up failed; tearing down");
        eprint!("{}", local.mesh.logs_report());
        local.tear_down();
        return Err(e);
    }
    local.print_ready(&user);
    local.watch(user);
    local.tear_down();
    Ok(())
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "weftctl up needs root (network namespaces, iptables or eBPF, cgroups, setuid): \
             run it with sudo"
        );
    }
    Ok(())
}

/// A crashed `up` leaves a state file and perhaps namespaces: clean those first;
/// a live one is an error.
fn clear_previous(dir: &Path) -> Result<()> {
    if let Some(prev) = state::load(dir)? {
        if state::is_running(prev.pid) {
            bail!(
                "a local mesh is already running (weftctl pid {}, prefix {}); stop it with \
                 Ctrl-C or `weftctl down`",
                prev.pid,
                prev.prefix
            );
        }
        eprintln!(
            "weftctl: cleaning up after a local mesh that did not shut down ({})",
            prev.prefix
        );
        crate::down::clean_up(dir, &prev)?;
    }
    Ok(())
}

/// The running local mesh and what `up` keeps track of. `mesh` is declared (and so
/// dropped) before `cgroups`: processes stop and namespaces go first.
struct LocalMesh {
    mesh: Mesh,
    /// eBPF mode: the pods' cgroups (removed with their pins when dropped).
    cgroups: Vec<PodCgroup>,
    mode: CaptureMode,
    state_dir: PathBuf,
    state: MeshState,
    /// The user's file and how it looked when last read.
    file: PathBuf,
    file_stamp: Option<FileStamp>,
    controller_file: PathBuf,
    pods: Vec<Pod>,
    /// Processes whose unexpected exit is reported (once).
    watched: Vec<(String, PodProc)>,
    reported_exits: BTreeSet<u32>,
    routed_vips: BTreeSet<IpAddr>,
}

impl LocalMesh {
    /// The node namespace and the state file naming it.
    fn create(opts: &UpOptions) -> Result<LocalMesh> {
        let mesh = Mesh::new()?;
        let node = mesh.node().clone();
        let run_dir = mesh.run_dir().to_path_buf();
        let file = std::path::absolute(&opts.file).unwrap_or_else(|_| opts.file.clone());
        let state = MeshState {
            pid: std::process::id(),
            prefix: mesh.prefix().to_owned(),
            file: file.clone(),
            run_dir: run_dir.clone(),
            netns: mesh.netns_names(),
            node_netns: node.netns_name().to_owned(),
            controller_http: SocketAddr::new(node.ipv4().into(), HTTP_PORT),
            pods: Vec::new(),
            hosts_file: run_dir.join("hosts"),
            mode: opts.mode.name().to_owned(),
        };
        let local = LocalMesh {
            cgroups: Vec::new(),
            mode: opts.mode,
            state_dir: opts.state_dir.clone(),
            controller_file: run_dir.join("controller-mesh.yaml"),
            file_stamp: FileStamp::of(&file),
            file,
            mesh,
            state,
            pods: Vec::new(),
            watched: Vec::new(),
            reported_exits: BTreeSet::new(),
            routed_vips: BTreeSet::new(),
        };
        state::save(&local.state_dir, &local.state)?;
        Ok(local)
    }

    fn bring_up(&mut self, user: &MeshFile, plans: &[PodPlan]) -> Result<()> {
        // Namespaces first: the controller's file needs every pod's address.
        for plan in plans {
            let pod = self.mesh.add_pod(&plan.name)?;
            self.state.pods.push(PodState {
                addrs: PodAddrs {
                    name: plan.name.clone(),
                    workload: plan.workload.clone(),
                    service: plan.service.clone(),
                    ipv4: pod.ipv4(),
                    ipv6: pod.ipv6(),
                },
                netns: pod.netns_name().to_owned(),
                cgroup: None,
            });
            self.state.netns = self.mesh.netns_names();
            state::save(&self.state_dir, &self.state)?;
            self.pods.push(pod.clone());
            if self.mode == CaptureMode::Ebpf {
                // Named in the state file before it exists.
                let path = PodCgroup::path_for(&self.mesh, &pod)?;
                if let Some(p) = self.state.pods.last_mut() {
                    p.cgroup = Some(path);
                }
                state::save(&self.state_dir, &self.state)?;
                let cgroup = PodCgroup::create(&self.mesh, &pod)
                    .with_context(|| format!("pod {}: cgroup", plan.name))?;
                self.cgroups.push(cgroup);
            }
        }
        self.write_config(user)?;
        self.start_controller()?;
        let url = format!("http://{}:{GRPC_PORT}", self.mesh.node().ipv4());
        for (pod, plan) in self.pods.clone().iter().zip(plans) {
            // Admin on the pod's addresses too, not only its loopback: the
            // controller, in the node, reads each sidecar's /connections for the
            // mesh page (ARCHITECTURE.md, The mesh page). The proxy's ports stay
            // out of capture, so this reaches the proxy itself.
            let proxy_args = ["--controller", url.as_str(), "--admin-listen", ADMIN_LISTEN];
            let sidecar = match self.cgroup_of(pod) {
                None => Sidecar::start_with(pod, &[], &plan.service, &proxy_args),
                Some(cg) => Sidecar::start_ebpf_with(pod, cg, &[], &plan.service, &proxy_args),
            }
            .with_context(|| format!("pod {}: sidecar ({} mode)", plan.name, self.mode.name()))?;
            self.watched
                .push((format!("{}/weft-proxy", plan.name), sidecar.proxy().clone()));
            let app = self.start_workload(pod, plan)?;
            self.watched.push((format!("{}/app", plan.name), app));
        }
        for (pod, plan) in self.pods.iter().zip(plans) {
            wait_for_workload(user, pod, plan);
        }
        Ok(())
    }

    /// The pod's cgroup (eBPF mode).
    fn cgroup_of(&self, pod: &Pod) -> Option<&Path> {
        self.state
            .pods
            .iter()
            .find(|p| p.netns == pod.netns_name())
            .and_then(|p| p.cgroup.as_deref())
    }

    fn pod_addrs(&self) -> Vec<PodAddrs> {
        self.state.pods.iter().map(|p| p.addrs.clone()).collect()
    }

    /// Writes the controller's mesh file (atomically: the controller follows a
    /// rename-over), the hosts file (in place: it is bind-mounted into running
    /// pods, and a rename would leave them the old inode) and routes new VIPs.
    fn write_config(&mut self, user: &MeshFile) -> Result<()> {
        let pods = self.pod_addrs();
        let source = self.file.display().to_string();
        let yaml = render::controller_mesh_yaml(user, &pods, &source)?;
        write_atomically(&self.controller_file, yaml.as_bytes())?;
        let hosts = render::hosts_file(user, &pods, self.mesh.prefix());
        std::fs::write(&self.state.hosts_file, hosts)
            .with_context(|| format!("write {}", self.state.hosts_file.display()))?;
        for service in user.services.values() {
            if self.routed_vips.insert(service.vip) {
                let route = render::vip_route(service.vip);
                for pod in &self.pods {
                    pod.add_route(&route)?;
                }
            }
        }
        Ok(())
    }

    /// The controller in the node namespace, listening on the node's address only
    /// (the pods reach it over the bridge; nothing else needs to). Its registration
    /// store lives in the run directory, so endpoints can be registered in the local
    /// mesh and go with it — and `--state-dir` is explicit, so the controller never
    /// reads weftctl's own `WEFT_STATE_DIR` from the environment it inherits.
    fn start_controller(&mut self) -> Result<()> {
        let node_ip = self.mesh.node().ipv4();
        let grpc = SocketAddr::new(node_ip.into(), GRPC_PORT).to_string();
        let http = self.state.controller_http.to_string();
        let registry = self.state.run_dir.join("controller-state");
        let registry = registry.to_string_lossy();
        let file = self.controller_file.clone();
        let controller = Controller::start(
            &self.mesh,
            &file,
            &[
                "--grpc-listen",
                &grpc,
                "--http-listen",
                &http,
                "--state-dir",
                &registry,
                // The page shows the demo's traffic from the start, whenever it is
                // opened.
                "--ui-always-gather",
            ],
        )?;
        self.watched
            .push(("node/weft-controller".into(), controller.proc().clone()));
        Ok(())
    }

    /// The workload's command under `sh -c`, as root like a container's default
    /// user (so its traffic is captured), in a directory of its own, with the
    /// mesh's hosts file and `WEFT_POD`, `WEFT_SERVICE`, `WEFT_POD_IP` set.
    fn start_workload(&self, pod: &Pod, plan: &PodPlan) -> Result<PodProc> {
        let dir = self.state.run_dir.join("pods").join(&plan.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut spec = ProcSpec::new(["/bin/sh", "-c", &plan.command])
            .name("app")
            .cwd(dir)
            .hosts_file(&self.state.hosts_file)
            .env("WEFT_POD", &plan.name)
            .env("WEFT_SERVICE", &plan.service)
            .env("WEFT_POD_IP", pod.ipv4().to_string());
        if let Some(cg) = self.cgroup_of(pod) {
            spec = spec.cgroup(cg);
        }
        pod.spawn(spec)
            .with_context(|| format!("pod {}: start `{}`", plan.name, plan.command))
    }

    fn print_ready(&self, user: &MeshFile) {
        let pods: Vec<Vec<String>> = self
            .state
            .pods
            .iter()
            .map(|p| {
                vec![
                    p.addrs.name.clone(),
                    p.addrs.service.clone(),
                    p.addrs.ipv4.to_string(),
                    p.addrs.ipv6.to_string(),
                ]
            })
            .collect();
        let served = render::controller_mesh(user, &self.pod_addrs());
        let services: Vec<Vec<String>> = served
            .services
            .iter()
            .map(|(name, s)| crate::inspect::service_row(name.as_str(), s))
            .collect();
        let example = example_command(&self.state.pods, &served);
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "weft local mesh {} is up ({} mode): {} pods, {} services (file {}; logs in {})\n\n{}\n{}\n\
             Try:\n{example}  weftctl status\n  weftctl conns POD\n  weftctl dashboard\n\
             The controller's API wants a token: the operator's is in {}\n\
             {}\
             Edits to the file apply at once. Ctrl-C tears the mesh down.\n\
             weft: mesh ready\n",
            self.mesh.prefix(),
            self.mode.name(),
            self.state.pods.len(),
            served.services.len(),
            self.file.display(),
            self.state.run_dir.display(),
            table::render(&["POD", "SERVICE", "IPV4", "IPV6"], &pods),
            table::render(&["SERVICE", "VIP", "PORTS", "ENDPOINTS"], &services),
            weft_localmesh::credentials::operator_token_file(&self.state.run_dir).display(),
            crate::dashboard::describe(&self.state),
        );
        let _ = out.flush();
    }

    /// Until a signal: follow the user's file, report processes that exit.
    fn watch(&mut self, mut user: MeshFile) {
        while !signals::stop_requested() {
            std::thread::sleep(TICK);
            let stamp = FileStamp::of(&self.file);
            if stamp != self.file_stamp {
                self.file_stamp = stamp;
                if let Some(next) = self.reload(&user) {
                    user = next;
                }
            }
            self.report_exits();
        }
        println!("weftctl: signal received; tearing down the mesh");
    }

    /// Reads the changed file; applies it and returns it if it is good, else
    /// reports why and keeps serving the last good one.
    fn reload(&mut self, current: &MeshFile) -> Option<MeshFile> {
        let next = match weft_controller::meshfile::load(&self.file) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("weftctl: {e}\nweftctl: keeping the last good configuration");
                self.pass_bad_edit();
                return None;
            }
        };
        if next.workloads != current.workloads {
            eprintln!(
                "weftctl: workload changes (replicas, commands) apply at the next `weftctl up`; \
                 applying the service changes now"
            );
        }
        // Workloads stay as they run, so the pods keep backing their services.
        let mut applied = next;
        applied.workloads = current.workloads.clone();
        if let Err(e) = validate(&applied) {
            eprintln!("weftctl: {e:#}\nweftctl: keeping the last good configuration");
            return None;
        }
        match self.write_config(&applied) {
            Ok(()) => {
                println!(
                    "weftctl: {} changed; configuration applied",
                    self.file.display()
                );
                Some(applied)
            }
            Err(e) => {
                eprintln!("weftctl: applying {}: {e:#}", self.file.display());
                None
            }
        }
    }

    /// Hands a file that does not parse to the controller as it is: the
    /// controller's parser (the same as weftctl's) refuses it with the same line,
    /// keeps serving the last good mesh, and lists the edit on its mesh page.
    /// Lines match the user's file because the file is copied verbatim; the next
    /// good edit is rendered over it as usual.
    fn pass_bad_edit(&self) {
        let copied = std::fs::read(&self.file)
            .with_context(|| format!("read {}", self.file.display()))
            .and_then(|bytes| write_atomically(&self.controller_file, &bytes));
        if let Err(e) = copied {
            eprintln!("weftctl: showing the bad edit to the controller: {e:#}");
        }
    }

    fn report_exits(&mut self) {
        for (label, proc) in &self.watched {
            if let Some(status) = proc.try_wait() {
                if self.reported_exits.insert(proc.pid()) {
                    eprintln!(
                        "weftctl: {label} exited ({status}); its log: {}",
                        proc.log_path().display()
                    );
                }
            }
        }
    }

    /// Stops every process, deletes every namespace and the run directory, removes
    /// the pods' cgroups with their eBPF pins (eBPF mode), then the state file — kept
    /// if a cgroup could not be removed, so that `weftctl down` can try again.
    fn tear_down(self) {
        let LocalMesh {
            mesh,
            cgroups,
            state_dir,
            ..
        } = self;
        drop(mesh);
        let mut left = Vec::new();
        for cgroup in cgroups {
            let path = cgroup.path().to_path_buf();
            if let Err(e) = cgroup.close() {
                eprintln!("weftctl: {e:#}");
                left.push(path.display().to_string());
            }
        }
        if !left.is_empty() {
            eprintln!(
                "weftctl: could not remove the cgroups {}; `weftctl down` tries again",
                left.join(", ")
            );
            return;
        }
        if let Err(e) = state::remove(&state_dir) {
            eprintln!("weftctl: {e:#}");
        }
        println!("weftctl: mesh torn down");
    }
}

/// A command worth trying: from a pod of one workload to the service with the
/// most replicas behind it.
fn example_command(pods: &[PodState], served: &MeshFile) -> String {
    let replicas = |service: &str| pods.iter().filter(|p| p.addrs.service == service).count();
    let Some(target) = served
        .services
        .keys()
        .map(|n| n.as_str())
        .max_by_key(|s| replicas(s))
    else {
        return String::new();
    };
    let Some(from) = pods
        .iter()
        .find(|p| p.addrs.service != target)
        .or(pods.first())
    else {
        return String::new();
    };
    format!(
        "  weftctl exec {} -- curl -s http://{target}/\n",
        from.addrs.name
    )
}

/// The whole-mesh rules of the controller, re-checked after workloads were put
/// back into a reloaded file (a service they need may have gone).
fn validate(mesh: &MeshFile) -> Result<()> {
    match mesh.validate().into_iter().next() {
        None => Ok(()),
        Some(e) => bail!("{}", e.message),
    }
}

/// Waits until the workload listens on its service's target ports (on the pod's
/// loopback, which capture leaves alone); a workload that does not is reported,
/// not fatal — it may be a client, or slow.
fn wait_for_workload(user: &MeshFile, pod: &Pod, plan: &PodPlan) {
    let Some(service) = user
        .services
        .iter()
        .find(|(n, _)| n.as_str() == plan.service)
    else {
        return;
    };
    let deadline = Instant::now() + WORKLOAD_LISTEN_TIMEOUT;
    for port in &service.1.ports {
        let addr = SocketAddr::new([127, 0, 0, 1].into(), port.target_port.get());
        let left = deadline.saturating_duration_since(Instant::now());
        if pod.wait_listening(addr, left).is_err() {
            eprintln!(
                "weftctl: pod {}: nothing listens on port {} yet (`{}`)",
                plan.name, port.target_port, plan.command
            );
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename onto {}", path.display()))
}

/// Enough of a file's metadata to notice an edit, an in-place rewrite or a
/// rename-over (a new inode).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let md = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            ino: md.ino(),
            len: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        })
    }
}
