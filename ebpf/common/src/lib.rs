//! weft-ebpf-common: the `#[repr(C)]` types of weft's eBPF maps, shared by the kernel
//! programs (`ebpf/programs`, `no_std`, bpfel) and the user-space loader (`weft-ebpf`,
//! with the `user` feature, which implements `aya::Pod` for them).
//!
//! Addresses are stored one way in every map: 16 bytes in network byte order, IPv6 as
//! is and IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), held in four `u32` words laid
//! out in memory exactly as the kernel's `user_ip6` / `local_ip6` fields are. So an
//! IPv4 socket and an IPv4-mapped address on an IPv6 socket share one key, and the CIDR
//! trie serves both families (an IPv4 prefix `/n` is stored as `/96+n`).
//!
//! # Maps (names as in the object file)
//!
//! | map | type | key → value | written by |
//! | --- | --- | --- | --- |
//! | [`MAP_CONFIG`] | array\[1\] | 0 → [`Config`] | loader |
//! | [`MAP_EXCLUDED_PORTS`] | hash | destination port (host order) → 1 | loader |
//! | [`MAP_EXCLUDED_CIDRS`] | LPM trie | [`Addr`] prefix → 1 | loader |
//! | [`MAP_ORIG_BY_COOKIE`] | LRU hash | socket cookie → [`OrigDst`] | connect4/6 |
//! | [`MAP_ORIG_BY_CLIENT`] | LRU hash | [`SockKey`] (client addr:port) → [`OrigDst`] | sockops |
//! | [`MAP_STATS`] | array | [`Stat`] index → count | every program |
//! | [`MAP_SOCK_HASH`] | sockhash | [`SockPair`] → socket | sockops (sk_msg) |
//! | [`MAP_MSG_TCP`] | LRU hash | [`SockPair`] (a hashed socket's own ends) → 1 | sk_msg |
//!
//! Entries of [`MAP_ORIG_BY_COOKIE`], [`MAP_ORIG_BY_CLIENT`] and [`MAP_MSG_TCP`] are
//! deleted by sockops when their socket closes (`BPF_SOCK_OPS_STATE_CB`, new state
//! `TCP_CLOSE`); the LRU is only a backstop. The sockhash drops a socket by itself.

#![no_std]

/// Name of the configuration array.
pub const MAP_CONFIG: &str = "WEFT_CONFIG";
/// Name of the excluded destination ports hash.
pub const MAP_EXCLUDED_PORTS: &str = "WEFT_EXCL_PORTS";
/// Name of the excluded destination CIDRs trie.
pub const MAP_EXCLUDED_CIDRS: &str = "WEFT_EXCL_CIDRS";
/// Name of the cookie → original destination map (connect → established).
pub const MAP_ORIG_BY_COOKIE: &str = "WEFT_ORIG_COOKIE";
/// Name of the client address → original destination map (established → getsockopt).
pub const MAP_ORIG_BY_CLIENT: &str = "WEFT_ORIG_CLIENT";
/// Name of the counters array.
pub const MAP_STATS: &str = "WEFT_STATS";
/// Name of the sockhash of app↔proxy loopback sockets (sk_msg acceleration).
pub const MAP_SOCK_HASH: &str = "WEFT_SOCKS";
/// Name of the set of hashed sockets that have sent data the TCP way (their peer was
/// not in the sockhash yet): sk_msg never redirects their data again, so a stream
/// never takes both ways (which would reorder it at the receiver).
pub const MAP_MSG_TCP: &str = "WEFT_MSG_TCP";

/// Program names (the Rust function names in the object).
pub const PROG_CONNECT4: &str = "weft_connect4";
/// See [`PROG_CONNECT4`].
pub const PROG_CONNECT6: &str = "weft_connect6";
/// See [`PROG_CONNECT4`].
pub const PROG_SOCKOPS: &str = "weft_sockops";
/// See [`PROG_CONNECT4`].
pub const PROG_GETSOCKOPT: &str = "weft_getsockopt";
/// See [`PROG_CONNECT4`].
pub const PROG_SK_MSG: &str = "weft_sk_msg";

/// Entries of the connection maps (LRU: a connection that never establishes, or
/// whose proxy never asks, is evicted eventually instead of leaking).
pub const ORIG_MAP_ENTRIES: u32 = 65_536;
/// Entries of the excluded ports hash and CIDR trie.
pub const EXCLUDED_ENTRIES: u32 = 1_024;
/// Entries of the sockhash.
pub const SOCK_HASH_ENTRIES: u32 = 65_536;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// [`Config::flags`]: [`Config::proxy_gid`] is set.
pub const FLAG_PROXY_GID: u32 = 1;
/// [`Config::flags`]: sockops adds app↔proxy sockets to the sockhash (sk_msg on).
pub const FLAG_SOCKMAP: u32 = 2;

