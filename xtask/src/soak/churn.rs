//! `cargo xtask soak --cycles N`: pod churn under one long-lived controller.
//!
//! The mesh: a node namespace with weft-controller, a `backend` pod serving HTTP
//! (python's http.server, no sidecar) and, one at a time, a `client` pod that lives
//! for one cycle: `weft-init` (iptables mode on even cycles, eBPF mode on odd ones,
//! in the pod's own cgroup), weft-proxy subscribed to the controller, one request
//! from an unmodified curl to `http://backend/` through the proxy (HTTP 200 and the
//! proxy's request counter at 1), then teardown as a node would do it: processes
//! stopped, namespace and veth deleted, cgroup (with its eBPF pins) removed.
//!
//! Two warm-up cycles (one per mode) run before the first count, so what is counted
//! is what a cycle leaves, not what the first subscriber sets up once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use weft_localmesh::cgroup::PodCgroup;
use weft_localmesh::controller::Controller;
use weft_localmesh::sidecar::Sidecar;
use weft_localmesh::{wait_until, Mesh, Pod, ProcSpec};

use super::tally::{self, Tally};

const CLIENT: &str = "client";
const BACKEND: &str = "backend";
const BACKEND_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const VIP_RANGE: &str = "10.96.0.0/16";
const APP_PORT: u16 = 8080;
/// Progress (and the controller's RSS and fds) every this many cycles.
const REPORT_EVERY: u32 = 50;

/// One cycle's capture mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Iptables,
    Ebpf,
}

impl Mode {
    fn of_cycle(i: u32) -> Mode {
        if i.is_multiple_of(2) {
            Mode::Iptables
        } else {
            Mode::Ebpf
        }
    }
}

/// Runs `cycles` pod lifecycles and fails unless every count is back where it was.
pub fn run(cycles: u32) -> Result<()> {
    let mesh = Mesh::new()?;
    println!("soak: {cycles} pod cycles in mesh {}", mesh.prefix());
    let backend = mesh.add_pod(BACKEND)?;
    let www = mesh.run_dir().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "hello from the backend\n")?;
    let python = weft_localmesh::bins::python3();
    backend.spawn(
        ProcSpec::new([
            python.to_string_lossy().as_ref(),
            "-m",
            "http.server",
            &APP_PORT.to_string(),
        ])
        .cwd(&www)
        .name("backend-app"),
    )?;
    backend.wait_listening(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), APP_PORT),
        Duration::from_secs(10),
    )?;
    let file = mesh.run_dir().join("mesh.yaml");
    // The client's address is the same each cycle: the mesh hands a removed
    // pod's address to the next one.
    let client_ip = Ipv4Addr::new(10, 211, 0, backend.ipv4().octets()[3] + 1);
    std::fs::write(
        &file,
        format!(
            "# cargo xtask soak --cycles\nservices:\n  {BACKEND}:\n    vip: {BACKEND_VIP}\n    \
             ports: [{{ port: 80, target_port: {APP_PORT}, protocol: auto }}]\n    \
             endpoints: [{}]\n  {CLIENT}:\n    vip: {CLIENT_VIP}\n    \
             ports: [{{ port: 9, protocol: tcp }}]\n    endpoints: [{client_ip}]\n",
            backend.ipv4()
        ),
    )?;
    let controller = Controller::start(&mesh, &file, &[])?;
    let pid = controller.proc().pid();

    let before = Tally::read_settled(&mesh, pid)?;
    let rss_before = tally::rss_kib(pid)?;
    for i in 0..2 {
        cycle(&mesh, &controller, Mode::of_cycle(i), client_ip).context("warm-up cycle")?;
    }
    let start = Tally::read_settled(&mesh, pid)?;
    let rss_start = tally::rss_kib(pid)?;
    let began = Instant::now();
    for i in 0..cycles {
        cycle(&mesh, &controller, Mode::of_cycle(i), client_ip)
            .with_context(|| format!("cycle {} of {cycles}", i + 1))?;
        if (i + 1) % REPORT_EVERY == 0 || i + 1 == cycles {
            println!(
                "soak: {:>5} cycles in {:>6.1} s; controller RSS {} KiB, fds {}",
                i + 1,
                began.elapsed().as_secs_f64(),
                tally::rss_kib(pid)?,
                tally::fds(pid)?
            );
        }
    }
    let elapsed = began.elapsed();
    let end = Tally::read_settled(&mesh, pid)?;
    let rss_end = tally::rss_kib(pid)?;
    println!(
        "\nsoak: {cycles} cycles ({} iptables, {} eBPF) in {:.0} s, {:.2} s each\n",
        cycles.div_ceil(2),
        cycles / 2,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / f64::from(cycles.max(1))
    );
    print!(
        "{}",
        tally::table(&[
            ("before any client pod", &before),
            ("after 2 warm-up cycles", &start),
            (&format!("after {cycles} cycles"), &end),
        ])
    );
    println!(
        "| controller RSS KiB | {rss_before} | {rss_start} | {rss_end} |\n\n\
         controller RSS {:+.1}% over the counted cycles",
        (rss_end as f64 - rss_start as f64) * 100.0 / rss_start.max(1) as f64
    );
    let moved = start.differences(&end);
    if !moved.is_empty() {
        bail!(
            "the cycles left something behind:\n  {}",
            moved.join("\n  ")
        );
    }
    println!("soak: every count is back where it was");
    Ok(())
}

