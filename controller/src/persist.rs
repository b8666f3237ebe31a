//! Files the controller keeps across restarts (the registry, the CA's key and
//! root), replaced so that a crash leaves the old content or the new, never a
//! mix: temporary file, fsync, rename, fsync of the directory.

use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, through `<path>.tmp` created with `mode` (before
/// the umask); on failure, the path the failing step was about and its error.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), (PathBuf, io::Error)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let dir = path.parent().unwrap_or(Path::new("."));
    let at = |what: &Path| {
        let what = what.to_path_buf();
        move |e| (what, e)
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(at(&tmp))?;
    file.write_all(bytes).map_err(at(&tmp))?;
    // The content is on disk before the name points at it.
    file.sync_all().map_err(at(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    // And the rename itself is durable before the caller reports success.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}
