//! weft-init: the one-shot, per-pod installer of transparent TCP capture.
//!
//! It runs inside the pod's network namespace (`ip netns exec POD weft-init`, or as a
//! Kubernetes init container) and installs nat-table REDIRECT rules that send the
//! pod's outbound TCP to the sidecar's outbound listener (15001) and its inbound TCP to
//! the inbound listener (15006), except the proxy's own traffic (uid 1337), loopback,
//! the proxy's own ports (15000, 15020, the tunnel's 15008, and both capture
//! listeners), and whatever ports and CIDRs the operator excludes. IPv4 and IPv6
//! (when the namespace has it) get the same rules. `--cleanup` removes every trace;
//! `--dry-run` prints instead of applying.
//!
//! It owns the chains `WEFT_OUTPUT` and `WEFT_INBOUND` in the nat table and the two
//! jumps into them (`OUTPUT -p tcp -j WEFT_OUTPUT`, `PREROUTING -p tcp -j
//! WEFT_INBOUND`), in both families and in whichever iptables backend (nft or legacy)
//! it picked; nothing else is touched.
//!
//! `--mode ebpf --cgroup PATH` captures outbound TCP with weft's eBPF programs
//! attached to the pod's cgroup v2 instead (see [`ebpf`] and the weft-ebpf crate), and
//! inbound TCP with the same iptables rules as above (WEFT_INBOUND only). `--mode auto`
//! picks ebpf when it is given a cgroup and every kernel feature is there.
//!
//! # Layout
//!
//! - [`config`]: flags (clap, each also a `WEFT_*` variable) and their validation.
//! - [`net`]: families, CIDRs, ports.
//! - [`rules`]: pure generation of the ruleset and the `iptables-restore` input.
//! - [`state`]: reading `iptables-save` output.
//! - [`backend`]: finding and running the iptables binaries; nft vs legacy choice.
//! - [`ipv6`]: whether the namespace has IPv6.
//! - [`install`] and [`cleanup`]: the two actions, each with its dry run.
//! - [`ebpf`]: `--mode ebpf` (eBPF outbound, iptables inbound).
//! - [`error`]: what can go wrong, in words an operator can act on.
//!
//! Installing is atomic per family (one `*-restore --noflush` that redeclares, hence
//! flushes, weft's chains) and idempotent; if IPv6 fails after IPv4 succeeded, IPv4 is
//! rolled back.

// Tests may unwrap; the library itself may not (checked when clippy lints the non-test build).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod cleanup;
pub mod config;
pub mod ebpf;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod install;
pub mod ipv6;
pub mod net;
pub mod rules;
pub mod state;
#[cfg(test)]
mod testing;

use std::io::Write;

pub use config::{Cli, Config};
pub use error::Error;

use backend::{PathSearch, Runner, SystemRunner};
use config::{Action, Mode};
use ipv6::ProcFs;

/// The outside world weft-init acts on; tests substitute each part.
#[derive(Debug)]
pub struct System<'a> {
    /// Runs the iptables binaries.
    pub runner: &'a dyn Runner,
    /// Where the binaries are looked up.
    pub path: PathSearch,
    /// The namespace's `/proc` (for IPv6 detection).
    pub proc_fs: ProcFs,
}

impl System<'static> {
    /// The real machine: child processes, `$PATH`, `/proc`.
    pub fn real() -> Self {
        System {
            runner: &SystemRunner,
            path: PathSearch::from_env(),
            proc_fs: ProcFs::default(),
        }
    }
}

/// Carries out `config`, writing the summary (or the dry-run output) to `out`.
pub fn run(config: &Config, sys: &System<'_>, out: &mut dyn Write) -> Result<(), Error> {
    let ebpf = match config.mode {
        Mode::Ebpf => true,
        Mode::Iptables => false,
        Mode::Auto => match ebpf::usable(config) {
            Ok(()) => {
                tracing::info!("mode auto: ebpf");
                true
            }
            Err(why) => {
                tracing::info!(%why, "mode auto: iptables");
                // A cleanup in auto mode removes what either mode may have installed.
                if config.action == Action::Cleanup && config.ebpf.cgroup.is_some() {
                    return ebpf_cleanup(config, sys, out);
                }
                false
            }
        },
    };
    if ebpf {
        return match (config.action, config.dry_run) {
            (Action::Install, false) => ebpf::install(config, sys, out),
            (Action::Install, true) => ebpf::dry_run(config, sys, out),
            (Action::Cleanup, _) => ebpf_cleanup(config, sys, out),
        };
    }
    match (config.action, config.dry_run) {
        (Action::Install, false) => install::install(sys, &config.capture, config.backend, out),
        (Action::Install, true) => install::dry_run(sys, &config.capture, config.backend, out),
        (Action::Cleanup, false) => cleanup::cleanup(sys, config.backend, out),
        (Action::Cleanup, true) => cleanup::dry_run(sys, config.backend, out),
    }
}

fn ebpf_cleanup(config: &Config, sys: &System<'_>, out: &mut dyn Write) -> Result<(), Error> {
    if config.dry_run {
        ebpf::cleanup_dry_run(config, sys, out)
    } else {
        ebpf::cleanup(config, sys, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use testing::{FakeIptables, FakeSystem};

    fn config(args: &[&str]) -> Config {
        let cli =
            Cli::try_parse_from(std::iter::once("weft-init").chain(args.iter().copied())).unwrap();
        Config::try_from(cli).unwrap()
    }

    #[test]
    fn ebpf_dry_run_shows_ebpf_outbound_and_iptables_inbound_only() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, false);
        let mut out = Vec::new();
        let args = [
            "--mode",
            "ebpf",
            "--cgroup",
            "/sys/fs/cgroup/unified/weft-test-pod",
            "--exclude-outbound-ports",
            "22",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12",
            "--dry-run",
        ];
        run(&config(&args), &sys.system(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "attach cgroup/connect4 (weft_connect4) to cgroup /sys/fs/cgroup/unified/weft-test-pod",
            "attach cgroup/getsockopt (weft_getsockopt)",
            "/sys/fs/bpf/weft/weft-test-pod/link_weft_connect6",
            "exclude destination port 22",
            "exclude destination 10.96.0.0/12",
            "-A PREROUTING -p tcp -j WEFT_INBOUND",
            "-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15006",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("-A WEFT_OUTPUT"), "{text}");
        assert!(!text.contains("-j WEFT_OUTPUT"), "{text}");
        // Nothing was changed.
        assert!(fake.is_clean("iptables-nft"));
    }

    #[test]
    fn auto_mode_without_a_cgroup_installs_iptables() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, false);
        let mut out = Vec::new();
        run(&config(&["--mode", "auto"]), &sys.system(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("outbound TCP -> port 15001 (WEFT_OUTPUT"),
            "{text}"
        );
    }

    #[test]
    fn auto_mode_installs_iptables() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, false);
        let mut out = Vec::new();
        run(&config(&["--mode", "auto"]), &sys.system(), &mut out).unwrap();
        assert!(!fake.is_clean("iptables-nft"));
    }
}
