//! Per-pod cgroup v2 for eBPF-mode tests: weft's cgroup programs apply to every
//! socket made by a process in the pod's cgroup, so the proxy and the apps of a pod
//! run in `<cgroup2 mount>/<mesh prefix>-<pod>`.
//!
//! A [`PodCgroup`] is created empty and removed on drop, also while a test panics:
//! its eBPF pins (`/sys/fs/bpf/weft/<name>`, which weft-init names after the cgroup)
//! are removed first — that detaches the programs — then every process left in it
//! is killed and the directory removed. The name carries the mesh's per-run prefix.
//!
//! Processes enter the cgroup through [`PodCgroup::wrap`]: the command runs as root
//! under `sh`, which moves itself into the cgroup (`echo 0 > cgroup.procs`) and only
//! then drops to the uid with `setpriv` and execs the command, so every socket it
//! makes, listeners included, belongs to the cgroup from the start.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::{wait_until, Mesh, Pod};

/// Where weft-init pins a pod's programs and maps.
pub const PIN_ROOT: &str = "/sys/fs/bpf/weft";

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one), from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            // "... mount-point options - fstype source super-options"
            let (pre, post) = line.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup v2 hierarchy is mounted (eBPF mode needs one)")
}

/// A pod's cgroup v2 directory, removed (with its eBPF pins and processes) on drop.
#[derive(Debug)]
pub struct PodCgroup {
    name: String,
    path: PathBuf,
}

impl PodCgroup {
    /// Creates `<cgroup2 root>/<mesh prefix>-<pod>`.
    pub fn create(mesh: &Mesh, pod: &Pod) -> Result<PodCgroup> {
        let name = format!("{}-{}", mesh.prefix(), pod.name());
        let path = cgroup2_root()?.join(&name);
        fs::create_dir(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        Ok(PodCgroup { name, path })
    }

    /// The cgroup's directory (what `weft-init --cgroup` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup's name, which is also the pod's pin directory name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/sys/fs/bpf/weft/<name>`.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(&self.name)
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// `argv` wrapped so that it runs in this cgroup, as `uid` (gid the same) if
    /// given; spawn or run the result as root.
    pub fn wrap<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S], uid: Option<u32>) -> Vec<OsString> {
        let procs = self.path.join("cgroup.procs");
        let mut out: Vec<OsString> = vec![
            "sh".into(),
            "-c".into(),
            r#"echo 0 > "$0" && exec "$@""#.into(),
            procs.into_os_string(),
        ];
        if let Some(uid) = uid {
            out.extend(
                [
                    "setpriv".to_string(),
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_string(),
                    "--".to_string(),
                ]
                .map(OsString::from),
            );
        }
        out.extend(argv.iter().map(|a| a.as_ref().to_owned()));
        out
    }

    fn remove(&self) -> Result<()> {
        let mut problems = Vec::new();
        // Pins first: removing a link pin ends that attachment.
        let pins = self.pin_dir();
        if pins.exists() {
            if let Err(e) = fs::remove_dir_all(&pins) {
                problems.push(format!("remove {}: {e}", pins.display()));
            }
        }
        // The shared parent goes with the last pod's directory (fails while others exist).
        let _ = fs::remove_dir(PIN_ROOT);
        // A cgroup with processes cannot be removed: kill them, then wait.
        let emptied = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            let pids = self.pids();
            for pid in &pids {
                // SAFETY: kill(2) with a pid read from cgroup.procs and a valid signal.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            pids.is_empty()
        });
        if emptied.is_err() {
            problems.push(format!(
                "{} still has processes {:?}",
                self.path.display(),
                self.pids()
            ));
        }
        let removed =
            wait_until(
                Duration::from_secs(5),
                Duration::from_millis(20),
                || match fs::remove_dir(&self.path) {
                    Ok(()) => true,
                    Err(e) => e.kind() == io::ErrorKind::NotFound,
                },
            );
        if removed.is_err() {
            problems.push(format!("cannot remove cgroup {}", self.path.display()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("weft-e2e: cleaning up cgroup {}: {e:#}", self.name);
        }
    }
}
