//! `weftctl down`: stop the local mesh — ask a running `weftctl up` to tear down,
//! or, after a crash, remove what the state file names: processes inside the
//! mesh's namespaces, the namespaces (their veths and iptables rules go with
//! them), the run directory and the state file.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_e2e::netns;

use crate::state::{self, MeshState};

/// How long a running `up` gets to tear down after SIGTERM.
const UP_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long processes in a crashed mesh get between SIGTERM and SIGKILL.
const STRAGGLER_GRACE: Duration = Duration::from_secs(2);

/// Stops the mesh recorded in `state_dir`, if any.
pub fn run(state_dir: &Path) -> Result<()> {
    let Some(mesh) = state::load(state_dir)? else {
        println!("weftctl: no local mesh is running");
        return Ok(());
    };
    if state::is_running(mesh.pid) {
        println!(
            "weftctl: asking weftctl up (pid {}) to tear down mesh {}",
            mesh.pid, mesh.prefix
        );
        kill(Pid::from_raw(mesh.pid as i32), Signal::SIGTERM)
            .with_context(|| format!("signal weftctl up (pid {})", mesh.pid))?;
        let deadline = Instant::now() + UP_TEARDOWN_TIMEOUT;
        while state::is_running(mesh.pid) {
            if Instant::now() >= deadline {
                bail!(
                    "weftctl up (pid {}) did not finish tearing down within {UP_TEARDOWN_TIMEOUT:?}",
                    mesh.pid
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if state::load(state_dir)?.is_none() {
            println!("weftctl: mesh {} is down", mesh.prefix);
            return Ok(());
        }
    }
    clean_up(state_dir, &mesh)?;
    println!("weftctl: mesh {} is down", mesh.prefix);
    Ok(())
}

/// Removes what a mesh that is no longer managed left behind.
pub fn clean_up(state_dir: &Path, mesh: &MeshState) -> Result<()> {
    let present: Vec<&String> = mesh
        .netns
        .iter()
        .filter(|n| netns::path(n).exists())
        .collect();
    let ids: Vec<_> = present
        .iter()
        .filter_map(|n| netns::ns_id(&netns::path(n)).ok())
        .collect();
    stop_processes_in(&ids);
    let mut failed = Vec::new();
    // Pods before the node, whose bridge their veths hang on.
    for name in present.iter().rev() {
        if let Err(e) = netns::delete(name) {
            failed.push(format!("{e:#}"));
        }
    }
    match std::fs::remove_dir_all(&mesh.run_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            failed.push(format!("remove {}: {e}", mesh.run_dir.display()))
        }
        _ => {}
    }
    if !failed.is_empty() {
        bail!("cleaning up mesh {}: {}", mesh.prefix, failed.join("; "));
    }
    state::remove(state_dir)
}

/// SIGTERM to every process inside the namespaces, then SIGKILL to what is left.
fn stop_processes_in(ids: &[netns::NsId]) {
    let pids = || -> Vec<i32> { ids.iter().flat_map(|&id| netns::pids_in(id)).collect() };
    for pid in pids() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STRAGGLER_GRACE;
    while !pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..100 {
        let left = pids();
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("weftctl: processes still inside the mesh's namespaces after SIGKILL");
}
