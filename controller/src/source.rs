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
/// Every `interval` the file is read by path and compared with the last content seen.
/// Reading by path (rather than watching an open file or inode) follows an editor's or
/// tool's atomic rename-over; comparing content rather than mtime catches edits within
/// one timestamp tick and ignores touches. The file is small, so this is cheap.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    interval: Duration,
    /// What the last read gave: the content, or the read error's text.
    last: Option<Result<Vec<u8>, String>>,
}

/// The default polling interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

impl FileSource {
    /// Watches `path`, reading it every `interval`.
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        FileSource {
            path: path.into(),
            interval,
            last: None,
        }
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
            tokio::time::sleep(self.interval).await;
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
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, A).expect("write");
        let mut src = FileSource::new(&path, Duration::from_millis(20));
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

        std::fs::remove_file(&path).expect("rm");
        let gone = tokio::time::timeout(Duration::from_secs(2), src.next())
            .await
            .expect("in time")
            .expect_err("missing file is an error");
        assert!(gone.message.contains("cannot read"), "{gone}");
    }
}
