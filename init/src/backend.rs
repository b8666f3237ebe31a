//! Driving the iptables binaries: finding them on `PATH`, choosing between the nft and
//! legacy implementations, and running `-C`/`-D`/`-F`/`-X`, `*-save` and
//! `*-restore`.
//!
//! Commands go through the [`Runner`] trait so the install and cleanup logic can be
//! tested against a fake. Binaries are always the explicitly suffixed ones
//! (`iptables-nft`, `ip6tables-legacy-restore`, ...), never the `iptables` alternative,
//! so the backend in use is never ambiguous.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::BackendChoice;
use crate::error::Error;
use crate::net::Family;
use crate::rules::Jump;
use crate::state::{count_rules, NatState};

/// Seconds to wait for the xtables lock (held by concurrent legacy iptables runs,
/// for example several pods initialising at once); nft ignores it.
pub const XTABLES_WAIT_SECS: &str = "30";

/// `PATH` used when the variable is unset.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An iptables implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables-nft: the nf_tables kernel API.
    Nft,
    /// iptables-legacy: the x_tables kernel API.
    Legacy,
}

impl Backend {
    /// Both backends, nft first.
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    /// `nft` or `legacy`, the suffix of its binaries.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// The name of one of this backend's binaries for `family`.
    pub fn binary(self, family: Family, tool: Tool) -> String {
        let suffix = match tool {
            Tool::Iptables => "",
            Tool::Save => "-save",
            Tool::Restore => "-restore",
        };
        format!("{}-{}{suffix}", family.command_prefix(), self.name())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The three binaries of a backend and family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `iptables-nft` and friends: single rule operations.
    Iptables,
    /// `iptables-nft-save`: dump the ruleset.
    Save,
    /// `iptables-nft-restore`: apply a ruleset atomically.
    Restore,
}

/// Looks binaries up in a `PATH`-style directory list.
#[derive(Debug, Clone)]
pub struct PathSearch {
    path: OsString,
}

impl PathSearch {
    /// The process's `PATH` (or a standard sbin/bin list when it is unset).
    pub fn from_env() -> Self {
        PathSearch::new(env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()))
    }

    /// An explicit directory list (`:`-separated).
    pub fn new(path: impl Into<OsString>) -> Self {
        PathSearch { path: path.into() }
    }

    /// The first executable file called `name`.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        env::split_paths(&self.path)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    }

    /// Like [`PathSearch::find`], failing with [`Error::MissingBinary`].
    pub fn require(&self, name: &str) -> Result<PathBuf, Error> {
        self.find(name).ok_or_else(|| Error::MissingBinary {
            binary: name.to_string(),
            path: self.to_string(),
        })
    }
}

impl fmt::Display for PathSearch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.to_string_lossy())
    }
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl CommandLine {
    fn new(program: &Path, args: &[&str]) -> Self {
        CommandLine {
            program: program.to_path_buf(),
            args: args.iter().map(|a| (*a).to_string()).collect(),
        }
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.display())?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

impl Output {
    fn status(&self) -> String {
        match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        }
    }
}

/// Runs commands; [`SystemRunner`] for real, a fake in tests.
pub trait Runner: fmt::Debug {
    /// Runs `cmd` to completion, feeding it `stdin` if given, capturing its output.
    fn run(&self, cmd: &CommandLine, stdin: Option<&str>) -> io::Result<Output>;
}

/// Runs commands as child processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, cmd: &CommandLine, stdin: Option<&str>) -> io::Result<Output> {
        tracing::debug!(command = %cmd, "running");
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A child that exits early (rejecting its input) closes the pipe; its exit
            // status and stderr then say why, so a broken pipe is not the error.
            match pipe.write_all(input.as_bytes()) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e),
                _ => {}
            }
        }
        let out = child.wait_with_output()?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// One backend's binaries for one family, ready to run.
#[derive(Debug)]
pub struct Iptables<'a> {
    /// The backend.
    pub backend: Backend,
    /// The family.
    pub family: Family,
    iptables: PathBuf,
    save: PathBuf,
    restore: PathBuf,
    runner: &'a dyn Runner,
}

impl<'a> Iptables<'a> {
    /// Finds the backend's three binaries for `family`, failing on the first missing.
    pub fn locate(
        backend: Backend,
        family: Family,
        path: &PathSearch,
        runner: &'a dyn Runner,
    ) -> Result<Self, Error> {
        Ok(Iptables {
            backend,
            family,
            iptables: path.require(&backend.binary(family, Tool::Iptables))?,
            save: path.require(&backend.binary(family, Tool::Save))?,
            restore: path.require(&backend.binary(family, Tool::Restore))?,
            runner,
        })
    }

    /// `iptables-nft`, `ip6tables-legacy`, ...: names this backend and family.
    pub fn label(&self) -> String {
        self.backend.binary(self.family, Tool::Iptables)
    }

