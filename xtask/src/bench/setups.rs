//! The benchmark's pods, the app they share, and the six setups: how each starts,
//! where the load generator points, and how it stops so that the next setup finds
//! clean pods. What is measured against a started setup is [`super::runs`]; which
//! counters prove its proxies carried the traffic is [`super::counters`].
//!
//! Ports (the app's are the same in every setup):
//!
//! | where | port | what |
//! | --- | --- | --- |
//! | server pod | 8080 / 8081 | the app: nginx, 64-byte body, HTTP/1.1 / h2c |
//! | server pod | 127.0.0.1:8090 | the app's `stub_status` (its request counter) |
//! | server pod | 5201 | `iperf3 -s` |
//! | server pod | 2525 | the banner server: speaks first ([`super::banner`]) |
//! | client pod | 127.0.0.1:10080 / 10081 / 10201 / 10525 | nginx/haproxy client-side proxy: HTTP/1.1, h2c, TCP, banner |
//! | server pod | 18080 / 18081 / 18201 / 18525 | nginx/haproxy server-side proxy: HTTP/1.1, h2c, TCP, banner |
//! | both pods | 127.0.0.1:9101 / 9102 | nginx `stub_status` / haproxy stats |
//! | node | 10.211.0.1:15010 / 15014 | weft-controller |
//!
//! weft setups dial the service VIP 10.96.0.10 (ports 8080, 8081 and 2525: protocol
//! `auto`; 5201: `tcp`) and are captured transparently; nginx and haproxy are dialled
//! explicitly on the client pod's loopback, as a user of a non-transparent proxy
//! would configure them. `weft-ebpf` is eBPF capture as weft-init installs it by
//! default (no sk_msg); `weft-ebpf-sockmap` adds `--sockmap` in the client pod, so
//! the load generator's loopback data to its sidecar short-circuits through sk_msg
//! (the server pod is set up exactly as for `weft-ebpf`, so the two rows differ in
//! the client pod's sk_msg alone).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use weft_localmesh::cgroup::PodCgroup;
use weft_localmesh::sidecar::PROXY_UID;
use weft_localmesh::{wait_until, Mesh, Pod, PodProc, ProcSpec};

use super::banner;
use super::configs::*;
use super::load;
use super::Plan;

/// The load generator and the client-side proxy run here; the app and the
/// server-side proxy on [`SERVER_CPU`] (ARCHITECTURE.md, Benchmark method).
pub const CLIENT_CPU: u32 = 0;
pub const SERVER_CPU: u32 = 1;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// One of the five setups of the issue, and eBPF mode with sk_msg on (issue 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupKind {
    Direct,
    WeftIptables,
    /// iptables capture, both hops between the sidecars under mutual TLS.
    WeftMtls,
    WeftEbpf,
    WeftEbpfSockmap,
    Nginx,
    Haproxy,
}

impl SetupKind {
    pub const ALL: [SetupKind; 7] = [
        SetupKind::Direct,
        SetupKind::WeftIptables,
        SetupKind::WeftMtls,
        SetupKind::WeftEbpf,
        SetupKind::WeftEbpfSockmap,
        SetupKind::Nginx,
        SetupKind::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SetupKind::Direct => "direct",
            SetupKind::WeftIptables => "weft-iptables",
            SetupKind::WeftMtls => "weft-mtls",
            SetupKind::WeftEbpf => "weft-ebpf",
            SetupKind::WeftEbpfSockmap => "weft-ebpf-sockmap",
            SetupKind::Nginx => "nginx",
            SetupKind::Haproxy => "haproxy",
        }
    }

    fn is_weft(self) -> bool {
        matches!(
            self,
            SetupKind::WeftIptables
                | SetupKind::WeftMtls
                | SetupKind::WeftEbpf
                | SetupKind::WeftEbpfSockmap
        )
    }

    /// The setups named (all when none is), in the canonical order.
    pub fn selected(names: &[String]) -> Result<Vec<SetupKind>> {
        for n in names {
            if !Self::ALL.iter().any(|k| k.name() == n) {
                bail!(
                    "unknown setup {n:?}; the setups are {}",
                    Self::ALL.map(SetupKind::name).join(", ")
                );
            }
        }
        Ok(Self::ALL
            .into_iter()
            .filter(|k| names.is_empty() || names.iter().any(|n| n == k.name()))
            .collect())
    }
}

