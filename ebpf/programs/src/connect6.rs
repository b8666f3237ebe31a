//! `cgroup/connect6`: an IPv6 TCP `connect()` from the pod goes to the proxy's
//! outbound listener on ::1 (an IPv4-mapped destination to ::ffff:127.0.0.1, the
//! proxy's IPv4 listener, as connect4 would); the original destination is remembered
//! by socket cookie for [`crate::sockops`].

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::generated::bpf_get_socket_cookie;
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use weft_ebpf_common::{is_mapped_v4, mapped_v4, Addr, OrigDst, Stat, AF_INET, AF_INET6};

use crate::connect4::is_tcp;
use crate::maps::{config, count, excluded, is_proxy, ORIG_BY_COOKIE};

/// ::1 as the kernel stores it.
const LOOPBACK6: Addr = [0, 0, 0, u32::from_be(1)];

#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands the program a valid context.
    unsafe { try_connect6(ctx.sock_addr) };
    1
}

/// # Safety
/// `sa` is the program's context.
#[inline(always)]
unsafe fn try_connect6(sa: *mut bpf_sock_addr) -> Option<()> {
    // SAFETY: context field reads and writes the verifier allows for connect6; each
    // word is accessed on its own (4 bytes).
    unsafe {
        if !is_tcp(sa) {
            return None;
        }
        let cfg = config()?;
        if is_proxy(&cfg) {
            count(Stat::SkippedProxy);
            return None;
        }
        let ip6 = addr_of!((*sa).user_ip6) as *const u32;
        let addr: Addr = [
            read_volatile(ip6),
            read_volatile(ip6.add(1)),
            read_volatile(ip6.add(2)),
            read_volatile(ip6.add(3)),
        ];
        let port_be = read_volatile(addr_of!((*sa).user_port)) as u16;
        let v4 = is_mapped_v4(&addr);
        let loopback = if v4 {
            u32::from_be(addr[3]) >> 24 == 127
        } else {
            addr == LOOPBACK6
        };
        if loopback {
            count(Stat::SkippedLoopback);
            return None;
        }
        if excluded(addr, u16::from_be(port_be)) {
            count(Stat::SkippedExcluded);
            return None;
        }
        let cookie = bpf_get_socket_cookie(sa.cast());
        let orig = OrigDst {
            addr,
            port_be,
            family: if v4 { AF_INET } else { AF_INET6 },
        };
        ORIG_BY_COOKIE.insert(&cookie, &orig, 0).ok()?;
        let to = if v4 {
            mapped_v4(u32::from_be(0x7f00_0001))
        } else {
            LOOPBACK6
        };
        let out = addr_of_mut!((*sa).user_ip6) as *mut u32;
        write_volatile(out, to[0]);
        write_volatile(out.add(1), to[1]);
        write_volatile(out.add(2), to[2]);
        write_volatile(out.add(3), to[3]);
        write_volatile(
            addr_of_mut!((*sa).user_port),
            u32::from(cfg.outbound_port.to_be()),
        );
        count(Stat::Redirected);
        Some(())
    }
}
