//! `cargo xtask demo`: the local mesh of `examples/demo.yaml` with real traffic.
//!
//! Runs `weftctl up` (a frontend and three backend replicas, each a pod with its
//! sidecar), sends requests from the frontend pod to `http://backend/`, prints
//! which replica served each one, the frontend proxy's connections and a metrics
//! summary and the controller's mesh page's view (`weftctl dashboard`: the
//! frontend -> backend edge with its count), tears the mesh down and checks that nothing is left: no namespace,
//! host interface or weft iptables rule, and none of the mesh's processes.
//! `--mode ebpf` runs the mesh in eBPF mode (`weftctl up --mode ebpf`) and also
//! shows each pod's kernel counters, then checks that no cgroup of the mesh, eBPF
//! pin or attached weft program is left.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{leaks, run, system, workspace_root};

/// The line `weftctl up` prints once every pod is serving.
const READY_LINE: &str = "weft: mesh ready";
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests the frontend sends: three rounds over the three replicas.
const REQUESTS: usize = 9;
const FRONTEND: &str = "frontend-0";
const BACKENDS: [&str; 3] = ["backend-0", "backend-1", "backend-2"];

/// `cargo xtask demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How the pods capture traffic: `iptables` or `ebpf` (passed to `weftctl up
    /// --mode`).
    #[arg(long, default_value = "iptables", value_parser = ["iptables", "ebpf"])]
    mode: String,
}

/// Runs the demo; fails if any step does or anything is left behind.
pub fn demo(args: &DemoArgs) -> Result<()> {
    if !system::is_root() {
        bail!("the demo needs root (network namespaces, iptables, setuid): run `sudo -E cargo xtask demo`");
    }
    system::ensure(system::TIER2_TOOLS)?;
    let mut build = crate::cargo();
    build.args(["build", "--workspace", "--bins"]);
    run(build)?;

    let bin_dir = crate::bin_dir("debug");
    // A state directory of its own: a mesh the user runs with `weftctl up` is
    // not this demo's business.
    let state_dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    let before = leaks::HostState::read()?;
    let result = run_mesh(&bin_dir, &state_dir, &args.mode);
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut leaked = leaks::HostState::read()?.leaked_since(&before);
    if let Ok((_, cgroups)) = &result {
        leaked.extend(
            cgroups
                .iter()
                .filter(|c| c.exists())
                .map(|c| format!("cgroup {}", c.display())),
        );
    }
    let result = result.map(|(pids, _)| pids);
    let pids_left = result
        .as_ref()
        .map(|pids| still_running(pids))
        .unwrap_or_default();
    result?;
    if !leaked.is_empty() {
        bail!("the demo left behind:\n  {}", leaked.join("\n  "));
    }
    if !pids_left.is_empty() {
        bail!("the demo left processes running: {pids_left:?}");
    }
    println!(
        "\ndemo: done — the mesh is gone: no namespace, interface, iptables rule{} or process left",
        if args.mode == "ebpf" {
            ", cgroup, eBPF pin or attached program"
        } else {
            ""
        }
    );
    Ok(())
}

/// `weftctl` with the demo's state directory.
fn weftctl(bin_dir: &Path, state_dir: &Path) -> Command {
    let mut cmd = Command::new(bin_dir.join("weftctl"));
    cmd.env("WEFT_STATE_DIR", state_dir);
    cmd
}

/// Brings the mesh up, drives it and tears it down; returns the pids that ran in
/// the mesh's namespaces and the pods' cgroups (eBPF mode), to check they are gone.
fn run_mesh(bin_dir: &Path, state_dir: &Path, mode: &str) -> Result<(Vec<i32>, Vec<PathBuf>)> {
    let file = workspace_root().join("examples").join("demo.yaml");
    println!("demo: weftctl up --mode {mode} -f {}", file.display());
    let mut up = weftctl(bin_dir, state_dir)
        .args(["up", "--mode", mode, "-f"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start weftctl up")?;
    let lines = echo_lines(&mut up);
    let outcome = wait_ready(&mut up, &lines).and_then(|()| {
        let pids = mesh_pids(state_dir)?;
        let cgroups = mesh_cgroups(state_dir)?;
        drive(bin_dir, state_dir)?;
        if !cgroups.is_empty() {
            show_ebpf_counters(&cgroups);
        }
        Ok((pids, cgroups))
    });
    // Tear down whatever happened above, like a user's Ctrl-C.
    let stopped = stop(&mut up, &lines);
    let pids = outcome?;
    stopped?;
    Ok(pids)
}

/// Echoes `weftctl up`'s stdout (indented) and passes each line on.
fn echo_lines(up: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = up.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("  | {line}");
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep echoing.
                }
            }
        });
    }
    rx
}

