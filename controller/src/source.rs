//! Sources of truth behind one trait. A [`Source`] yields successive states of its
//! part of the mesh (a [`Contribution`]), or errors when the configuration it reads is
//! bad. [`FileSource`] watches the YAML mesh file; [`crate::registry::RegistrySource`]
//! follows the registration API; [`crate::kubernetes::KubernetesSource`] watches a
//! cluster's Services and EndpointSlices (`--kubernetes`). The controller runs
//! several at once and merges their contributions ([`crate::merge`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use crate::error::ConfigError;
use crate::meshfile;
use crate::model::{Name, Registration, Service, SourceKind};

/// What one source says about the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contribution {
    /// Services this source defines: VIP, ports, policy and its own endpoints.
    pub services: BTreeMap<Name, Service>,
    /// Endpoints this source adds to services that any source defines.
    pub registrations: Vec<Registration>,
    /// Endpoints of this source's own services that exist but are not ready
    /// (Kubernetes: an EndpointSlice endpoint with `ready: false`, a pod starting or
    /// terminating). Known, so still their service's pods for the proxies' peer →
    /// service map (and a sidecar there still knows its pod backs the service), but
    /// never served.
    pub not_ready: BTreeMap<Name, Vec<IpAddr>>,
}

impl Contribution {
    /// The services of a mesh (its workloads are the local mesh's business, not
    /// the proxies').
    pub fn services(services: BTreeMap<Name, Service>) -> Self {
        Contribution {
            services,
            ..Contribution::default()
        }
    }
}

/// Something that yields successive states of its part of the mesh.
pub trait Source: Send {
    /// A human-readable name for logs (e.g. the file path).
    fn describe(&self) -> String;

    /// What kind of source this is (shown as an endpoint's origin).
    fn kind(&self) -> SourceKind;

    /// The next state: the first call returns the current one at once; later calls
    /// wait until the configuration changes. An `Err` reports a bad configuration;
    /// the caller keeps serving the last good state.
    fn next(&mut self) -> impl Future<Output = Result<Contribution, ConfigError>> + Send;
}

/// The future [`DynSource::next_boxed`] returns.
pub type NextFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Contribution, ConfigError>> + Send + 'a>>;

/// A [`Source`] as a trait object, so that sources of different types can be run
/// together (every `Source` is one).
pub trait DynSource: Send {
    /// [`Source::describe`].
    fn describe(&self) -> String;
    /// [`Source::kind`].
    fn kind(&self) -> SourceKind;
    /// [`Source::next`], boxed.
    fn next_boxed(&mut self) -> NextFuture<'_>;
}

impl<S: Source> DynSource for S {
    fn describe(&self) -> String {
        Source::describe(self)
    }

    fn kind(&self) -> SourceKind {
        Source::kind(self)
    }

    fn next_boxed(&mut self) -> NextFuture<'_> {
        Box::pin(Source::next(self))
    }
}

impl std::fmt::Debug for dyn DynSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} source {}", self.kind(), self.describe())
    }
}

/// The mesh file, watched by path.
///
/// The file is read by path and compared with the last content seen whenever
/// inotify reports a change in its directory ([`DirEvents`]), or, where inotify is
/// unavailable, every `interval`. Watching the directory rather than the file (an
/// inode) follows an editor's or tool's atomic rename-over and a Kubernetes
/// ConfigMap's symlink swap (`..data` renamed, the file's own name untouched);
/// comparing content rather than mtime catches edits within one timestamp tick and
/// ignores touches and the directory's other files. The file is small, so a read is
/// cheap.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    interval: Duration,
    /// What the last read gave: the content, or the read error's text.
    last: Option<Result<Vec<u8>, String>>,
    /// inotify on the file's directory; `None`: polling every `interval`.
    events: Option<DirEvents>,
}

/// The polling interval where inotify is unavailable.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// After a write that is not known to be finished (a modification without its
/// close), the file is read once this long passes without another event.
const SETTLE: Duration = Duration::from_millis(20);

/// What an inotify event in the file's directory says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    /// A change that is complete: a file written and closed, a rename, a removal.
    Settled,
    /// A change under way: a file created or modified, not yet closed.
    Writing,
}

impl Notice {
    /// What `kind` says; `None` for events that change nothing (opens, reads,
    /// metadata: among them the source's own reads).
    fn of(kind: &notify::EventKind) -> Option<Notice> {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        use notify::EventKind;
        match kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Notice::Settled),
            EventKind::Access(_) => None,
            EventKind::Modify(ModifyKind::Metadata(_)) => None,
            EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => Some(Notice::Settled),
            _ => Some(Notice::Writing),
        }
    }
}

/// inotify on a directory, its events as [`Notice`]s.
#[derive(Debug)]
pub struct DirEvents {
    notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    // Watching stops when it is dropped.
    _watcher: notify::RecommendedWatcher,
}

impl DirEvents {
    /// Watches the directory `dir` (not its subdirectories).
    fn watch(dir: &Path) -> notify::Result<DirEvents> {
        use notify::Watcher as _;
        let (tx, notices) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let notice = match event {
                    Ok(event) => Notice::of(&event.kind),
                    // Lost events (a queue overflow): read, to be sure.
                    Err(_) => Some(Notice::Settled),
                };
                if let Some(notice) = notice {
                    let _ = tx.send(notice);
                }
            })?;
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(DirEvents {
            notices,
            _watcher: watcher,
        })
    }

    /// Waits until a change has likely completed: a settled notice, or a quiet
    /// [`SETTLE`] after writing; then takes every notice queued meanwhile. `false`
    /// when the watcher has stopped.
    async fn changed(&mut self) -> bool {
        let Some(mut notice) = self.notices.recv().await else {
            return false;
        };
        while notice == Notice::Writing {
            match tokio::time::timeout(SETTLE, self.notices.recv()).await {
                Ok(Some(next)) => notice = next,
                Ok(None) | Err(_) => break,
            }
        }
        while self.notices.try_recv().is_ok() {}
        true
    }
}

