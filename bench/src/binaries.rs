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

/// Builds, with the profile of this binary, the binaries the run needs:
/// `loadgen` (switchyard-bench), `pod-server` (switchyard-tests) and
/// `switchyard` (switchyard-control) unless the caller brings its own.
/// Cargo makes this a no-op when nothing changed.
///
/// One package per cargo call: features are unified over the packages of
/// one call, so building them together would give shared dependencies other
/// features than `cargo run -p switchyard-bench` does, and each of the two
/// would rebuild everything the other built.
pub fn build(with_switchyard: bool) -> Result<()> {
    let mut packages = vec![
        ("switchyard-bench", "loadgen"),
        ("switchyard-tests", "pod-server"),
    ];
    if with_switchyard {
        packages.push(("switchyard-control", "switchyard"));
    }
    build_bins(&packages, 2)
}

/// Builds each `(package, binary)` with the profile of the running binary, one cargo call
/// each (see [`build`]), with `jobs` jobs.
pub fn build_bins(packages: &[(&str, &str)], jobs: usize) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for &(package, bin) in packages {
        let mut command = Command::new(&cargo);
        command
            .current_dir(switchyard_tests::workspace_dir())
            .args(["build", &format!("-j{jobs}"), "-p", package, "--bin", bin]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        eprintln!("building {bin}: {command:?}");
        let status = command
            .status()
            .with_context(|| format!("run {}", cargo.to_string_lossy()))?;
        if !status.success() {
            bail!("building {bin} failed ({status}); fix the build or pass --no-build");
        }
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

/// The topology library finds the daemon through `$SWITCHYARD_BIN` only, and a program cannot
/// set its own environment safely: unless it is already `switchyard`, this program starts over
/// (exec, same arguments plus `extra`) with it set. Returns only when nothing was to be done.
pub fn reexec_with_switchyard_bin(switchyard: &Path, extra: &[&str]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os("SWITCHYARD_BIN").as_deref() == Some(switchyard.as_os_str()) {
        return Ok(());
    }
    let exe = std::env::current_exe().context("find the running executable")?;
    let error = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .args(extra)
        .env("SWITCHYARD_BIN", switchyard)
        .exec();
    bail!("re-executing with SWITCHYARD_BIN set: {error}");
}
