//! weft-ebpf-programs: the kernel half of weft's eBPF interception, one file per
//! program (aya-ebpf, `no_std`, `bpfel-unknown-none`, BTF).
//!
//! - [`connect4`] / [`connect6`] (`cgroup/connect4`, `cgroup/connect6`): a TCP
//!   `connect()` by an application in the pod's cgroup is rewritten to the proxy's
//!   outbound listener (127.0.0.1 / ::1), remembering the original destination by
//!   socket cookie. The proxy's uid (and gid), loopback destinations and the excluded
//!   ports and CIDRs are left alone.
//! - [`sockops`] (`sockops`): when such a connection is established, the original
//!   destination is re-keyed by the application socket's address and port, which is
//!   what the proxy sees as the peer of the connection it accepts; with sk_msg on, both
//!   ends of app↔proxy loopback connections go into the sockhash.
//! - [`getsockopt`] (`cgroup/getsockopt`): answers `SO_ORIGINAL_DST` and
//!   `IP6T_SO_ORIGINAL_DST` from that map, so weft-proxy's code is the same in both
//!   capture modes.
//! - [`sk_msg`] (`sk_msg`): data sent on one end of an app↔proxy loopback connection
//!   goes straight to the other end's receive queue, skipping the loopback TCP stack.
//!
//! Every program lets the operation go on (returns 1) whatever happens: a full map or
//! an unexpected context makes a connection uncaptured, never refused.
//! [`maps`] declares the maps; their types are in `weft-ebpf-common`.

#![no_std]
#![no_main]

mod connect4;
mod connect6;
mod getsockopt;
mod maps;
mod sk_msg;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The object's license. No GPL-only helper is used.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 11] = *b"Apache-2.0\0";
