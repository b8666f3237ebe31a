//! Installing the programs for one pod's cgroup, removing them, and describing what
//! would be installed.
//!
//! Pins, under `/sys/fs/bpf/weft/<pod>/`:
//! - `link_<program>` for each cgroup attachment (a bpf link: the attachment lives as
//!   long as the pin, and ends when the pin is removed);
//! - `map_<MAP>` for every map (so the counters can be read, and the sk_msg
//!   attachment, which belongs to the sockhash, is visible).
//!
//! Installing again replaces the pod's programs (remove, then install). A failed
//! install removes what it attached.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, SockHash};
use aya::programs::{CgroupSockAddr, CgroupSockopt, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use weft_ebpf_common::{
    Addr, Config, SockPair, Stat, MAP_CONFIG, MAP_EXCLUDED_CIDRS, MAP_EXCLUDED_PORTS,
    MAP_SOCK_HASH, MAP_STATS, PROG_CONNECT4, PROG_CONNECT6, PROG_GETSOCKOPT, PROG_SK_MSG,
    PROG_SOCKOPS,
};

use crate::settings::{self, Settings};
use crate::sys::{self, AttachType};
use crate::{object, support, Error};

/// Where bpffs is (and is mounted when it is not).
pub const BPFFS: &str = "/sys/fs/bpf";
/// The directory under bpffs holding one directory per pod.
pub const PIN_ROOT: &str = "/sys/fs/bpf/weft";

/// The cgroup attachments, in attach order: the answering side first, so that no
/// connection is rewritten before its original destination can be answered.
pub const CGROUP_PROGRAMS: [(&str, &str); 4] = [
    (PROG_GETSOCKOPT, "cgroup/getsockopt"),
    (PROG_SOCKOPS, "sockops"),
    (PROG_CONNECT4, "cgroup/connect4"),
    (PROG_CONNECT6, "cgroup/connect6"),
];

/// One pod: its cgroup and its pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod's cgroup v2 directory.
    pub cgroup: PathBuf,
    /// The pod's name (the pin directory's name).
    pub pod: String,
    /// `/sys/fs/bpf/weft/<pod>`.
    pub pin_dir: PathBuf,
}

impl Target {
    /// The target for `cgroup`, named `pod` or, without it, after the cgroup's last
    /// path component.
    pub fn new(cgroup: &Path, pod: Option<&str>) -> Result<Self, Error> {
        let pod = match pod {
            Some(p) => p.to_string(),
            None => cgroup
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
                .ok_or_else(|| Error::NoPodName(cgroup.to_path_buf()))?,
        };
        if pod.is_empty() || pod.contains('/') || pod == "." || pod == ".." {
            return Err(Error::NoPodName(cgroup.to_path_buf()));
        }
        Ok(Target {
            cgroup: cgroup.to_path_buf(),
            pin_dir: Path::new(PIN_ROOT).join(&pod),
            pod,
        })
    }
}

/// What [`install`] did (its `Display` is the summary line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The target.
    pub target: Target,
    /// The outbound listener connections are rewritten to.
    pub outbound_port: u16,
    /// Whether sk_msg acceleration is on.
    pub sockmap: bool,
    /// Whether an earlier install was replaced.
    pub replaced: bool,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ebpf: outbound TCP of cgroup {} -> 127.0.0.1/[::1]:{} (connect4, connect6, sockops, getsockopt{}), pinned at {}{}",
            self.target.cgroup.display(),
            self.outbound_port,
            if self.sockmap { ", sk_msg" } else { "" },
            self.target.pin_dir.display(),
            if self.replaced { " (replaced the earlier install)" } else { "" },
        )
    }
}

/// What [`cleanup`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The target.
    pub target: Target,
    /// Link pins removed (each one an attachment ended).
    pub links: usize,
    /// Map pins removed.
    pub maps: usize,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.links == 0 && self.maps == 0 {
            write!(
                f,
                "ebpf: nothing installed for {} ({} does not exist)",
                self.target.pod,
                self.target.pin_dir.display()
            )
        } else {
            write!(
                f,
                "ebpf: detached {} programs from {} and removed {} ({} map pins)",
                self.links,
                self.target.cgroup.display(),
                self.target.pin_dir.display(),
                self.maps
            )
        }
    }
}

