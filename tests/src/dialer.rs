//! TCP connections the test process makes "as an app of a pod", in either capture
//! mode: a [`Dialer`].
//!
//! In iptables mode a thread that joined the pod's network namespace is captured
//! like any process there, so the dialer connects from such a thread. In eBPF mode
//! capture follows the cgroup of the process that makes the socket, and a cgroup
//! holds processes, not threads: the dialer asks a helper running inside the pod's
//! cgroup (`tests/tools/dialer.py`) to connect, and receives the connected socket
//! over a Unix socket (SCM_RIGHTS). Either way the caller gets a plain blocking
//! [`TcpStream`] whose kernel side belongs to the pod.

use std::io::{IoSliceMut, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::Pod;

/// Makes TCP connections from a pod as one of its apps (see the module docs).
/// Cheap to clone and `Send`: hand one to a client thread.
#[derive(Debug, Clone)]
pub struct Dialer {
    pod: Pod,
    /// eBPF mode: the Unix socket of the helper in the pod's cgroup.
    helper: Option<PathBuf>,
}

impl Dialer {
    /// A dialer connecting from a thread in `pod`'s network namespace.
    pub fn in_netns(pod: &Pod) -> Dialer {
        Dialer {
            pod: pod.clone(),
            helper: None,
        }
    }

    /// A dialer asking the `tests/tools/dialer.py` helper listening on `socket`
    /// (running in the pod's cgroup) to connect.
    pub fn via_helper(pod: &Pod, socket: PathBuf) -> Dialer {
        Dialer {
            pod: pod.clone(),
            helper: Some(socket),
        }
    }

    /// The pod.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// A connection to `addr` made as an app of the pod, with `timeout` for the
    /// connect and as the read and write timeouts. May be called on any thread.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let stream = match &self.helper {
            None => self
                .pod
                .in_netns(|| TcpStream::connect_timeout(&addr, timeout))
                .with_context(|| format!("connect to {addr} from pod {}", self.pod.name()))?,
            Some(socket) => via_helper(socket, addr, timeout)
                .with_context(|| format!("connect to {addr} from pod {}", self.pod.name()))?,
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    }
}

fn via_helper(socket: &PathBuf, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let mut unix = UnixStream::connect(socket)
        .with_context(|| format!("reach the dialer helper at {}", socket.display()))?;
    unix.set_read_timeout(Some(timeout + Duration::from_secs(5)))?;
    writeln!(
        unix,
        "{} {} {}",
        addr.ip(),
        addr.port(),
        timeout.as_secs_f64()
    )?;
    let mut buf = [0u8; 512];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (bytes, fd) = {
        let msg = recvmsg::<()>(
            unix.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receive from the dialer helper")?;
        let mut fd = None;
        for cmsg in msg.cmsgs().context("the dialer helper's control message")? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                fd = fds.first().copied();
            }
        }
        (msg.bytes, fd)
    };
    let reply = String::from_utf8_lossy(&buf[..bytes]).trim().to_owned();
    match (reply.as_str(), fd) {
        // SAFETY: the kernel just installed this fd in our table for us alone.
        ("ok", Some(fd)) => Ok(unsafe { TcpStream::from_raw_fd(fd) }),
        (_, Some(fd)) => {
            // SAFETY: as above; closed at once.
            drop(unsafe { TcpStream::from_raw_fd(fd) });
            bail!("the dialer helper answered {reply:?}")
        }
        (_, None) => bail!("the dialer helper answered {reply:?}"),
    }
}
