//! `weftctl down`: stop the local mesh — ask a running `weftctl up` to tear down,
//! or, after a crash, remove what the state file names: processes inside the
//! mesh's namespaces, the namespaces (their veths and iptables rules go with
//! them), in eBPF mode the pods' cgroups with their eBPF pins (which detaches the
//! programs), the run directory and the state file.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_localmesh::cgroup::PodCgroup;
use weft_localmesh::netns;

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
    // After the namespaces: the pins go (detaching the programs), then any process
    // still in the cgroup, then the cgroup.
    for cgroup in mesh.pods.iter().filter_map(|p| p.cgroup.as_deref()) {
        // Only what this mesh made: a cgroup named with its prefix (a damaged state
        // file must not make `down` kill the processes of some other cgroup).
        let ours = cgroup
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{}-", mesh.prefix)));
        if !ours {
            failed.push(format!(
                "cgroup {} is not named with the mesh prefix {}: left alone",
                cgroup.display(),
                mesh.prefix
            ));
            continue;
        }
        if let Err(e) = PodCgroup::adopt(cgroup).and_then(PodCgroup::close) {
            failed.push(format!("cgroup {}: {e:#}", cgroup.display()));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::render::PodAddrs;
    use crate::state::PodState;

    /// A state file naming a cgroup that is not the mesh's (damaged, or edited):
    /// `down` leaves it alone, says so, and keeps the state file.
    #[test]
    fn a_cgroup_without_the_mesh_prefix_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let mesh = MeshState {
            pid: u32::MAX,
            prefix: "wf12345".into(),
            file: "f".into(),
            run_dir,
            netns: vec![],
            node_netns: "wf12345-node".into(),
            controller_http: "10.211.0.1:15014".parse().unwrap(),
            pods: vec![PodState {
                addrs: PodAddrs {
                    name: "a-0".into(),
                    workload: "a".into(),
                    service: "a".into(),
                    ipv4: "10.211.0.2".parse().unwrap(),
                    ipv6: "fd00:211::2".parse().unwrap(),
                },
                netns: "wf12345-a-0".into(),
                cgroup: Some("/sys/fs/cgroup/system.slice".into()),
            }],
            hosts_file: "/tmp/x/hosts".into(),
            mode: "ebpf".into(),
        };
        state::save(dir.path(), &mesh).unwrap();
        let err = format!("{:#}", clean_up(dir.path(), &mesh).unwrap_err());
        assert!(err.contains("not named with the mesh prefix"), "{err}");
        assert!(state::load(dir.path()).unwrap().is_some());
    }
}
