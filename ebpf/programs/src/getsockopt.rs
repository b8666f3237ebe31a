//! `cgroup/getsockopt`: answers `getsockopt(SOL_IP, SO_ORIGINAL_DST)` and
//! `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on the proxy's accepted outbound
//! connections from the map [`crate::sockops`] fills, exactly as conntrack would after
//! an iptables REDIRECT (a `sockaddr_in` / `sockaddr_in6`). Any other getsockopt, and
//! one for a connection that is not in the map (an inbound one, captured by iptables),
//! keeps the kernel's answer.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::{bpf_sock, bpf_sockopt};
use aya_ebpf::macros::cgroup_sockopt;
use aya_ebpf::programs::SockoptContext;
use weft_ebpf_common::{mapped_v4, Addr, OrigDst, SockKey, Stat, AF_INET, AF_INET6};

use crate::maps::{config, count, ORIG_BY_CLIENT};

/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` (both 80).
const SO_ORIGINAL_DST: i32 = 80;
/// `SOL_IP`.
const SOL_IP: i32 = 0;
/// `SOL_IPV6`.
const SOL_IPV6: i32 = 41;
/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn weft_getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the kernel hands the program a valid context.
    unsafe { try_getsockopt(ctx.sockopt) };
    1
}

/// # Safety
/// `so` is the program's context.
#[inline(always)]
unsafe fn try_getsockopt(so: *mut bpf_sockopt) -> Option<()> {
    // SAFETY: context reads and writes the verifier allows for getsockopt; `sk` is
    // checked for null before use; optval writes are bounds-checked against optval_end.
    unsafe {
        if read_volatile(addr_of!((*so).optname)) != SO_ORIGINAL_DST {
            return None;
        }
        let level = read_volatile(addr_of!((*so).level));
        if level != SOL_IP && level != SOL_IPV6 {
            return None;
        }
        let sk: *mut bpf_sock = read_volatile(addr_of!((*so).__bindgen_anon_1.sk));
        if sk.is_null() {
            return None;
        }
        let cfg = config()?;
        // Only the proxy's outbound listener's connections (src_port: host order).
        if read_volatile(addr_of!((*sk).src_port)) != u32::from(cfg.outbound_port) {
            return None;
        }
        // Every field is read whichever the family (the verifier forbids the pointer
        // arithmetic LLVM emits when the two branches share one load).
        let family = read_volatile(addr_of!((*sk).family));
        let ip4 = read_volatile(addr_of!((*sk).dst_ip4));
        let d = addr_of!((*sk).dst_ip6) as *const u32;
        let ip6: Addr = [
            read_volatile(d),
            read_volatile(d.add(1)),
            read_volatile(d.add(2)),
            read_volatile(d.add(3)),
        ];
        let peer: Addr = if family == u32::from(AF_INET) {
            mapped_v4(ip4)
        } else if family == u32::from(AF_INET6) {
            ip6
        } else {
            return None;
        };
        let key = SockKey {
            addr: peer,
            port: u32::from(u16::from_be(read_volatile(addr_of!((*sk).dst_port)))),
        };
        let orig: OrigDst = *ORIG_BY_CLIENT.get(&key)?;

        let optval = read_volatile(addr_of!((*so).__bindgen_anon_2.optval)) as *mut u8;
        let optval_end = read_volatile(addr_of!((*so).__bindgen_anon_3.optval_end)) as *mut u8;
        let len = if level == SOL_IP {
            if orig.family != AF_INET || optval.add(SOCKADDR_IN_LEN) > optval_end {
                return None;
            }
            // struct sockaddr_in { u16 family; be16 port; be32 addr; u8 zero[8]; }
            write_volatile(optval as *mut u16, AF_INET);
            write_volatile(optval.add(2) as *mut u16, orig.port_be);
            write_volatile(optval.add(4) as *mut u32, orig.addr[3]);
            write_volatile(optval.add(8) as *mut u32, 0);
            write_volatile(optval.add(12) as *mut u32, 0);
            SOCKADDR_IN_LEN
        } else {
            if optval.add(SOCKADDR_IN6_LEN) > optval_end {
                return None;
            }
            // struct sockaddr_in6 { u16 family; be16 port; u32 flowinfo; u8 addr[16];
            // u32 scope_id; } (an IPv4 original destination as IPv4-mapped)
            let addr = if orig.family == AF_INET {
                mapped_v4(orig.addr[3])
            } else {
                orig.addr
            };
            write_volatile(optval as *mut u16, AF_INET6);
            write_volatile(optval.add(2) as *mut u16, orig.port_be);
            write_volatile(optval.add(4) as *mut u32, 0);
            write_volatile(optval.add(8) as *mut u32, addr[0]);
            write_volatile(optval.add(12) as *mut u32, addr[1]);
            write_volatile(optval.add(16) as *mut u32, addr[2]);
            write_volatile(optval.add(20) as *mut u32, addr[3]);
            write_volatile(optval.add(24) as *mut u32, 0);
            SOCKADDR_IN6_LEN
        };
        // Two separate 4-byte context stores (volatile, so LLVM cannot merge them into
        // one 8-byte store, which the verifier would reject).
        write_volatile(addr_of_mut!((*so).optlen), len as i32);
        write_volatile(addr_of_mut!((*so).retval), 0);
        count(Stat::OrigDstAnswered);
        Some(())
    }
}
