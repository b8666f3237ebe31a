//! The registration API's store: endpoints registered and deregistered at run time
//! (`PUT`/`DELETE /v1/services/{service}/endpoints/{address}`), persisted under
//! `--state-dir` so that a restart — also after `kill -9` — loses nothing, and
//! followed by the controller as one more [`Source`] ([`RegistrySource`]).
//!
//! # Persistence
//!
//! The whole registry is one JSON file, `<state-dir>/registry.json`, rewritten on every
//! change: write `registry.json.tmp`, `fsync` it, `rename` it over `registry.json`,
//! `fsync` the directory. Why this and not an embedded database: the registry is small
//! (an entry per registered endpoint; a rewrite of a few hundred KiB at worst), changes
//! rarely (registrations, not traffic), and an operator can read and back it up with
//! `cat`; the four steps give every property needed without a dependency:
//!
//! - `rename(2)` replaces the name atomically: after a crash at any point the file is
//!   the old registry or the new one, whole, never a mix or a truncation;
//! - the `fsync` of the temporary file before the rename makes sure the name never
//!   points at data still in the page cache (the ext4 "zero-length file after crash"
//!   case): a power loss after the rename finds the new content;
//! - the `fsync` of the directory makes the rename itself durable before the API
//!   answers `2xx`, so an acknowledged registration survives a power loss too
//!   (`kill -9` alone would not need the fsyncs: the page cache survives the process).
//!
//! Changes are applied in memory only after the file is written: a write that fails
//! answers `500` and leaves the registry as it was. A leftover `registry.json.tmp` (a
//! crash between write and rename) is ignored and overwritten by the next change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::error::ConfigError;
use crate::model::{Name, Registration, SourceKind};
use crate::source::{Contribution, Source};

/// The file name under the state directory.
pub const FILE_NAME: &str = "registry.json";
/// The version of the file's format.
const FORMAT: u32 = 1;

/// What the file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    format: u32,
    registrations: Vec<Registration>,
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The state directory or the file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a registry.
    #[error("{path}: not a weft registry: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// A new registration over one of the [`Caps`]; nothing was written.
    #[error("{message}")]
    Cap {
        /// `registration_cap` or `endpoint_cap`.
        reason: &'static str,
        message: String,
    },
}

impl RegistryError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        RegistryError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// As a configuration error (for the controller's start-up and status).
    pub fn to_config_error(&self) -> ConfigError {
        let origin = match self {
            RegistryError::Io { path, .. } | RegistryError::Corrupt { path, .. } => {
                path.display().to_string()
            }
            RegistryError::Cap { .. } => "registry".to_owned(),
        };
        ConfigError::new(origin, self.to_string())
    }
}

/// What a `PUT` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new registration.
    Created,
    /// An existing one with other details (port, weight, labels).
    Updated,
    /// The same registration again (idempotent; nothing written).
    Unchanged,
}

type Key = (Name, IpAddr);

/// How many registrations the registry takes: a caller with write access still
/// cannot grow the controller's memory and every proxy's table without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// In all (`--max-registrations`).
    pub total: usize,
    /// Into one service (`--max-endpoints-per-service`).
    pub per_service: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            total: 10_000,
            per_service: 1_000,
        }
    }
}

/// The registrations, persisted in a state directory.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    /// Serializes writers; the map is what the file holds.
    entries: Mutex<BTreeMap<Key, Registration>>,
    /// Follows the entries, for the source and for readers.
    published: watch::Sender<Arc<Vec<Registration>>>,
    caps: Caps,
}