/// What [`install`] would do, for `--dry-run`: one line per action, changing nothing.
pub fn describe(target: &Target, settings: &Settings) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    if !object::is_embedded() {
        line(format!(
            "# warning: {}",
            object::object()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        ));
    }
    if target.pin_dir.exists() {
        line(format!(
            "remove the earlier install at {}",
            target.pin_dir.display()
        ));
    }
    line(format!(
        "load the weft eBPF object ({} bytes)",
        object_len()
    ));
    let cfg = settings.config();
    line(format!(
        "set {MAP_CONFIG}: proxy uid {}{}, outbound port {}, sk_msg {}",
        cfg.proxy_uid,
        settings
            .proxy_gid
            .map(|g| format!(", proxy gid {g}"))
            .unwrap_or_default(),
        cfg.outbound_port,
        if settings.sockmap { "on" } else { "off" }
    ));
    for p in &settings.exclude_ports {
        line(format!(
            "set {MAP_EXCLUDED_PORTS}: exclude destination port {p}"
        ));
    }
    for (ip, prefix) in &settings.exclude_cidrs {
        line(format!(
            "set {MAP_EXCLUDED_CIDRS}: exclude destination {ip}/{prefix}"
        ));
    }
    for (prog, kind) in CGROUP_PROGRAMS {
        line(format!(
            "attach {kind} ({prog}) to cgroup {}, pin the link at {}",
            target.cgroup.display(),
            target.pin_dir.join(format!("link_{prog}")).display()
        ));
    }
    if settings.sockmap {
        line(format!(
            "attach sk_msg ({PROG_SK_MSG}) to the sockhash {MAP_SOCK_HASH}"
        ));
    }
    line(format!("pin every map under {}", target.pin_dir.display()));
    s
}

fn object_len() -> usize {
    object::object().map(<[u8]>::len).unwrap_or(0)
}

