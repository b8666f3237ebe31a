//! Processes inside a network namespace: the `pre_exec` hook that enters it
//! (`setns(CLONE_NEWNET)` only, own session and process group, optional drop to a
//! uid/gid), long-running processes with captured logs ([`PodProc`]), and
//! commands run to completion with a timeout (`run_in`, behind
//! [`Pod::run`](crate::Pod::run)).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const POLL: Duration = Duration::from_millis(10);

/// What to start in a pod with [`Pod::spawn`](crate::Pod::spawn).
///
/// The process gets stdin from /dev/null, stdout and stderr appended to one log
/// file, the test process's environment plus [`env`](Self::env), and `/` as its
/// working directory unless [`cwd`](Self::cwd) says otherwise (so a dropped uid
/// never starts in a directory it cannot read).
#[derive(Debug, Clone)]
pub struct ProcSpec {
    pub(crate) name: String,
    pub(crate) argv: Vec<OsString>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) hosts_file: Option<PathBuf>,
    pub(crate) cgroup: Option<PathBuf>,
}

impl ProcSpec {
    /// A process running `argv` (`argv[0]` is looked up in PATH), named after the
    /// file name of `argv[0]` until [`name`](Self::name) says otherwise.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let name = argv
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".to_owned());
        ProcSpec {
            name: sanitize(&name),
            argv,
            uid: None,
            gid: None,
            env: Vec::new(),
            cwd: None,
            hosts_file: None,
            cgroup: None,
        }
    }

    /// Names the process in its log file name `<pod>-<name>.log` and log dumps.
    pub fn name(mut self, name: &str) -> Self {
        self.name = sanitize(name);
        self
    }

    /// Runs as `uid` (supplementary groups cleared; the gid is `uid` unless
    /// [`gid`](Self::gid) is set).
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// The gid to run as when a uid is given.
    pub fn gid(mut self, gid: u32) -> Self {
        self.gid = Some(gid);
        self
    }

    /// Sets one environment variable for the process.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The working directory (default `/`).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Shows the process `file` as its `/etc/hosts` (see [`Entry::hosts_file`]),
    /// so names such as a service's resolve inside the pod.
    pub fn hosts_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.hosts_file = Some(file.into());
        self
    }

    /// Starts the process inside the cgroup v2 directory `dir` (see
    /// [`Entry::cgroup`]), e.g. a pod's [`PodCgroup`](crate::cgroup::PodCgroup) in
    /// eBPF mode, so that every socket it makes is the pod's.
    pub fn cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }
}

/// How a child enters a pod between fork and exec: always its network namespace;
/// then optionally a private mount namespace with its own `/etc/hosts`, a new
/// session and a drop to a uid. Build one, then [`Entry::command`].
#[derive(Debug, Clone, Default)]
pub struct Entry {
    uid: Option<u32>,
    gid: Option<u32>,
    cwd: Option<PathBuf>,
    hosts_file: Option<PathBuf>,
    cgroup: Option<PathBuf>,
    new_session: bool,
}

impl Entry {
    /// Runs as `uid`, gid `gid` (or `uid`), supplementary groups cleared.
    pub fn uid(mut self, uid: Option<u32>, gid: Option<u32>) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// The working directory (default `/`, which any uid can enter).
    pub fn cwd(mut self, dir: Option<PathBuf>) -> Self {
        self.cwd = dir;
        self
    }

    /// Bind-mounts `file` over `/etc/hosts` in a mount namespace of the child's
    /// own — what `ip netns exec` does with `/etc/netns/<ns>/hosts`, without
    /// remounting `/sys` (which would hide the cgroup2 and bpffs mounts).
    pub fn hosts_file(mut self, file: Option<PathBuf>) -> Self {
        self.hosts_file = file;
        self
    }

    /// Moves the child into the cgroup v2 directory `dir` (writing `0` to its
    /// `cgroup.procs`) before it drops its uid and execs, so every socket the
    /// command makes, listeners included, belongs to that cgroup from the start.
    pub fn cgroup(mut self, dir: Option<PathBuf>) -> Self {
        self.cgroup = dir;
        self
    }

    /// Starts a new session, so the child's pid is its process-group id and a
    /// terminal's Ctrl-C does not reach it. Off for interactive commands.
    pub fn new_session(mut self, on: bool) -> Self {
        self.new_session = on;
        self
    }

