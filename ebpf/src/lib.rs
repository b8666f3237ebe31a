//! weft-ebpf: weft's eBPF interception — the kernel program object (built from
//! `ebpf/programs` by this crate's build script and embedded here) and its user-space
//! loader (aya).
//!
//! What it does for one pod (`weft-init --mode ebpf --cgroup PATH` calls it):
//! load the object, write the settings into its maps (proxy uid/gid, the outbound
//! listener port, excluded ports and CIDRs, sk_msg on or off), attach
//! `cgroup/connect4`, `cgroup/connect6`, `sockops` and `cgroup/getsockopt` to the
//! pod's cgroup v2 with bpf links (and `sk_msg` to the sockhash), and pin the links and
//! maps under `/sys/fs/bpf/weft/<pod>/` so they outlive the loader. Removing that
//! directory's pins detaches everything: [`cleanup`] does exactly that.
//!
//! # Layout
//!
//! - [`object`]: the embedded object (or why it is missing).
//! - [`settings`]: what is captured; written into the maps.
//! - [`support`]: which kernel features are there (`--mode auto`, clear errors).
//! - [`loader`]: [`install`], [`cleanup`], [`describe`] (dry run), [`read_stats`].
//! - [`error`]: what can go wrong.
//!
//! The map layout is documented in `weft-ebpf-common`.

// Tests may unwrap; the library itself may not.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
pub mod loader;
pub mod object;
pub mod settings;
pub mod support;
mod sys;

pub use error::Error;
pub use loader::{cleanup, describe, install, read_stats, Installed, Removed, Target};
pub use settings::Settings;
pub use weft_ebpf_common::Stat;
