//! Which kernel features the programs need, probed on this machine: `--mode auto`
//! picks eBPF only when every one is there, and `--mode ebpf` names the first missing.

use std::path::Path;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{is_map_supported, is_program_supported};
use aya::util::KernelVersion;
use nix::sys::statfs::{statfs, BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC};

use crate::Error;

/// One missing feature: (what, why).
pub type Missing = (String, String);

/// Every feature the programs need that this kernel lacks (empty: all there). Needs
/// the privilege to load programs (root or CAP_BPF); without it, the probes
/// themselves fail and are reported as missing.
pub fn missing(sockmap: bool) -> Vec<Missing> {
    let mut out = Vec::new();
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(5, 7, 0) => {}
        Ok(v) => out.push((
            "bpf links for cgroup programs (Linux 5.7)".to_string(),
            format!("running {v:?}"),
        )),
        Err(e) => out.push(("a readable kernel version".to_string(), e.to_string())),
    }
    let mut programs = vec![
        (
            ProgramType::CgroupSockAddr,
            "cgroup/connect4 and connect6 programs (BPF_PROG_TYPE_CGROUP_SOCK_ADDR)",
        ),
        (
            ProgramType::SockOps,
            "sockops programs (BPF_PROG_TYPE_SOCK_OPS)",
        ),
        (
            ProgramType::CgroupSockopt,
            "cgroup/getsockopt programs (BPF_PROG_TYPE_CGROUP_SOCKOPT)",
        ),
    ];
    if sockmap {
        programs.push((ProgramType::SkMsg, "sk_msg programs (BPF_PROG_TYPE_SK_MSG)"));
    }
    for (ty, name) in programs {
        match is_program_supported(ty) {
            Ok(true) => {}
            Ok(false) => out.push((
                name.to_string(),
                "the kernel refused a probe program".to_string(),
            )),
            Err(e) => out.push((name.to_string(), format!("probe failed: {e}"))),
        }
    }
    let mut maps = vec![
        (MapType::LruHash, "LRU hash maps"),
        (MapType::LpmTrie, "LPM trie maps"),
        (MapType::PerCpuArray, "per-CPU array maps"),
    ];
    if sockmap {
        maps.push((MapType::SockHash, "sockhash maps"));
    }
    for (ty, name) in maps {
        match is_map_supported(ty) {
            Ok(true) => {}
            Ok(false) => out.push((
                name.to_string(),
                "the kernel refused a probe map".to_string(),
            )),
            Err(e) => out.push((name.to_string(), format!("probe failed: {e}"))),
        }
    }
    match std::fs::read_to_string("/proc/filesystems") {
        Ok(fs) => {
            for (name, what) in [
                ("cgroup2", "cgroup v2"),
                ("bpf", "the BPF file system (bpffs)"),
            ] {
                if !fs
                    .lines()
                    .any(|l| l.split_whitespace().last() == Some(name))
                {
                    out.push((what.to_string(), "not in /proc/filesystems".to_string()));
                }
            }
        }
        Err(e) => out.push(("/proc/filesystems".to_string(), e.to_string())),
    }
    out
}

/// Ok when every feature is there; else the first missing one as an error.
pub fn check(sockmap: bool) -> Result<(), Error> {
    match missing(sockmap).into_iter().next() {
        None => Ok(()),
        Some((feature, detail)) => Err(Error::Unsupported { feature, detail }),
    }
}

/// Ok when `path` is a directory of a cgroup v2 hierarchy, and not its root (only a
/// non-root cgroup has a `cgroup.type` file).
pub fn check_cgroup2(path: &Path) -> Result<(), Error> {
    match statfs(path) {
        Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC => {
            if path.join("cgroup.type").exists() {
                Ok(())
            } else {
                Err(Error::RootCgroup(path.to_path_buf()))
            }
        }
        Ok(_) => Err(Error::NotCgroup2 {
            path: path.to_path_buf(),
            detail: "it is on another file system (cgroup v2 is often at /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)".to_string(),
        }),
        Err(e) => Err(Error::NotCgroup2 {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Mounts bpffs at `path` unless one is there already (as `mount -t bpf bpf PATH`).
pub fn ensure_bpffs(path: &Path) -> Result<(), Error> {
    if matches!(statfs(path), Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|cause| Error::Io {
        what: "creating",
        path: path.to_path_buf(),
        cause,
    })?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::Io {
        what: "mounting bpffs at",
        path: path.to_path_buf(),
        cause: e.into(),
    })?;
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}
