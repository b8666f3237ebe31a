//! weft-init: the one-shot, per-pod installer of transparent TCP capture.
//!
//! It runs inside the pod's network namespace (`ip netns exec POD weft-init`, or as a
//! Kubernetes init container) and installs nat-table REDIRECT rules that send the
//! pod's outbound TCP to the sidecar's outbound listener (15001) and its inbound TCP to
//! the inbound listener (15006), except the proxy's own traffic (uid 1337), loopback,
//! the proxy's own ports (15000, 15020, and both listeners), and whatever ports and
//! CIDRs the operator excludes. IPv4 and IPv6 (when the namespace has it) get the same
//! rules. `--cleanup` removes every trace; `--dry-run` prints instead of applying.
//!
//! It owns the chains `WEFT_OUTPUT` and `WEFT_INBOUND` in the nat table and the two
//! jumps into them (`OUTPUT -p tcp -j WEFT_OUTPUT`, `PREROUTING -p tcp -j
//! WEFT_INBOUND`), in both families and in whichever iptables backend (nft or legacy)
//! it picked; nothing else is touched. eBPF interception is planned here too
//! (`--mode ebpf`) but not implemented yet.
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
pub mod error;
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
    match config.mode {
        Mode::Ebpf => return Err(Error::EbpfNotImplemented),
        // auto: eBPF is not available yet, so it always means iptables for now.
        Mode::Iptables | Mode::Auto => {}
    }
    match (config.action, config.dry_run) {
        (Action::Install, false) => install::install(sys, &config.capture, config.backend, out),
        (Action::Install, true) => install::dry_run(sys, &config.capture, config.backend, out),
        (Action::Cleanup, false) => cleanup::cleanup(sys, config.backend, out),
        (Action::Cleanup, true) => cleanup::dry_run(sys, config.backend, out),
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
    fn ebpf_mode_fails_clearly_and_touches_nothing() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, true);
        for extra in [&[][..], &["--dry-run"], &["--cleanup"]] {
            let mut args = vec!["--mode", "ebpf"];
            args.extend_from_slice(extra);
            let err = run(&config(&args), &sys.system(), &mut Vec::new()).unwrap_err();
            assert_eq!(
                err.to_string(),
                "eBPF interception is not implemented yet (tracked in the eBPF issue); use --mode iptables"
            );
        }
        assert!(fake.log().is_empty());
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