impl FileSource {
    /// Watches `path`: with inotify on its directory, else reading it every
    /// `interval`.
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        let path = path.into();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let events = match DirEvents::watch(&dir) {
            Ok(events) => Some(events),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, ?interval, "no inotify on the mesh file's directory; polling");
                None
            }
        };
        FileSource {
            path,
            interval,
            last: None,
            events,
        }
    }

    /// Polling only (as where inotify is unavailable).
    pub fn polling(path: impl Into<PathBuf>, interval: Duration) -> Self {
        FileSource {
            path: path.into(),
            interval,
            last: None,
            events: None,
        }
    }

    /// Whether changes are noticed by inotify (else by polling).
    pub fn is_notified(&self) -> bool {
        self.events.is_some()
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; `Some` when it differs from the last read.
    async fn changed(&mut self) -> Option<Result<Vec<u8>, String>> {
        let now = tokio::fs::read(&self.path)
            .await
            .map_err(|e| format!("cannot read: {e}"));
        if self.last.as_ref() == Some(&now) {
            return None;
        }
        self.last = Some(now.clone());
        Some(now)
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn kind(&self) -> SourceKind {
        SourceKind::File
    }

    async fn next(&mut self) -> Result<Contribution, ConfigError> {
        let origin = self.path.display().to_string();
        let read = loop {
            if let Some(read) = self.changed().await {
                break read;
            }
            match &mut self.events {
                Some(events) => {
                    if !events.changed().await {
                        tracing::warn!(path = %self.path.display(), "inotify stopped; polling the mesh file");
                        self.events = None;
                    }
                }
                None => tokio::time::sleep(self.interval).await,
            }
        };
        let bytes = read.map_err(|msg| ConfigError::new(&origin, msg))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| ConfigError::new(&origin, format!("not UTF-8: {e}")))?;
        meshfile::parse(&origin, &text).map(|mesh| Contribution::services(mesh.services))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "services:\n  a:\n    vip: 10.0.0.1\n    ports: [{ port: 80 }]\n";
    const B: &str = "services:\n  b:\n    vip: 10.0.0.2\n    ports: [{ port: 80 }]\n";

    #[tokio::test]
    async fn follows_rename_over_and_ignores_rewrites_of_the_same_content() {
        let notified =
            follows_rename_over(|path| FileSource::new(path, Duration::from_secs(3600))).await;
        assert!(notified, "inotify, not the (hour-long) poll");
        follows_rename_over(|path| FileSource::polling(path, Duration::from_millis(20))).await;
    }

    /// Drives a source made by `make` through a rename-over, a rewrite of the same
    /// content, an in-place rewrite and a removal; each change must be seen within
    /// 2 s. Returns whether the source used inotify.
    async fn follows_rename_over(make: impl Fn(&Path) -> FileSource) -> bool {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, A).expect("write");
        let mut src = make(&path);
        let notified = src.is_notified();
        let first = src.next().await.expect("valid");
        assert_eq!(first.services.len(), 1);

        // Same content again: no new state.
        std::fs::write(&path, A).expect("write");
        let waited = tokio::time::timeout(Duration::from_millis(200), src.next()).await;
        assert!(waited.is_err(), "unchanged content yielded {waited:?}");

        let tmp = dir.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, B).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        let next = tokio::time::timeout(Duration::from_secs(2), src.next())
            .await
            .expect("in time")
            .expect("valid");
        assert!(next.services.keys().any(|n| n.as_str() == "b"));

        // In place, in two writes (truncate, then the content): one good state,
        // never the empty file in between.
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&path).expect("truncate");
            f.write_all(&A.as_bytes()[..10]).expect("write");
            f.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(5));
            f.write_all(&A.as_bytes()[10..]).expect("write");
        }
        let next = tokio::time::timeout(Duration::from_secs(2), src.next())
            .await
            .expect("in time")
            .expect("the whole file, not a part of it");
        assert!(next.services.keys().any(|n| n.as_str() == "a"));

        std::fs::remove_file(&path).expect("rm");
        let gone = tokio::time::timeout(Duration::from_secs(2), src.next())
            .await
            .expect("in time")
            .expect_err("missing file is an error");
        assert!(gone.message.contains("cannot read"), "{gone}");
        notified
    }

    #[tokio::test]
    async fn follows_a_configmap_symlink_swap() {
        // A ConfigMap volume: mesh.yaml -> ..data/mesh.yaml, ..data -> ..v1; an
        // update makes ..v2 and renames a new ..data symlink over the old one. The
        // file's own name sees no event.
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).expect("mkdir");
        std::fs::write(d.join("..v1/mesh.yaml"), A).expect("write");
        std::os::unix::fs::symlink("..v1", d.join("..data")).expect("symlink");
        std::os::unix::fs::symlink("..data/mesh.yaml", d.join("mesh.yaml")).expect("symlink");
        let mut src = FileSource::new(d.join("mesh.yaml"), Duration::from_secs(3600));
        assert!(src.is_notified());
        assert!(src
            .next()
            .await
            .expect("valid")
            .services
            .keys()
            .any(|n| n.as_str() == "a"));
        std::fs::create_dir(d.join("..v2")).expect("mkdir");
        std::fs::write(d.join("..v2/mesh.yaml"), B).expect("write");
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).expect("symlink");
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
        let next = tokio::time::timeout(Duration::from_secs(2), src.next())
            .await
            .expect("in time")
            .expect("valid");
        assert!(next.services.keys().any(|n| n.as_str() == "b"));
    }
}
