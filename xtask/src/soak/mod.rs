//! `cargo xtask soak`: the long runs CI does not do (they take tens of minutes),
//! each ending with a report of what moved.
//!
//! - `--cycles N` ([`churn`]): N pod lifecycles under one long-lived controller —
//!   a pod, `weft-init` (iptables and eBPF mode in turn), its proxy, one request
//!   through it, teardown — then everything the host counts (namespaces, veths,
//!   iptables rules, cgroups, bpffs pins, BPF programs and maps, weft processes, the
//!   controller's descriptors) must be back where it was.
//! - `--minutes M` ([`steady`]): a small mesh (a client and three backend replicas,
//!   each with its sidecar) at a fixed request rate for M minutes; the proxies' RSS
//!   and open descriptors are sampled and their slopes reported.
//!
//! Both run in throwaway namespaces of a [`weft_localmesh::Mesh`] (no route out,
//! nothing forwarded) with the release binaries, and check afterwards that the host
//! holds nothing of theirs ([`crate::leaks`]).

mod churn;
mod steady;
mod tally;

use anyhow::{bail, Result};

use crate::{leaks, system};

/// `cargo xtask soak` options: at least one of `--cycles` and `--minutes`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["cycles", "minutes"])))]
pub struct SoakArgs {
    /// Pod create/destroy cycles under one controller (half in iptables mode, half
    /// in eBPF mode), then a check that nothing is left.
    #[arg(long)]
    cycles: Option<u32>,
    /// Minutes of steady load through the mesh, sampling the proxies' RSS and fds.
    #[arg(long)]
    minutes: Option<f64>,
    /// Requests per second of the steady load.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Capture mode of the steady run's pods.
    #[arg(long, default_value = "iptables", value_parser = ["iptables", "ebpf"])]
    mode: String,
}

/// Runs the soaks asked for; fails if one fails or leaves anything behind.
pub fn soak(args: &SoakArgs) -> Result<()> {
    if !system::is_root() {
        bail!("the soak needs root (network namespaces, iptables, eBPF): run `sudo -E cargo xtask soak`");
    }
    system::ensure(system::TIER2_TOOLS)?;
    let bins = crate::bench::Bins::build()?;
    // weft-localmesh finds weft-init and weft-proxy here.
    std::env::set_var("WEFT_BIN_DIR", bins.dir());
    let before = leaks::HostState::read()?;
    let mut result = Ok(());
    if let Some(cycles) = args.cycles {
        result = churn::run(cycles);
    }
    if let (Ok(()), Some(minutes)) = (&result, args.minutes) {
        result = steady::run(minutes, args.rate, &args.mode, &bins.oha);
    }
    let leaked = leaks::HostState::read()?.leaked_since(&before);
    result?;
    if !leaked.is_empty() {
        bail!("the soak left behind:\n  {}", leaked.join("\n  "));
    }
    println!("soak: nothing left on the host");
    Ok(())
}
