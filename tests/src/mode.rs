//! The capture mode of a tier-2 test: the same test body runs once per [`Mode`].
//!
//! ```ignore
//! fn body(mode: Mode) {
//!     let mesh = Mesh::new().unwrap();
//!     let a = mode.add_pod(&mesh, "a").unwrap();   // a ModePod
//!     let sa = a.sidecar(&[]).unwrap();            // weft-init in `mode` + weft-proxy
//!     a.run_ok(["curl", ...], None, timeout);      // an app: in A's cgroup in eBPF mode
//! }
//! #[test] fn thing_iptables() { body(Mode::Iptables) }
//! #[test] fn thing_ebpf() { body(Mode::Ebpf) }
//! ```
//!
//! In eBPF mode a pod is a network namespace **and** a cgroup v2
//! ([`PodCgroup`], named `<mesh prefix>-<pod>`, removed with its eBPF pins when the
//! [`ModePod`] is dropped, also on panic): weft-init attaches to the cgroup, and the
//! proxy and every application the test starts through the [`ModePod`] run inside
//! it. In iptables mode there is no cgroup and a [`ModePod`] behaves as its [`Pod`].
//!
//! [`ModePod`] dereferences to its [`Pod`] (addresses, routes, `in_netns`, ...), but
//! its own `spawn`, `run` and `run_ok` put the process in the pod's cgroup: pass the
//! [`ModePod`], not `&Pod`, to helpers that start applications.

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use weft_ebpf_common::Stat;

use crate::cgroup::PodCgroup;
use crate::dialer::Dialer;
use crate::{python3, wait_until, Mesh, Pod, PodProc, ProcSpec, Sidecar};

/// How a pod's traffic is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `weft-init` (iptables REDIRECT both ways).
    Iptables,
    /// `weft-init --mode ebpf --cgroup <pod cgroup>` (eBPF outbound, iptables inbound).
    Ebpf,
}

impl Mode {
    /// Both modes.
    pub const ALL: [Mode; 2] = [Mode::Iptables, Mode::Ebpf];

    /// `iptables` or `ebpf` (as `weft-init --mode` and `weftctl up --mode` spell it).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Ebpf => "ebpf",
        }
    }

    /// Adds the pod `name` to `mesh` (see [`Mesh::add_pod`]) and, in eBPF mode, its
    /// cgroup.
    pub fn add_pod(self, mesh: &Mesh, name: &str) -> Result<ModePod> {
        let pod = mesh.add_pod(name)?;
        let cgroup = match self {
            Mode::Iptables => None,
            Mode::Ebpf => Some(PodCgroup::create(mesh, &pod)?),
        };
        Ok(ModePod {
            pod,
            mode: self,
            cgroup,
            run_dir: mesh.run_dir().to_path_buf(),
            helper: Mutex::new(None),
        })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A pod of a [`Mode`]: its [`Pod`] and, in eBPF mode, its cgroup.
#[derive(Debug)]
pub struct ModePod {
    pod: Pod,
    mode: Mode,
    cgroup: Option<PodCgroup>,
    /// The mesh's run directory (the dialer helper's socket goes there).
    run_dir: PathBuf,
    /// eBPF mode: the dialer helper's socket, once started.
    helper: Mutex<Option<PathBuf>>,
}

impl Deref for ModePod {
    type Target = Pod;

    fn deref(&self) -> &Pod {
        &self.pod
    }
}

impl ModePod {
    /// The pod.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Its capture mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Its cgroup (eBPF mode only).
    pub fn cgroup(&self) -> Option<&PodCgroup> {
        self.cgroup.as_ref()
    }

    fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(PodCgroup::path)
    }

    /// Starts an application (see [`Pod::spawn`]), in the pod's cgroup in eBPF mode.
    pub fn spawn(&self, spec: ProcSpec) -> Result<PodProc> {
        let spec = match self.cgroup_path() {
            Some(cg) => spec.cgroup(cg),
            None => spec,
        };
        self.pod.spawn(spec)
    }

    /// Runs an application to completion (see [`Pod::run`]), in the pod's cgroup in
    /// eBPF mode.
    pub fn run<I, S>(&self, argv: I, uid: Option<u32>, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.pod
            .run_in_cgroup(argv, uid, self.cgroup_path(), timeout)
    }

    /// Like [`run`](Self::run); a non-zero exit is an error showing stderr; returns
    /// stdout.
    pub fn run_ok<I, S>(&self, argv: I, uid: Option<u32>, timeout: Duration) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.pod
            .run_ok_in_cgroup(argv, uid, self.cgroup_path(), timeout)
            .with_context(|| format!("{} mode", self.mode))
    }

    /// Installs capture in the pod's mode with `weft-init INIT_ARGS` (in eBPF mode
    /// `--mode ebpf --cgroup <cgroup>` first) and starts weft-proxy (see
    /// [`Sidecar::start`]).
    pub fn sidecar(&self, init_args: &[&str]) -> Result<Sidecar> {
        self.sidecar_with(init_args, self.name(), &[])
    }

    /// Like [`sidecar`](Self::sidecar), with the proxy's service name and extra
    /// proxy flags (see [`Sidecar::start_with`]).
    pub fn sidecar_with(
        &self,
        init_args: &[&str],
        service: &str,
        proxy_args: &[&str],
    ) -> Result<Sidecar> {
        match self.cgroup_path() {
            None => Sidecar::start_with(&self.pod, init_args, service, proxy_args),
            Some(cg) => Sidecar::start_ebpf_with(&self.pod, cg, init_args, service, proxy_args),
        }
        .with_context(|| format!("sidecar of pod {} in {} mode", self.name(), self.mode))
    }

    /// Like [`sidecar_with`](Self::sidecar_with), waiting only until the proxy
    /// serves, not for its first routes (see [`Sidecar::start_unsynced`]).
    pub fn sidecar_unsynced(
        &self,
        init_args: &[&str],
        service: &str,
        proxy_args: &[&str],
    ) -> Result<Sidecar> {
        Sidecar::start_unsynced(
            &self.pod,
            self.cgroup_path(),
            init_args,
            service,
            proxy_args,
        )
        .with_context(|| format!("sidecar of pod {} in {} mode", self.name(), self.mode))
    }

    /// A [`Dialer`]: TCP connections the test process makes as an app of this pod
    /// (captured by the pod's sidecar in either mode). In eBPF mode the first call
    /// starts the dialer helper in the pod's cgroup.
    pub fn dialer(&self) -> Result<Dialer> {
        if self.cgroup.is_none() {
            return Ok(Dialer::in_netns(&self.pod));
        }
        let mut helper = self.helper.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(socket) = helper.as_ref() {
            return Ok(Dialer::via_helper(&self.pod, socket.clone()));
        }
        let socket = self.run_dir.join(format!("dialer-{}.sock", self.name()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/dialer.py");
        let proc = self.spawn(
            ProcSpec::new([
                python3().as_os_str(),
                script.as_os_str(),
                socket.as_os_str(),
            ])
            .name("dialer"),
        )?;
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            proc.logs().contains("listening")
        })
        .with_context(|| format!("dialer helper in pod {}: {}", self.name(), proc.logs()))?;
        *helper = Some(socket.clone());
        Ok(Dialer::via_helper(&self.pod, socket))
    }

    /// An eBPF counter of the pod (see [`PodCgroup::stat`]); an error in iptables
    /// mode.
    pub fn ebpf_stat(&self, stat: Stat) -> Result<u64> {
        match &self.cgroup {
            Some(cg) => cg.stat(stat),
            None => bail!("pod {} is in iptables mode: no eBPF counters", self.name()),
        }
    }
}
