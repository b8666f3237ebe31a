//! What a tier-2 run could leave on the host, read before and after the run: network
//! namespaces, interfaces in the host namespace, weft chains in the host's iptables
//! (which tests never touch: their rules live in their own namespaces), and eBPF
//! mode's pins under `/sys/fs/bpf/weft/`, programs attached to cgroups and the pods'
//! cgroups (`wf…`) under the cgroup v2 root.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::Context as _;

/// A read-only snapshot of the host's network state.
#[derive(Debug)]
pub struct HostState {
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
    weft_rules: BTreeSet<String>,
    bpf: BTreeSet<String>,
}

/// Where weft-init pins eBPF links and maps, one directory per pod.
const BPF_PIN_DIR: &str = "/sys/fs/bpf/weft";

/// Where cgroup v2 is mounted (`/sys/fs/cgroup/unified` on a hybrid host).
fn cgroup2_root() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(|p| (*p).to_owned()))
}

/// Pod cgroups the tests and the local mesh make (`<prefix>-<pod>`, prefixes `wf…`)
/// directly under the cgroup v2 root.
fn mesh_cgroups() -> BTreeSet<String> {
    let Some(root) = cgroup2_root() else {
        return BTreeSet::new();
    };
    std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_string_lossy().starts_with("wf"))
        .map(|e| format!("cgroup {}", e.path().display()))
        .collect()
}

/// Pin directories under [`BPF_PIN_DIR`], and cgroups with a weft program attached
/// (`bpftool cgroup tree` names the programs; weft's start with `weft_`).
fn bpf_state() -> BTreeSet<String> {
    let mut out: BTreeSet<String> = std::fs::read_dir(BPF_PIN_DIR)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| format!("pin {}", e.path().display()))
        .collect();
    if let Ok(tree) = output("bpftool", &["cgroup", "tree"]) {
        let mut cgroup = String::new();
        for line in tree.lines() {
            if line.starts_with('/') {
                cgroup = line.split_whitespace().next().unwrap_or("").to_owned();
            } else if line.contains("weft") {
                out.insert(format!("program on {cgroup}: {}", line.trim()));
            }
        }
    }
    out
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn first_words(text: &str, strip: &[char]) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|w| w.trim_end_matches(strip).to_string())
        .collect()
}

impl HostState {
    /// Reads the current state (nothing is modified).
    pub fn read() -> anyhow::Result<Self> {
        let netns = first_words(&output("ip", &["netns", "list"])?, &[]);
        // `ip -o link` lines: "3: name@peer: <...>"; keep the name.
        let links = output("ip", &["-o", "link", "show"])?
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect();
        let mut weft_rules = BTreeSet::new();
        for save in [
            "iptables-nft-save",
            "ip6tables-nft-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ] {
            // A missing backend prints nothing; that is fine here.
            if let Ok(text) = output(save, &[]) {
                weft_rules.extend(
                    text.lines()
                        .filter(|l| l.contains("WEFT"))
                        .map(|l| format!("{save}: {l}")),
                );
            }
        }
        Ok(HostState {
            netns,
            links,
            weft_rules,
            bpf: bpf_state().into_iter().chain(mesh_cgroups()).collect(),
        })
    }

    /// Everything present now that was not present in `before`.
    pub fn leaked_since(&self, before: &HostState) -> Vec<String> {
        let new = |now: &BTreeSet<String>, then: &BTreeSet<String>, what: &str| -> Vec<String> {
            now.difference(then)
                .map(|n| format!("{what} {n}"))
                .collect()
        };
        let mut out = new(&self.netns, &before.netns, "network namespace");
        out.extend(new(&self.links, &before.links, "host interface"));
        out.extend(new(&self.weft_rules, &before.weft_rules, "iptables rule"));
        out.extend(new(&self.bpf, &before.bpf, "eBPF"));
        out
    }
}