/// One pod lifecycle; the pod and its cgroup are removed also when a step fails.
fn cycle(mesh: &Mesh, controller: &Controller, mode: Mode, client_ip: Ipv4Addr) -> Result<()> {
    let pod = mesh.add_pod(CLIENT)?;
    // The VIPs exist only inside the mesh: routed out of the pod's interface, to
    // be captured before they leave.
    if let Err(e) = pod.add_route(VIP_RANGE) {
        let _ = mesh.remove_pod(CLIENT);
        return Err(e);
    }
    let cgroup = match mode {
        Mode::Ebpf => match PodCgroup::create(mesh, &pod) {
            Ok(cg) => Some(cg),
            Err(e) => {
                let _ = mesh.remove_pod(CLIENT);
                return Err(e);
            }
        },
        Mode::Iptables => None,
    };
    let served = serve_one(controller, &pod, cgroup.as_ref(), client_ip);
    let removed = mesh.remove_pod(CLIENT);
    let closed = cgroup.map_or(Ok(()), PodCgroup::close);
    served?;
    removed?;
    closed
}

/// Starts the client pod's sidecar (in `cgroup`: eBPF mode) and sends one request
/// through it: HTTP 200, counted once by the proxy.
fn serve_one(
    controller: &Controller,
    pod: &Pod,
    cgroup: Option<&PodCgroup>,
    client_ip: Ipv4Addr,
) -> Result<()> {
    ensure!(
        pod.ipv4() == client_ip,
        "the client pod got {}, not the mesh file's {client_ip}",
        pod.ipv4()
    );
    let proxy_args = ["--controller", controller.url()];
    let cg_path = cgroup.map(PodCgroup::path);
    let sidecar = match cg_path {
        Some(path) => Sidecar::start_ebpf_with(pod, path, &[], CLIENT, &proxy_args)?,
        None => Sidecar::start_with(pod, &[], CLIENT, &proxy_args)?,
    };
    let url = format!("http://{BACKEND_VIP}/");
    let code = pod.run_ok_in_cgroup(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            &url,
        ],
        None,
        cg_path,
        Duration::from_secs(10),
    )?;
    ensure!(code.trim() == "200", "curl {url}: HTTP {code}");
    let counted = || {
        sidecar
            .metric(
                "weft_http_requests_total",
                &[("direction", "outbound"), ("destination_service", BACKEND)],
            )
            .unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        counted() == 1.0
    })
    .with_context(|| {
        format!(
            "the proxy counted {} requests to {BACKEND}, not 1",
            counted()
        )
    })
}