    /// The command that applies a ruleset.
    pub fn restore_command(&self) -> CommandLine {
        CommandLine::new(&self.restore, &["--noflush", "-w", XTABLES_WAIT_SECS])
    }

    fn run(&self, cmd: &CommandLine, stdin: Option<&str>) -> Result<Output, Error> {
        self.runner.run(cmd, stdin).map_err(|reason| Error::Spawn {
            command: cmd.to_string(),
            reason,
        })
    }

    fn failed(&self, what: &str, cmd: &CommandLine, out: &Output) -> Error {
        let stderr = out.stderr.trim();
        Error::Command {
            what: format!("{} ({}): {what}", self.family, self.label()),
            command: cmd.to_string(),
            status: out.status(),
            detail: if stderr.is_empty() {
                String::new()
            } else {
                format!(": {stderr}")
            },
        }
    }

    /// `iptables -w N -t nat <op> <chain> <spec..>`.
    pub fn nat_command(&self, op: &str, chain: &str, spec: &[&str]) -> CommandLine {
        let mut args = vec!["-w", XTABLES_WAIT_SECS, "-t", "nat", op, chain];
        args.extend_from_slice(spec);
        CommandLine::new(&self.iptables, &args)
    }

    /// The family's whole ruleset (`*-save` without `-t`: lists only existing
    /// tables and creates none).
    pub fn save(&self) -> Result<String, Error> {
        let cmd = CommandLine::new(&self.save, &[]);
        let out = self.run(&cmd, None)?;
        if out.code == Some(0) {
            Ok(out.stdout)
        } else {
            Err(self.failed("reading the ruleset", &cmd, &out))
        }
    }

    /// weft's chains and jumps in the nat table.
    pub fn nat_state(&self) -> Result<NatState, Error> {
        Ok(NatState::parse(&self.save()?))
    }

    /// Whether `jump` is present (`-C`). Only meaningful when its target chain
    /// exists: `-C` cannot tell "no such rule" from "no such chain" by exit code.
    pub fn jump_present(&self, jump: &Jump) -> Result<bool, Error> {
        let cmd = self.nat_command("-C", jump.from, &jump.spec());
        let out = self.run(&cmd, None)?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.failed("checking for a jump rule", &cmd, &out)),
        }
    }

    /// Deletes one copy of `jump` (`-D`).
    pub fn delete_jump(&self, jump: &Jump) -> Result<(), Error> {
        self.nat_op("-D", jump.from, &jump.spec(), "deleting a jump rule")
    }

    /// Flushes a chain (`-F`).
    pub fn flush_chain(&self, chain: &str) -> Result<(), Error> {
        self.nat_op("-F", chain, &[], "flushing a chain")
    }

    /// Deletes an empty, unreferenced chain (`-X`).
    pub fn delete_chain(&self, chain: &str) -> Result<(), Error> {
        self.nat_op("-X", chain, &[], "deleting a chain")
    }

    fn nat_op(&self, op: &str, chain: &str, spec: &[&str], what: &str) -> Result<(), Error> {
        let cmd = self.nat_command(op, chain, spec);
        let out = self.run(&cmd, None)?;
        if out.code == Some(0) {
            Ok(())
        } else {
            Err(self.failed(what, &cmd, &out))
        }
    }

    /// Applies `input` atomically with `*-restore --noflush`.
    pub fn restore(&self, input: &str) -> Result<(), Error> {
        let cmd = self.restore_command();
        let out = self.run(&cmd, Some(input))?;
        if out.code == Some(0) {
            return Ok(());
        }
        let mut err = self.failed("the ruleset was refused", &cmd, &out);
        if let (Error::Command { detail, .. }, Some(line)) =
            (&mut err, offending_line(&out.stderr, input))
        {
            detail.push_str(&format!("\n  offending input line: {line}"));
        }
        Err(err)
    }
}

/// The input line named by restore's "Error occurred at line: N".
fn offending_line<'i>(stderr: &str, input: &'i str) -> Option<&'i str> {
    let n: usize = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Error occurred at line:"))?
        .trim()
        .parse()
        .ok()?;
    // nft reports rules it rejects at commit time against the COMMIT line.
    input
        .lines()
        .nth(n.checked_sub(1)?)
        .filter(|l| l.trim() != "COMMIT")
}

/// The backend chosen for an install, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The backend.
    pub backend: Backend,
    /// Why it was chosen (shown in dry-run output).
    pub reason: String,
}

/// What auto-detection learned about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Probe {
    /// Its `iptables-*` binary is on `PATH`.
    pub available: bool,
    /// Rules it holds, over all tables and both families.
    pub rules: usize,
}

