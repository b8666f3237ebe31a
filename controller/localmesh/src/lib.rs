//! weft-localmesh: a mesh of "pods" on one Linux host, each pod a network
//! namespace, joined by a bridge in a "node" namespace; processes, sidecars and the
//! controller inside them.
//!
//! It exists so that `weftctl up` (the user's local mesh) and weft's tier-2 tests
//! (`weft-e2e`) run on one implementation — what the demo shows is what the tests
//! check — without weftctl linking the test crate, and so that `cargo xtask bench`
//! builds its setups from the same parts. Test-only support (both capture modes per
//! test, the dialer helper, driving the weftctl binary) stays in `weft-e2e`.
//!
//! Everything a mesh creates lives in namespaces it made, carries a per-mesh name
//! prefix (`wf` + 5 hex digits, see [`Mesh::prefix`]) and is removed when the
//! [`Mesh`] is dropped, also while a test panics. Pods have no default route and no
//! route out of the mesh; nothing is forwarded or NATed (ARCHITECTURE.md, Tests).
//!
//! ```text
//!   node netns (<prefix>-node)          pod netns (<prefix>-a)
//!   br0 10.211.0.1/24 fd00:211::1/64
//!    ├── veth2 ───────────────────────── eth0 10.211.0.2/24 fd00:211::2/64
//!    └── veth3 ───────────────────────── eth0 10.211.0.3/24 ...  (<prefix>-b)
//! ```
//!
//! Processes enter a pod with `setns(CLONE_NEWNET)` only — never `ip netns exec`,
//! which remounts /sys and hides the cgroup2 and bpffs mounts (ARCHITECTURE.md,
//! Packet path (eBPF mode)). A mesh needs root; without it [`Mesh::new`] fails
//! loudly, it never skips.
//!
//! # Layout
//!
//! - [`mesh`]: [`Mesh`] — creates the node and the pods (and removes a pod, for
//!   churn); its `Drop` kills every process, prints their logs when panicking and
//!   deletes every namespace.
//! - [`pod`]: [`Pod`] — one pod's addresses and routes; spawn and run commands in
//!   it; socket work and HTTP GETs from the calling process inside it.
//! - [`process`]: [`ProcSpec`], [`PodProc`] — starting a process inside a
//!   namespace (the `pre_exec` hook), signalling its group, waiting with a timeout.
//! - [`netns`]: creating, entering (per thread) and inspecting network namespaces.
//! - [`cgroup`]: [`PodCgroup`](cgroup::PodCgroup) — a pod's cgroup v2 for eBPF mode
//!   (removed with its eBPF pins on drop), and running processes inside it.
//! - [`sidecar`]: [`Sidecar`] — weft-init plus weft-proxy (uid 1337) in a pod, and
//!   reading its `/connections` and `/metrics`.
//! - [`controller`]: [`Controller`] — weft-controller in the node namespace, started
//!   on a mesh file and waited for; its API called with the operator's token.
//! - [`credentials`]: the controller's token file, the operator's token and one
//!   token per sidecar, scoped to its service.
//! - [`naming`]: the per-mesh unique name prefix and pod-name checks.
//! - [`http`]: a minimal blocking HTTP/1.1 GET client (admin and metrics endpoints).
//! - [`logs`]: tails of captured process logs.
//! - [`cmd`]: running `ip` and other setup commands, and the root check.
//! - [`wait`]: [`wait_until`], polling a condition with a deadline (readiness of
//!   sidecars, the controller, emptied cgroups).
//! - [`bins`]: where weft's binaries and a usable python3 are.

pub mod bins;
pub mod cgroup;
pub mod cmd;
pub mod controller;
pub mod credentials;
pub mod http;
pub mod logs;
pub mod mesh;
pub mod naming;
pub mod netns;
pub mod pod;
pub mod process;
pub mod sidecar;
pub mod wait;

pub use bins::{python3, weft_bin};
pub use controller::Controller;
pub use mesh::{Mesh, IPV4_SUBNET, IPV6_SUBNET};
pub use pod::Pod;
pub use process::{Entry, PodProc, ProcSpec};
pub use sidecar::Sidecar;
pub use wait::wait_until;
/// The eBPF counters' indexes ([`cgroup::PodCgroup::stat`]).
pub use weft_ebpf_common::Stat;
