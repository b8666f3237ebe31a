//! Test doubles: an in-memory iptables behind the [`Runner`] trait, and a fake `PATH`
//! and `/proc` on disk.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::{Backend, CommandLine, Output, PathSearch, Runner, Tool};
use crate::ipv6::ProcFs;
use crate::net::Family;
use crate::rules::{Jump, JUMPS};
use crate::System;

#[derive(Debug, Default, Clone)]
pub(crate) struct Table {
    chains: Vec<String>,
    jumps: Vec<Jump>,
}

/// Models just enough of iptables: weft chains and jumps per binary label
/// (`iptables-nft`, `ip6tables-legacy`, ...).
#[derive(Debug, Default)]
pub struct FakeIptables {
    /// A restore binary name that refuses every input.
    pub refuse_restore: Option<String>,
    /// An iptables binary name whose `-X` always fails.
    pub refuse_delete_chain: Option<String>,
    pub(crate) tables: RefCell<HashMap<String, Table>>,
    pub(crate) log: RefCell<Vec<String>>,
}

impl FakeIptables {
    /// A fake whose `name` restore binary refuses every input.
    pub fn refusing(name: &str) -> Self {
        FakeIptables {
            refuse_restore: Some(name.to_string()),
            ..FakeIptables::default()
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    pub fn jumps(&self, label: &str) -> usize {
        self.tables.borrow().get(label).map_or(0, |t| t.jumps.len())
    }

    pub fn is_clean(&self, label: &str) -> bool {
        self.tables
            .borrow()
            .get(label)
            .is_none_or(|t| t.chains.is_empty() && t.jumps.is_empty())
    }

    pub fn add_chain(&self, label: &str, chain: &str) {
        self.tables
            .borrow_mut()
            .entry(label.to_string())
            .or_default()
            .chains
            .push(chain.to_string());
    }

    pub fn add_jump(&self, label: &str, jump: &Jump) {
        self.tables
            .borrow_mut()
            .entry(label.to_string())
            .or_default()
            .jumps
            .push(*jump);
    }
}

fn ok(stdout: String) -> Output {
    Output {
        code: Some(0),
        stdout,
        stderr: String::new(),
    }
}

fn fail(code: i32, stderr: &str) -> Output {
    Output {
        code: Some(code),
        stdout: String::new(),
        stderr: stderr.to_string(),
    }
}

impl Runner for FakeIptables {
    fn run(&self, cmd: &CommandLine, stdin: Option<&str>) -> std::io::Result<Output> {
        self.log.borrow_mut().push(cmd.to_string());
        let name = cmd
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut tables = self.tables.borrow_mut();
        if let Some(label) = name.strip_suffix("-save") {
            let t = tables.get(label).cloned().unwrap_or_default();
            let mut s = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            for c in &t.chains {
                s.push_str(&format!(":{c} - [0:0]\n"));
            }
            for j in &t.jumps {
                s.push_str(&format!("{}\n", j.rule_line()));
            }
            s.push_str("COMMIT\n");
            return Ok(ok(s));
        }
        if let Some(label) = name.strip_suffix("-restore") {
            if self.refuse_restore.as_deref() == Some(name.as_str()) {
                return Ok(fail(2, "refused by the fake\nError occurred at line: 4"));
            }
            let t = tables.entry(label.to_string()).or_default();
            for line in stdin.unwrap_or_default().lines() {
                if let Some(decl) = line.strip_prefix(':') {
                    let c = decl
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if !t.chains.contains(&c) {
                        t.chains.push(c);
                    }
                } else if let Some(j) = JUMPS.iter().find(|j| j.rule_line() == line) {
                    t.jumps.push(*j);
                }
            }
            return Ok(ok(String::new()));
        }
        let refuse_x = self.refuse_delete_chain.as_deref() == Some(name.as_str());
        let t = tables.entry(name).or_default();
        let args: Vec<&str> = cmd.args.iter().map(String::as_str).collect();
        let op_at = args
            .iter()
            .position(|a| a.starts_with('-') && a.len() == 2 && *a != "-w" && *a != "-t");
        let Some(i) = op_at.filter(|i| args.len() > i + 1) else {
            return Ok(fail(2, "fake: bad arguments"));
        };
        let (op, chain) = (args[i], args[i + 1]);
        let jump = JUMPS
            .iter()
            .find(|j| j.from == chain && args.last() == Some(&j.to));
        Ok(match (op, jump) {
            ("-C", Some(j)) if t.jumps.contains(j) => ok(String::new()),
            ("-C", Some(_)) => fail(1, "Bad rule"),
            ("-D", Some(j)) => match t.jumps.iter().position(|x| x == j) {
                Some(p) => {
                    t.jumps.remove(p);
                    ok(String::new())
                }
                None => fail(1, "Bad rule"),
            },
            ("-F", None) => ok(String::new()),
            ("-X", None) if refuse_x => fail(4, "CHAIN_DEL failed (Device or resource busy)"),
            ("-X", None) if t.jumps.iter().any(|j| j.to == chain) => fail(1, "Too many links"),
            ("-X", None) => {
                t.chains.retain(|c| c != chain);
                ok(String::new())
            }
            _ => fail(2, "fake: unsupported"),
        })
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A temporary `PATH` directory of (empty) iptables binaries and a fake `/proc`.
#[derive(Debug)]
pub struct FakeSystem<'a> {
    fake: &'a FakeIptables,
    dir: PathBuf,
}

impl<'a> FakeSystem<'a> {
    /// Every backend's binaries installed; IPv6 enabled or disabled.
    pub fn new(fake: &'a FakeIptables, ipv6: bool) -> Self {
        let mut all = Vec::new();
        for b in Backend::ALL {
            for f in Family::ALL {
                for t in [Tool::Iptables, Tool::Save, Tool::Restore] {
                    all.push(b.binary(f, t));
                }
            }
        }
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        FakeSystem::with_binaries(fake, ipv6, &names)
    }

    /// Only the named binaries installed.
    pub fn with_binaries(fake: &'a FakeIptables, ipv6: bool, names: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "weft-init-fake-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        for name in names {
            let p = bin.join(name);
            fs::write(&p, "").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let conf = dir.join("proc/sys/net/ipv6/conf/all");
        fs::create_dir_all(&conf).unwrap();
        fs::create_dir_all(dir.join("proc/net")).unwrap();
        fs::write(dir.join("proc/net/if_inet6"), "").unwrap();
        fs::write(conf.join("disable_ipv6"), if ipv6 { "0\n" } else { "1\n" }).unwrap();
        FakeSystem { fake, dir }
    }

    pub fn bin_dir(&self) -> String {
        self.dir.join("bin").display().to_string()
    }

    pub fn system(&self) -> System<'a> {
        System {
            runner: self.fake,
            path: PathSearch::new(self.dir.join("bin")),
            proc_fs: ProcFs::new(self.dir.join("proc")),
        }
    }
}

impl Drop for FakeSystem<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