    /// A `Command` for `argv` (`argv[0]` looked up in PATH) that enters the
    /// namespace open as `netns` this way. `netns` must stay open until the
    /// command has been spawned. Stdin is `/dev/null` unless changed.
    pub fn command(&self, netns: &File, argv: &[OsString]) -> Result<Command> {
        let Some((program, args)) = argv.split_first() else {
            bail!("empty argv");
        };
        let hosts = match &self.hosts_file {
            Some(f) => Some(
                CString::new(f.as_os_str().as_bytes())
                    .with_context(|| format!("hosts file path {}", f.display()))?,
            ),
            None => None,
        };
        let procs = match &self.cgroup {
            Some(dir) => {
                let file = dir.join("cgroup.procs");
                Some(
                    CString::new(file.as_os_str().as_bytes())
                        .with_context(|| format!("cgroup path {}", file.display()))?,
                )
            }
            None => None,
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.cwd.as_deref().unwrap_or(Path::new("/")))
            .stdin(Stdio::null());
        let fd = netns.as_raw_fd();
        let ids = self.uid.map(|u| (u, self.gid.unwrap_or(u)));
        let new_session = self.new_session;
        let hook = move || -> io::Result<()> {
            // Async-signal-safe only: raw syscalls, no allocation (an `io::Error`
            // from `last_os_error` is a plain errno; the C strings were made
            // before the fork).
            // SAFETY: plain syscalls on a valid fd, valid C strings and integer
            // ids, in the child.
            unsafe {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(hosts) = &hosts {
                    // Slave, not private: mounts made later on the host (a new
                    // bpffs pin, say) still show up inside.
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_SLAVE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            hosts.as_ptr(),
                            c"/etc/hosts".as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                if new_session && libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(procs) = &procs {
                    // As root, before the uid drop: "0" moves the writing process.
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                    let err = io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(err);
                    }
                }
                if let Some((uid, gid)) = ids {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        };
        // SAFETY: the hook only makes async-signal-safe syscalls and does not allocate.
        unsafe {
            cmd.pre_exec(hook);
        }
        Ok(cmd)
    }
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "proc".to_owned()
    } else {
        s
    }
}

/// A `Command` for `argv` that, between fork and exec, joins the network
/// namespace open as `netns`, starts its own session (so its pid is the id of
/// its process group) and, with a uid, drops groups, then gid, then uid.
/// `netns` must stay open until the command has been spawned.
pub(crate) fn command_in(
    netns: &File,
    argv: &[OsString],
    uid: Option<u32>,
    gid: Option<u32>,
    cwd: Option<&Path>,
    hosts_file: Option<&Path>,
    cgroup: Option<&Path>,
) -> Result<Command> {
    Entry::default()
        .uid(uid, gid)
        .cwd(cwd.map(Path::to_path_buf))
        .hosts_file(hosts_file.map(Path::to_path_buf))
        .cgroup(cgroup.map(Path::to_path_buf))
        .new_session(true)
        .command(netns, argv)
}

fn show(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Pids of the live processes (zombies left out) whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| live_pgrp_from_stat(&stat))
                == Some(pgid)
        })
        .collect()
}

/// The process group in a `/proc/<pid>/stat` line (`pid (comm) state ppid pgrp
/// ...`), unless the process is a zombie or dead.
fn live_pgrp_from_stat(stat: &str) -> Option<i32> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(1)?.parse().ok()
}

/// True if the child `pid` has exited, without reaping it (so its pid, which is
/// its process group id, stays reserved and `killpg` stays safe).
fn exited_unreaped(pid: u32) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid out-pointer.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set by waitid; it stays 0 while the child runs.
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// A process started in a pod by [`Pod::spawn`](crate::Pod::spawn). Clones share
/// the process. The [`Mesh`](crate::Mesh) keeps one too and stops the process
/// (its whole process group) when it is dropped.
#[derive(Debug, Clone)]
pub struct PodProc {
    pub(crate) entry: Arc<ProcEntry>,
}

#[derive(Debug)]
pub(crate) struct ProcEntry {
    pub(crate) pod: String,
    pub(crate) name: String,
    pub(crate) argv: String,
    pub(crate) pid: u32,
    pub(crate) log: PathBuf,
    state: Mutex<ProcState>,
}

#[derive(Debug)]
struct ProcState {
    child: Child,
    /// Set once the child is reaped: its pid may then be reused.
    status: Option<ExitStatus>,
}

impl ProcEntry {
    fn state(&self) -> MutexGuard<'_, ProcState> {
        // A poisoned lock only means a panic elsewhere; the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn try_wait(&self) -> Option<ExitStatus> {
        let mut st = self.state();
        if st.status.is_none() {
            st.status = st
                .child
                .try_wait()
                .expect("harness bug: try_wait on a child the harness owns");
        }
        st.status
    }

    /// Sends `sig` to the process group. Before the leader is reaped its pid
    /// reserves the group id; after, the group is signalled only while members
    /// are left. A group that is already gone is not an error.
    pub(crate) fn signal_group(&self, sig: Signal) -> Result<()> {
        let st = self.state();
        let pgid = self.pid as i32;
        if st.status.is_some() && group_members(pgid).is_empty() {
            return Ok(());
        }
        match killpg(Pid::from_raw(pgid), sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e)
                .with_context(|| format!("killpg({pgid}, {sig}) for {}/{}", self.pod, self.name)),
        }
    }
}