impl Registry {
    /// Opens (creating the directory when missing) the registry in `dir`. An
    /// unreadable or corrupt file is an error: starting empty would silently
    /// deregister every endpoint.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir).map_err(|e| RegistryError::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(RegistryError::io(&path, e)),
        };
        let list = Arc::new(entries.values().cloned().collect());
        Ok(Registry {
            path,
            entries: Mutex::new(entries),
            published: watch::Sender::new(list),
            caps: Caps::default(),
        })
    }

    /// With `caps` on new registrations (those already in the file stay).
    pub fn with_caps(mut self, caps: Caps) -> Self {
        self.caps = caps;
        self
    }

    /// The file the registry is persisted in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every registration, by service then address.
    pub fn list(&self) -> Arc<Vec<Registration>> {
        self.published.borrow().clone()
    }

    /// Registers `reg` (validated by the caller), replacing an earlier registration
    /// of the same service and address. Durable when it returns `Ok`.
    pub async fn put(&self, reg: Registration) -> Result<PutOutcome, RegistryError> {
        let mut entries = self.entries.lock().await;
        let key = (reg.service.clone(), reg.address);
        let outcome = match entries.get(&key) {
            Some(old) if *old == reg => return Ok(PutOutcome::Unchanged),
            Some(_) => PutOutcome::Updated,
            None => {
                self.check_caps(&entries, &reg.service)?;
                PutOutcome::Created
            }
        };
        let mut next = entries.clone();
        next.insert(key, reg);
        self.persist(&next).await?;
        *entries = next;
        self.publish(&entries);
        Ok(outcome)
    }

    fn check_caps(
        &self,
        entries: &BTreeMap<Key, Registration>,
        service: &Name,
    ) -> Result<(), RegistryError> {
        if entries.len() >= self.caps.total {
            return Err(RegistryError::Cap {
                reason: "registration_cap",
                message: format!(
                    "the registry holds {} registrations, the most --max-registrations allows",
                    entries.len()
                ),
            });
        }
        let first = (service.clone(), IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let in_service = entries
            .range(first..)
            .take_while(|((s, _), _)| s == service)
            .count();
        if in_service >= self.caps.per_service {
            return Err(RegistryError::Cap {
                reason: "endpoint_cap",
                message: format!(
                    "service {service} has {in_service} registered endpoints, the most --max-endpoints-per-service allows"
                ),
            });
        }
        Ok(())
    }

    /// Deregisters `address` from `service`: `Ok(false)` when it was not registered.
    /// Durable when it returns `Ok(true)`.
    pub async fn delete(&self, service: &Name, address: IpAddr) -> Result<bool, RegistryError> {
        let mut entries = self.entries.lock().await;
        let key = (service.clone(), address);
        if !entries.contains_key(&key) {
            return Ok(false);
        }
        let mut next = entries.clone();
        next.remove(&key);
        self.persist(&next).await?;
        *entries = next;
        self.publish(&entries);
        Ok(true)
    }

    fn publish(&self, entries: &BTreeMap<Key, Registration>) {
        self.published
            .send_replace(Arc::new(entries.values().cloned().collect()));
    }

    /// Writes `entries` to the file: temporary file, fsync, rename, fsync of the
    /// directory (see the module docs for why each step).
    async fn persist(&self, entries: &BTreeMap<Key, Registration>) -> Result<(), RegistryError> {
        let doc = FileDoc {
            format: FORMAT,
            registrations: entries.values().cloned().collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| RegistryError::Corrupt {
            path: self.path.clone(),
            message: format!("serializing: {e}"),
        })?;
        bytes.push(b'\n');
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| RegistryError::io(&self.path, std::io::Error::other(e)))?
    }

    /// A source following this registry.
    pub fn source(self: &Arc<Self>) -> RegistrySource {
        RegistrySource {
            registry: self.clone(),
            updates: self.published.subscribe(),
            first: true,
        }
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<Key, Registration>, RegistryError> {
    let corrupt = |message: String| RegistryError::Corrupt {
        path: path.to_owned(),
        message,
    };
    let doc: FileDoc = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if doc.format != FORMAT {
        return Err(corrupt(format!(
            "format {} (this controller reads {FORMAT})",
            doc.format
        )));
    }
    let mut entries = BTreeMap::new();
    for reg in doc.registrations {
        reg.validate()
            .map_err(|e| corrupt(format!("{} {}: {e}", reg.service, reg.address)))?;
        entries.insert((reg.service.clone(), reg.address), reg);
    }
    Ok(entries)
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    crate::persist::write_atomically(path, bytes, 0o666)
        .map_err(|(what, e)| RegistryError::io(&what, e))
}

/// The registry as a [`Source`]: contributes registrations, defines no service.
#[derive(Debug)]
pub struct RegistrySource {
    registry: Arc<Registry>,
    updates: watch::Receiver<Arc<Vec<Registration>>>,
    first: bool,
}

impl Source for RegistrySource {
    fn describe(&self) -> String {
        format!("registry {}", self.registry.path.display())
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Registry
    }

    async fn next(&mut self) -> Result<Contribution, ConfigError> {
        if !std::mem::take(&mut self.first) && self.updates.changed().await.is_err() {
            // The registry is gone (shutdown): nothing will change any more.
            std::future::pending::<()>().await;
        }
        let list = self.updates.borrow_and_update().clone();
        Ok(Contribution {
            registrations: list.as_ref().clone(),
            ..Contribution::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::{NonZeroU16, NonZeroU32};

    fn reg(service: &str, ip: &str) -> Registration {
        Registration {
            service: Name::try_from(service).expect("name"),
            address: ip.parse().expect("ip"),
            port: None,
            weight: NonZeroU32::MIN,
            labels: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn put_delete_persist_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let r = Arc::new(Registry::open(&state).expect("open"));
        let mut src = r.source();
        assert!(src.next().await.expect("ok").registrations.is_empty());

        assert_eq!(
            r.put(reg("a", "10.1.0.1")).await.expect("put"),
            PutOutcome::Created
        );
        assert_eq!(
            r.put(reg("a", "10.1.0.1")).await.expect("put"),
            PutOutcome::Unchanged
        );
        let mut b = reg("a", "fd00::2");
        b.port = NonZeroU16::new(8080);
        b.labels.insert("zone".into(), "eu-1".into());
        assert_eq!(r.put(b.clone()).await.expect("put"), PutOutcome::Created);
        b.weight = NonZeroU32::new(5).expect("nonzero");
        assert_eq!(r.put(b.clone()).await.expect("put"), PutOutcome::Updated);
        let got = src.next().await.expect("ok").registrations;
        assert_eq!(got.len(), 2);

        let reopened = Registry::open(&state).expect("reopen");
        assert_eq!(
            reopened.list().as_ref(),
            &vec![reg("a", "10.1.0.1"), b.clone()]
        );

        assert!(r.delete(&b.service, b.address).await.expect("delete"));
        assert!(!r.delete(&b.service, b.address).await.expect("again"));
        let reopened = Registry::open(&state).expect("reopen");
        assert_eq!(reopened.list().as_ref(), &vec![reg("a", "10.1.0.1")]);
        assert!(!state.join("registry.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), "{\"format\": 1, \"registr").expect("write");
        let e = Registry::open(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("not a weft registry"), "{e}");
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"format": 1, "registrations": [{"service": "a", "address": "0.0.0.0"}]}"#,
        )
        .expect("write");
        let e = Registry::open(dir.path()).expect_err("bad entry");
        assert!(e.to_string().contains("not a usable"), "{e}");
        // A leftover temporary file is ignored.
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"format": 1, "registrations": []}"#,
        )
        .expect("write");
        std::fs::write(dir.path().join("registry.json.tmp"), "garbage").expect("write");
        assert!(Registry::open(dir.path()).expect("ok").list().is_empty());
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Registry::open(dir.path()).expect("open");
        r.put(reg("a", "10.1.0.1")).await.expect("put");
        // A directory where the temporary file goes makes the write fail.
        std::fs::create_dir(dir.path().join("registry.json.tmp")).expect("mkdir");
        r.put(reg("a", "10.1.0.2")).await.expect_err("cannot write");
        assert_eq!(r.list().len(), 1);
        r.delete(
            &reg("a", "10.1.0.1").service,
            "10.1.0.1".parse().expect("ip"),
        )
        .await
        .expect_err("cannot write");
        assert_eq!(r.list().len(), 1);
    }
}
