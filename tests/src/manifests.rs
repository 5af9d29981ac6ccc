//! The manifest folder the daemon watches (`switchyard run --manifests DIR`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::netns::unique_prefix;
use crate::scratch::ScratchDir;

/// A folder of Kubernetes manifests. Every change is atomic: a file is
/// written as a dot-file beside its final name, then renamed over it, so the
/// daemon never reads half a file.
#[derive(Debug)]
pub struct Manifests {
    path: PathBuf,
    // Set when this guard made its own folder.
    _scratch: Option<ScratchDir>,
}

impl Manifests {
    /// A fresh folder of its own under `$TMPDIR/switchyard-tests/`.
    pub fn new() -> Result<Self> {
        let scratch = ScratchDir::new(&format!("{}-manifests", unique_prefix()))?;
        Ok(Self {
            path: scratch.path().to_path_buf(),
            _scratch: Some(scratch),
        })
    }

    /// A fresh `manifests/` folder inside `dir` (e.g. a topology's scratch
    /// folder, so logs and manifests of a failed test sit together).
    pub fn new_in(dir: &Path) -> Result<Self> {
        let path = dir.join("manifests");
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self {
            path,
            _scratch: None,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of file `name` in the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes (or replaces) file `name` with `contents`, atomically.
    pub fn write(&self, name: &str, contents: &str) -> Result<()> {
        ensure!(
            !name.contains('/') && !name.starts_with('.'),
            "manifest file name {name:?} must be a plain, visible file name"
        );
        let tmp = self.path.join(format!(".{name}.tmp"));
        let dest = self.path.join(name);
        std::fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))?;
        Ok(())
    }

    /// Writes file `name` as a multi-document YAML file holding `objects`.
    pub fn write_objects(&self, name: &str, objects: &[Value]) -> Result<()> {
        self.write(name, &crate::yaml::to_documents(objects))
    }

    /// Removes file `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.path.join(name);
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))
    }
}
