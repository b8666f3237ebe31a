//! The few `bpf(2)` commands the loader issues itself: creating a cgroup bpf link
//! (aya 0.14 cannot hand out the link of a cgroup/getsockopt program for pinning),
//! pinning and opening pinned objects, and detaching a link at once (so that
//! `--cleanup` returns only when nothing is attached any more).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `BPF_OBJ_PIN`.
const BPF_OBJ_PIN: libc::c_long = 6;
/// `BPF_OBJ_GET`.
const BPF_OBJ_GET: libc::c_long = 7;
/// `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_LINK_DETACH`.
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_attach_type` values of the cgroup hooks weft uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachType {
    /// `BPF_CGROUP_SOCK_OPS`.
    SockOps = 3,
    /// `BPF_CGROUP_INET4_CONNECT`.
    Connect4 = 10,
    /// `BPF_CGROUP_INET6_CONNECT`.
    Connect6 = 11,
    /// `BPF_CGROUP_GETSOCKOPT`.
    GetSockopt = 21,
}

/// `union bpf_attr`, as 128 zeroed bytes the commands below fill the start of (the
/// kernel requires the unused tail to be zero).
#[repr(C, align(8))]
struct Attr([u32; 32]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialized buffer of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

/// Attaches `prog` to the cgroup `cgroup` with a bpf link (`BPF_LINK_CREATE`).
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach: AttachType,
) -> io::Result<OwnedFd> {
    let mut attr = Attr([0; 32]);
    // link_create: prog_fd, target_fd, attach_type, flags (0).
    attr.0[0] = fd_u32(prog);
    attr.0[1] = fd_u32(cgroup);
    attr.0[2] = attach as u32;
    owned(bpf(BPF_LINK_CREATE, &mut attr)?)
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn set_pathname(attr: &mut Attr, path: &CString) {
    // obj_pin / obj_get: pathname (u64), bpf_fd, file_flags, path_fd.
    let p = path.as_ptr() as u64;
    attr.0[0] = p as u32;
    attr.0[1] = (p >> 32) as u32;
}

/// Pins `fd` (a link, map or program) at `path` on bpffs (`BPF_OBJ_PIN`).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = Attr([0; 32]);
    set_pathname(&mut attr, &path);
    attr.0[2] = fd_u32(fd);
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = Attr([0; 32]);
    set_pathname(&mut attr, &path);
    owned(bpf(BPF_OBJ_GET, &mut attr)?)
}

/// Detaches a link from its hook now, whoever else holds it (`BPF_LINK_DETACH`).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr([0; 32]);
    attr.0[0] = fd_u32(link);
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}
