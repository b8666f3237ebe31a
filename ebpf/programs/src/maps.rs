//! The maps every program shares (see `weft-ebpf-common` for the table) and small
//! helpers over them.

use aya_ebpf::macros::map;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash};
use weft_ebpf_common::{
    Addr, Config, OrigDst, SockKey, SockPair, Stat, EXCLUDED_ENTRIES, ORIG_MAP_ENTRIES,
    SOCK_HASH_ENTRIES, STATS_ENTRIES,
};

#[map(name = "WEFT_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "WEFT_EXCL_PORTS")]
pub static EXCLUDED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(EXCLUDED_ENTRIES, 0);

#[map(name = "WEFT_EXCL_CIDRS")]
pub static EXCLUDED_CIDRS: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(EXCLUDED_ENTRIES, 0);

#[map(name = "WEFT_ORIG_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(ORIG_MAP_ENTRIES, 0);

#[map(name = "WEFT_ORIG_CLIENT")]
pub static ORIG_BY_CLIENT: LruHashMap<SockKey, OrigDst> =
    LruHashMap::with_max_entries(ORIG_MAP_ENTRIES, 0);

#[map(name = "WEFT_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[map(name = "WEFT_SOCKS")]
pub static SOCKS: SockHash<SockPair> = SockHash::with_max_entries(SOCK_HASH_ENTRIES, 0);

#[map(name = "WEFT_MSG_TCP")]
pub static MSG_TCP: LruHashMap<SockPair, u8> = LruHashMap::with_max_entries(SOCK_HASH_ENTRIES, 0);

/// The configuration, if the loader has written it (a zero outbound port means not).
#[inline(always)]
pub fn config() -> Option<Config> {
    let cfg = *CONFIG.get(0)?;
    (cfg.outbound_port != 0).then_some(cfg)
}

/// Adds one to a counter (per CPU: programs run with preemption off, so a plain
/// increment of this CPU's slot is not raced; user space sums the slots).
#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(p) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer is to this CPU's live, aligned u64 map value.
        unsafe { *p += 1 };
    }
}

/// Whether a connection to `addr:port` (port in host order) is left alone because the
/// operator excluded its port or its network.
#[inline(always)]
pub fn excluded(addr: Addr, port: u16) -> bool {
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { EXCLUDED_PORTS.get(&port) }.is_some() {
        return true;
    }
    EXCLUDED_CIDRS.get(Key::new(128, addr)).is_some()
}

/// Whether the current task is the proxy (its uid, or its gid when configured).
#[inline(always)]
pub fn is_proxy(cfg: &Config) -> bool {
    let uid_gid = aya_ebpf::helpers::bpf_get_current_uid_gid();
    let uid = uid_gid as u32;
    let gid = (uid_gid >> 32) as u32;
    uid == cfg.proxy_uid
        || (cfg.flags & weft_ebpf_common::FLAG_PROXY_GID != 0 && gid == cfg.proxy_gid)
}
