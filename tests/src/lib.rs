//! Harness for weft's tier-2 end-to-end tests: a throwaway mesh of "pods", each a
//! Linux network namespace, joined by a bridge in a "node" namespace.
//!
//! Everything a test creates lives in namespaces this harness made, carries a
//! per-mesh name prefix (`wf` + 5 hex digits, see [`Mesh::prefix`]) and is removed
//! when the [`Mesh`] is dropped, also while a test panics. Pods have no default
//! route and no route out of the mesh; nothing is forwarded or NATed (DESIGN.md §8).
//!
//! ```text
//!   node netns (<prefix>-node)          pod netns (<prefix>-a)
//!   br0 10.211.0.1/24 fd00:211::1/64
//!    ├── veth2 ───────────────────────── eth0 10.211.0.2/24 fd00:211::2/64
//!    └── veth3 ───────────────────────── eth0 10.211.0.3/24 ...  (<prefix>-b)
//! ```
//!
//! Processes enter a pod with `setns(CLONE_NEWNET)` only — never `ip netns exec`,
//! which remounts /sys and hides the cgroup2 and bpffs mounts (DESIGN.md §7).
//! Tier-2 tests need root; without it [`Mesh::new`] fails loudly, it never skips.
//!
//! # Layout
//!
//! - [`mesh`]: [`Mesh`] — creates the node and the pods; its `Drop` kills every
//!   process, prints their logs when panicking and deletes every namespace.
//! - [`pod`]: [`Pod`] — one pod's addresses and routes; spawn and run commands in
//!   it; socket work and HTTP GETs from the test process inside it.
//! - [`process`]: [`ProcSpec`], [`PodProc`] — starting a process inside a
//!   namespace (the `pre_exec` hook), signalling its group, waiting with a timeout.
//! - [`netns`]: creating, entering (per thread) and inspecting network namespaces.
//! - [`http`]: a minimal blocking HTTP/1.1 GET client (admin and metrics endpoints).
//! - [`logs`]: tails of captured process logs.
//! - [`naming`]: the per-mesh unique name prefix and pod-name checks.
//! - [`cmd`]: running `ip` and other setup commands, and the root check.
//! - [`sidecar`]: [`Sidecar`] — weft-init plus weft-proxy (uid 1337) in a pod, and
//!   reading its `/connections` and `/metrics`.
//! - [`cgroup`]: [`PodCgroup`](cgroup::PodCgroup) — a pod's cgroup v2 for eBPF mode
//!   (removed with its eBPF pins on drop), and running processes inside it.
//! - [`mode`]: [`Mode`] (iptables or eBPF) and [`ModePod`] — one test body for
//!   both capture modes: a pod with its cgroup in eBPF mode, its sidecar in its
//!   mode, its applications in its cgroup.
//! - [`dialer`]: [`Dialer`](dialer::Dialer) — TCP connections the test process
//!   makes as an app of a pod, captured in either mode (in eBPF mode through a
//!   helper in the pod's cgroup that hands the socket over).
//! - [`controller`]: [`Controller`] — weft-controller in the node namespace, started
//!   on a mesh file and waited for.
//! - [`weftctl`]: [`WeftctlUp`](weftctl::WeftctlUp) — `weftctl up` in the background
//!   with its own state directory, and `weftctl` commands against it.
//! - [`wait`]: [`wait_until`], polling a condition with a deadline.
//! - [`bins`]: where weft's binaries and a usable python3 are.

pub mod bins;
pub mod cgroup;
pub mod cmd;
pub mod controller;
pub mod dialer;
pub mod http;
pub mod logs;
pub mod mesh;
pub mod mode;
pub mod naming;
pub mod netns;
pub mod pod;
pub mod process;
pub mod sidecar;
pub mod wait;
pub mod weftctl;

pub use bins::{python3, weft_bin};
pub use controller::Controller;
pub use mesh::{Mesh, IPV4_SUBNET, IPV6_SUBNET};
pub use mode::{Mode, ModePod};
pub use pod::Pod;
pub use process::{Entry, PodProc, ProcSpec};
pub use sidecar::Sidecar;
pub use wait::wait_until;
/// The eBPF counters' indexes ([`ModePod::ebpf_stat`], [`cgroup::PodCgroup::stat`]).
pub use weft_ebpf_common::Stat;
