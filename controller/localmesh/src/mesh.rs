//! The [`Mesh`]: a "node" network namespace holding a bridge, and pods attached
//! to it by veth pairs. Dropping it tears everything down, also on panic.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::credentials::Credentials;
use crate::pod::{Pod, Shared};
use crate::{cmd, logs, naming, netns, process};

/// The pods' IPv4 subnet. The node's bridge is .1, pods get .2, .3, ...
pub const IPV4_SUBNET: &str = "10.211.0.0/24";
/// The pods' IPv6 subnet (ULA). The node's bridge is ::1, pods get ::2, ::3, ...
pub const IPV6_SUBNET: &str = "fd00:211::/64";
/// The bridge in the node namespace.
pub const BRIDGE: &str = "br0";

/// How long processes get between SIGTERM and SIGKILL when the mesh is dropped.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Set (to anything) to keep the run directory with the process logs.
const KEEP_LOGS_ENV: &str = "WEFT_KEEP_LOGS";

fn ipv4_of(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 211, 0, host)
}

fn ipv6_of(host: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x211, 0, 0, 0, 0, 0, u16::from(host))
}

/// A throwaway mesh of pods (network namespaces) on one bridge. Nothing in it has
/// a route out; nothing is forwarded or NATed. All names carry [`prefix`](Self::prefix).
///
/// Dropping it — also while unwinding from a panic — stops every process started
/// with [`Pod::spawn`] (SIGTERM, then SIGKILL, to each process group, then any
/// process still inside one of its namespaces), prints the tail of each
/// process's log to stderr if the thread is panicking, deletes every namespace
/// it created (the veths go with them) and removes the run directory unless
/// `WEFT_KEEP_LOGS` is set.
#[derive(Debug)]
pub struct Mesh {
    shared: Arc<Shared>,
    node: Pod,
    state: Mutex<MeshState>,
}

#[derive(Debug)]
struct MeshState {
    pods: Vec<Pod>,
    /// Namespaces created, in order (the node first).
    netns: Vec<String>,
    next_host: u8,
    /// Host numbers of removed pods, taken again before `next_host`.
    free_hosts: Vec<u8>,
}

impl Mesh {
    /// Creates the node namespace `<prefix>-node` with the bridge `br0` (up,
    /// 10.211.0.1/24 and fd00:211::1/64) and the run directory
    /// `$TMPDIR/<prefix>/` for logs. Fails (loudly) unless running as root.
    pub fn new() -> Result<Mesh> {
        cmd::require_root()?;
        let (prefix, run_dir) = claim_prefix()?;
        let credentials = Credentials::create(&run_dir)?;
        let shared = Arc::new(Shared {
            prefix: prefix.clone(),
            run_dir,
            procs: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            credentials,
        });
        let node = Pod::new("node", BRIDGE, ipv4_of(1), ipv6_of(1), Arc::clone(&shared));
        // From here on, Drop cleans up whatever was made.
        let mesh = Mesh {
            shared,
            node,
            state: Mutex::new(MeshState {
                pods: Vec::new(),
                netns: vec![format!("{prefix}-node")],
                next_host: 2,
                free_hosts: Vec::new(),
            }),
        };
        let ns = mesh.node.netns_name();
        let setup = || -> Result<()> {
            cmd::ip(["-n", ns, "link", "set", "lo", "up"])?;
            cmd::ip(["-n", ns, "link", "add", BRIDGE, "type", "bridge"])?;
            let v4 = format!("{}/24", ipv4_of(1));
            let v6 = format!("{}/64", ipv6_of(1));
            cmd::ip(["-n", ns, "addr", "add", &v4, "dev", BRIDGE])?;
            cmd::ip(["-n", ns, "addr", "add", &v6, "dev", BRIDGE, "nodad"])?;
            cmd::ip(["-n", ns, "link", "set", BRIDGE, "up"])?;
            Ok(())
        };
        setup().with_context(|| format!("set up the node namespace {ns}"))?;
        Ok(mesh)
    }

