//! Where weft's binaries and a usable python3 are.

use std::path::{Path, PathBuf};

/// The path of the weft binary `name` (e.g. `weft-proxy`): in `$WEFT_BIN_DIR` if
/// set, else in the target directory of this test executable
/// (`target/<triple>/<profile>/deps/<test>` → `target/<triple>/<profile>/<name>`).
///
/// # Panics
/// If the binary is not there: tier-2 tests fail loudly, they never skip.
pub fn weft_bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("WEFT_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("harness bug: current_exe() failed");
            bin_dir_of(&exe)
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "weft binary {} not found: build it first: cargo build --workspace --bins \
             (or set WEFT_BIN_DIR)",
            path.display()
        );
    }
    path
}

/// `target/<profile>/deps/<test>` → `target/<profile>`; otherwise the exe's dir.
fn bin_dir_of(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A python3 that any uid can run: the system one (`/usr/bin/python3`) first,
/// since a pyenv shim under /root is not usable by an unprivileged uid.
pub fn python3() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_from_test_exe() {
        assert_eq!(
            bin_dir_of(Path::new("/w/target/debug/deps/harness-0123")),
            PathBuf::from("/w/target/debug")
        );
        assert_eq!(
            bin_dir_of(Path::new("/w/target/release/weft-proxy")),
            PathBuf::from("/w/target/release")
        );
    }
}
