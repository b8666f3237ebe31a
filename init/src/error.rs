//! The errors weft-init reports. Each says what failed and why, in words an operator
//! can act on; the process exits non-zero with this message.

use std::io;

use crate::config::ConfigError;

/// Everything that can make a run fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more flags have invalid values.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// eBPF mode: loading, attaching or removing the programs failed.
    #[error("ebpf: {0}")]
    Ebpf(weft_ebpf::Error),

    /// eBPF mode: the iptables inbound rules failed after the eBPF programs were
    /// attached; the programs were removed again.
    #[error("{failed}\n(rolled back: the eBPF programs were detached and unpinned again)")]
    EbpfRolledBack {
        /// Why the inbound rules failed.
        failed: Box<Error>,
    },

    /// eBPF mode: the inbound rules failed and removing the eBPF programs failed too.
    #[error("{failed}\nremoving the eBPF programs also failed, run `weft-init --mode ebpf --cleanup`: {rollback}")]
    EbpfRollbackFailed {
        /// Why the inbound rules failed.
        failed: Box<Error>,
        /// Why the eBPF cleanup failed.
        rollback: weft_ebpf::Error,
    },

    /// A binary the chosen backend needs is not on `PATH`.
    #[error("`{binary}` not found on PATH ({path}); install iptables (Debian: apt-get install iptables) or choose another --iptables-backend")]
    MissingBinary {
        /// The binary looked for.
        binary: String,
        /// The `PATH` searched.
        path: String,
    },

    /// `--iptables-backend auto` found neither iptables-nft nor iptables-legacy.
    #[error("neither iptables-nft nor iptables-legacy found on PATH ({path}); install iptables (Debian: apt-get install iptables)")]
    NoBackend {
        /// The `PATH` searched.
        path: String,
    },

    /// A command could not be started at all.
    #[error("cannot run `{command}`: {reason}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why exec failed.
        reason: io::Error,
    },

    /// A command ran and failed (for a restore: the kernel or iptables refused a rule).
    #[error("{what}: `{command}` failed ({status}){detail}")]
    Command {
        /// What weft-init was doing.
        what: String,
        /// The command line.
        command: String,
        /// Exit status description.
        status: String,
        /// The command's stderr (and the offending input line, if known), prefixed
        /// with ": ", or empty.
        detail: String,
    },

    /// `iptables -D` kept succeeding without the jump disappearing.
    #[error("{family} ({binary}): jump `{rule}` still present after {attempts} deletions")]
    JumpNotRemoved {
        /// Family being cleaned.
        family: String,
        /// The iptables binary used.
        binary: String,
        /// The jump rule.
        rule: String,
        /// How many deletions were tried.
        attempts: usize,
    },

    /// Installing IPv6 failed after IPv4 succeeded; weft was removed from both again.
    #[error("{failed}\n(rolled back: weft's rules were removed from every family, nothing is left installed)")]
    RolledBack {
        /// Why IPv6 failed.
        failed: Box<Error>,
    },

    /// Installing IPv6 failed and removing what was installed failed too.
    #[error("{failed}\nrolling back also failed, remove weft's rules with `weft-init --cleanup`: {rollback}")]
    RollbackFailed {
        /// Why IPv6 failed.
        failed: Box<Error>,
        /// Why the IPv4 rollback failed.
        rollback: Box<Error>,
    },

    /// `--cleanup` failed for several backends or families (each was still tried).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<Error>),

    /// Writing the dry-run or summary output failed.
    #[error("cannot write output: {0}")]
    Output(io::Error),
}

impl From<weft_ebpf::Error> for Error {
    fn from(e: weft_ebpf::Error) -> Self {
        Error::Ebpf(e)
    }
}