fn wait_ready(up: &mut Child, lines: &mpsc::Receiver<String>) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line == READY_LINE => return Ok(()),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = up.wait()?;
                bail!(
                    "weftctl up exited before the mesh was ready ({status}); see its output above"
                );
            }
        }
    }
    bail!("the mesh was not ready within {READY_TIMEOUT:?}")
}

/// The traffic and what it shows.
fn drive(bin_dir: &Path, state_dir: &Path) -> Result<()> {
    println!("\ndemo: {REQUESTS} requests from {FRONTEND} to http://backend/ (the app dials the service name; its sidecar picks a replica)");
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for i in 1..=REQUESTS {
        let body = exec(
            bin_dir,
            state_dir,
            FRONTEND,
            &["curl", "-sS", "--max-time", "5", "http://backend/"],
        )?;
        let body = body.trim().to_owned();
        println!("  request {i}: {body}");
        *served.entry(body).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = BACKENDS
        .iter()
        .map(|b| (format!("hello from {b}"), REQUESTS / BACKENDS.len()))
        .collect();
    if served != expected {
        bail!(
            "round robin should have served each replica {} times; got {served:?}",
            REQUESTS / 3
        );
    }
    println!(
        "  round robin: each of the 3 replicas served {} requests",
        REQUESTS / 3
    );

    println!("\ndemo: weftctl conns {FRONTEND}");
    let out = output(weftctl(bin_dir, state_dir).args(["conns", FRONTEND]))?;
    print!("{}", indent(&out));

    println!("\ndemo: metrics of {FRONTEND}'s proxy (outbound) and backend-0's (inbound), from :15020/metrics");
    println!("  (HTTP is balanced per request: the proxies keep pooled keep-alive connections between them)");
    for pod in [FRONTEND, BACKENDS[0]] {
        let metrics = exec(
            bin_dir,
            state_dir,
            pod,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:15020/metrics",
            ],
        )?;
        print!("{}", indent(&summary(&metrics)));
    }
    mesh_page(bin_dir, state_dir)
}

