//! `sockops`: on an application's active-established callback, the original
//! destination remembered by [`crate::connect4`] / [`crate::connect6`] under the
//! socket cookie moves to the socket's own address and port — the peer address the
//! proxy sees on the connection it accepts, and so the key [`crate::getsockopt`]
//! looks up. With sk_msg on, both ends of an app↔proxy loopback connection go into
//! the sockhash for [`crate::sk_msg`].
//!
//! Clean-up: a captured app socket asks for state callbacks when it connects (and
//! the proxy's hashed end when it is established); when either reaches `TCP_CLOSE`
//! its entries go: the cookie entry (a connect that never established), the original
//! destination under its address and port, and its [`crate::maps::MSG_TCP`] mark.
//! Deleting at close rather than when getsockopt answers: the answer stays right for
//! as long as the connection lives (asking twice works), an entry the proxy never
//! asks for (it refused the connection, or was gone) still goes, and the app's
//! address and port cannot be reused for a new captured connection before its
//! socket has closed, so a delete never hits the next connection's entry (which is
//! written later, at its own established callback). The proxy asks right after
//! accept, long before the app can reach `TCP_CLOSE` on a clean close (FIN_WAIT2
//! waits for the proxy's FIN); only an app that resets its connection before the
//! proxy has asked loses the answer, and its connection is gone anyway.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::bindings::{bpf_sock_ops, BPF_NOEXIST, BPF_SOCK_OPS_STATE_CB_FLAG};
use aya_ebpf::helpers::generated::bpf_get_socket_cookie;
use aya_ebpf::macros::sock_ops;
use aya_ebpf::programs::SockOpsContext;
use weft_ebpf_common::{
    mapped_v4, Addr, Config, SockKey, SockPair, Stat, AF_INET, AF_INET6, FLAG_SOCKMAP,
};

use crate::maps::{config, count, MSG_TCP, ORIG_BY_CLIENT, ORIG_BY_COOKIE, SOCKS};

/// `BPF_SOCK_OPS_TCP_CONNECT_CB`.
const TCP_CONNECT: u32 = 3;
/// `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB`.
const ACTIVE_ESTABLISHED: u32 = 4;
/// `BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`.
const PASSIVE_ESTABLISHED: u32 = 5;
/// `BPF_SOCK_OPS_STATE_CB` (args: old state, new state).
const STATE: u32 = 10;
/// `TCP_CLOSE`.
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    // SAFETY: the kernel hands the program a valid context.
    unsafe {
        match ctx.op() {
            TCP_CONNECT => connecting(&ctx),
            ACTIVE_ESTABLISHED => active(ctx.ops),
            PASSIVE_ESTABLISHED => passive(&ctx),
            STATE if ctx.arg(1) == TCP_CLOSE => closed(ctx.ops),
            _ => None,
        }
    };
    1
}

/// A captured app socket (its cookie is in the map) asks for state callbacks, so
/// that its entries go when it closes, established or not.
///
/// # Safety
/// `ctx.ops` is the program's context.
#[inline(always)]
unsafe fn connecting(ctx: &SockOpsContext) -> Option<()> {
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the value is only tested for presence, never read.
    unsafe { ORIG_BY_COOKIE.get(&cookie) }?;
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    Some(())
}

/// A socket that asked for state callbacks has closed: its entries go.
///
/// # Safety
/// `ops` is the program's context.
#[inline(always)]
unsafe fn closed(ops: *mut bpf_sock_ops) -> Option<()> {
    // SAFETY: the context pointer is valid for the helper and the reads.
    unsafe {
        let cookie = bpf_get_socket_cookie(ops.cast());
        let _ = ORIG_BY_COOKIE.remove(&cookie);
        let pair = ends(ops)?;
        let key = SockKey {
            addr: pair.local_addr,
            port: pair.local_port,
        };
        if ORIG_BY_CLIENT.remove(&key).is_ok() {
            count(Stat::OrigReleased);
        }
        let _ = MSG_TCP.remove(&pair);
        Some(())
    }
}

/// The socket's (local, remote) addresses and ports (host order), or None for a
/// family other than IPv4 and IPv6.
///
/// # Safety
/// `ops` is the program's context.
#[inline(always)]
unsafe fn ends(ops: *const bpf_sock_ops) -> Option<SockPair> {
    // SAFETY: context field reads the verifier allows, 4 bytes each.
    unsafe {
        // Every field is read whichever the family (the verifier forbids the pointer
        // arithmetic LLVM emits when the two branches share one load).
        let family = read_volatile(addr_of!((*ops).family));
        let local4 = read_volatile(addr_of!((*ops).local_ip4));
        let remote4 = read_volatile(addr_of!((*ops).remote_ip4));
        let l = addr_of!((*ops).local_ip6) as *const u32;
        let r = addr_of!((*ops).remote_ip6) as *const u32;
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
        let (local_addr, remote_addr) = if family == u32::from(AF_INET) {
            (mapped_v4(local4), mapped_v4(remote4))
        } else if family == u32::from(AF_INET6) {
            (local6, remote6)
        } else {
            return None;
        };
        Some(SockPair {
            local_addr,
            remote_addr,
            local_port: read_volatile(addr_of!((*ops).local_port)),
            // Network order in the upper 16 bits on little-endian: ntohl gives the port.
            remote_port: u32::from_be(read_volatile(addr_of!((*ops).remote_port))),
        })
    }
}

/// # Safety
/// `ops` is the program's context.
#[inline(always)]
unsafe fn active(ops: *mut bpf_sock_ops) -> Option<()> {
    // SAFETY: the context pointer is valid for the helper and the reads.
    unsafe {
        let cookie = bpf_get_socket_cookie(ops.cast());
        let orig = *ORIG_BY_COOKIE.get(&cookie)?;
        let pair = ends(ops)?;
        let key = SockKey {
            addr: pair.local_addr,
            port: pair.local_port,
        };
        let moved = ORIG_BY_CLIENT.insert(&key, &orig, 0).is_ok();
        let _ = ORIG_BY_COOKIE.remove(&cookie);
        if moved {
            count(Stat::Established);
            if let Some(cfg) = config() {
                hash(ops, pair, &cfg);
            }
        }
        Some(())
    }
}

/// The proxy's end of a captured connection: accepted on the outbound listener from a
/// loopback peer. With sk_msg on it is hashed, and asks for state callbacks so that
/// its [`MSG_TCP`] mark, if it gets one, goes when it closes.
///
/// # Safety
/// `ctx.ops` is the program's context.
#[inline(always)]
unsafe fn passive(ctx: &SockOpsContext) -> Option<()> {
    // SAFETY: as in `active`.
    unsafe {
        let cfg = config()?;
        let pair = ends(ctx.ops)?;
        if pair.local_port == u32::from(cfg.outbound_port) && cfg.flags & FLAG_SOCKMAP != 0 {
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            hash(ctx.ops, pair, &cfg);
        }
        Some(())
    }
}

/// Adds the socket to the sockhash under (local, remote), when sk_msg is on.
///
/// # Safety
/// `ops` is the program's context.
#[inline(always)]
unsafe fn hash(ops: *mut bpf_sock_ops, mut pair: SockPair, cfg: &Config) {
    if cfg.flags & FLAG_SOCKMAP == 0 {
        return;
    }
    // SAFETY: the context is a valid `bpf_sock_ops` for the helper.
    if SOCKS
        .update(&mut pair, unsafe { &mut *ops }, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        count(Stat::SockHashed);
    }
}
