//! `sk_msg` (attached to the sockhash): data sent on one end of an app↔proxy
//! loopback connection is put straight on the other end's receive queue. The peer is
//! the socket stored under (this socket's remote, this socket's local); without one
//! the data takes the normal path.
//!
//! # One way per stream
//!
//! The app's end enters the sockhash at active-established (when the SYN-ACK
//! arrives), the proxy's end at passive-established (when the handshake's last ACK
//! is processed), so an app that writes at once may find no peer yet: those first
//! bytes go the TCP way, into the proxy socket's receive queue. Were later bytes
//! redirected, they would sit in the proxy socket's sk_msg queue, which
//! `tcp_bpf_recvmsg` reads *before* the receive queue: the proxy would read the
//! stream out of order. So a socket that has sent once without a peer is marked in
//! [`MSG_TCP`] and never redirected again: each direction of a connection takes one
//! way from its first byte to its last (redirected from the start, or TCP
//! throughout), and the mark costs only the acceleration of that connection. The
//! reverse switch (redirected, then TCP once the peer has gone) keeps the order: the
//! receiver drains its sk_msg queue before its receive queue. sockops deletes the
//! mark when the socket closes.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::bindings::{sk_action, BPF_F_INGRESS};
use aya_ebpf::macros::sk_msg;
use aya_ebpf::programs::SkMsgContext;
use weft_ebpf_common::{mapped_v4, Addr, SockPair, Stat, AF_INET, AF_INET6};

use crate::maps::{count, MSG_TCP, SOCKS};

#[sk_msg]
pub fn weft_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel hands the program a valid context.
    if let Some(own) = unsafe { ends(&ctx) } {
        // SAFETY: the value is only tested for presence, never read.
        if unsafe { MSG_TCP.get(&own) }.is_some() {
            // This stream has gone the TCP way already: keep it there.
            return sk_action::SK_PASS;
        }
        let mut peer = SockPair {
            local_addr: own.remote_addr,
            remote_addr: own.local_addr,
            local_port: own.remote_port,
            remote_port: own.local_port,
        };
        if SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS))
            == i64::from(sk_action::SK_PASS)
        {
            count(Stat::MsgRedirected);
        } else {
            // Marked before this message is passed (sends on one socket are
            // serialised by its lock), so no later message can overtake it.
            // A stack value: `&1` would be promoted to a `.rodata` map.
            let mark: u8 = 1;
            let _ = MSG_TCP.insert(&own, &mark, 0);
            count(Stat::MsgUnpaired);
        }
    }
    // After a successful redirect the verdict is the helper's; SK_PASS otherwise.
    sk_action::SK_PASS
}

/// The sending socket's own (local, remote) ends, as sockops stored it.
///
/// # Safety
/// `ctx.msg` is the program's context.
#[inline(always)]
unsafe fn ends(ctx: &SkMsgContext) -> Option<SockPair> {
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
            local_addr: local,
            remote_addr: remote,
            local_port: read_volatile(addr_of!((*md).local_port)),
            remote_port: u32::from_be(read_volatile(addr_of!((*md).remote_port))),
        })
    }
}
