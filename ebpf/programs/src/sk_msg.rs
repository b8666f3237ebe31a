//! `sk_msg` (attached to the sockhash): data sent on one end of an app↔proxy
//! loopback connection is put straight on the other end's receive queue. The peer is
//! the socket stored under (this socket's remote, this socket's local); without one
//! the data takes the normal path.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::bindings::{sk_action, BPF_F_INGRESS};
use aya_ebpf::macros::sk_msg;
use aya_ebpf::programs::SkMsgContext;
use weft_ebpf_common::{mapped_v4, Addr, SockPair, Stat, AF_INET, AF_INET6};

use crate::maps::{count, SOCKS};

#[sk_msg]
pub fn weft_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel hands the program a valid context.
    if let Some(mut peer) = unsafe { peer_key(&ctx) } {
        if SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS))
            == i64::from(sk_action::SK_PASS)
        {
            count(Stat::MsgRedirected);
        }
    }
    // After a successful redirect the verdict is the helper's; SK_PASS otherwise.
    sk_action::SK_PASS
}

/// # Safety
/// `ctx.msg` is the program's context.
#[inline(always)]
unsafe fn peer_key(ctx: &SkMsgContext) -> Option<SockPair> {
    // SAFETY: context field reads the verifier allows, 4 bytes each.
    unsafe {
        let md = ctx.msg;
        // Every field is read whichever the family (the verifier forbids the pointer
        // arithmetic LLVM emits when the two branches share one load).
        let family = read_volatile(addr_of!((*md).family));
        let local4 = read_volatile(addr_of!((*md).local_ip4));
        let remote4 = read_volatile(addr_of!((*md).remote_ip4));
        let l = addr_of!((*md).local_ip6) as *const u32;
        let r = addr_of!((*md).remote_ip6) as *const u32;
        let local6: Addr = [
            read_volatile(l),
            read_volatile(l.add(1)),
            read_volatile(l.add(2)),
            read_volatile(l.add(3)),
        ];
        let remote6: Addr = [
            read_volatile(r),
            read_volatile(r.add(1)),
            read_volatile(r.add(2)),
            read_volatile(r.add(3)),
        ];
        let (local, remote) = if family == u32::from(AF_INET) {
            (mapped_v4(local4), mapped_v4(remote4))
        } else if family == u32::from(AF_INET6) {
            (local6, remote6)
        } else {
            return None;
        };
        Some(SockPair {
            local_addr: remote,
            remote_addr: local,
            local_port: u32::from_be(read_volatile(addr_of!((*md).remote_port))),
            remote_port: read_volatile(addr_of!((*md).local_port)),
        })
    }
}
