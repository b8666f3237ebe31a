//! What can go wrong loading, attaching or removing the programs; each message names
//! the program, map, path or kernel feature involved, and includes its cause (the
//! causes are not chained as `source`, so `{:#}` does not print them twice).

use std::io;
use std::path::PathBuf;

/// Everything that can make an eBPF operation fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This binary was built without the eBPF toolchain.
    #[error("this build has no eBPF programs ({reason}); install the toolchain with `cargo xtask setup-ebpf` and rebuild, or use --mode iptables")]
    NotBuilt {
        /// What the build script found missing.
        reason: String,
    },

    /// A kernel feature the programs need is missing.
    #[error("the kernel lacks {feature}: {detail}; use --mode iptables")]
    Unsupported {
        /// The feature (e.g. "cgroup/getsockopt programs (BPF_PROG_TYPE_CGROUP_SOCKOPT)").
        feature: String,
        /// What the probe saw.
        detail: String,
    },

    /// The cgroup path is not a cgroup v2 directory.
    #[error("{path}: not a cgroup v2 directory ({detail})")]
    NotCgroup2 {
        /// The path given.
        path: PathBuf,
        /// Why.
        detail: String,
    },

    /// The cgroup is the root of its hierarchy (every process on the host).
    #[error("{0} is the root of the cgroup v2 hierarchy: attaching there would capture every process on the host; give the pod's own cgroup")]
    RootCgroup(PathBuf),

    /// The cgroup has no usable last path component to name the pin directory after.
    #[error("cannot derive a pod name from the cgroup path {0}; pass --pod-name")]
    NoPodName(PathBuf),

    /// Loading the object failed.
    #[error("loading the eBPF object: {0}")]
    Load(Box<aya::EbpfError>),

    /// The object lacks a program or map the loader expects.
    #[error("the eBPF object has no {kind} `{name}`")]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        /// Its name.
        name: String,
    },

    /// The kernel refused a program (verifier) or its attachment.
    #[error("{action} {program}: {cause}")]
    Program {
        /// What was being done ("loading", "attaching").
        action: &'static str,
        /// The program.
        program: &'static str,
        /// The kernel's or aya's error (with the verifier log, if any).
        cause: Box<aya::programs::ProgramError>,
    },

    /// Writing a setting into a map failed.
    #[error("writing {map}: {cause}")]
    Map {
        /// The map.
        map: &'static str,
        /// Why.
        cause: Box<aya::maps::MapError>,
    },

    /// Pinning a link or map failed.
    #[error("pinning {what} at {path}: {cause}")]
    Pin {
        /// What was pinned.
        what: String,
        /// Where.
        path: PathBuf,
        /// Why.
        cause: Box<aya::pin::PinError>,
    },

    /// A file system operation failed (cgroup, bpffs).
    #[error("{what} {path}: {cause}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },

    /// Installing failed and removing what was installed failed too.
    #[error("{failed}\nremoving what was installed also failed ({rollback}); run weft-init --mode ebpf --cleanup")]
    RollbackFailed {
        /// Why installing failed.
        failed: Box<Error>,
        /// Why the rollback failed.
        rollback: Box<Error>,
    },
}
