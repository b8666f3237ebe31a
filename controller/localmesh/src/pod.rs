//! One pod of a [`Mesh`](crate::Mesh): a network namespace with `lo` and `eth0`
//! (the node's is `br0`). Start processes in it, run commands to completion, and
//! do socket work from the test process inside it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{self, PodProc, ProcEntry, ProcSpec};
use crate::{cmd, http, netns, wait};

/// Connect, read and write timeout of [`Pod::tcp_connect_blocking`].
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// State of a mesh that its pods share: where logs go and which processes to
/// stop when the mesh is dropped.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) prefix: String,
    pub(crate) run_dir: PathBuf,
    pub(crate) procs: Mutex<Vec<Arc<ProcEntry>>>,
    pub(crate) closed: AtomicBool,
    /// The controller's token file and the tokens issued.
    pub(crate) credentials: crate::credentials::Credentials,
}

impl Shared {
    pub(crate) fn procs(&self) -> MutexGuard<'_, Vec<Arc<ProcEntry>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A pod: cheap to clone, valid until its [`Mesh`](crate::Mesh) is dropped.
#[derive(Debug, Clone)]
pub struct Pod {
    inner: Arc<PodInner>,
}

#[derive(Debug)]
struct PodInner {
    name: String,
    netns_name: String,
    dev: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    shared: Arc<Shared>,
}

impl Pod {
    pub(crate) fn new(
        name: &str,
        dev: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
        shared: Arc<Shared>,
    ) -> Self {
        Pod {
            inner: Arc::new(PodInner {
                name: name.to_owned(),
                netns_name: format!("{}-{name}", shared.prefix),
                dev: dev.to_owned(),
                ipv4,
                ipv6,
                shared,
            }),
        }
    }

    /// The pod's name as given to [`Mesh::add_pod`](crate::Mesh::add_pod) (`node`
    /// for the node).
    /// The mesh's API credentials.
    pub fn credentials(&self) -> &crate::credentials::Credentials {
        &self.inner.shared.credentials
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its network namespace's name: `<prefix>-<name>`.
    pub fn netns_name(&self) -> &str {
        &self.inner.netns_name
    }

    /// Its network namespace's pin: `/var/run/netns/<prefix>-<name>`.
    pub fn netns_path(&self) -> PathBuf {
        netns::path(&self.inner.netns_name)
    }

    /// Its interface on the mesh: `eth0` (`br0` for the node).
    pub fn dev(&self) -> &str {
        &self.inner.dev
    }

    /// Its address in 10.211.0.0/24.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.inner.ipv4
    }

    /// Its address in fd00:211::/64.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.inner.ipv6
    }

    /// Routes `cidr` (v4 or v6, e.g. a service VIP range `10.96.0.0/16`) out of
    /// the pod's interface: such prefixes exist only inside the mesh.
    pub fn add_route(&self, cidr: &str) -> Result<()> {
        cmd::ip([
            "-n",
            self.netns_name(),
            "route",
            "add",
            cidr,
            "dev",
            self.dev(),
        ])
        .map(drop)
        .with_context(|| format!("route {cidr} in pod {}", self.name()))
    }

    fn open_netns(&self) -> Result<File> {
        if self.inner.shared.closed.load(Ordering::SeqCst) {
            bail!("pod {}: its mesh has been dropped", self.name());
        }
        let path = self.netns_path();
        File::open(&path).with_context(|| format!("open {}", path.display()))
    }

    /// Starts `spec` in the pod (see [`ProcSpec`]); its stdout and stderr go to
    /// `<run dir>/<pod>-<name>.log` (a `-N` suffix keeps names unique). The mesh
    /// stops it, with its process group, when dropped.
    pub fn spawn(&self, spec: ProcSpec) -> Result<PodProc> {
        // Holding the list while spawning keeps a concurrent Mesh drop from
        // missing this process.
        let mut procs = self.inner.shared.procs();
        let ns = self.open_netns()?;
        let (log_path, log_file) = self.new_log_file(&spec.name)?;
        let proc = PodProc::spawn(self.name(), &ns, &spec, log_path, log_file)?;
        procs.push(Arc::clone(&proc.entry));
        Ok(proc)
    }

