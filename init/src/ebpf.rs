//! `--mode ebpf`: outbound capture by weft's eBPF programs on the pod's cgroup
//! (weft-ebpf), inbound capture by iptables in the pod's network namespace
//! ([`Scope::InboundOnly`]).
//!
//! Why inbound stays iptables: inbound connections arrive from other pods, so a
//! cgroup connect hook never sees them; capturing them in eBPF would need a tc or
//! sk_lookup program per pod interface plus its own original-destination bookkeeping,
//! for no gain the proxy can see (the inbound path is one PREROUTING REDIRECT and a
//! conntrack lookup). The outbound path is the one eBPF shortens (no NAT, no
//! conntrack, and sk_msg on the app↔proxy loopback hop).
//!
//! Install order: eBPF first, then iptables; if iptables fails, the eBPF programs are
//! removed again. `--cleanup` removes both, trying each even if the other fails.

use std::io::Write;

use weft_ebpf::{Settings, Target};

use crate::cleanup;
use crate::config::Config;
use crate::error::Error;
use crate::install;
use crate::rules::Scope;
use crate::System;

/// The eBPF target of `config` (its cgroup and pin directory).
pub fn target(config: &Config) -> Result<Target, Error> {
    let cgroup = config.ebpf.cgroup.clone().unwrap_or_default();
    Ok(Target::new(&cgroup, config.ebpf.pod_name.as_deref())?)
}

/// The settings written into the programs' maps.
pub fn settings(config: &Config) -> Settings {
    let c = &config.capture;
    Settings {
        proxy_uid: c.proxy_uid,
        proxy_gid: c.proxy_gid,
        outbound_port: c.outbound_port,
        exclude_ports: c.exclude_outbound_ports.clone(),
        exclude_cidrs: c
            .exclude_outbound_cidrs
            .iter()
            .map(|cidr| (cidr.addr(), cidr.prefix()))
            .collect(),
        sockmap: config.ebpf.sockmap,
    }
}

/// Whether `--mode auto` can use eBPF here, or why not.
pub fn usable(config: &Config) -> Result<(), String> {
    if config.ebpf.cgroup.is_none() {
        return Err("no --cgroup given".to_string());
    }
    if let Err(e) = weft_ebpf::object::object() {
        return Err(e.to_string());
    }
    match weft_ebpf::support::missing(config.ebpf.sockmap).first() {
        None => Ok(()),
        Some((feature, detail)) => Err(format!("the kernel lacks {feature} ({detail})")),
    }
}

/// Installs eBPF outbound capture and iptables inbound capture.
pub fn install(config: &Config, sys: &System<'_>, out: &mut dyn Write) -> Result<(), Error> {
    let target = target(config)?;
    let installed = weft_ebpf::install(&target, &settings(config))?;
    let mut lines = Vec::new();
    if let Err(e) = install::install_scoped(
        sys,
        &config.capture,
        config.backend,
        Scope::InboundOnly,
        &mut lines,
    ) {
        return Err(match weft_ebpf::cleanup(&target) {
            Ok(_) => Error::EbpfRolledBack {
                failed: Box::new(e),
            },
            Err(rollback) => Error::EbpfRollbackFailed {
                failed: Box::new(e),
                rollback,
            },
        });
    }
    writeln!(out, "{installed}").map_err(Error::Output)?;
    out.write_all(&lines).map_err(Error::Output)
}

/// Prints what [`install`] would do.
pub fn dry_run(config: &Config, sys: &System<'_>, out: &mut dyn Write) -> Result<(), Error> {
    let target = target(config)?;
    if let Err(weft_ebpf::Error::RootCgroup(p)) = weft_ebpf::support::check_cgroup2(&target.cgroup)
    {
        return Err(weft_ebpf::Error::RootCgroup(p).into());
    }
    let mut text = String::from("# weft-init --mode ebpf --dry-run: nothing is changed\n");
    text.push_str("# outbound: eBPF\n");
    for line in weft_ebpf::describe(&target, &settings(config)).lines() {
        text.push_str(&format!("#   {line}\n"));
    }
    text.push_str("# inbound: iptables\n");
    out.write_all(text.as_bytes()).map_err(Error::Output)?;
    install::dry_run_scoped(
        sys,
        &config.capture,
        config.backend,
        Scope::InboundOnly,
        out,
    )
}

/// Removes the eBPF programs and pins, and weft's iptables rules.
pub fn cleanup(config: &Config, sys: &System<'_>, out: &mut dyn Write) -> Result<(), Error> {
    let mut errors = Vec::new();
    match target(config).and_then(|t| Ok(weft_ebpf::cleanup(&t)?)) {
        Ok(removed) => writeln!(out, "{removed}").map_err(Error::Output)?,
        Err(e) => errors.push(e),
    }
    if let Err(e) = cleanup::cleanup(sys, config.backend, out) {
        errors.push(e);
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Several(errors)),
    }
}

/// Prints what [`cleanup`] would remove.
pub fn cleanup_dry_run(
    config: &Config,
    sys: &System<'_>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let target = target(config)?;
    let mut text =
        String::from("# weft-init --mode ebpf --cleanup --dry-run: nothing is changed\n");
    match std::fs::read_dir(&target.pin_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                text.push_str(&format!(
                    "# would unpin (and detach) {}\n",
                    entry.path().display()
                ));
            }
            text.push_str(&format!("# would remove {}\n", target.pin_dir.display()));
        }
        Err(_) => text.push_str(&format!(
            "# eBPF: nothing installed ({} does not exist)\n",
            target.pin_dir.display()
        )),
    }
    out.write_all(text.as_bytes()).map_err(Error::Output)?;
    cleanup::dry_run(sys, config.backend, out)
}
