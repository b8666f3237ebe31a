//! The token file (`--api-tokens FILE`): the bearer tokens the controller accepts,
//! each under a name (for logs, metrics and per-caller limits) with the services it
//! may register endpoints into.
//!
//! ```yaml
//! tokens:
//!   operator:                  # the caller's name, unique in the file
//!     token: 5f0c...           # at least 32 characters, no spaces
//!     register: ["*"]          # "*": every service
//!   pod-frontend-1:
//!     token: 9ab1...
//!     register: [frontend]
//!     identity: frontend       # may get the workload certificate of `frontend`
//!   dashboard:
//!     token: 77de...           # no `register`: reads only
//! ```
//!
//! Every token may read the topology (the discovery Watch, `/v1/services`,
//! `/v1/status`) and announce its own sidecar's drain; `register` scopes writes.
//! `identity` names the local workload whose certificate the token may ask the mesh
//! CA for (`spiffe://<trust-domain>/ns/local/sa/<identity>`, [`crate::ca`]); a
//! token without one gets none.
//!
//! The file is followed while the controller runs: checked every second, and at
//! once when a token arrives that is not known and the file changed since it was
//! read (so a token just added works on its first use, and one just removed stops
//! working within a second). A bad file is reported with its line and the last good
//! one stays in force; at start-up a bad file is an error.
//!
//! Only SHA-256 digests of the tokens are held, and tokens are looked up by digest:
//! the time a lookup takes says nothing about how much of a guess was right.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::meshfile::{locate, unique_keys, yaml_error, Step};
use crate::model::Name;

/// The shortest token accepted: 32 characters (128 bits as hex).
pub const MIN_TOKEN_LEN: usize = 32;

/// The services a caller may register endpoints into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every service (`"*"`: an operator).
    All,
    /// These services only (none: the caller only reads).
    Services(BTreeSet<Name>),
}

impl Scope {
    /// Whether `service` is in scope.
    pub fn allows(&self, service: &Name) -> bool {
        match self {
            Scope::All => true,
            Scope::Services(names) => names.contains(service),
        }
    }
}

/// What one token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's name in the file.
    pub name: String,
    pub register: Scope,
    /// The local workload whose certificate this token may get, if any.
    pub identity: Option<String>,
}

/// A token's SHA-256 digest.
type Digest = [u8; 32];

pub(super) fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What identifies one version of the file on disk: a rewrite in place or a rename
/// over it changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The tokens of the file, followed on disk.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// The version on disk last read (good or bad), so each version is read once.
    stamp: Option<Stamp>,
    grants: Arc<HashMap<Digest, Arc<Grant>>>,
    /// The file's current problem, while the last good tokens are in force.
    error: Option<ConfigError>,
}

/// The token file's state for `/v1/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenFileStatus {
    pub path: String,
    pub tokens: usize,
    pub current_error: Option<ConfigError>,
}

impl TokenFile {
    /// Reads the file; a missing or bad one is an error.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let origin = path.display().to_string();
        let stamp =
            stamp(&path).map_err(|e| ConfigError::new(&origin, format!("cannot read: {e}")))?;
        let grants = read(&path)?;
        Ok(TokenFile {
            path,
            loaded: Mutex::new(Loaded {
                stamp: Some(stamp),
                grants: Arc::new(grants),
                error: None,
            }),
        })
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `token` grants, if it is one of the file's. An unknown token makes the
    /// file be read again first when it changed on disk.
    pub fn lookup(&self, token: &str) -> Option<Arc<Grant>> {
        let key = digest(token);
        if let Some(grant) = self.loaded().grants.get(&key) {
            return Some(grant.clone());
        }
        self.refresh();
        self.loaded().grants.get(&key).cloned()
    }

    /// Reads the file again if it changed on disk since it was last read. A bad
    /// version is logged and kept as the current error; the last good tokens stay.
    pub fn refresh(&self) {
        let now = stamp(&self.path).ok();
        if now == self.loaded().stamp {
            return;
        }
        // Read outside the lock: lookups go on meanwhile.
        let result = match now {
            Some(_) => read(&self.path),
            None => Err(ConfigError::new(
                self.path.display().to_string(),
                "cannot read: the file is gone",
            )),
        };
        let mut loaded = self.loaded();
        loaded.stamp = now;
        match result {
            Ok(grants) => {
                tracing::info!(path = %self.path.display(), tokens = grants.len(), "API tokens reloaded");
                loaded.grants = Arc::new(grants);
                loaded.error = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "bad API token file; the last good tokens stay in force");
                loaded.error = Some(e);
            }
        }
    }

    /// The file, how many tokens are in force and its current problem.
    pub fn status(&self) -> TokenFileStatus {
        let loaded = self.loaded();
        TokenFileStatus {
            path: self.path.display().to_string(),
            tokens: loaded.grants.len(),
            current_error: loaded.error.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(deserialize_with = "unique_keys")]
    tokens: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    token: String,
    #[serde(default)]
    register: Vec<String>,
    #[serde(default)]
    identity: Option<String>,
}

fn read(path: &Path) -> Result<HashMap<Digest, Arc<Grant>>, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&origin, format!("cannot read: {e}")))?;
    parse(&origin, &text)
}