/// Loads, configures, attaches and pins the programs for `target`.
pub fn install(target: &Target, settings: &Settings) -> Result<Installed, Error> {
    let bytes = object::object()?;
    support::check(settings.sockmap)?;
    support::check_cgroup2(&target.cgroup)?;
    support::ensure_bpffs(Path::new(BPFFS))?;
    let replaced = target.pin_dir.exists();
    if replaced {
        cleanup(target)?;
    }
    let mut ebpf = EbpfLoader::new()
        .load(bytes)
        .map_err(|e| Error::Load(Box::new(e)))?;
    configure(&mut ebpf, settings)?;
    fs::create_dir_all(&target.pin_dir).map_err(|cause| Error::Io {
        what: "creating",
        path: target.pin_dir.clone(),
        cause,
    })?;
    if let Err(failed) = attach_all(&mut ebpf, target, settings) {
        drop(ebpf);
        return Err(match cleanup(target) {
            Ok(_) => failed,
            Err(rollback) => Error::RollbackFailed {
                failed: Box::new(failed),
                rollback: Box::new(rollback),
            },
        });
    }
    Ok(Installed {
        target: target.clone(),
        outbound_port: settings.outbound_port,
        sockmap: settings.sockmap,
        replaced,
    })
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, Error> {
    ebpf.map_mut(name).ok_or(Error::Missing {
        kind: "map",
        name: name.to_string(),
    })
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |e| Error::Map {
        map,
        cause: Box::new(e),
    }
}

fn configure(ebpf: &mut Ebpf, settings: &Settings) -> Result<(), Error> {
    let mut config: Array<_, Config> =
        Array::try_from(map_mut(ebpf, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
    config
        .set(0, settings.config(), 0)
        .map_err(map_err(MAP_CONFIG))?;

    let mut ports: HashMap<_, u16, u8> = HashMap::try_from(map_mut(ebpf, MAP_EXCLUDED_PORTS)?)
        .map_err(map_err(MAP_EXCLUDED_PORTS))?;
    for port in &settings.exclude_ports {
        ports
            .insert(port, 1, 0)
            .map_err(map_err(MAP_EXCLUDED_PORTS))?;
    }

    let mut cidrs: LpmTrie<_, Addr, u8> = LpmTrie::try_from(map_mut(ebpf, MAP_EXCLUDED_CIDRS)?)
        .map_err(map_err(MAP_EXCLUDED_CIDRS))?;
    for (ip, prefix) in &settings.exclude_cidrs {
        let key = Key::new(settings::trie_prefix(*ip, *prefix), settings::addr(*ip));
        cidrs
            .insert(&key, 1, 0)
            .map_err(map_err(MAP_EXCLUDED_CIDRS))?;
    }
    Ok(())
}

fn program_err(
    action: &'static str,
    program: &'static str,
) -> impl Fn(aya::programs::ProgramError) -> Error {
    move |e| Error::Program {
        action,
        program,
        cause: Box::new(e),
    }
}

fn pin_err(what: String, path: PathBuf) -> impl FnOnce(aya::pin::PinError) -> Error {
    move |e| Error::Pin {
        what,
        path,
        cause: Box::new(e),
    }
}

/// Loads one cgroup program of type `$ty`, attaches it to `$cgroup` with a bpf link
/// and pins the link.
macro_rules! attach_cgroup {
    ($ebpf:expr, $name:expr, $ty:ty, $attach:expr, $cgroup:expr, $cgroup_path:expr, $dir:expr) => {{
        let name: &'static str = $name;
        let prog: &mut $ty = $ebpf
            .program_mut(name)
            .ok_or(Error::Missing {
                kind: "program",
                name: name.to_string(),
            })?
            .try_into()
            .map_err(program_err("loading", name))?;
        prog.load().map_err(program_err("loading", name))?;
        let prog_fd = prog.fd().map_err(program_err("loading", name))?;
        let link =
            sys::link_create(prog_fd.as_fd(), $cgroup.as_fd(), $attach).map_err(|cause| {
                Error::Io {
                    what: "attaching (bpf link) to the cgroup",
                    path: PathBuf::from(format!("{} ({name})", $cgroup_path)),
                    cause,
                }
            })?;
        let path = $dir.join(format!("link_{name}"));
        sys::obj_pin(link.as_fd(), &path).map_err(|cause| Error::Io {
            what: "pinning the link at",
            path: path.clone(),
            cause,
        })?;
    }};
}

fn attach_all(ebpf: &mut Ebpf, target: &Target, settings: &Settings) -> Result<(), Error> {
    let cgroup = File::open(&target.cgroup).map_err(|cause| Error::Io {
        what: "opening the cgroup",
        path: target.cgroup.clone(),
        cause,
    })?;
    let dir = &target.pin_dir;

    // Maps first: pinned, they are visible (and readable) from the start.
    for (name, map) in ebpf.maps() {
        // `.rodata`, `.bss`, `.data`: the object's own sections, not weft's maps.
        if name.starts_with('.') {
            continue;
        }
        let path = dir.join(format!("map_{name}"));
        map.pin(&path)
            .map_err(pin_err(format!("the map {name}"), path))?;
    }

    if settings.sockmap {
        let hash: SockHash<_, SockPair> =
            SockHash::try_from(ebpf.map(MAP_SOCK_HASH).ok_or(Error::Missing {
                kind: "map",
                name: MAP_SOCK_HASH.to_string(),
            })?)
            .map_err(map_err(MAP_SOCK_HASH))?;
        let fd = hash.fd().try_clone().map_err(|cause| Error::Io {
            what: "duplicating the fd of",
            path: PathBuf::from(MAP_SOCK_HASH),
            cause,
        })?;
        let prog: &mut SkMsg = ebpf
            .program_mut(PROG_SK_MSG)
            .ok_or(Error::Missing {
                kind: "program",
                name: PROG_SK_MSG.to_string(),
            })?
            .try_into()
            .map_err(program_err("loading", PROG_SK_MSG))?;
        prog.load().map_err(program_err("loading", PROG_SK_MSG))?;
        let id = prog
            .attach(&fd)
            .map_err(program_err("attaching", PROG_SK_MSG))?;
        let link = prog
            .take_link(id)
            .map_err(program_err("attaching", PROG_SK_MSG))?;
        // The attachment belongs to the sockhash (alive while the sockops program that
        // uses it is): dropping the link would detach it, so it is left to the exit.
        std::mem::forget(link);
    }

    let cg = target.cgroup.display();
    attach_cgroup!(
        ebpf,
        PROG_GETSOCKOPT,
        CgroupSockopt,
        AttachType::GetSockopt,
        cgroup,
        cg,
        dir
    );
    attach_cgroup!(
        ebpf,
        PROG_SOCKOPS,
        SockOps,
        AttachType::SockOps,
        cgroup,
        cg,
        dir
    );
    attach_cgroup!(
        ebpf,
        PROG_CONNECT4,
        CgroupSockAddr,
        AttachType::Connect4,
        cgroup,
        cg,
        dir
    );
    attach_cgroup!(
        ebpf,
        PROG_CONNECT6,
        CgroupSockAddr,
        AttachType::Connect6,
        cgroup,
        cg,
        dir
    );
    Ok(())
}

/// Detaches and unpins everything installed for `target`: each link pin is opened
/// and the link detached at once (`BPF_LINK_DETACH`), so on return nothing of weft's
/// is attached to the cgroup; then every pin and the pod's directory are removed.
/// Succeeds when nothing is installed.
pub fn cleanup(target: &Target) -> Result<Removed, Error> {
    let mut removed = Removed {
        target: target.clone(),
        links: 0,
        maps: 0,
    };
    let entries = match fs::read_dir(&target.pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(cause) => {
            return Err(Error::Io {
                what: "reading",
                path: target.pin_dir.clone(),
                cause,
            })
        }
    };
    let mut paths = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| Error::Io {
            what: "reading",
            path: target.pin_dir.clone(),
            cause,
        })?;
    // Links first (attachments end), then maps.
    paths.sort_by_key(|p| !is_link_pin(p));
    for path in paths {
        if is_link_pin(&path) {
            let link = sys::obj_get(&path).map_err(|cause| Error::Io {
                what: "opening the pinned link",
                path: path.clone(),
                cause,
            })?;
            match sys::link_detach(link.as_fd()) {
                // ENOLINK: already detached (e.g. its cgroup was removed).
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
                Err(cause) => {
                    return Err(Error::Io {
                        what: "detaching the link",
                        path,
                        cause,
                    })
                }
            }
            removed.links += 1;
        } else {
            removed.maps += 1;
        }
        fs::remove_file(&path).map_err(|cause| Error::Io {
            what: "unpinning",
            path: path.clone(),
            cause,
        })?;
    }
    fs::remove_dir(&target.pin_dir).map_err(|cause| Error::Io {
        what: "removing",
        path: target.pin_dir.clone(),
        cause,
    })?;
    // The shared parent goes with the last pod's directory (fails while others exist).
    let _ = fs::remove_dir(PIN_ROOT);
    Ok(removed)
}

fn is_link_pin(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("link_"))
}

/// The counters of an installed pod (summed over CPUs), read from its pinned
/// `WEFT_STATS` map.
pub fn read_stats(target: &Target) -> Result<Vec<(Stat, u64)>, Error> {
    let path = target.pin_dir.join(format!("map_{MAP_STATS}"));
    let data = MapData::from_pin(&path).map_err(map_err(MAP_STATS))?;
    let map = aya::maps::Map::PerCpuArray(data);
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err(MAP_STATS))?;
    let mut out = Vec::new();
    for stat in Stat::ALL {
        let values = stats.get(&(stat as u32), 0).map_err(map_err(MAP_STATS))?;
        out.push((stat, values.iter().sum()));
    }
    Ok(out)
}
