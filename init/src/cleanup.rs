//! Removing everything weft-init installed (`--cleanup`), and printing what would be
//! removed (`--cleanup --dry-run`).
//!
//! Per backend and family: delete the jumps (`-D` while `-C` finds one), then flush
//! (`-F`) and delete (`-X`) weft's chains. What exists is read from `*-save` first, so
//! a backend or family holding nothing of weft's is left untouched (not even a table
//! gets created), and a namespace without weft rules is a success.

use std::fmt;
use std::io::Write;

use crate::backend::{Backend, Iptables, PathSearch, Tool};
use crate::config::BackendChoice;
use crate::error::Error;
use crate::net::Family;
use crate::rules::{CHAINS, JUMPS};
use crate::state::NatState;
use crate::System;

/// Bound on `-D` repetitions for one jump, so a misbehaving binary cannot loop forever.
const MAX_JUMP_DELETIONS: usize = 64;

/// What was removed for one backend and family (its `Display` is the summary line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The family.
    pub family: Family,
    /// The iptables binary used.
    pub binary: String,
    /// Jump rules deleted.
    pub jumps: usize,
    /// Chains deleted.
    pub chains: Vec<&'static str>,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): ", self.family, self.binary)?;
        if self.jumps == 0 && self.chains.is_empty() {
            return f.write_str("nothing to remove");
        }
        write!(f, "removed {} jump rules", self.jumps)?;
        if !self.chains.is_empty() {
            write!(f, " and chains {}", self.chains.join(", "))?;
        }
        Ok(())
    }
}

/// The backends `--cleanup` visits: the one named, or with `auto` every one whose
/// `iptables-*` binary is installed.
fn backends(choice: BackendChoice, path: &PathSearch) -> Result<Vec<Backend>, Error> {
    match choice {
        BackendChoice::Nft => Ok(vec![Backend::Nft]),
        BackendChoice::Legacy => Ok(vec![Backend::Legacy]),
        BackendChoice::Auto => {
            let found: Vec<Backend> = Backend::ALL
                .into_iter()
                .filter(|b| path.find(&b.binary(Family::V4, Tool::Iptables)).is_some())
                .collect();
            if found.is_empty() {
                Err(Error::NoBackend {
                    path: path.to_string(),
                })
            } else {
                Ok(found)
            }
        }
    }
}

/// Removes weft's rules from every family (and, with `auto`, every installed backend)
/// and writes one summary line per backend and family cleaned. Every family and
/// backend is tried even when one fails; the failures are then reported together.
pub fn cleanup(sys: &System<'_>, choice: BackendChoice, out: &mut dyn Write) -> Result<(), Error> {
    let ipv6 = sys.proc_fs.ipv6();
    let families: &[Family] = if ipv6.cleanup() {
        &Family::ALL
    } else {
        &[Family::V4]
    };
    let mut handles = Vec::new();
    for backend in backends(choice, &sys.path)? {
        for family in families {
            handles.push(Iptables::locate(backend, *family, &sys.path, sys.runner)?);
        }
    }
    // Best effort: one family or backend failing does not keep the others installed.
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for ipt in &handles {
        match cleanup_family(ipt) {
            Ok(removed) => lines.push(removed.to_string()),
            Err(e) => errors.push(e),
        }
    }
    if !ipv6.cleanup() {
        lines.push(format!("ipv6: skipped: {}", ipv6.reason()));
    }
    for line in lines {
        writeln!(out, "{line}").map_err(Error::Output)?;
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Several(errors)),
    }
}

/// Removes weft's jumps and chains from one backend and family.
pub fn cleanup_family(ipt: &Iptables<'_>) -> Result<Removed, Error> {
    let state = ipt.nat_state()?;
    let mut removed = Removed {
        family: ipt.family,
        binary: ipt.label(),
        jumps: 0,
        chains: Vec::new(),
    };
    if state.is_empty() {
        return Ok(removed);
    }
    for jump in JUMPS {
        if !state.has_chain(jump.to) {
            continue;
        }
        let mut deleted = 0;
        while ipt.jump_present(&jump)? {
            if deleted == MAX_JUMP_DELETIONS {
                return Err(Error::JumpNotRemoved {
                    family: ipt.family.to_string(),
                    binary: ipt.label(),
                    rule: jump.rule_line(),
                    attempts: deleted,
                });
            }
            ipt.delete_jump(&jump)?;
            deleted += 1;
        }
        removed.jumps += deleted;
    }
    let chains: Vec<&'static str> = CHAINS.into_iter().filter(|c| state.has_chain(c)).collect();
    for chain in &chains {
        ipt.flush_chain(chain)?;
    }
    for chain in &chains {
        ipt.delete_chain(chain)
            .map_err(|e| with_references(e, &state))?;
        removed.chains.push(chain);
    }
    Ok(removed)
}

/// Adds the rules that still jump to weft's chains to a failed `-X`.
fn with_references(mut err: Error, state: &NatState) -> Error {
    if let Error::Command { detail, .. } = &mut err {
        if !state.foreign_references.is_empty() {
            detail.push_str(&format!(
                "\n  weft's chains are still referenced by rules weft-init did not install: {}",
                state.foreign_references.join("; ")
            ));
        }
    }
    err
}

/// Prints the commands [`cleanup`] would run, changing nothing.
pub fn dry_run(sys: &System<'_>, choice: BackendChoice, out: &mut dyn Write) -> Result<(), Error> {
    let mut text = String::from("# weft-init --cleanup --dry-run: nothing is changed\n");
    let ipv6 = sys.proc_fs.ipv6();
    match backends(choice, &sys.path) {
        Err(e) => text.push_str(&format!("# nothing checked: {e}\n")),
        Ok(backends) => {
            for backend in backends {
                for family in Family::ALL {
                    if family == Family::V6 && !ipv6.cleanup() {
                        continue;
                    }
                    text.push_str(&dry_run_family(sys, backend, family));
                }
            }
        }
    }
    if !ipv6.cleanup() {
        text.push_str(&format!("# ipv6: skipped: {}\n", ipv6.reason()));
    }
    out.write_all(text.as_bytes()).map_err(Error::Output)
}

