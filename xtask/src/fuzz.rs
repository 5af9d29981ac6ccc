//! `cargo xtask fuzz`: runs each cargo-fuzz target of `fuzz/` for a given time, with the
//! nightly toolchain (libFuzzer's instrumentation needs it), growing the committed corpora in
//! `fuzz/corpus/<target>/`. A crash is saved by libFuzzer under `fuzz/artifacts/<target>/`
//! and fails the task. The corpora are also replayed by `switchyard-control`'s unit tests on
//! every build (`fuzzing::tests`), with the stable toolchain.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The targets, in the order they run.
pub const TARGETS: [&str; 3] = ["manifest", "model", "http_request"];

/// Runs `targets` (all when empty) for `seconds` each, one after the other.
pub fn run(root: &Path, targets: &[String], seconds: u64) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    ensure_cargo_fuzz()?;
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for target in targets {
            if !TARGETS.contains(&target.as_str()) {
                bail!(
                    "unknown fuzz target {target:?} (targets: {})",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    for target in chosen {
        crate::step(&format!("fuzzing {target} for {seconds} s"));
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .current_dir(&fuzz_dir)
            .env("CARGO_BUILD_JOBS", "2")
            .status()
            .context("cannot run `cargo +nightly fuzz`")?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}): the input is under fuzz/artifacts/{target}/"
            );
        }
        // Keep the corpus small: the inputs that add coverage, no more.
        crate::step(&format!("minimizing the {target} corpus"));
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "cmin", target])
            .arg(&corpus)
            .current_dir(&fuzz_dir)
            .env("CARGO_BUILD_JOBS", "2")
            .status()
            .context("cannot run `cargo +nightly fuzz cmin`")?;
        if !status.success() {
            bail!("minimizing the {target} corpus failed ({status})");
        }
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let nightly = Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !nightly {
        bail!("fuzzing needs the nightly toolchain (`rustup toolchain install nightly`)");
    }
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !installed {
        crate::step("installing cargo-fuzz");
        let status = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("cannot run `cargo install cargo-fuzz`")?;
        if !status.success() {
            bail!("`cargo install cargo-fuzz` failed");
        }
    }
    Ok(())
}
