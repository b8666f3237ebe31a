//! `weftctl exec POD -- CMD`: a command inside a pod, the way its workload runs —
//! in the pod's network namespace (and, in eBPF mode, its cgroup), with the mesh's
//! `/etc/hosts`, as root, so its connections are captured by the pod's sidecar. Stdin, stdout and stderr are
//! the terminal's; the exit status is the command's.

use std::ffi::OsString;
use std::fs::File;
use std::path::Path;
use std::process::{ExitCode, Stdio};

use anyhow::{Context as _, Result};
use weft_localmesh::process::Entry;

use crate::state;

/// Runs `argv` in `pod` and returns its exit status as ours.
pub fn run(state_dir: &Path, pod: &str, argv: &[OsString]) -> Result<ExitCode> {
    let mesh = state::require(state_dir)?;
    let pod = mesh.pod(pod)?;
    let ns_path = weft_localmesh::netns::path(&pod.netns);
    let ns = File::open(&ns_path).with_context(|| format!("open {}", ns_path.display()))?;
    let mut cmd = Entry::default()
        .hosts_file(Some(mesh.hosts_file.clone()))
        .cwd(std::env::current_dir().ok())
        .cgroup(pod.cgroup.clone())
        .command(&ns, argv)?;
    cmd.stdin(Stdio::inherit())
        .env("WEFT_POD", &pod.addrs.name)
        .env("WEFT_SERVICE", &pod.addrs.service);
    let status = cmd
        .status()
        .with_context(|| format!("run {argv:?} in pod {}", pod.addrs.name))?;
    drop(ns);
    // A signal's death reads as 128 + signal, like a shell says it.
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