    fn new_log_file(&self, name: &str) -> Result<(PathBuf, File)> {
        for n in 1.. {
            let file_name = match n {
                1 => format!("{}-{name}.log", self.name()),
                _ => format!("{}-{name}-{n}.log", self.name()),
            };
            let path = self.inner.shared.run_dir.join(file_name);
            match File::options().create_new(true).append(true).open(&path) {
                Ok(f) => return Ok((path, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("create log file {}", path.display()))
                }
            }
        }
        unreachable!("an unbounded range always yields")
    }

    /// Runs `argv` to completion in the pod, as `uid` (gid the same) if given,
    /// with stdout and stderr captured. Past `timeout` its process group is
    /// killed and this fails. A non-zero exit is not an error here.
    pub fn run<I, S>(&self, argv: I, uid: Option<u32>, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_in_cgroup(argv, uid, None, timeout)
    }

    /// Like [`run`](Self::run), inside the cgroup v2 directory `cgroup` if given
    /// (see [`Entry::cgroup`](crate::Entry::cgroup)).
    pub fn run_in_cgroup<I, S>(
        &self,
        argv: I,
        uid: Option<u32>,
        cgroup: Option<&Path>,
        timeout: Duration,
    ) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let ns = self.open_netns()?;
        process::run_in(&ns, &argv, uid, cgroup, timeout)
            .with_context(|| format!("in pod {}", self.name()))
    }

    /// Like [`run`](Self::run), but a non-zero exit is an error showing stderr;
    /// returns stdout.
    pub fn run_ok<I, S>(&self, argv: I, uid: Option<u32>, timeout: Duration) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_ok_in_cgroup(argv, uid, None, timeout)
    }

    /// [`run_ok`](Self::run_ok) inside the cgroup v2 directory `cgroup` if given.
    pub fn run_ok_in_cgroup<I, S>(
        &self,
        argv: I,
        uid: Option<u32>,
        cgroup: Option<&Path>,
        timeout: Duration,
    ) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.run_in_cgroup(&argv, uid, cgroup, timeout)?;
        if !out.status.success() {
            bail!(
                "`{}` in pod {} failed ({}): stderr: {} stdout: {}",
                argv.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                self.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim(),
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread of the test process that has joined the pod's network
    /// namespace (`setns(CLONE_NEWNET)` on that thread only). Sockets made in `f`
    /// belong to the pod. A panic in `f` is resumed on the caller's thread.
    ///
    /// # Panics
    /// If the namespace cannot be entered (a harness bug, or the mesh is gone).
    pub fn in_netns<T, F>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        netns::run_in(&self.netns_path(), f)
            .unwrap_or_else(|e| panic!("cannot enter pod {}: {e:#}", self.name()))
    }

    /// A TCP connection to `addr` made inside the pod, with connect, read and
    /// write timeouts of [`SOCKET_TIMEOUT`].
    pub fn tcp_connect_blocking(&self, addr: SocketAddr) -> Result<TcpStream> {
        self.in_netns(|| -> io::Result<TcpStream> {
            let s = TcpStream::connect_timeout(&addr, SOCKET_TIMEOUT)?;
            s.set_read_timeout(Some(SOCKET_TIMEOUT))?;
            s.set_write_timeout(Some(SOCKET_TIMEOUT))?;
            Ok(s)
        })
        .with_context(|| format!("connect to {addr} from pod {}", self.name()))
    }

    /// `GET path` on `addr` from inside the pod as the mesh's operator
    /// (`Authorization: Bearer`, the token the mesh's controller knows): for the
    /// controller's API.
    pub fn http_get_as_operator(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let stream = self.tcp_connect_blocking(addr)?;
        let auth = crate::credentials::bearer(&self.credentials().operator_token());
        http::request_with(
            stream,
            "GET",
            &addr.to_string(),
            path,
            &[("Authorization", &auth)],
            None,
        )
        .with_context(|| format!("GET http://{addr}{path} from pod {}", self.name()))
    }

    /// `GET path` on `addr` from inside the pod (HTTP/1.1, `Connection: close`):
    /// the status code and the body.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let stream = self.tcp_connect_blocking(addr)?;
        http::get(stream, &addr.to_string(), path)
            .with_context(|| format!("GET http://{addr}{path} from pod {}", self.name()))
    }

    /// Waits until a TCP connect to `addr` from inside the pod succeeds.
    pub fn wait_listening(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        wait::wait_until(timeout, Duration::from_millis(50), || {
            self.in_netns(|| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
        })
        .with_context(|| format!("nothing listens on {addr} in pod {}", self.name()))
    }
}
