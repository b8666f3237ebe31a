//! Network namespaces: create and delete them (`ip netns`), enter one from a
//! thread of the test process, and find the processes inside one.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::cmd;

/// Where `ip netns add` pins named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The pin of the namespace `name`: `/var/run/netns/<name>`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the named namespace; fails if it exists already.
pub fn add(name: &str) -> Result<()> {
    cmd::ip(["netns", "add", name]).map(drop)
}

/// Deletes the named namespace (its pin; the namespace itself, with its veth
/// ends, goes away once no process is left in it).
pub fn delete(name: &str) -> Result<()> {
    cmd::ip(["netns", "delete", name]).map(drop)
}

/// The names `ip netns list` shows.
pub fn list() -> Result<Vec<String>> {
    let out = cmd::ip(["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Identity of a namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

/// The identity of the namespace pinned at (or linked from) `path`.
pub fn ns_id(path: &Path) -> Result<NsId> {
    let md = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(NsId {
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// Pids of the processes (thread-group leaders) whose network namespace is `id`,
/// the test process itself excluded.
pub fn pids_in(id: NsId) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            ns_id(&Path::new("/proc").join(pid.to_string()).join("ns/net")).ok() == Some(id)
        })
        .collect()
}

/// Runs `f` on a new thread of the test process that first joins the network
/// namespace at `ns_path` with `setns(CLONE_NEWNET)`; the namespace of a thread
/// is its own, so the rest of the process is untouched, and the thread ends with
/// `f`. Sockets made in `f` stay in that namespace wherever they are used later.
/// A panic in `f` is resumed on the caller's thread.
pub fn run_in<T, F>(ns_path: &Path, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let ns = File::open(ns_path).with_context(|| format!("open {}", ns_path.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T> {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns(CLONE_NEWNET) into {}", ns_path.display()))?;
            drop(ns);
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
