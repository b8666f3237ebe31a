//! Installing capture (and printing what would be installed, for `--dry-run`).
//!
//! Per family: read the nat table, check the jumps with `-C`, then apply weft's chains
//! plus the missing jumps in one `*-restore --noflush`. IPv4 goes first; if IPv6 then
//! fails, weft is removed from both families again, so a failed run never leaves one
//! family capturing and the other not (or capturing with an older configuration).

use std::io::Write;

use crate::backend::{self, Backend, Iptables, Tool, XTABLES_WAIT_SECS};
use crate::cleanup;
use crate::config::{BackendChoice, Capture};
use crate::error::Error;
use crate::net::Family;
use crate::rules::{Jump, Ruleset, Scope, INBOUND_CHAIN, OUTPUT_CHAIN};
use crate::System;

/// What was installed for one family (its `Display` is the summary line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The family.
    pub family: Family,
    /// The iptables binary used (`iptables-nft`, ...).
    pub binary: String,
    /// Rules in WEFT_OUTPUT.
    pub outbound_rules: usize,
    /// Rules in WEFT_INBOUND.
    pub inbound_rules: usize,
    /// Outbound REDIRECT target.
    pub outbound_port: u16,
    /// Inbound REDIRECT target.
    pub inbound_port: u16,
    /// Jumps appended by this run (the others were already there).
    pub jumps_added: usize,
    /// The directions installed.
    pub scope: Scope,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scope == Scope::InboundOnly {
            return write!(
                f,
                "{} ({}): inbound TCP -> port {} ({INBOUND_CHAIN}, {} rules), {} of {} jumps added (outbound is eBPF's)",
                self.family,
                self.binary,
                self.inbound_port,
                self.inbound_rules,
                self.jumps_added,
                self.scope.jumps().len(),
            );
        }
        write!(
            f,
            "{} ({}): outbound TCP -> port {} ({OUTPUT_CHAIN}, {} rules), inbound TCP -> port {} ({INBOUND_CHAIN}, {} rules), {} of {} jumps added",
            self.family,
            self.binary,
            self.outbound_port,
            self.outbound_rules,
            self.inbound_port,
            self.inbound_rules,
            self.jumps_added,
            self.scope.jumps().len(),
        )
    }
}

/// Installs capture with the selected backend and writes one summary line per family.
pub fn install(
    sys: &System<'_>,
    capture: &Capture,
    choice: BackendChoice,
    out: &mut dyn Write,
) -> Result<(), Error> {
    install_scoped(sys, capture, choice, Scope::All, out)
}

/// [`install`] for the directions of `scope`.
pub fn install_scoped(
    sys: &System<'_>,
    capture: &Capture,
    choice: BackendChoice,
    scope: Scope,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let selection = backend::select(choice, &sys.path, sys.runner)?;
    tracing::info!(backend = %selection.backend, reason = %selection.reason, "backend chosen");
    let ipv6 = sys.proc_fs.ipv6();
    let mut families = vec![Family::V4];
    if ipv6.install() {
        families.push(Family::V6);
    } else {
        warn_unused_v6_cidrs(capture);
    }
    // Find every binary before changing anything.
    let handles = families
        .iter()
        .map(|f| Iptables::locate(selection.backend, *f, &sys.path, sys.runner))
        .collect::<Result<Vec<_>, _>>()?;

    let mut done = Vec::new();
    for (i, ipt) in handles.iter().enumerate() {
        match install_family(ipt, capture, scope) {
            Ok(installed) => done.push(installed),
            // A refused restore changes nothing: the namespace is as before.
            Err(failed) if i == 0 => return Err(failed),
            // Later families: this run already changed an earlier one.
            Err(failed) => return Err(roll_back(&handles[..=i], failed)),
        }
    }
    let mut lines: Vec<String> = done.iter().map(ToString::to_string).collect();
    if !ipv6.install() {
        lines.push(format!("ipv6: skipped: {}", ipv6.reason()));
    }
    for line in lines {
        writeln!(out, "{line}").map_err(Error::Output)?;
    }
    Ok(())
}

