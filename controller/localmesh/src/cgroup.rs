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
use weft_ebpf_common::Stat;

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
    /// Set once removed by [`PodCgroup::close`]: the drop then has nothing to do.
    closed: bool,
}

impl PodCgroup {
    /// The directory [`PodCgroup::create`] makes for `pod`:
    /// `<cgroup2 root>/<mesh prefix>-<pod>` (e.g. to record it before creating it).
    pub fn path_for(mesh: &Mesh, pod: &Pod) -> Result<PathBuf> {
        Ok(cgroup2_root()?.join(format!("{}-{}", mesh.prefix(), pod.name())))
    }

    /// Creates `<cgroup2 root>/<mesh prefix>-<pod>`.
    pub fn create(mesh: &Mesh, pod: &Pod) -> Result<PodCgroup> {
        let name = format!("{}-{}", mesh.prefix(), pod.name());
        let path = cgroup2_root()?.join(&name);
        fs::create_dir(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        Ok(PodCgroup {
            name,
            path,
            closed: false,
        })
    }

    /// The cgroup v2 directory `path` (which may exist or not), to be removed with
    /// its pins and processes like one this harness created: e.g. what a crashed
    /// `weftctl up` left behind. Refuses a path outside the cgroup v2 hierarchy and
    /// the hierarchy's root.
    pub fn adopt(path: &Path) -> Result<PodCgroup> {
        let root = cgroup2_root()?;
        let name = match path.strip_prefix(&root) {
            Ok(rel) if rel.components().count() == 1 => rel.to_string_lossy().into_owned(),
            _ => bail!(
                "{} is not a cgroup directly under the cgroup v2 root {}",
                path.display(),
                root.display()
            ),
        };
        Ok(PodCgroup {
            name,
            path: path.to_path_buf(),
            closed: false,
        })
    }

    /// Removes the cgroup now (its eBPF pins first, then its processes, then the
    /// directory), saying what could not be removed; a cgroup already gone is fine.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.remove()
    }

    /// A counter of the pod's eBPF programs (summed over CPUs), read with bpftool
    /// from the pinned `WEFT_STATS` map (`weft-init --mode ebpf` must have run).
    pub fn stat(&self, stat: Stat) -> Result<u64> {
        let v = self.dump_map(weft_ebpf_common::MAP_STATS)?;
        let index = stat as u32;
        let entry = v
            .iter()
            .find(|e| hex_u64(&e["key"]) == Some(u64::from(index)))
            .with_context(|| format!("no key {index} in WEFT_STATS: {v:?}"))?;
        let cpus = entry["values"]
            .as_array()
            .with_context(|| format!("WEFT_STATS entry without values: {entry}"))?;
        cpus.iter()
            .map(|cpu| hex_u64(&cpu["value"]).with_context(|| format!("bad value in {cpu}")))
            .sum()
    }

    /// Every counter of the pod's programs, `name=value` separated by spaces (for
    /// printing).
    pub fn stats_line(&self) -> String {
        Stat::ALL
            .iter()
            .map(|s| match self.stat(*s) {
                Ok(v) => format!("{}={v}", s.name()),
                Err(_) => format!("{}=?", s.name()),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// How many entries the pod's pinned map `map` (e.g.
    /// [`weft_ebpf_common::MAP_ORIG_BY_CLIENT`]) holds.
    pub fn map_len(&self, map: &str) -> Result<usize> {
        Ok(self.dump_map(map)?.len())
    }

    /// `bpftool -j map dump pinned <pin dir>/map_<map>`.
    fn dump_map(&self, map: &str) -> Result<Vec<serde_json::Value>> {
        let pin = self.pin_dir().join(format!("map_{map}"));
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin)
            .output()
            .context("run bpftool (install it with `cargo xtask setup-ebpf`)")?;
        if !out.status.success() {
            bail!(
                "bpftool map dump pinned {}: {}",
                pin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")?;
        match v {
            serde_json::Value::Array(entries) => Ok(entries),
            other => bail!("bpftool printed {other}"),
        }
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
        if !self.path.exists() && !self.pin_dir().exists() {
            return Ok(());
        }
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

/// A little-endian integer from bpftool's JSON bytes (`["0x01", "0x00", ...]`).
fn hex_u64(v: &serde_json::Value) -> Option<u64> {
    let bytes = v
        .as_array()?
        .iter()
        .map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    word[..n].copy_from_slice(&bytes[..n]);
    Some(u64::from_le_bytes(word))
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Err(e) = self.remove() {
            eprintln!("weft-localmesh: cleaning up cgroup {}: {e:#}", self.name);
        }
    }
}
