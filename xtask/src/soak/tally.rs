//! What a pod's life could leave behind, counted: read before and after a soak and
//! compared line by line.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};
use weft_localmesh::cgroup::cgroup2_root;
use weft_localmesh::Mesh;

/// Where weft-init pins its eBPF objects, one directory per pod.
const BPF_PIN_DIR: &str = "/sys/fs/bpf/weft";

/// Counts by what they count, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally(pub BTreeMap<&'static str, u64>);

impl Tally {
    /// Reads the counts now: host-wide ones, the mesh's node namespace, and the
    /// long-lived controller (pid `controller`).
    pub fn read(mesh: &Mesh, controller: u32) -> Result<Tally> {
        let mut t = BTreeMap::new();
        t.insert(
            "network namespaces",
            lines(&output("ip", &["netns", "list"])?),
        );
        t.insert(
            "interfaces, host",
            lines(&output("ip", &["-o", "link", "show"])?),
        );
        let node = mesh.node().netns_name();
        t.insert(
            "interfaces, node namespace (veths)",
            lines(&output("ip", &["-n", node, "-o", "link", "show"])?),
        );
        t.insert("iptables WEFT lines, host", weft_rule_lines());
        t.insert("pod cgroups (wf*)", pod_cgroups()?);
        t.insert(
            "bpffs pins under /sys/fs/bpf/weft",
            entries(Path::new(BPF_PIN_DIR)),
        );
        t.insert("BPF programs (bpftool prog list)", bpftool_count("prog")?);
        t.insert("BPF maps (bpftool map list)", bpftool_count("map")?);
        t.insert("weft processes", weft_processes());
        t.insert("controller open fds", fds(controller)?);
        Ok(Tally(t))
    }

    /// [`read`](Self::read) until two reads a second apart agree (up to 15 s): the
    /// kernel frees a closed program's maps from a work queue, and an exiting
    /// process's descriptors go a moment after it is reaped.
    pub fn read_settled(mesh: &Mesh, controller: u32) -> Result<Tally> {
        let mut last = Tally::read(mesh, controller)?;
        for _ in 0..15 {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let now = Tally::read(mesh, controller)?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }

    /// The lines on which `self` differs from `other`, as "what: a → b".
    pub fn differences(&self, other: &Tally) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| other.0.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: {v} → {}", other.0.get(k).copied().unwrap_or(0)))
            .collect()
    }
}

/// A table of tallies side by side, one column per `(heading, tally)`.
pub fn table(columns: &[(&str, &Tally)]) -> String {
    let mut s = String::from("| count |");
    for (h, _) in columns {
        s.push_str(&format!(" {h} |"));
    }
    s.push_str("\n| --- |");
    s.push_str(&" ---: |".repeat(columns.len()));
    s.push('\n');
    if let Some((_, first)) = columns.first() {
        for k in first.0.keys() {
            s.push_str(&format!("| {k} |"));
            for (_, t) in columns {
                s.push_str(&format!(" {} |", t.0.get(k).copied().unwrap_or(0)));
            }
            s.push('\n');
        }
    }
    s
}

/// Resident set of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The anonymous part of `pid`'s resident set in KiB (`RssAnon`: heap, stacks;
/// not the binary's and libraries' pages, which every copy of them shares).
pub fn rss_anon_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "RssAnon")
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Open descriptors of `pid`.
pub fn fds(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("read /proc/{pid}/fd"))?
        .count() as u64)
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lines(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

/// Lines naming a weft chain in the host's rule sets (tests never touch them:
/// pods' rules live in the pods' namespaces and go with them).
fn weft_rule_lines() -> u64 {
    [
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ]
    .iter()
    .filter_map(|save| output(save, &[]).ok())
    .map(|text| text.lines().filter(|l| l.contains("WEFT")).count() as u64)
    .sum()
}

fn pod_cgroups() -> Result<u64> {
    Ok(std::fs::read_dir(cgroup2_root()?)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_string_lossy().starts_with("wf"))
        .count() as u64)
}

/// Entries under `dir`, recursively (0 if it does not exist).
fn entries(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| {
            let nested = if e.file_type().is_ok_and(|t| t.is_dir()) {
                entries(&e.path())
            } else {
                0
            };
            1 + nested
        })
        .sum()
}

/// Objects of `kind` (`prog` or `map`) loaded in the kernel, machine-wide.
fn bpftool_count(kind: &str) -> Result<u64> {
    let text = output("bpftool", &["-j", kind, "list"])?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("bpftool {kind} list: not JSON"))?;
    Ok(v.as_array().map_or(0, |a| a.len()) as u64)
}

/// Processes whose command is one of weft's binaries (the kernel's `comm` keeps 15
/// bytes: `weft-controller` fits).
fn weft_processes() -> u64 {
    const NAMES: [&str; 3] = ["weft-proxy", "weft-init", "weft-controller"];
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|comm| NAMES.contains(&comm.trim()))
        .count() as u64
}