fn dry_run_family(sys: &System<'_>, backend: Backend, family: Family) -> String {
    let label = backend.binary(family, Tool::Iptables);
    let ipt = match Iptables::locate(backend, family, &sys.path, sys.runner) {
        Ok(ipt) => ipt,
        Err(e) => return format!("# {family} ({label}): not checked: {e}\n"),
    };
    let state = match ipt.nat_state() {
        Ok(s) => s,
        Err(e) => {
            let e = e.to_string();
            let first = e.lines().next().unwrap_or_default();
            return format!("# {family} ({label}): not checked: {first}\n");
        }
    };
    if state.is_empty() {
        return format!("# {family} ({label}): nothing to remove\n");
    }
    let mut text = format!("# {family} ({label}): would run:\n");
    for jump in JUMPS {
        for _ in 0..state.jump_count(&jump) {
            text.push_str(&format!(
                "{}\n",
                ipt.nat_command("-D", jump.from, &jump.spec())
            ));
        }
    }
    for op in ["-F", "-X"] {
        for chain in CHAINS.into_iter().filter(|c| state.has_chain(c)) {
            text.push_str(&format!("{}\n", ipt.nat_command(op, chain, &[])));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Capture;
    use crate::install::install;
    use crate::testing::{FakeIptables, FakeSystem};

    #[test]
    fn nothing_installed_is_success() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, true);
        let mut out = Vec::new();
        cleanup(&sys.system(), BackendChoice::Auto, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ipv4 (iptables-nft): nothing to remove\n\
             ipv6 (ip6tables-nft): nothing to remove\n\
             ipv4 (iptables-legacy): nothing to remove\n\
             ipv6 (ip6tables-legacy): nothing to remove\n"
        );
        // Only read: no -D/-F/-X and no -t nat (which would create a legacy table).
        assert!(
            fake.log().iter().all(|c| c.ends_with("-save")),
            "{:?}",
            fake.log()
        );
    }

    #[test]
    fn removes_everything_in_every_backend() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, true);
        install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Legacy,
            &mut Vec::new(),
        )
        .unwrap();
        fake.add_jump("iptables-legacy", &crate::rules::OUTPUT_JUMP);
        let mut out = Vec::new();
        cleanup(&sys.system(), BackendChoice::Auto, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("ipv4 (iptables-legacy): removed 3 jump rules and chains WEFT_OUTPUT, WEFT_INBOUND\n"), "{text}");
        assert!(text.contains("ipv6 (ip6tables-legacy): removed 2 jump rules and chains WEFT_OUTPUT, WEFT_INBOUND\n"), "{text}");
        assert!(
            text.contains("ipv4 (iptables-nft): nothing to remove\n"),
            "{text}"
        );
        for label in ["iptables-legacy", "ip6tables-legacy"] {
            assert!(fake.is_clean(label));
        }
    }

    #[test]
    fn dry_run_lists_commands_and_changes_nothing() {
        // IPv6 disabled: nothing installed there, but cleanup still looks.
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, false);
        install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut Vec::new(),
        )
        .unwrap();
        let mut out = Vec::new();
        dry_run(&sys.system(), BackendChoice::Nft, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let dir = sys.bin_dir();
        assert_eq!(
            text,
            format!(
                "# weft-init --cleanup --dry-run: nothing is changed\n\
                 # ipv4 (iptables-nft): would run:\n\
                 {dir}/iptables-nft -w 30 -t nat -D OUTPUT -p tcp -j WEFT_OUTPUT\n\
                 {dir}/iptables-nft -w 30 -t nat -D PREROUTING -p tcp -j WEFT_INBOUND\n\
                 {dir}/iptables-nft -w 30 -t nat -F WEFT_OUTPUT\n\
                 {dir}/iptables-nft -w 30 -t nat -F WEFT_INBOUND\n\
                 {dir}/iptables-nft -w 30 -t nat -X WEFT_OUTPUT\n\
                 {dir}/iptables-nft -w 30 -t nat -X WEFT_INBOUND\n\
                 # ipv6 (ip6tables-nft): nothing to remove\n"
            )
        );
        assert!(!fake.is_clean("iptables-nft"));
    }

    #[test]
    fn a_failing_family_does_not_stop_the_others() {
        let fake = FakeIptables {
            refuse_delete_chain: Some("iptables-nft".into()),
            ..FakeIptables::default()
        };
        let sys = FakeSystem::new(&fake, true);
        install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut Vec::new(),
        )
        .unwrap();
        let mut out = Vec::new();
        let err = cleanup(&sys.system(), BackendChoice::Nft, &mut out).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ipv4 (iptables-nft): deleting a chain"),
            "{msg}"
        );
        assert!(msg.contains("Device or resource busy"), "{msg}");
        assert!(fake.is_clean("ip6tables-nft"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ipv6 (ip6tables-nft): removed 2 jump rules and chains WEFT_OUTPUT, WEFT_INBOUND\n"
        );
    }

    #[test]
    fn explicit_backend_without_binaries_fails() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::with_binaries(&fake, true, &[]);
        let err = cleanup(&sys.system(), BackendChoice::Legacy, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`iptables-legacy` not found on PATH"), "{err}");
        let err = cleanup(&sys.system(), BackendChoice::Auto, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither iptables-nft nor iptables-legacy"),
            "{err}"
        );
    }
}