/// How long the mesh page's data may take to show the demo's requests: the
/// controller reads the proxies every 2 s.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// `weftctl dashboard`: the mesh page's address and its data API's view, polled
/// until the frontend -> backend edge counts the demo's requests.
fn mesh_page(bin_dir: &Path, state_dir: &Path) -> Result<()> {
    println!(
        "\ndemo: weftctl dashboard (the controller's mesh page and its data, GET /ui/api/mesh)"
    );
    let want = format!("frontend -> backend: {REQUESTS} requests");
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        let out = output(weftctl(bin_dir, state_dir).arg("dashboard"))?;
        if let Some(edge) = out.lines().find(|l| l.contains(&want)) {
            print!("{}", indent(&out));
            println!("  the page shows the edge: {}", edge.trim());
            return Ok(());
        }
        if Instant::now() >= deadline {
            print!("{}", indent(&out));
            bail!("the mesh page's data did not show `{want}` within {PAGE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The weft series that carry a service edge, without comments.
fn summary(metrics: &str) -> String {
    let mut out = String::new();
    for line in metrics.lines() {
        let edge = line.starts_with("weft_http_requests_total")
            || line.starts_with("weft_http_request_duration_seconds_count")
            || line.starts_with("weft_tcp_connections_opened_total")
            || line.starts_with("weft_tcp_sent_bytes_total")
            || line.starts_with("weft_tcp_received_bytes_total")
            || line.starts_with("weft_proxy_errors_total");
        if edge && line.contains("destination_service=\"backend\"") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn exec(bin_dir: &Path, state_dir: &Path, pod: &str, argv: &[&str]) -> Result<String> {
    output(
        weftctl(bin_dir, state_dir)
            .args(["exec", pod, "--"])
            .args(argv),
    )
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// SIGTERM to `weftctl up` (as `weftctl down` would send), then its exit status.
fn stop(up: &mut Child, lines: &mpsc::Receiver<String>) -> Result<()> {
    println!("\ndemo: tearing down (SIGTERM to weftctl up)");
    let pid = Pid::from_raw(i32::try_from(up.id()).context("pid")?);
    // Our own child, not reaped yet: the pid is still its.
    kill(pid, Signal::SIGTERM).context("signal weftctl up")?;
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    loop {
        while lines.try_recv().is_ok() {}
        if let Some(status) = up.try_wait()? {
            if !status.success() {
                bail!("weftctl up exited with {status}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = up.kill();
            bail!("weftctl up did not tear down within {TEARDOWN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_state(state_dir: &Path) -> Result<serde_json::Value> {
    let file = state_dir.join("local-mesh.json");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The pods' cgroups (eBPF mode; none in iptables mode), from the state file.
fn mesh_cgroups(state_dir: &Path) -> Result<Vec<PathBuf>> {
    let state = read_state(state_dir)?;
    Ok(state["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["cgroup"].as_str())
        .map(PathBuf::from)
        .collect())
}

/// Each pod's eBPF counters, from its pinned WEFT_STATS map (`bpftool map dump`).
fn show_ebpf_counters(cgroups: &[PathBuf]) {
    println!("\ndemo: eBPF counters per pod (bpftool map dump pinned /sys/fs/bpf/weft/<pod>/map_WEFT_STATS)");
    for cg in cgroups {
        let Some(name) = cg.file_name() else { continue };
        let pin = Path::new("/sys/fs/bpf/weft")
            .join(name)
            .join("map_WEFT_STATS");
        let counts = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .map(|v| stats_line(&v))
            .unwrap_or_else(|| "(unreadable)".to_owned());
        println!("  {}: {counts}", name.to_string_lossy());
    }
}

/// `redirected=N ...` from bpftool's JSON dump of a per-CPU u64 array, in the order
/// of weft_ebpf_common::Stat.
fn stats_line(dump: &serde_json::Value) -> String {
    const NAMES: [&str; 10] = [
        "redirected",
        "skipped_proxy",
        "skipped_loopback",
        "skipped_excluded",
        "established",
        "orig_dst_answered",
        "msg_redirected",
        "sock_hashed",
        "msg_unpaired",
        "orig_released",
    ];
    let le = |v: &serde_json::Value| -> u64 {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_str())
            .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
            .take(8)
            .enumerate()
            .map(|(i, b)| u64::from(b) << (8 * i))
            .sum()
    };
    let mut by_index = BTreeMap::new();
    for entry in dump.as_array().into_iter().flatten() {
        let total: u64 = entry["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|cpu| le(&cpu["value"]))
            .sum();
        by_index.insert(le(&entry["key"]), total);
    }
    by_index
        .iter()
        .filter_map(|(i, v)| Some(format!("{}={v}", NAMES.get(usize::try_from(*i).ok()?)?)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Pids of every process inside the mesh's namespaces (from its state file).
fn mesh_pids(state_dir: &Path) -> Result<Vec<i32>> {
    let state = read_state(state_dir)?;
    let inodes: Vec<u64> = state["netns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .filter_map(|n| std::fs::metadata(PathBuf::from("/run/netns").join(n)).ok())
        .map(|md| std::os::unix::fs::MetadataExt::ino(&md))
        .collect();
    Ok(pids_in_netns(&inodes))
}

fn pids_in_netns(inodes: &[u64]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("net:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|ino| inodes.contains(&ino))
        })
        .collect()
}

/// Those of `pids` that still run (zombies excluded).
fn still_running(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
                .unwrap_or(false)
        })
        .collect()
}