/// The interception settings, one entry in [`MAP_CONFIG`]. A zero `outbound_port`
/// means "not configured yet": the programs then capture nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Connections made by this uid (the proxy) are not captured.
    pub proxy_uid: u32,
    /// Connections made by this gid are not captured either, with [`FLAG_PROXY_GID`].
    pub proxy_gid: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The proxy's outbound listener port (host order).
    pub outbound_port: u16,
    /// Padding, zero.
    pub _pad: u16,
}

/// A 16-byte address in network byte order (see the crate docs).
pub type Addr = [u32; 4];

/// The IPv4-mapped form of an IPv4 address given as the kernel gives it (`user_ip4`,
/// `local_ip4`: network byte order in a `u32`).
#[inline(always)]
pub const fn mapped_v4(ip4_be: u32) -> Addr {
    [0, 0, u32::from_be(0x0000_ffff), ip4_be]
}

/// Whether `addr` is IPv4-mapped; its IPv4 word (network order) then is `addr[3]`.
#[inline(always)]
pub const fn is_mapped_v4(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_be(0x0000_ffff)
}

/// A socket's local or remote address and port: the key of [`MAP_ORIG_BY_CLIENT`]
/// (the app's socket, as the proxy sees it as the peer of the accepted connection).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// The address ([`Addr`] form).
    pub addr: Addr,
    /// The port, host byte order.
    pub port: u32,
}

/// Where a captured connection was headed: the answer to `SO_ORIGINAL_DST`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// The address ([`Addr`] form; IPv4 mapped).
    pub addr: Addr,
    /// The port, network byte order (as in `sockaddr_in`).
    pub port_be: u16,
    /// [`AF_INET`] or [`AF_INET6`]: the family the application connected with (an
    /// IPv4-mapped destination on an IPv6 socket is [`AF_INET`]).
    pub family: u16,
}

/// A loopback connection's two ends, the key of [`MAP_SOCK_HASH`]: each socket is
/// stored under (its local, its remote), and a message is redirected to the socket
/// stored under (its remote, its local), i.e. the other end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPair {
    /// Local address ([`Addr`] form).
    pub local_addr: Addr,
    /// Remote address ([`Addr`] form).
    pub remote_addr: Addr,
    /// Local port, host byte order.
    pub local_port: u32,
    /// Remote port, host byte order.
    pub remote_port: u32,
}

/// Indexes of [`MAP_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// connect4/6 rewrote a connection to the proxy.
    Redirected = 0,
    /// connect4/6 let a connection through: the proxy's own (uid or gid).
    SkippedProxy = 1,
    /// connect4/6 let a connection through: loopback destination.
    SkippedLoopback = 2,
    /// connect4/6 let a connection through: excluded port or CIDR.
    SkippedExcluded = 3,
    /// sockops moved an original destination from the cookie to the client address.
    Established = 4,
    /// getsockopt answered `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` from the map.
    OrigDstAnswered = 5,
    /// sk_msg redirected a message to the other end of a loopback connection.
    MsgRedirected = 6,
    /// sockops added a socket to the sockhash.
    SockHashed = 7,
    /// sk_msg found no peer for a hashed socket's data (the proxy's end was not in the
    /// sockhash yet, or had gone): that socket's data takes the TCP path from then on.
    MsgUnpaired = 8,
    /// sockops deleted a closing app socket's original destination.
    OrigReleased = 9,
}

impl Stat {
    /// Every counter, in index order.
    pub const ALL: [Stat; 10] = [
        Stat::Redirected,
        Stat::SkippedProxy,
        Stat::SkippedLoopback,
        Stat::SkippedExcluded,
        Stat::Established,
        Stat::OrigDstAnswered,
        Stat::MsgRedirected,
        Stat::SockHashed,
        Stat::MsgUnpaired,
        Stat::OrigReleased,
    ];

    /// Its name in reports (`snake_case`).
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Redirected => "redirected",
            Stat::SkippedProxy => "skipped_proxy",
            Stat::SkippedLoopback => "skipped_loopback",
            Stat::SkippedExcluded => "skipped_excluded",
            Stat::Established => "established",
            Stat::OrigDstAnswered => "orig_dst_answered",
            Stat::MsgRedirected => "msg_redirected",
            Stat::SockHashed => "sock_hashed",
            Stat::MsgUnpaired => "msg_unpaired",
            Stat::OrigReleased => "orig_released",
        }
    }
}

/// Number of [`MAP_STATS`] entries.
pub const STATS_ENTRIES: u32 = Stat::ALL.len() as u32;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data without padding holes that matter (every field
    // is an integer; padding fields are explicit), valid for any bit pattern.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockPair {}
}