/// After a family failed, removes weft from every family of this run, including the
/// failed one: its restore changed nothing, so it may still hold an older install,
/// which must not survive next to a removed IPv4.
fn roll_back(handles: &[Iptables<'_>], failed: Error) -> Error {
    let mut errors: Vec<Error> = handles
        .iter()
        .filter_map(|ipt| cleanup::cleanup_family(ipt).err())
        .collect();
    let failed = Box::new(failed);
    match errors.len() {
        0 => Error::RolledBack { failed },
        1 => Error::RollbackFailed {
            failed,
            rollback: Box::new(errors.remove(0)),
        },
        _ => Error::RollbackFailed {
            failed,
            rollback: Box::new(Error::Several(errors)),
        },
    }
}

fn install_family(ipt: &Iptables<'_>, capture: &Capture, scope: Scope) -> Result<Installed, Error> {
    let (append, _present) = missing_jumps(ipt, scope)?;
    let ruleset = Ruleset::generate_scoped(capture, ipt.family, scope);
    ipt.restore(&ruleset.restore_input(&append))?;
    Ok(Installed {
        family: ipt.family,
        binary: ipt.label(),
        outbound_rules: ruleset.count(OUTPUT_CHAIN),
        inbound_rules: ruleset.count(INBOUND_CHAIN),
        outbound_port: capture.outbound_port,
        inbound_port: capture.inbound_port,
        jumps_added: append.len(),
        scope,
    })
}

/// Splits the jumps into (absent, present). A jump can only exist when its target
/// chain does, and `-C` is only asked then (it fails the same way for a missing chain
/// as for other errors).
fn missing_jumps(ipt: &Iptables<'_>, scope: Scope) -> Result<(Vec<Jump>, Vec<Jump>), Error> {
    let state = ipt.nat_state()?;
    let mut absent = Vec::new();
    let mut present = Vec::new();
    for jump in scope.jumps().iter().copied() {
        if state.has_chain(jump.to) && ipt.jump_present(&jump)? {
            present.push(jump);
        } else {
            absent.push(jump);
        }
    }
    Ok((absent, present))
}

fn warn_unused_v6_cidrs(capture: &Capture) {
    let v6 = capture
        .exclude_outbound_cidrs
        .iter()
        .chain(&capture.exclude_inbound_cidrs)
        .filter(|c| c.family() == Family::V6)
        .count();
    if v6 > 0 {
        tracing::warn!(
            count = v6,
            "IPv6 CIDRs excluded but IPv6 is not enabled here; they are not used"
        );
    }
}

/// Prints what [`install`] would do, changing nothing. Works without iptables
/// installed (and without privileges): what cannot be looked up is said so in `#`
/// comment lines, and the input shown is then the one for a namespace without weft.
pub fn dry_run(
    sys: &System<'_>,
    capture: &Capture,
    choice: BackendChoice,
    out: &mut dyn Write,
) -> Result<(), Error> {
    dry_run_scoped(sys, capture, choice, Scope::All, out)
}

/// [`dry_run`] for the directions of `scope`.
pub fn dry_run_scoped(
    sys: &System<'_>,
    capture: &Capture,
    choice: BackendChoice,
    scope: Scope,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut text = String::from("# weft-init --dry-run: nothing is changed\n");
    let selection = match backend::select(choice, &sys.path, sys.runner) {
        Ok(s) => s,
        Err(e) => backend::Selection {
            backend: Backend::Nft,
            reason: format!("auto: showing nft, but {e}"),
        },
    };
    text.push_str(&format!(
        "# backend: {} ({})\n",
        selection.backend, selection.reason
    ));
    let ipv6 = sys.proc_fs.ipv6();
    for family in Family::ALL {
        if family == Family::V6 && !ipv6.install() {
            text.push_str(&format!("# ipv6: skipped: {}\n", ipv6.reason()));
            continue;
        }
        text.push_str(&dry_run_family(
            sys,
            capture,
            selection.backend,
            family,
            scope,
        ));
    }
    out.write_all(text.as_bytes()).map_err(Error::Output)
}

fn dry_run_family(
    sys: &System<'_>,
    capture: &Capture,
    backend: Backend,
    family: Family,
    scope: Scope,
) -> String {
    let ruleset = Ruleset::generate_scoped(capture, family, scope);
    let mut text = String::new();
    let (append, jump_notes) = match Iptables::locate(backend, family, &sys.path, sys.runner) {
        Ok(ipt) => {
            text.push_str(&format!(
                "# {family}: would run `{}` with this input:\n",
                ipt.restore_command()
            ));
            match missing_jumps(&ipt, scope) {
                Ok((absent, present)) => {
                    let mut notes: Vec<String> = absent
                        .iter()
                        .map(|j| format!("jump {} -> {}: absent, appended", j.from, j.to))
                        .collect();
                    notes.extend(
                        present
                            .iter()
                            .map(|j| format!("jump {} -> {}: present, kept", j.from, j.to)),
                    );
                    (absent, notes)
                }
                Err(e) => (scope.jumps().to_vec(), vec![not_checked(&e)]),
            }
        }
        Err(e) => {
            text.push_str(&format!(
                "# {family}: would run `{} --noflush -w {XTABLES_WAIT_SECS}` with this input:\n",
                backend.binary(family, Tool::Restore)
            ));
            (scope.jumps().to_vec(), vec![not_checked(&e)])
        }
    };
    for note in jump_notes {
        text.push_str(&format!("#   {note}\n"));
    }
    text.push_str(&ruleset.restore_input(&append));
    text
}

fn not_checked(e: &Error) -> String {
    let first = e.to_string();
    let first = first.lines().next().unwrap_or_default().to_string();
    format!("jumps not checked ({first}); shown as appended")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeIptables, FakeSystem};

    #[test]
    fn installs_both_families_and_reinstall_adds_no_jumps() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, true);
        let mut out = Vec::new();
        install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "ipv4 (iptables-nft): outbound TCP -> port 15001 (WEFT_OUTPUT, 3 rules), inbound TCP -> port 15006 (WEFT_INBOUND, 2 rules), 2 of 2 jumps added\n\
             ipv6 (ip6tables-nft): outbound TCP -> port 15001 (WEFT_OUTPUT, 3 rules), inbound TCP -> port 15006 (WEFT_INBOUND, 2 rules), 2 of 2 jumps added\n"
        );
        let mut out = Vec::new();
        install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("0 of 2 jumps added"), "{text}");
        assert_eq!(fake.jumps("ip6tables-nft"), 2);
        assert_eq!(fake.jumps("iptables-nft"), 2);
    }

    #[test]
    fn ipv6_failure_rolls_back_ipv4() {
        let fake = FakeIptables::refusing("ip6tables-nft-restore");
        let sys = FakeSystem::new(&fake, true);
        let err = install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut Vec::new(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::RolledBack { .. }), "{msg}");
        assert!(
            msg.contains("ipv6 (ip6tables-nft): the ruleset was refused"),
            "{msg}"
        );
        assert!(msg.contains("refused by the fake"), "{msg}");
        assert!(fake.is_clean("iptables-nft"), "{:?}", fake.log());
    }

    #[test]
    fn ipv6_failure_on_reinstall_removes_the_old_ipv6_rules_too() {
        let fake = FakeIptables::refusing("ip6tables-nft-restore");
        fake.add_chain("ip6tables-nft", "WEFT_OUTPUT");
        fake.add_jump("ip6tables-nft", &crate::rules::OUTPUT_JUMP);
        let sys = FakeSystem::new(&fake, true);
        let err = install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::RolledBack { .. }), "{err}");
        assert!(fake.is_clean("iptables-nft"), "{:?}", fake.log());
        assert!(fake.is_clean("ip6tables-nft"), "{:?}", fake.log());
    }

    #[test]
    fn ipv4_failure_changes_nothing() {
        let fake = FakeIptables::refusing("iptables-nft-restore");
        let sys = FakeSystem::new(&fake, true);
        let err = install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Command { .. }), "{err}");
        assert!(
            !fake.log().iter().any(|c| c.contains("ip6tables")),
            "{:?}",
            fake.log()
        );
    }

    #[test]
    fn ipv6_disabled_installs_ipv4_only() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, false);
        let mut out = Vec::new();
        install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Legacy,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("ipv4 (iptables-legacy): "), "{text}");
        assert!(text.contains("\nipv6: skipped: "), "{text}");
        assert!(!fake.log().iter().any(|c| c.contains("ip6tables")));
    }

    #[test]
    fn missing_binary_fails_before_changing_anything() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::with_binaries(
            &fake,
            true,
            &["iptables-nft", "iptables-nft-save", "iptables-nft-restore"],
        );
        let err = install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`ip6tables-nft` not found on PATH"), "{err}");
        assert!(fake.log().is_empty(), "{:?}", fake.log());
    }

    #[test]
    fn dry_run_without_any_iptables() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::with_binaries(&fake, true, &[]);
        let mut out = Vec::new();
        dry_run(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Auto,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "# ipv4: would run `iptables-nft-restore --noflush -w 30` with this input:\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# ipv6: would run `ip6tables-nft-restore --noflush -w 30` with this input:\n"
            ),
            "{text}"
        );
        assert!(text.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT\n"), "{text}");
        assert!(
            text.contains("neither iptables-nft nor iptables-legacy found"),
            "{text}"
        );
        assert!(fake.log().is_empty());
    }

    #[test]
    fn dry_run_changes_nothing_and_reports_present_jumps() {
        let fake = FakeIptables::default();
        let sys = FakeSystem::new(&fake, true);
        install(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut Vec::new(),
        )
        .unwrap();
        let before = fake.log().len();
        let mut out = Vec::new();
        dry_run(
            &sys.system(),
            &Capture::default(),
            BackendChoice::Nft,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("#   jump OUTPUT -> WEFT_OUTPUT: present, kept\n"),
            "{text}"
        );
        assert!(
            !text.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT\n"),
            "{text}"
        );
        assert!(
            fake.log()[before..]
                .iter()
                .all(|c| c.contains("-save") || c.contains(" -C ")),
            "{:?}",
            &fake.log()[before..]
        );
    }
}