/// The release binaries and the load generator.
#[derive(Debug)]
pub struct Bins {
    proxy: PathBuf,
    init: PathBuf,
    controller: PathBuf,
    pub oha: PathBuf,
}

impl Bins {
    /// Builds weft's binaries in release, as the images do, and makes sure oha is
    /// installed.
    pub fn build() -> Result<Bins> {
        let dir = crate::build_release_as_shipped()?;
        Ok(Bins {
            proxy: dir.join("weft-proxy"),
            init: dir.join("weft-init"),
            controller: dir.join("weft-controller"),
            oha: load::ensure_oha()?,
        })
    }

    /// The directory of the release binaries (what `WEFT_BIN_DIR` names for
    /// weft-localmesh).
    pub fn dir(&self) -> &Path {
        self.proxy.parent().unwrap_or(Path::new("."))
    }
}

/// Which pod a process runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// The benchmark's mesh and what runs in it for the whole run. Fields drop in
/// order: the mesh (processes, namespaces) first, then the emptied cgroups.
#[derive(Debug)]
pub struct Bench {
    pub mesh: Mesh,
    client: Pod,
    server: Pod,
    /// (client, server): in place when the host has cgroup v2.
    cgroups: Option<(PodCgroup, PodCgroup)>,
    bins: Bins,
    run_dir: PathBuf,
    /// Whether `weft-init --mode ebpf` works here, or why not.
    ebpf: std::result::Result<(), String>,
    /// Whether `weft-init --mode ebpf --sockmap` works here, or why not.
    ebpf_sockmap: std::result::Result<(), String>,
}

/// A started setup: what the load generator dials, and the proxies carrying it.
#[derive(Debug)]
pub struct Running {
    pub kind: SetupKind,
    /// (client-side, server-side) proxies.
    pub proxies: Option<(PodProc, PodProc)>,
    /// The HTTP/1.1 and h2c URLs and the TCP and banner addresses the client pod
    /// dials.
    pub h1: String,
    pub h2: String,
    pub tcp: SocketAddr,
    pub banner: SocketAddr,
}

impl Bench {
    /// Creates the pods, starts the app, iperf3, the banner server (which exits by
    /// itself after `lifetime`, if the pods have not gone first) and, for weft
    /// setups, the controller, and finds out whether eBPF mode is available.
    pub fn new(bins: Bins, kinds: &[SetupKind], lifetime: Duration) -> Result<Bench> {
        let mesh = Mesh::new().context("creating the benchmark's network namespaces")?;
        let client = mesh.add_pod("client")?;
        let server = mesh.add_pod("server")?;
        client.add_route("10.96.0.0/16")?;
        // The connection-rate run opens tens of thousands of short connections in a
        // few seconds: let a new outgoing connection take a port whose previous
        // connection is in TIME_WAIT (a per-namespace setting; the host's is untouched).
        for pod in [&client, &server] {
            pod.run_ok(
                ["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"],
                None,
                SECS(10),
            )
            .with_context(|| format!("tcp_tw_reuse in {}", pod.name()))?;
        }
        let (cgroups, cgroup_error) = match PodCgroup::create(&mesh, &client)
            .and_then(|c| PodCgroup::create(&mesh, &server).map(|s| (c, s)))
        {
            Ok(pair) => (Some(pair), None),
            Err(e) => (None, Some(format!("no pod cgroups: {e:#}"))),
        };
        let run_dir = mesh.run_dir().to_path_buf();
        let mut bench = Bench {
            mesh,
            client,
            server,
            cgroups,
            bins,
            run_dir,
            ebpf: Ok(()),
            ebpf_sockmap: Ok(()),
        };
        bench.start_app(lifetime)?;
        if kinds.iter().any(|k| k.is_weft()) {
            bench.start_controller()?;
        }
        for kind in [SetupKind::WeftEbpf, SetupKind::WeftEbpfSockmap] {
            if !kinds.contains(&kind) {
                continue;
            }
            let available = match &cgroup_error {
                Some(e) => Err(e.clone()),
                None => bench.probe_ebpf(kind),
            };
            if let Err(reason) = &available {
                eprintln!("bench: {} not available: {reason}", kind.name());
            }
            match kind {
                SetupKind::WeftEbpfSockmap => bench.ebpf_sockmap = available,
                _ => bench.ebpf = available,
            }
        }
        Ok(bench)
    }