/// Chooses the backend for an install. `auto` follows Kubernetes' iptables-wrapper:
/// legacy if legacy already holds rules and nft holds none, else nft if installed,
/// else legacy. An explicit choice is taken as is (its binaries are checked later).
pub fn select(
    choice: BackendChoice,
    path: &PathSearch,
    runner: &dyn Runner,
) -> Result<Selection, Error> {
    match choice {
        BackendChoice::Nft => Ok(Selection {
            backend: Backend::Nft,
            reason: "--iptables-backend nft".to_string(),
        }),
        BackendChoice::Legacy => Ok(Selection {
            backend: Backend::Legacy,
            reason: "--iptables-backend legacy".to_string(),
        }),
        BackendChoice::Auto => {
            let nft = probe(Backend::Nft, path, runner);
            let legacy = probe(Backend::Legacy, path, runner);
            decide(nft, legacy).ok_or_else(|| Error::NoBackend {
                path: path.to_string(),
            })
        }
    }
}

/// The auto-detection rule, given what was found.
pub fn decide(nft: Probe, legacy: Probe) -> Option<Selection> {
    let (backend, reason) = if legacy.available && legacy.rules > 0 && nft.rules == 0 {
        (
            Backend::Legacy,
            format!(
                "auto: iptables-legacy holds {} rules, iptables-nft none",
                legacy.rules
            ),
        )
    } else if nft.available {
        let why = if legacy.rules == 0 {
            "iptables-legacy holds no rules".to_string()
        } else {
            format!("iptables-nft already holds rules ({})", nft.rules)
        };
        (
            Backend::Nft,
            format!("auto: iptables-nft is installed and {why}"),
        )
    } else if legacy.available {
        (
            Backend::Legacy,
            "auto: iptables-nft is not installed".to_string(),
        )
    } else {
        return None;
    };
    Some(Selection { backend, reason })
}

/// Counts a backend's rules in both families. A save that cannot run counts as no
/// rules: detection must not fail where the rules themselves could still be installed.
fn probe(backend: Backend, path: &PathSearch, runner: &dyn Runner) -> Probe {
    if path
        .find(&backend.binary(Family::V4, Tool::Iptables))
        .is_none()
    {
        return Probe::default();
    }
    let mut rules = 0;
    for family in Family::ALL {
        let Some(save) = path.find(&backend.binary(family, Tool::Save)) else {
            continue;
        };
        let cmd = CommandLine::new(&save, &[]);
        match runner.run(&cmd, None) {
            Ok(out) if out.code == Some(0) => rules += count_rules(&out.stdout),
            Ok(out) => {
                tracing::debug!(command = %cmd, stderr = out.stderr.trim(), "backend probe failed")
            }
            Err(e) => tracing::debug!(command = %cmd, error = %e, "backend probe failed"),
        }
    }
    Probe {
        available: true,
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names() {
        assert_eq!(
            Backend::Nft.binary(Family::V4, Tool::Iptables),
            "iptables-nft"
        );
        assert_eq!(
            Backend::Legacy.binary(Family::V6, Tool::Restore),
            "ip6tables-legacy-restore"
        );
        assert_eq!(
            Backend::Nft.binary(Family::V6, Tool::Save),
            "ip6tables-nft-save"
        );
    }

    #[test]
    fn auto_detection_rule() {
        let p = |available, rules| Probe { available, rules };
        let pick = |nft, legacy| decide(nft, legacy).map(|s| s.backend);
        // Legacy holds rules, nft none: stay on legacy.
        assert_eq!(pick(p(true, 0), p(true, 4)), Some(Backend::Legacy));
        // Both hold rules, or neither: nft.
        assert_eq!(pick(p(true, 2), p(true, 4)), Some(Backend::Nft));
        assert_eq!(pick(p(true, 0), p(true, 0)), Some(Backend::Nft));
        // Only one installed.
        assert_eq!(pick(p(false, 0), p(true, 0)), Some(Backend::Legacy));
        assert_eq!(pick(p(true, 0), p(false, 0)), Some(Backend::Nft));
        assert_eq!(pick(p(false, 0), p(false, 0)), None);
    }

    #[test]
    fn path_search_finds_only_executables() {
        let dir = env::temp_dir().join(format!("weft-init-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("iptables-nft");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("iptables-legacy"), "").unwrap();
        let path = PathSearch::new(format!("/nonexistent::{}", dir.display()));
        assert_eq!(path.find("iptables-nft"), Some(exe));
        assert_eq!(path.find("iptables-legacy"), None);
        let err = path.require("iptables-legacy").unwrap_err().to_string();
        assert!(err.contains("`iptables-legacy` not found on PATH"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn offending_line_is_found() {
        let input = "*nat\n:WEFT_OUTPUT - [0:0]\n-A WEFT_OUTPUT -j NOPE\nCOMMIT\n";
        let stderr = "iptables-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist\nError occurred at line: 3\nTry `iptables-restore -h' for more information.\n";
        assert_eq!(
            offending_line(stderr, input),
            Some("-A WEFT_OUTPUT -j NOPE")
        );
        assert_eq!(offending_line("Error occurred at line: 0", input), None);
        assert_eq!(offending_line("garbage", input), None);
    }
}
