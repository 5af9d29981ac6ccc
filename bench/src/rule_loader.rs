//! Loading kube-proxy's rule text into a network namespace the way
//! kube-proxy does: one `iptables-restore` or `nft -f -` process fed on
//! stdin, timed from spawn to exit.
//!
//! The process is started from a thread that has entered the namespace
//! (`setns`), not through `ip netns exec`: kube-proxy forks its restore
//! directly, and `ip netns exec` would add a mount namespace and a remount
//! of `/sys` to every timing.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchyard_tests::Netns;

use crate::cpu;

/// Which program loads the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `iptables-legacy-restore` (the `x_tables` kernel interface: the whole
    /// table is one blob, replaced on every restore).
    IptablesLegacy,
    /// `iptables-nft-restore` (the same rules, translated to nf_tables).
    IptablesNft,
    /// `nft -f` with kube-proxy's nftables transactions.
    Nftables,
}

impl Backend {
    /// The program and its arguments, as kube-proxy runs them.
    pub fn argv(self) -> &'static [&'static str] {
        match self {
            Self::IptablesLegacy => &[
                "iptables-legacy-restore",
                "-w",
                "5",
                "--noflush",
                "--counters",
            ],
            Self::IptablesNft => &["iptables-nft-restore", "-w", "5", "--noflush", "--counters"],
            Self::Nftables => &["nft", "-f", "-"],
        }
    }

    /// The name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IptablesLegacy => "iptables-legacy-restore",
            Self::IptablesNft => "iptables-nft-restore",
            Self::Nftables => "nft -f",
        }
    }
}

/// Runs commands inside one namespace from a thread that entered it.
#[derive(Debug)]
pub struct Loader {
    timeout: Duration,
}

impl Loader {
    /// Feeds `text` to `argv` and returns how long the process took, spawn
    /// to exit. Fails with its stderr unless it exits 0.
    #[allow(
        clippy::disallowed_types,
        reason = "a synchronous measurement with no runtime: std's clock is the right one"
    )]
    pub fn run(&self, argv: &[&str], text: &str) -> Result<Duration> {
        let start = std::time::Instant::now();
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", argv.join(" ")))?;
        let mut stdin = child.stdin.take().context("stdin pipe")?;
        let mut stderr = child.stderr.take().context("stderr pipe")?;
        let deadline = start + self.timeout;
        // The input is written from a thread of its own: a loader that reads
        // slowly blocks the writer, never the clock that may kill it.
        let (written, err_text, status) = std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut buf = String::new();
                let _ = stderr.read_to_string(&mut buf);
                buf
            });
            let writer = scope.spawn(move || {
                let written = stdin.write_all(text.as_bytes());
                drop(stdin);
                written
            });
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(Some(status)),
                    Ok(None) => {}
                    Err(error) => break Err(error),
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Ok(None);
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
            (written, reader.join().unwrap_or_default(), status)
        });
        let Some(status) = status? else {
            bail!("{} killed after {:?}", argv.join(" "), self.timeout);
        };
        let elapsed = start.elapsed();
        if !status.success() {
            let first: String = err_text.lines().take(5).collect::<Vec<_>>().join(" / ");
            bail!("{} failed ({status}): {first}", argv.join(" "));
        }
        written.with_context(|| format!("write the input of {}", argv.join(" ")))?;
        Ok(elapsed)
    }

    /// Loads `text` with `backend`.
    pub fn load(&self, backend: Backend, text: &str) -> Result<Duration> {
        self.run(backend.argv(), text)
    }
}

/// Runs `f` on a thread inside namespace `ns`, pinned to `cpu` (so what it
/// starts runs there too), and returns what `f` returned. A load slower than
/// `timeout` is killed and fails.
pub fn in_netns<T: Send>(
    ns: &Netns,
    cpu: usize,
    timeout: Duration,
    f: impl FnOnce(&Loader) -> Result<T> + Send,
) -> Result<T> {
    crate::in_netns(ns, || {
        cpu::pin_this_thread(&[cpu])?;
        f(&Loader { timeout })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_types, reason = "measures the test's own wall time")]
    fn a_loader_that_stops_reading_is_killed_at_the_deadline() {
        let loader = Loader {
            timeout: Duration::from_millis(300),
        };
        // Far more than a pipe holds, to a program that never reads it.
        let text = "x".repeat(8 << 20);
        let start = std::time::Instant::now();
        let error = loader
            .run(&["sh", "-c", "exec sleep 10"], &text)
            .expect_err("the loader must be killed");
        assert!(format!("{error:#}").contains("killed after"), "{error:#}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_failing_loader_reports_its_stderr() {
        let loader = Loader {
            timeout: Duration::from_secs(10),
        };
        let error = loader
            .run(&["sh", "-c", "echo bad line 3 >&2; exit 2"], "input")
            .expect_err("exit 2 is a failure");
        assert!(format!("{error:#}").contains("bad line 3"), "{error:#}");
    }
}