    pub fn pod(&self, side: Side) -> &Pod {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    pub fn cgroup(&self, side: Side) -> Option<&PodCgroup> {
        self.cgroups.as_ref().map(|(c, s)| match side {
            Side::Client => c,
            Side::Server => s,
        })
    }

    /// `argv` as a process of `side`'s pod: pinned to that side's CPU, inside the
    /// pod's cgroup when there is one, as `uid` if given.
    pub fn spec(&self, side: Side, name: &str, argv: &[String], uid: Option<u32>) -> ProcSpec {
        let cpu = match side {
            Side::Client => CLIENT_CPU,
            Side::Server => SERVER_CPU,
        };
        let mut full: Vec<String> = vec!["taskset".into(), "-c".into(), cpu.to_string()];
        full.extend(argv.iter().cloned());
        let spec = match self.cgroup(side) {
            Some(cg) => ProcSpec::new(cg.wrap(&full, uid)),
            None => {
                let s = ProcSpec::new(&full);
                match uid {
                    Some(u) => s.uid(u),
                    None => s,
                }
            }
        };
        spec.name(name)
    }

    pub fn pod_spawn(&self, side: Side, name: &str, argv: &[String]) -> Result<PodProc> {
        self.pod(side).spawn(self.spec(side, name, argv, None))
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn oha(&self) -> &Path {
        &self.bins.oha
    }

    fn write(&self, name: &str, text: &str) -> Result<String> {
        let path = self.run_dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path.display().to_string())
    }

    /// The app (nginx, 64-byte body), iperf3's server and the banner server, on the
    /// server CPU.
    fn start_app(&self, banner_lifetime: Duration) -> Result<()> {
        let conf = self.write("app-nginx.conf", &app_nginx_conf(&self.run_dir))?;
        let argv = nginx_argv(&self.run_dir, "app", &conf);
        self.pod_spawn(Side::Server, "app-nginx", &argv)?;
        let iperf: Vec<String> = ["iperf3", "-s", "-p", &APP_TCP.to_string()]
            .map(String::from)
            .to_vec();
        self.pod_spawn(Side::Server, "iperf3-server", &iperf)?;
        banner::start_server(self, banner_lifetime)?;
        for port in [APP_H1, APP_H2, APP_STATUS, APP_TCP, APP_BANNER] {
            self.server.wait_listening(local(port), SECS(10))?;
        }
        Ok(())
    }

    /// weft-controller in the node namespace, serving the `bench` and `client` services.
    fn start_controller(&self) -> Result<()> {
        let file = self.write(
            "mesh.yaml",
            &mesh_yaml(self.server.ipv4(), self.client.ipv4()),
        )?;
        let node = self.mesh.node();
        let argv: Vec<String> = vec![
            "taskset".into(),
            "-c".into(),
            SERVER_CPU.to_string(),
            self.bins.controller.display().to_string(),
            "--config".into(),
            file,
            "--grpc-listen".into(),
            SocketAddr::new(IpAddr::V4(node.ipv4()), CONTROLLER_GRPC).to_string(),
            "--http-listen".into(),
            SocketAddr::new(IpAddr::V4(node.ipv4()), CONTROLLER_HTTP).to_string(),
            "--api-tokens".into(),
            node.credentials().token_file().display().to_string(),
            "--log".into(),
            "warn".into(),
            // The benchmark measures the data path. Its sidecars stop and start
            // between setups; checked through them, the server's endpoint would be
            // withdrawn while they are down and served again only after two passes,
            // well into the next setup's load.
            "--health-checks".into(),
            "off".into(),
            // The mesh CA, for `weft-mtls` (proxies without --identity ask nothing
            // of it).
            "--ca-dir".into(),
            self.run_dir.join("ca").display().to_string(),
        ];
        node.spawn(ProcSpec::new(argv).name("weft-controller"))?;
        let http = SocketAddr::new(IpAddr::V4(node.ipv4()), CONTROLLER_HTTP);
        wait_until(SECS(15), Duration::from_millis(100), || {
            matches!(node.http_get(http, "/ready"), Ok((200, _)))
        })
        .context("weft-controller never became ready")
    }

    fn weft_init(&self, side: Side, args: &[String]) -> Result<String> {
        let mut argv = vec![self.bins.init.display().to_string()];
        argv.extend(args.iter().cloned());
        self.pod(side).run_ok(&argv, None, SECS(30))
    }

    /// `weft-init --mode ebpf` for `side`'s pod; `sockmap` adds `--sockmap` to the
    /// install (clean-up removes whatever is pinned, sk_msg included).
    fn ebpf_init_args(&self, side: Side, cleanup: bool, sockmap: bool) -> Result<Vec<String>> {
        let cg = self
            .cgroup(side)
            .context("eBPF mode needs the pod cgroups")?;
        let mut args = vec![
            "--mode".to_string(),
            "ebpf".into(),
            "--cgroup".into(),
            cg.path().display().to_string(),
        ];
        if cleanup {
            args.push("--cleanup".into());
        } else if sockmap {
            args.push("--sockmap".into());
        }
        Ok(args)
    }

    /// Installs and removes `kind`'s eBPF capture in the client pod: `Err(reason)`
    /// when `weft-init` cannot install it here (yet).
    fn probe_ebpf(&self, kind: SetupKind) -> std::result::Result<(), String> {
        let install = self
            .init_args(kind, Side::Client, false)
            .and_then(|a| self.weft_init(Side::Client, &a));
        let cleanup = self
            .init_args(kind, Side::Client, true)
            .and_then(|a| self.weft_init(Side::Client, &a));
        match (install, cleanup) {
            (Ok(_), Ok(_)) => Ok(()),
            (Err(e), _) | (Ok(_), Err(e)) => Err(short_reason(&format!("{e:#}"))),
        }
    }

    /// Why `kind` cannot run here, if it cannot: eBPF capture that `weft-init` could
    /// not install when the bench began.
    pub fn unavailable(&self, kind: SetupKind) -> Option<&str> {
        let available = match kind {
            SetupKind::WeftEbpf => &self.ebpf,
            SetupKind::WeftEbpfSockmap => &self.ebpf_sockmap,
            _ => return None,
        };
        available.as_ref().err().map(String::as_str)
    }

    /// Starts `kind` on the running app: its capture and proxies, ready to carry
    /// traffic (`plan` sizes haproxy's connection limit for the idle run).
    pub fn start(&self, kind: SetupKind, plan: &Plan) -> Result<Running> {
        let server = self.server.ipv4();
        let url = |ip: Ipv4Addr, port: u16| format!("http://{ip}:{port}/");
        match kind {
            SetupKind::Direct => Ok(Running {
                kind,
                proxies: None,
                h1: url(server, APP_H1),
                h2: url(server, APP_H2),
                tcp: SocketAddr::new(IpAddr::V4(server), APP_TCP),
                banner: SocketAddr::new(IpAddr::V4(server), APP_BANNER),
            }),
            SetupKind::WeftIptables
            | SetupKind::WeftMtls
            | SetupKind::WeftEbpf
            | SetupKind::WeftEbpfSockmap => {
                let mut running = Running {
                    kind,
                    proxies: None,
                    h1: url(VIP, APP_H1),
                    h2: url(VIP, APP_H2),
                    tcp: SocketAddr::new(IpAddr::V4(VIP), APP_TCP),
                    banner: SocketAddr::new(IpAddr::V4(VIP), APP_BANNER),
                };
                let proxies = self.start_weft(kind);
                match proxies {
                    Ok(p) => {
                        running.proxies = Some(p);
                        Ok(running)
                    }
                    Err(e) => {
                        let _ = self.stop(running);
                        Err(e)
                    }
                }
            }
            SetupKind::Nginx | SetupKind::Haproxy => {
                let proxies = if kind == SetupKind::Nginx {
                    self.start_nginx_proxies()?
                } else {
                    self.start_haproxy_proxies(plan)?
                };
                Ok(Running {
                    kind,
                    proxies: Some(proxies),
                    h1: url(Ipv4Addr::LOCALHOST, LOCAL_H1),
                    h2: url(Ipv4Addr::LOCALHOST, LOCAL_H2),
                    tcp: local(LOCAL_TCP),
                    banner: local(LOCAL_BANNER),
                })
            }
        }
    }

    fn init_args(&self, kind: SetupKind, side: Side, cleanup: bool) -> Result<Vec<String>> {
        match kind {
            SetupKind::WeftEbpf => self.ebpf_init_args(side, cleanup, false),
            SetupKind::WeftEbpfSockmap => self.ebpf_init_args(side, cleanup, side == Side::Client),
            _ if cleanup => Ok(vec!["--cleanup".into()]),
            _ => Ok(Vec::new()),
        }
    }

    fn start_weft(&self, kind: SetupKind) -> Result<(PodProc, PodProc)> {
        let controller = format!(
            "http://{}",
            SocketAddr::new(IpAddr::V4(self.mesh.node().ipv4()), CONTROLLER_GRPC)
        );
        let mut procs = Vec::new();
        for (side, service) in [(Side::Client, "client"), (Side::Server, "bench")] {
            let args = self.init_args(kind, side, false)?;
            self.weft_init(side, &args)
                .with_context(|| format!("weft-init {}", args.join(" ")))?;
            // WEFT_BENCH_PROXY_WRAP (e.g. "perf record -g -o /tmp/hp/{side}.perf --"):
            // a profiler to run the proxies under, `{side}` replaced by client or
            // server (heaptrack needs glibc linked dynamically: `RUSTFLAGS=`, see
            // ARCHITECTURE.md, Benchmark method). Their RSS and CPU rows then measure the
            // profiler too.
            let mut argv: Vec<String> = std::env::var("WEFT_BENCH_PROXY_WRAP")
                .map(|w| {
                    w.split_whitespace()
                        .map(|a| a.replace("{side}", side.name()))
                        .collect()
                })
                .unwrap_or_default();
            let mtls = kind == SetupKind::WeftMtls;
            // A token of its own for weft-mtls: one issued before under the same
            // name keeps the identity (none) it was issued with.
            let token_name = if mtls {
                format!("pod-{}-mtls", side.name())
            } else {
                format!("pod-{}", side.name())
            };
            let token = self.pod(side).credentials().issue_with_identity(
                &token_name,
                &[service],
                mtls.then_some(service),
                Some(PROXY_UID),
            )?;
            argv.extend([
                self.bins.proxy.display().to_string(),
                "--service".into(),
                service.into(),
                "--proxy-id".into(),
                side.name().into(),
                "--controller".into(),
                controller.clone(),
                "--controller-token-file".into(),
                token.display().to_string(),
                "--workers".into(),
                "1".into(),
                "--drain-grace".into(),
                "1s".into(),
                "--log".into(),
                "warn".into(),
            ]);
            if mtls {
                argv.push("--identity".into());
            }
            let name = format!("weft-proxy-{}", side.name());
            let spec = self.spec(side, &name, &argv, Some(PROXY_UID));
            procs.push(self.pod(side).spawn(spec)?);
        }
        for (side, proc) in [Side::Client, Side::Server].into_iter().zip(&procs) {
            let pod = self.pod(side);
            wait_until(SECS(15), Duration::from_millis(50), || {
                // The proxy's own readiness: the client pod backs a service whose
                // port nothing listens on, so its `/ready` (app-aware) stays 503.
                matches!(
                    pod.http_get(local(WEFT_METRICS), "/ready/proxy"),
                    Ok((200, _))
                )
            })
            .with_context(|| {
                format!(
                    "weft-proxy in {} never became ready:\n{}",
                    pod.name(),
                    proc.logs()
                )
            })?;
        }
        if kind == SetupKind::WeftMtls {
            self.wait_mtls_ready()?;
        }
        let server = procs.pop().context("two proxies")?;
        let client = procs.pop().context("two proxies")?;
        Ok((client, server))
    }

    /// `weft-mtls`: both proxies hold a certificate and the client's knows the
    /// server's identity, so that the first request already goes under mutual TLS.
    fn wait_mtls_ready(&self) -> Result<()> {
        let admin = local(WEFT_ADMIN);
        for side in [Side::Client, Side::Server] {
            let pod = self.pod(side);
            wait_until(SECS(15), Duration::from_millis(50), || {
                pod.http_get(admin, "/identity")
                    .is_ok_and(|(code, body)| code == 200 && body.contains("\"spiffe_id\""))
            })
            .with_context(|| format!("weft-proxy in {} got no certificate", pod.name()))?;
        }
        let client = self.pod(Side::Client);
        let server = self.server.ipv4().to_string();
        wait_until(SECS(15), Duration::from_millis(50), || {
            client.http_get(admin, "/routes").is_ok_and(|(code, body)| {
                code == 200
                    && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
                        v["services"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|s| s["identities"][&server].is_string())
                    })
            })
        })
        .context("the client's proxy never learnt the server's identity")
    }

    fn start_nginx_proxies(&self) -> Result<(PodProc, PodProc)> {
        let s = self.server.ipv4();
        let mut procs = Vec::new();
        for side in [Side::Client, Side::Server] {
            let name = format!("nginx-{}", side.name());
            let conf = match side {
                // h2c goes on as HTTP/1.1 (nginx proxies only HTTP/1.x upstream).
                Side::Client => nginx_proxy_conf(
                    &self.run_dir,
                    &name,
                    Hops {
                        h1: (local(LOCAL_H1), SocketAddr::new(IpAddr::V4(s), HOP_H1)),
                        h2: (local(LOCAL_H2), SocketAddr::new(IpAddr::V4(s), HOP_H1)),
                        tcp: (local(LOCAL_TCP), SocketAddr::new(IpAddr::V4(s), HOP_TCP)),
                        banner: (
                            local(LOCAL_BANNER),
                            SocketAddr::new(IpAddr::V4(s), HOP_BANNER),
                        ),
                    },
                ),
                Side::Server => nginx_proxy_conf(
                    &self.run_dir,
                    &name,
                    Hops {
                        h1: (SocketAddr::new(IpAddr::V4(s), HOP_H1), local(APP_H1)),
                        h2: (SocketAddr::new(IpAddr::V4(s), HOP_H2), local(APP_H1)),
                        tcp: (SocketAddr::new(IpAddr::V4(s), HOP_TCP), local(APP_TCP)),
                        banner: (
                            SocketAddr::new(IpAddr::V4(s), HOP_BANNER),
                            local(APP_BANNER),
                        ),
                    },
                ),
            };
            let path = self.write(&format!("{name}.conf"), &conf)?;
            procs.push(self.pod_spawn(side, &name, &nginx_argv(&self.run_dir, &name, &path))?);
        }
        self.wait_proxies_listening(&procs, NGINX_STATUS)?;
        let server = procs.pop().context("two proxies")?;
        let client = procs.pop().context("two proxies")?;
        Ok((client, server))
    }

    fn start_haproxy_proxies(&self, plan: &Plan) -> Result<(PodProc, PodProc)> {
        // Room for the idle connections, within the descriptor limit.
        let maxconn = plan.idle_conns + 100;
        let s = IpAddr::V4(self.server.ipv4());
        let mut procs = Vec::new();
        for side in [Side::Client, Side::Server] {
            let name = format!("haproxy-{}", side.name());
            let conf = match side {
                Side::Client => haproxy_conf(
                    maxconn,
                    Hops {
                        h1: (local(LOCAL_H1), SocketAddr::new(s, HOP_H1)),
                        h2: (local(LOCAL_H2), SocketAddr::new(s, HOP_H2)),
                        tcp: (local(LOCAL_TCP), SocketAddr::new(s, HOP_TCP)),
                        banner: (local(LOCAL_BANNER), SocketAddr::new(s, HOP_BANNER)),
                    },
                ),
                Side::Server => haproxy_conf(
                    maxconn,
                    Hops {
                        h1: (SocketAddr::new(s, HOP_H1), local(APP_H1)),
                        h2: (SocketAddr::new(s, HOP_H2), local(APP_H2)),
                        tcp: (SocketAddr::new(s, HOP_TCP), local(APP_TCP)),
                        banner: (SocketAddr::new(s, HOP_BANNER), local(APP_BANNER)),
                    },
                ),
            };
            let path = self.write(&format!("{name}.cfg"), &conf)?;
            let argv: Vec<String> = vec!["haproxy".into(), "-db".into(), "-f".into(), path];
            procs.push(self.pod_spawn(side, &name, &argv)?);
        }
        self.wait_proxies_listening(&procs, HAPROXY_STATS)?;
        let server = procs.pop().context("two proxies")?;
        let client = procs.pop().context("two proxies")?;
        Ok((client, server))
    }

    fn wait_proxies_listening(&self, procs: &[PodProc], status_port: u16) -> Result<()> {
        let s = self.server.ipv4();
        let checks = [
            (Side::Client, local(LOCAL_H1)),
            (Side::Client, local(LOCAL_H2)),
            (Side::Client, local(LOCAL_TCP)),
            (Side::Client, local(LOCAL_BANNER)),
            (Side::Client, local(status_port)),
            (Side::Server, SocketAddr::new(IpAddr::V4(s), HOP_H1)),
            (Side::Server, SocketAddr::new(IpAddr::V4(s), HOP_H2)),
            (Side::Server, SocketAddr::new(IpAddr::V4(s), HOP_TCP)),
            (Side::Server, SocketAddr::new(IpAddr::V4(s), HOP_BANNER)),
            (Side::Server, local(status_port)),
        ];
        for (side, addr) in checks {
            self.pod(side)
                .wait_listening(addr, SECS(10))
                .with_context(|| {
                    let logs: Vec<String> = procs
                        .iter()
                        .map(|p| format!("{}: {}", p.name(), p.logs()))
                        .collect();
                    format!("proxy not listening:\n{}", logs.join("\n"))
                })?;
        }
        Ok(())
    }

    /// Stops the setup's proxies and removes weft's capture, so the pods are as
    /// before it started.
    pub fn stop(&self, r: Running) -> Result<()> {
        if let Some((c, s)) = &r.proxies {
            for p in [c, s] {
                let _ = p.kill_term();
            }
            for p in [c, s] {
                if p.wait_timeout(SECS(3)).is_none() {
                    let _ = p.kill();
                    let _ = p.wait_timeout(SECS(2));
                }
            }
        }
        if r.kind.is_weft() {
            for side in [Side::Client, Side::Server] {
                let args = self.init_args(r.kind, side, true)?;
                self.weft_init(side, &args)
                    .with_context(|| format!("weft-init {}", args.join(" ")))?;
            }
        }
        Ok(())
    }
}

