//! `cgroup/connect4`: an IPv4 TCP `connect()` from the pod goes to the proxy's
//! outbound listener on 127.0.0.1 instead; the original destination is remembered by
//! socket cookie for [`crate::sockops`].

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::generated::bpf_get_socket_cookie;
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use weft_ebpf_common::{mapped_v4, OrigDst, Stat, AF_INET};

use crate::maps::{config, count, excluded, is_proxy, ORIG_BY_COOKIE};

/// `SOCK_STREAM`.
pub const SOCK_STREAM: u32 = 1;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;
/// 127.0.0.1 as the kernel stores it (network byte order).
const LOOPBACK4_BE: u32 = u32::from_be(0x7f00_0001);

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands the program a valid context.
    unsafe { try_connect4(ctx.sock_addr) };
    1
}

/// Whether this `connect()` is a TCP one (UDP `connect()` runs the same hook).
///
/// # Safety
/// `sa` is the program's context.
#[inline(always)]
pub unsafe fn is_tcp(sa: *const bpf_sock_addr) -> bool {
    // SAFETY: reads of context fields the verifier allows.
    unsafe {
        read_volatile(addr_of!((*sa).type_)) == SOCK_STREAM
            && read_volatile(addr_of!((*sa).protocol)) == IPPROTO_TCP
    }
}

/// # Safety
/// `sa` is the program's context.
#[inline(always)]
unsafe fn try_connect4(sa: *mut bpf_sock_addr) -> Option<()> {
    // SAFETY: context field reads and writes the verifier allows for connect4.
    unsafe {
        if !is_tcp(sa) {
            return None;
        }
        let cfg = config()?;
        if is_proxy(&cfg) {
            count(Stat::SkippedProxy);
            return None;
        }
        let ip4 = read_volatile(addr_of!((*sa).user_ip4));
        let port_be = read_volatile(addr_of!((*sa).user_port)) as u16;
        if u32::from_be(ip4) >> 24 == 127 {
            count(Stat::SkippedLoopback);
            return None;
        }
        let addr = mapped_v4(ip4);
        if excluded(addr, u16::from_be(port_be)) {
            count(Stat::SkippedExcluded);
            return None;
        }
        let cookie = bpf_get_socket_cookie(sa.cast());
        let orig = OrigDst {
            addr,
            port_be,
            family: AF_INET,
        };
        // No room: leave the connection uncaptured rather than unanswerable.
        ORIG_BY_COOKIE.insert(&cookie, &orig, 0).ok()?;
        write_volatile(addr_of_mut!((*sa).user_ip4), LOOPBACK4_BE);
        write_volatile(
            addr_of_mut!((*sa).user_port),
            u32::from(cfg.outbound_port.to_be()),
        );
        count(Stat::Redirected);
        Some(())
    }
}
