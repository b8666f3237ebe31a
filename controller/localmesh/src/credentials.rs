//! The local mesh's API credentials: the controller's token file
//! (`<run dir>/credentials/api-tokens.yaml`, given to it as `--api-tokens`), an
//! operator token for `weftctl` and the tests, a read-only viewer token (it may
//! register nowhere: the mesh page's), and a token per sidecar, scoped to its
//! pod's service and readable only by the proxy's user.
//!
//! Tokens are 32 random bytes as hex. Issuing one rewrites the token file (a new
//! file renamed over the old); the controller accepts a new token on its first use.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context as _, Result};

/// The operator's token name.
pub const OPERATOR: &str = "operator";

/// The read-only token's name: valid for every read, registers into nothing
/// (what `weftctl up` puts in the mesh page's address).
pub const VIEWER: &str = "viewer";

/// The credentials directory of a mesh whose run directory is `run_dir`.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("credentials")
}

/// The file holding the operator's token (e.g. for `weftctl status`).
pub fn operator_token_file(run_dir: &Path) -> PathBuf {
    dir(run_dir).join(format!("{OPERATOR}.token"))
}

/// The operator's token of the mesh at `run_dir`.
pub fn operator_token(run_dir: &Path) -> Result<String> {
    let path = operator_token_file(run_dir);
    let token =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// The read-only viewer's token of the mesh at `run_dir`.
pub fn viewer_token(run_dir: &Path) -> Result<String> {
    let path = dir(run_dir).join(format!("{VIEWER}.token"));
    let token =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// An `Authorization` header value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[derive(Debug)]
struct Issued {
    token: String,
    register: Vec<String>,
    /// The local workload whose certificate the token may get.
    identity: Option<String>,
}

/// The tokens of one mesh.
#[derive(Debug)]
pub struct Credentials {
    dir: PathBuf,
    issued: Mutex<BTreeMap<String, Issued>>,
}

impl Credentials {
    /// Makes `<run dir>/credentials/` with the token file, the operator's token
    /// (may register into every service) and the viewer's (into none).
    pub fn create(run_dir: &Path) -> Result<Credentials> {
        let dir = dir(run_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Traversable by the proxies' user, which reads its own token file only.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("chmod {}", dir.display()))?;
        let creds = Credentials {
            dir,
            issued: Mutex::new(BTreeMap::new()),
        };
        creds.issue(OPERATOR, &["*"], None)?;
        creds.issue(VIEWER, &[], None)?;
        Ok(creds)
    }

    fn issued(&self) -> MutexGuard<'_, BTreeMap<String, Issued>> {
        self.issued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The controller's token file.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("api-tokens.yaml")
    }

    /// The operator's token.
    pub fn operator_token(&self) -> String {
        self.issued()
            .get(OPERATOR)
            .map(|i| i.token.clone())
            .unwrap_or_default()
    }

    /// Issues the token `name` (once: again, the same token) that may register into
    /// `register`, writes it to `<name>.token` owned by `owner` (mode 0400), and adds
    /// it to the token file; returns the token's file.
    pub fn issue(&self, name: &str, register: &[&str], owner: Option<u32>) -> Result<PathBuf> {
        self.issue_with_identity(name, register, None, owner)
    }

    /// [`issue`](Self::issue), the token also naming the local workload `identity`
    /// whose certificate it may ask the controller's CA for (a sidecar's token).
    pub fn issue_with_identity(
        &self,
        name: &str,
        register: &[&str],
        identity: Option<&str>,
        owner: Option<u32>,
    ) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.token"));
        let mut issued = self.issued();
        if issued.contains_key(name) {
            return Ok(path);
        }
        let token = random_hex(32)?;
        write_private(&path, token.as_bytes())?;
        if let Some(uid) = owner {
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(uid)), None)
                .with_context(|| format!("chown {}", path.display()))?;
        }
        issued.insert(
            name.to_owned(),
            Issued {
                token,
                register: register.iter().map(|s| (*s).to_owned()).collect(),
                identity: identity.map(str::to_owned),
            },
        );
        self.write_token_file(&issued)?;
        Ok(path)
    }

    fn write_token_file(&self, issued: &BTreeMap<String, Issued>) -> Result<()> {
        let mut text =
            String::from("# weft-controller --api-tokens: written by weft-localmesh\ntokens:\n");
        for (name, i) in issued {
            let register: Vec<String> = i.register.iter().map(|s| format!("{s:?}")).collect();
            text.push_str(&format!(
                "  {name}:\n    token: {}\n    register: [{}]\n",
                i.token,
                register.join(", ")
            ));
            if let Some(identity) = &i.identity {
                text.push_str(&format!("    identity: {identity}\n"));
            }
        }
        let path = self.token_file();
        let tmp = path.with_extension("yaml.tmp");
        write_private(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))
    }
}

/// Writes `bytes` to a new `path` readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn issues_each_name_once_into_the_token_file() {
        let run = std::env::temp_dir().join(format!("wcred-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        let creds = Credentials::create(&run).unwrap();
        let op = creds.operator_token();
        assert_eq!(op.len(), 64);
        assert_eq!(operator_token(&run).unwrap(), op);
        let first = creds.issue("pod-a", &["backend"], None).unwrap();
        let token = std::fs::read_to_string(&first).unwrap();
        assert_eq!(creds.issue("pod-a", &["backend"], None).unwrap(), first);
        assert_eq!(std::fs::read_to_string(&first).unwrap(), token);
        let file = std::fs::read_to_string(creds.token_file()).unwrap();
        assert!(
            file.contains(&format!(
                "  pod-a:\n    token: {token}\n    register: [\"backend\"]\n"
            )),
            "{file}"
        );
        assert!(file.contains("register: [\"*\"]"), "{file}");
        std::fs::remove_dir_all(&run).unwrap();
    }
}