/// The last meaningful line of an error, shortened for a table cell.
fn short_reason(e: &str) -> String {
    let line = e
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error");
    let mut s: String = line.chars().take(160).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    s.replace('|', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_64_bytes() {
        assert_eq!(BODY.len(), 64);
    }

    #[test]
    fn setups_select_in_order() {
        let s = SetupKind::selected(&["haproxy".into(), "direct".into()]).unwrap_or_default();
        assert_eq!(s, vec![SetupKind::Direct, SetupKind::Haproxy]);
        assert!(SetupKind::selected(&["envoy".into()]).is_err());
        let all = SetupKind::selected(&[]).unwrap_or_default();
        assert_eq!(all.len(), 7);
        assert!(all.contains(&SetupKind::WeftMtls));
        assert!(all.contains(&SetupKind::WeftEbpfSockmap));
        let named = SetupKind::selected(&["weft-ebpf-sockmap".into()]).unwrap_or_default();
        assert_eq!(named, vec![SetupKind::WeftEbpfSockmap]);
    }

    #[test]
    fn reasons_are_one_short_line() {
        assert_eq!(
            short_reason("a\nweft-init: no | ebpf\n\n"),
            "weft-init: no / ebpf"
        );
        assert!(short_reason(&"x".repeat(500)).chars().count() <= 161);
    }
}
