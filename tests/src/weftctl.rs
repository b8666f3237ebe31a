//! `weftctl up` driven the way a user drives it: the real binary in the background
//! with a state directory of its own (so a test never touches a mesh the user
//! runs), its output collected, and `weftctl` commands run against it. Dropping it
//! runs `weftctl down` and reaps the process, also while a test panics.

use std::io::{BufRead as _, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::weft_bin;

/// The line `weftctl up` prints once every pod is serving.
pub const READY_LINE: &str = "weft: mesh ready";

/// A `weftctl up` running in the background.
#[derive(Debug)]
pub struct WeftctlUp {
    child: Child,
    state_dir: tempfile::TempDir,
    /// Every line `up` printed on stdout and stderr, in arrival order per stream.
    output: Arc<Mutex<Vec<String>>>,
    ready: mpsc::Receiver<()>,
}

impl WeftctlUp {
    /// Starts `weftctl up --mode MODE -f FILE` without waiting for it.
    ///
    /// # Panics
    /// Without root, or if weftctl cannot be started.
    pub fn start(file: &Path, mode: &str) -> WeftctlUp {
        crate::cmd::require_root().expect("tier-2 tests need root");
        let state_dir = tempfile::tempdir().expect("a temporary state directory");
        let mut child = Command::new(weft_bin("weftctl"))
            .env("WEFT_STATE_DIR", state_dir.path())
            .args(["up", "--mode", mode, "-f"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start weftctl up");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, ready) = mpsc::channel();
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for pipe in pipes.into_iter().flatten() {
            let output = Arc::clone(&output);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line == READY_LINE {
                        let _ = tx.send(());
                    }
                    lock(&output).push(line);
                }
            });
        }
        WeftctlUp {
            child,
            state_dir,
            output,
            ready,
        }
    }

    /// Starts it and waits (up to 90 s) for [`READY_LINE`].
    ///
    /// # Panics
    /// If the mesh never becomes ready, showing what `up` printed.
    pub fn start_ready(file: &Path, mode: &str) -> WeftctlUp {
        let up = WeftctlUp::start(file, mode);
        up.wait_ready();
        up
    }

    /// Waits (up to 90 s) for [`READY_LINE`].
    ///
    /// # Panics
    /// If it does not come, showing what `up` printed.
    pub fn wait_ready(&self) {
        if self.ready.recv_timeout(Duration::from_secs(90)).is_err() {
            panic!("weftctl up never became ready:\n{}", self.output());
        }
    }

    /// Everything `up` printed so far.
    pub fn output(&self) -> String {
        lock(&self.output).join("\n")
    }

    /// Its state directory (`WEFT_STATE_DIR`).
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// The pid of the `weftctl up` process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `weftctl up` to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for weftctl up")
    }

    /// `weftctl ARGS` against this mesh, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(weft_bin("weftctl"));
        cmd.env("WEFT_STATE_DIR", self.state_dir.path())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `weftctl ARGS` to completion.
    pub fn weftctl(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run weftctl")
    }

    /// `weftctl ARGS`, which must succeed; its stdout.
    ///
    /// # Panics
    /// If it fails, showing its output and `up`'s.
    pub fn weftctl_ok(&self, args: &[&str]) -> String {
        let out = self.weftctl(args);
        assert!(
            out.status.success(),
            "weftctl {args:?} failed ({}): {}{}\nup's output:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The state file `up` wrote.
    pub fn state(&self) -> Value {
        let file = self.state_dir.path().join("local-mesh.json");
        let text = std::fs::read_to_string(&file).expect("read the state file");
        serde_json::from_str(&text).expect("the state file is JSON")
    }

    /// `curl URL` inside `pod` (through its sidecar); the body, trimmed.
    pub fn curl(&self, pod: &str, url: &str) -> String {
        self.weftctl_ok(&["exec", pod, "--", "curl", "-sS", "--max-time", "5", url])
            .trim()
            .to_owned()
    }

    /// `weftctl conns POD --json`: the rows whose original destination is `dst`.
    pub fn conns_to(&self, pod: &str, dst: &str) -> Vec<Value> {
        let text = self.weftctl_ok(&["conns", pod, "--json"]);
        let all: Vec<Value> = serde_json::from_str(&text).expect("conns --json is JSON");
        all.into_iter()
            .filter(|c| c["original_destination"] == dst)
            .collect()
    }
}

impl Drop for WeftctlUp {
    fn drop(&mut self) {
        let _ = self.weftctl(&["down"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
