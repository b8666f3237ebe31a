//! weft-ebpf: the eBPF interception program set (cgroup connect4/connect6, sockops,
//! getsockopt, sk_msg) and its aya loader.
//!
//! Not built yet: this crate is a placeholder so the workspace layout is fixed from the
//! start. `weft-init --mode ebpf` refuses to run until the eBPF issue fills it in.