/// Parses token-file `text`; `origin` names the file in errors, which carry the line.
pub fn parse(origin: &str, text: &str) -> Result<HashMap<Digest, Arc<Grant>>, ConfigError> {
    let doc: Doc = serde_norway::from_str(text).map_err(|e| yaml_error(origin, text, &e))?;
    let at = |name: &str, field: &str, message: String| ConfigError {
        origin: origin.to_owned(),
        line: locate(
            text,
            &[Step::Key("tokens"), Step::Key(name), Step::Key(field)],
        ),
        column: None,
        message: format!("token {name:?}: {message}"),
    };
    let mut grants = HashMap::with_capacity(doc.tokens.len());
    for (name, entry) in doc.tokens {
        let token = entry.token.as_str();
        if token.len() < MIN_TOKEN_LEN {
            return Err(at(
                &name,
                "token",
                format!("shorter than {MIN_TOKEN_LEN} characters (make one with `openssl rand -hex 32`)"),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(at(
                &name,
                "token",
                "has spaces or non-ASCII characters".into(),
            ));
        }
        let register = if entry.register.iter().any(|s| s == "*") {
            if entry.register.len() > 1 {
                return Err(at(
                    &name,
                    "register",
                    "\"*\" already means every service".into(),
                ));
            }
            Scope::All
        } else {
            let names = entry
                .register
                .iter()
                .map(|s| Name::try_from(s.as_str()).map_err(|e| at(&name, "register", e)))
                .collect::<Result<BTreeSet<_>, _>>()?;
            Scope::Services(names)
        };
        if let Some(identity) = &entry.identity {
            crate::ca::check_name(identity)
                .map_err(|e| at(&name, "identity", format!("identity: {e}")))?;
        }
        let grant = Arc::new(Grant {
            name: name.clone(),
            register,
            identity: entry.identity,
        });
        if let Some(other) = grants.insert(digest(token), grant) {
            return Err(at(
                &name,
                "token",
                format!(
                    "the same token as {:?}: each caller needs its own",
                    other.name
                ),
            ));
        }
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn grant(map: &HashMap<Digest, Arc<Grant>>, token: &str) -> Option<Grant> {
        map.get(&digest(token)).map(|g| (**g).clone())
    }

    #[test]
    fn parses_scopes() {
        let text = format!(
            "tokens:\n  operator:\n    token: {A}\n    register: [\"*\"]\n  pod-b1:\n    token: {B}\n    register: [backend]\n"
        );
        let map = parse("t.yaml", &text).unwrap();
        assert_eq!(grant(&map, A).unwrap().register, Scope::All);
        let b1 = grant(&map, B).unwrap();
        assert_eq!(b1.name, "pod-b1");
        assert!(b1.register.allows(&Name::try_from("backend").unwrap()));
        assert!(!b1.register.allows(&Name::try_from("frontend").unwrap()));
        assert!(grant(&map, "cccccccccccccccccccccccccccccccccccc").is_none());
    }

    #[test]
    fn an_identity_is_a_checked_workload_name() {
        let map = parse(
            "t.yaml",
            &format!("tokens:\n  pod-b1:\n    token: {A}\n    identity: backend\n  op:\n    token: {B}\n"),
        )
        .unwrap();
        assert_eq!(grant(&map, A).unwrap().identity.as_deref(), Some("backend"));
        assert_eq!(grant(&map, B).unwrap().identity, None);
        let err = parse(
            "t.yaml",
            &format!("tokens:\n  pod-b1:\n    token: {A}\n    identity: ../admin\n"),
        )
        .unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("identity"), "{err}");
    }

    #[test]
    fn read_only_without_register() {
        let map = parse("t.yaml", &format!("tokens:\n  dash:\n    token: {A}\n")).unwrap();
        assert_eq!(
            grant(&map, A).unwrap().register,
            Scope::Services(BTreeSet::new())
        );
        assert!(parse("t.yaml", "tokens: {}\n").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("tokens:\n  a:\n    token: short\n", 3, "shorter than 32"),
            (
                &format!("tokens:\n  a:\n    token: {A}\n  b:\n    token: {A}\n") as &str,
                5,
                "the same token as \"a\"",
            ),
            (
                &format!("tokens:\n  a:\n    token: {A}\n    register: [\"Not A Name\"]\n"),
                4,
                "token \"a\"",
            ),
            (
                &format!("tokens:\n  a:\n    token: {A}\n    scope: x\n"),
                4,
                "unknown field",
            ),
            (
                &format!("tokens:\n  a:\n    token: {A}\n  a:\n    token: {B}\n"),
                4,
                "duplicate name",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse("t.yaml", text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn follows_the_file_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, format!("tokens:\n  a:\n    token: {A}\n")).unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.lookup(A).unwrap().name, "a");
        assert!(file.lookup(B).is_none());
        // Added: known on first use, no wait.
        std::fs::write(
            &path,
            format!("tokens:\n  a:\n    token: {A}\n  b:\n    token: {B}\n"),
        )
        .unwrap();
        assert_eq!(file.lookup(B).unwrap().name, "b");
        // A bad version keeps both and says why.
        std::fs::write(&path, "tokens:\n  a: [\n").unwrap();
        file.refresh();
        assert!(file.lookup(A).is_some() && file.lookup(B).is_some());
        let status = file.status();
        assert_eq!((status.tokens, status.current_error.is_some()), (2, true));
        // Removed: gone after the next refresh.
        let tmp = dir.path().join("tokens.yaml.tmp");
        std::fs::write(&tmp, format!("tokens:\n  b:\n    token: {B}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        file.refresh();
        assert!(file.lookup(A).is_none());
        assert!(file.lookup(B).is_some());
        assert!(file.status().current_error.is_none());
    }
}
