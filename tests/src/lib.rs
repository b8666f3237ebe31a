//! weft-e2e: weft's tier-2 end-to-end tests (`tests/*.rs`) and the support only
//! tests need. The mesh itself — pods as network namespaces, cgroups, processes,
//! sidecars, the controller — is the `weft-localmesh` library, which `weftctl up`
//! runs on too; its modules and types are re-exported here, so a test reads
//! `weft_e2e::Mesh` or `weft_e2e::cgroup::PodCgroup` as before.
//!
//! Tier-2 tests need root; without it [`Mesh::new`] fails loudly, they never skip.
//! What a test creates is removed when its [`Mesh`] is dropped, also on panic
//! (ARCHITECTURE.md, Tests).
//!
//! # Layout
//!
//! - [`mode`]: [`Mode`] (iptables or eBPF) and [`ModePod`] — one test body for
//!   both capture modes: a pod with its cgroup in eBPF mode, its sidecar in its
//!   mode, its applications in its cgroup.
//! - [`dialer`]: [`Dialer`](dialer::Dialer) — TCP connections the test process
//!   makes as an app of a pod, captured in either mode (in eBPF mode through a
//!   helper in the pod's cgroup that hands the socket over).
//! - [`weftctl`]: [`WeftctlUp`](weftctl::WeftctlUp) — `weftctl up` in the background
//!   with its own state directory, and `weftctl` commands against it.
//! - [`fakekube`]: [`FakeKube`](fakekube::FakeKube) — a fake Kubernetes API server
//!   in a mesh's node namespace (recorded lists, watch events the test drives) for
//!   the controller's Kubernetes source.
//! - [`pyenv`]: a venv with grpcio from PyPI (`target/e2e-venv`), for tests whose
//!   apps are gRPC's Python implementation (the proxyless xDS client).
//! - [`receipt`]: which failed opaque TCP connections of a fault suite's load had
//!   been established to an app (from the client's sidecar's `/connections`).
//! - re-exported from `weft-localmesh`: [`mesh`], [`pod`], [`process`], [`netns`],
//!   [`cgroup`], [`sidecar`], [`controller`], [`naming`], [`http`], [`logs`],
//!   [`cmd`], [`wait`], [`bins`].

pub mod dialer;
pub mod fakekube;
pub mod mode;
pub mod otlp_receiver;
pub mod pyenv;
pub mod receipt;
pub mod weftctl;

pub use mode::{Mode, ModePod};

/// The path of a helper script in `tests/tools/` (load generators, servers, the
/// eBPF-mode dialer).
pub fn tool(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(name)
        .to_string_lossy()
        .into_owned()
}
/// A test's own directory for what it leaves to look at (screenshots):
/// `target/test-output/<name>`, made empty (the test executable is
/// `target/<profile>/deps/<test>`).
pub fn output_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let exe = std::env::current_exe().context("current_exe")?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("the test executable is not under target/<profile>/deps")?;
    let dir = target.join("test-output").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

pub use weft_localmesh::{
    bins, cgroup, cmd, controller, http, logs, mesh, naming, netns, pod, process, sidecar, wait,
};
pub use weft_localmesh::{
    python3, wait_until, weft_bin, Controller, Entry, Mesh, Pod, PodProc, ProcSpec, Sidecar, Stat,
    IPV4_SUBNET, IPV6_SUBNET,
};
