//! Whether the network namespace weft-init runs in has IPv6, read from its `/proc`.
//!
//! `/proc/net` and `/proc/sys/net` are per network namespace, so reading them after
//! `ip netns exec` (or `setns`) describes the pod, not the host.

use std::fs;
use std::path::{Path, PathBuf};

/// IPv6 availability in the current network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6 {
    /// IPv6 is usable: ip6tables rules are installed alongside the IPv4 ones.
    Enabled,
    /// The kernel has IPv6 but it is switched off here (`disable_ipv6` is not 0, or
    /// unreadable); rules are not installed, but `--cleanup` still looks for them.
    Disabled(String),
    /// The kernel has no IPv6 (`/proc/net/if_inet6` is missing).
    Absent,
}

impl Ipv6 {
    /// Whether capture rules are installed for IPv6.
    pub fn install(&self) -> bool {
        matches!(self, Ipv6::Enabled)
    }

    /// Whether `--cleanup` looks for IPv6 rules (ip6tables works whenever the kernel
    /// has IPv6, even with `disable_ipv6` set).
    pub fn cleanup(&self) -> bool {
        !matches!(self, Ipv6::Absent)
    }

    /// Why IPv6 is skipped, for the summary.
    pub fn reason(&self) -> String {
        match self {
            Ipv6::Enabled => "IPv6 is enabled".to_string(),
            Ipv6::Disabled(why) => why.clone(),
            Ipv6::Absent => "the kernel has no IPv6 (no /proc/net/if_inet6)".to_string(),
        }
    }
}

/// Where `/proc` is; tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        ProcFs::new("/proc")
    }
}

impl ProcFs {
    /// A `/proc` rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcFs { root: root.into() }
    }

    /// Detects IPv6: present when `net/if_inet6` exists, enabled when
    /// `sys/net/ipv6/conf/all/disable_ipv6` reads 0.
    pub fn ipv6(&self) -> Ipv6 {
        if !self.root.join("net/if_inet6").exists() {
            return Ipv6::Absent;
        }
        let knob: &Path = Path::new("sys/net/ipv6/conf/all/disable_ipv6");
        match fs::read_to_string(self.root.join(knob)) {
            Ok(v) if v.trim() == "0" => Ipv6::Enabled,
            Ok(v) => Ipv6::Disabled(format!(
                "IPv6 is disabled in this network namespace (/proc/{} = {})",
                knob.display(),
                v.trim()
            )),
            Err(e) => Ipv6::Disabled(format!("cannot read /proc/{}: {e}", knob.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(if_inet6: bool, disable: Option<&str>) -> (PathBuf, ProcFs) {
        let root = std::env::temp_dir().join(format!(
            "weft-init-proc-{}-{if_inet6}-{}",
            std::process::id(),
            disable.unwrap_or("none")
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("net")).unwrap();
        if if_inet6 {
            fs::write(root.join("net/if_inet6"), "").unwrap();
        }
        if let Some(v) = disable {
            let dir = root.join("sys/net/ipv6/conf/all");
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("disable_ipv6"), v).unwrap();
        }
        (root.clone(), ProcFs::new(root))
    }

    #[test]
    fn detection() {
        let cases = [
            (true, Some("0\n"), true, true),
            (true, Some("1\n"), false, true),
            (true, None, false, true),
            (false, Some("0\n"), false, false),
        ];
        for (if_inet6, disable, install, cleanup) in cases {
            let (root, proc_fs) = fake_proc(if_inet6, disable);
            let v6 = proc_fs.ipv6();
            assert_eq!(v6.install(), install, "{v6:?}");
            assert_eq!(v6.cleanup(), cleanup, "{v6:?}");
            fs::remove_dir_all(root).unwrap();
        }
    }
}
