//! Per-test scratch folders: logs of every process a test started, and the
//! manifests it fed the daemon.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A folder under `$TMPDIR/switchyard-tests/`, removed on drop.
///
/// When the thread is panicking (a failed test) the folder is kept and its
/// path printed, so the logs can be read after the fact.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `$TMPDIR/switchyard-tests/<name>`, emptying it first if an
    /// earlier run left it behind.
    pub fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join("switchyard-tests").join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("remove stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: keeping {}", self.path.display());
        } else if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {error}", self.path.display());
        }
    }
}