    fn state(&self) -> MutexGuard<'_, MeshState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The per-mesh name prefix, e.g. `wf3a9c1`: every namespace is `<prefix>-<pod>`.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The directory of this mesh's process logs: `$TMPDIR/<prefix>/`.
    pub fn run_dir(&self) -> &Path {
        &self.shared.run_dir
    }

    /// The controller's API credentials: its token file, the operator's token.
    pub fn credentials(&self) -> &Credentials {
        &self.shared.credentials
    }

    /// The node namespace, as a pod (interface `br0`, 10.211.0.1, fd00:211::1),
    /// e.g. to run a controller that every pod can reach.
    pub fn node(&self) -> &Pod {
        &self.node
    }

    /// The pod named `name`, if added.
    pub fn pod(&self, name: &str) -> Option<Pod> {
        self.state().pods.iter().find(|p| p.name() == name).cloned()
    }

    /// The pods added so far, in order.
    pub fn pods(&self) -> Vec<Pod> {
        self.state().pods.clone()
    }

    /// The names of every namespace this mesh created (the node's first).
    pub fn netns_names(&self) -> Vec<String> {
        self.state().netns.clone()
    }

    /// Adds the pod `name` (`[a-z][a-z0-9-]*`): namespace `<prefix>-<name>` with `lo`
    /// up and `eth0` — the peer of a veth whose other end is on the node's bridge
    /// (made inside the node namespace and moved straight into the pod, so nothing
    /// is ever created in the root namespace) — with the next free 10.211.0.N/24
    /// and fd00:211::N/64 (no DAD, usable at once). No default route.
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        naming::check_pod_name(name)?;
        let mut st = self.state();
        if self.shared.closed.load(Ordering::SeqCst) {
            bail!("mesh {} has been dropped", self.prefix());
        }
        if st.pods.iter().any(|p| p.name() == name) {
            bail!("pod {name} exists already in mesh {}", self.prefix());
        }
        let host = match st.free_hosts.pop() {
            Some(host) => host,
            None if st.next_host == 255 => bail!("mesh {} is full (253 pods)", self.prefix()),
            None => {
                st.next_host += 1;
                st.next_host - 1
            }
        };
        let pod = Pod::new(
            name,
            "eth0",
            ipv4_of(host),
            ipv6_of(host),
            Arc::clone(&self.shared),
        );
        let ns = pod.netns_name();
        netns::add(ns)?;
        st.netns.push(ns.to_owned());
        let node = self.node.netns_name();
        let veth = format!("veth{host}");
        let setup = || -> Result<()> {
            cmd::ip(["-n", ns, "link", "set", "lo", "up"])?;
            cmd::ip([
                "-n", node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            cmd::ip(["-n", node, "link", "set", &veth, "master", BRIDGE, "up"])?;
            let v4 = format!("{}/24", pod.ipv4());
            let v6 = format!("{}/64", pod.ipv6());
            cmd::ip(["-n", ns, "addr", "add", &v4, "dev", "eth0"])?;
            cmd::ip(["-n", ns, "addr", "add", &v6, "dev", "eth0", "nodad"])?;
            cmd::ip(["-n", ns, "link", "set", "eth0", "up"])?;
            Ok(())
        };
        setup().with_context(|| format!("set up pod {name} ({ns})"))?;
        st.pods.push(pod.clone());
        Ok(pod)
    }

    /// Removes the pod `name` as its deletion would on a node: stops every process
    /// started in it (SIGTERM, [`STOP_GRACE`], SIGKILL), kills any straggler inside
    /// its namespace, deletes its veth (both ends, at once: a namespace's own
    /// deletion frees them asynchronously) and its namespace, forgets its logs, and
    /// frees its address for the next [`add_pod`](Self::add_pod). Its cgroup, if it
    /// has one, is the caller's ([`PodCgroup::close`](crate::cgroup::PodCgroup::close)
    /// once this returns). For pod churn: `cargo xtask soak` adds and removes
    /// thousands of pods under one long-lived controller.
    pub fn remove_pod(&self, name: &str) -> Result<()> {
        let pod = self
            .pod(name)
            .with_context(|| format!("no pod {name} in mesh {}", self.prefix()))?;
        let procs: Vec<_> = self
            .shared
            .procs()
            .iter()
            .filter(|p| p.pod == name)
            .cloned()
            .collect();
        process::stop_all(&procs, STOP_GRACE);
        let ns = pod.netns_name().to_owned();
        kill_stragglers(std::slice::from_ref(&ns));
        let host = pod.ipv4().octets()[3];
        cmd::ip([
            "-n",
            self.node.netns_name(),
            "link",
            "del",
            &format!("veth{host}"),
        ])
        .with_context(|| format!("delete pod {name}'s veth"))?;
        netns::delete(&ns)?;
        self.shared
            .procs()
            .retain(|p| !procs.iter().any(|q| Arc::ptr_eq(p, q)));
        for p in &procs {
            let _ = std::fs::remove_file(&p.log);
        }
        let mut st = self.state();
        st.pods.retain(|p| p.name() != name);
        st.netns.retain(|n| *n != ns);
        st.free_hosts.push(host);
        Ok(())
    }

    /// The tail of every spawned process's log, one block each (what the drop
    /// prints when the test panics); for a test that fails without panicking.
    pub fn logs_report(&self) -> String {
        let procs = self.shared.procs().clone();
        report(self.prefix(), &procs)
    }
}

fn report(prefix: &str, procs: &[Arc<process::ProcEntry>]) -> String {
    let mut s = format!("===== weft-localmesh mesh {prefix}: process logs =====\n");
    if procs.is_empty() {
        s.push_str("(no processes were spawned)\n");
    }
    for p in procs {
        s.push_str(&logs::report(&p.pod, &p.name, p.pid, &p.argv, &p.log));
    }
    s
}

/// A fresh prefix whose node namespace name and run directory are free; the run
/// directory is created (claimed) here.
fn claim_prefix() -> Result<(String, PathBuf)> {
    for _ in 0..16 {
        let prefix = naming::new_prefix();
        let run_dir = std::env::temp_dir().join(&prefix);
        match std::fs::create_dir(&run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("create {}", run_dir.display())),
        }
        let node = format!("{prefix}-node");
        if netns::path(&node).exists() {
            let _ = std::fs::remove_dir(&run_dir);
            continue;
        }
        if let Err(e) = netns::add(&node) {
            let _ = std::fs::remove_dir_all(&run_dir);
            if netns::path(&node).exists() {
                continue; // taken by a parallel run between the check and the add
            }
            return Err(e);
        }
        return Ok((prefix, run_dir));
    }
    bail!("no free name prefix after 16 tries: stale wf*-node namespaces? see `ip netns list`")
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let procs = {
            let procs = self.shared.procs();
            self.shared.closed.store(true, Ordering::SeqCst);
            procs.clone()
        };
        process::stop_all(&procs, STOP_GRACE);

        let names = self.state().netns.clone();
        kill_stragglers(&names);

        if std::thread::panicking() {
            // One write, so parallel tests do not interleave.
            eprint!("{}", report(self.prefix(), &procs));
        }

        for name in names.iter().rev() {
            if let Err(e) = netns::delete(name) {
                eprintln!("weft-localmesh: mesh {}: {e:#}", self.prefix());
            }
        }

        let dir = &self.shared.run_dir;
        if std::env::var_os(KEEP_LOGS_ENV).is_some() {
            eprintln!(
                "weft-localmesh: mesh {}: logs kept in {}",
                self.prefix(),
                dir.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("weft-localmesh: remove {}: {e}", dir.display());
        }
    }
}

/// SIGKILLs any process still inside one of the namespaces `names` (one that left
/// its process group, say) and waits briefly for them to go.
fn kill_stragglers(names: &[String]) {
    let ids: Vec<_> = names
        .iter()
        .filter_map(|n| netns::ns_id(&netns::path(n)).ok())
        .collect();
    for _ in 0..50 {
        let pids: Vec<i32> = ids.iter().flat_map(|&id| netns::pids_in(id)).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("weft-localmesh: processes still inside {names:?} after SIGKILL");
}