impl PodProc {
    /// Starts `spec` in the namespace open as `netns`, logging to `file` (at `log`).
    pub(crate) fn spawn(
        pod: &str,
        netns: &File,
        spec: &ProcSpec,
        log: PathBuf,
        file: File,
    ) -> Result<Self> {
        let mut cmd = command_in(
            netns,
            &spec.argv,
            spec.uid,
            spec.gid,
            spec.cwd.as_deref(),
            spec.hosts_file.as_deref(),
            spec.cgroup.as_deref(),
        )?;
        cmd.stdout(file.try_clone().context("dup log file")?)
            .stderr(file);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let argv = show(&spec.argv);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn `{argv}` in pod {pod}"))?;
        Ok(PodProc {
            entry: Arc::new(ProcEntry {
                pod: pod.to_owned(),
                name: spec.name.clone(),
                argv,
                pid: child.id(),
                log,
                state: Mutex::new(ProcState {
                    child,
                    status: None,
                }),
            }),
        })
    }

    /// The process id, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.entry.pid
    }

    /// The name given in the [`ProcSpec`] (made unique within its pod).
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// The file holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.entry.log
    }

    /// Everything it has logged so far (lossy UTF-8).
    pub fn logs(&self) -> String {
        std::fs::read(&self.entry.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends `sig` to its process group.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.entry.signal_group(sig)
    }

    /// SIGTERM to its process group.
    pub fn kill_term(&self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL to its process group.
    pub fn kill(&self) -> Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// Its exit status if it has exited (reaping it), without waiting.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.entry.try_wait()
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Stops processes: SIGTERM to every group, up to `grace` for them to exit, then
/// SIGKILL to every group, reap, and wait (briefly) until no group has a live
/// member left (SIGKILL is delivered asynchronously).
pub(crate) fn stop_all(entries: &[Arc<ProcEntry>], grace: Duration) {
    for e in entries {
        if e.try_wait().is_none() {
            if let Err(err) = e.signal_group(Signal::SIGTERM) {
                eprintln!("weft-localmesh: {err:#}");
            }
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && entries.iter().any(|e| e.try_wait().is_none()) {
        std::thread::sleep(POLL);
    }
    for e in entries {
        if let Err(err) = e.signal_group(Signal::SIGKILL) {
            eprintln!("weft-localmesh: {err:#}");
        }
        let mut st = e.state();
        if st.status.is_none() {
            match st.child.wait() {
                Ok(s) => st.status = Some(s),
                Err(err) => eprintln!("weft-localmesh: wait for {}/{}: {err}", e.pod, e.name),
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while entries
        .iter()
        .any(|e| !group_members(e.pid as i32).is_empty())
    {
        if Instant::now() >= deadline {
            eprintln!("weft-localmesh: process groups still alive after SIGKILL");
            break;
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `argv` to completion in the namespace open as `netns`, as `uid` (gid the
/// same) if given, capturing stdout and stderr. On exit, whatever is left of its
/// process group is killed. Past `timeout` the group is killed and this fails,
/// showing the output so far. A non-zero exit is not an error: check the status.
pub(crate) fn run_in(
    netns: &File,
    argv: &[OsString],
    uid: Option<u32>,
    cgroup: Option<&Path>,
    timeout: Duration,
) -> Result<Output> {
    let shown = show(argv);
    let mut child = command_in(netns, argv, uid, None, None, None, cgroup)?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn `{shown}`"))?;
    let out_rx = reader(child.stdout.take());
    let err_rx = reader(child.stderr.take());
    let pgid = Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    while !exited_unreaped(child.id()) {
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(POLL);
    }
    // The leader is not reaped yet, so its pid still names its group.
    let _ = killpg(pgid, Signal::SIGKILL);
    let status = child
        .wait()
        .with_context(|| format!("wait for `{shown}`"))?;
    let collect =
        |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let (stdout, stderr) = (collect(out_rx), collect(err_rx));
    if timed_out {
        bail!(
            "`{shown}` timed out after {timeout:?} and was killed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgrp() {
        assert_eq!(live_pgrp_from_stat("12 (sle ep) S 1 12 12 0 -1"), Some(12));
        assert_eq!(live_pgrp_from_stat("12 (a) b) R 7 99 12"), Some(99));
        assert_eq!(live_pgrp_from_stat("12 (a) Z 1 12 12"), None);
        assert_eq!(live_pgrp_from_stat("garbage"), None);
    }

    #[test]
    fn spec_defaults() {
        let s = ProcSpec::new(["/usr/bin/python3", "-m", "http.server"]).uid(65534);
        assert_eq!(s.name, "python3");
        assert_eq!(s.uid, Some(65534));
        assert_eq!(ProcSpec::new(["x"]).name("a b/c").name, "a_b_c");
    }
}
