//! The state file of the running local mesh (`<state dir>/local-mesh.json`,
//! default `/run/weft`): what `weftctl up` made, so that the other commands can
//! find the pods and `weftctl down` can clean up after a crashed `up`.
//!
//! `up` writes it before creating anything and rewrites it as pods appear (in eBPF
//! mode naming each pod's cgroup before creating it), so a crash at any point leaves
//! a file naming everything there is to remove.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::render::PodAddrs;

/// Where the state file lives unless `--state-dir` / `WEFT_STATE_DIR` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/weft";
const FILE_NAME: &str = "local-mesh.json";

/// What a running (or crashed) `weftctl up` made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshState {
    /// The `weftctl up` process.
    pub pid: u32,
    /// The per-run name prefix of every namespace, e.g. `wf3a9c1`.
    pub prefix: String,
    /// The user's mesh file.
    pub file: PathBuf,
    /// Logs, the controller's mesh file and the hosts file.
    pub run_dir: PathBuf,
    /// Every namespace created, the node's first.
    pub netns: Vec<String>,
    /// The node namespace, where the controller runs.
    pub node_netns: String,
    /// The controller's HTTP API (inside the node namespace).
    pub controller_http: SocketAddr,
    /// The pods, in creation order.
    pub pods: Vec<PodState>,
    /// The file every pod sees as `/etc/hosts`.
    pub hosts_file: PathBuf,
    /// How the pods' traffic is captured: `iptables` or `ebpf` (older state files:
    /// iptables).
    #[serde(default = "iptables")]
    pub mode: String,
}

fn iptables() -> String {
    "iptables".to_owned()
}

/// One pod of the local mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    #[serde(flatten)]
    pub addrs: PodAddrs,
    pub netns: String,
    /// eBPF mode: the pod's cgroup v2 directory (its eBPF pins are named after it).
    /// Recorded before the cgroup is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

impl MeshState {
    /// The pod named `name`, or an error listing the pods there are.
    pub fn pod(&self, name: &str) -> Result<&PodState> {
        match self.pods.iter().find(|p| p.addrs.name == name) {
            Some(p) => Ok(p),
            None => bail!(
                "no pod {name:?} in the local mesh; pods: {}",
                self.pods
                    .iter()
                    .map(|p| p.addrs.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The state file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The state in `dir`, if a mesh is up (or crashed without cleaning up).
pub fn load(dir: &Path) -> Result<Option<MeshState>> {
    let file = path(dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
    };
    let state = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a weftctl state file", file.display()))?;
    Ok(Some(state))
}

/// The state in `dir`, or an error saying that no local mesh is running.
pub fn require(dir: &Path) -> Result<MeshState> {
    match load(dir)? {
        Some(s) => Ok(s),
        None => bail!(
            "no local mesh is running (no {}); start one with `weftctl up -f FILE`",
            path(dir).display()
        ),
    }
}

/// Writes `state` to `dir` atomically (temp file, fsync, rename), so a reader never
/// sees half a file.
pub fn save(dir: &Path, state: &MeshState) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let file = path(dir);
    let tmp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut f, state).context("serialize the mesh state")?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &file).with_context(|| format!("rename onto {}", file.display()))
}

/// Removes the state file in `dir` (gone already is fine).
pub fn remove(dir: &Path) -> Result<()> {
    match std::fs::remove_file(path(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path(dir).display()))
        }
        _ => Ok(()),
    }
}

/// True if `pid` is a live `weftctl` process (a reused pid running something else
/// does not count).
pub fn is_running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmd| {
            let argv0 = cmd.split(|&b| b == 0).next()?.to_vec();
            let argv0 = String::from_utf8(argv0).ok()?;
            Some(Path::new(&argv0).file_name()? == "weftctl")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> MeshState {
        MeshState {
            pid: 42,
            prefix: "wf12345".into(),
            file: "demo.yaml".into(),
            run_dir: "/tmp/wf12345".into(),
            netns: vec!["wf12345-node".into(), "wf12345-backend-0".into()],
            node_netns: "wf12345-node".into(),
            controller_http: "10.211.0.1:15014".parse().unwrap(),
            pods: vec![PodState {
                addrs: PodAddrs {
                    name: "backend-0".into(),
                    workload: "backend".into(),
                    service: "backend".into(),
                    ipv4: "10.211.0.2".parse().unwrap(),
                    ipv6: "fd00:211::2".parse().unwrap(),
                },
                netns: "wf12345-backend-0".into(),
                cgroup: Some("/sys/fs/cgroup/wf12345-backend-0".into()),
            }],
            hosts_file: "/tmp/wf12345/hosts".into(),
            mode: "ebpf".into(),
        }
    }

    #[test]
    fn saves_loads_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        assert!(require(dir.path()).is_err());
        save(dir.path(), &sample()).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.pods[0].addrs.name, "backend-0");
        assert_eq!(back.netns.len(), 2);
        assert!(back.pod("backend-0").is_ok());
        assert_eq!(back.mode, "ebpf");
        assert_eq!(
            back.pods[0].cgroup.as_deref(),
            Some(Path::new("/sys/fs/cgroup/wf12345-backend-0"))
        );
        let err = back.pod("nope").unwrap_err().to_string();
        assert!(err.contains("pods: backend-0"), "{err}");
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert!(load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_state_file_without_mode_or_cgroups_is_iptables_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("mode");
        v["pods"][0].as_object_mut().unwrap().remove("cgroup");
        std::fs::write(path(dir.path()), v.to_string()).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.mode, "iptables");
        assert_eq!(back.pods[0].cgroup, None);
    }

    #[test]
    fn a_garbled_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "{").unwrap();
        let err = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(err.contains("local-mesh.json"), "{err}");
    }

    #[test]
    fn only_live_weftctl_processes_count_as_running() {
        assert!(!is_running(u32::MAX));
        // This test binary is not weftctl.
        assert!(!is_running(std::process::id()));
    }
}
