//! The programs a comparison run starts, and building them.
//!
//! `cargo run --bin compare` builds only `compare`; the load generator,
//! `pod-server` (crate switchyard-tests) and `switchyard` (crate
//! switchyard-control) must sit beside it in the same target folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where the benchmark's sibling binaries are: the folder of the running
/// executable (`target/release/` under `cargo run --release`).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the running executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the running executable has no folder")
}

/// Builds, with the profile of this binary, the packages whose binaries
/// the run needs: always switchyard-bench (`loadgen`) and switchyard-tests
/// (`pod-server`), and switchyard-control (`switchyard`) unless the caller
/// brings its own switchyard binary. Cargo makes this a no-op when nothing
/// changed.
pub fn build(with_switchyard: bool) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(switchyard_tests::workspace_dir())
        .args(["build", "-j2", "--bins"]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    command.args(["-p", "switchyard-bench", "-p", "switchyard-tests"]);
    if with_switchyard {
        command.args(["-p", "switchyard-control"]);
    }
    eprintln!("building the benchmark's programs: {command:?}");
    let status = command
        .status()
        .with_context(|| format!("run {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!(
            "building the benchmark's programs failed ({status}); fix the build or pass --no-build"
        );
    }
    Ok(())
}

/// Fails unless `path` is a file, saying how to make it.
pub fn require(path: &Path, what: &str) -> Result<()> {
    if !path.is_file() {
        bail!(
            "{what} not found at {}: build it (`cargo build --release -p switchyard-bench -p switchyard-tests -p switchyard-control --bins`) or drop --no-build",
            path.display()
        );
    }
    Ok(())
}
