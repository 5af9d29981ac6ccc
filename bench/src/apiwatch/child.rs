//! A helper process inside a namespace that takes JSON-line commands on its
//! stdin and answers with JSON lines on its stdout; stopped by PID when the
//! guard is dropped.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_tests::Netns;

/// A running helper (see the module docs).
#[derive(Debug)]
pub struct LineChild {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    label: String,
    stderr_log: PathBuf,
}

impl LineChild {
    /// Starts `argv` in `ns` (with `ns`'s cgroup, if it has one), its stderr
    /// going to `stderr_log`.
    pub fn spawn(ns: &Netns, argv: &[OsString], label: &str, stderr_log: &Path) -> Result<Self> {
        let log =
            File::create(stderr_log).with_context(|| format!("create {}", stderr_log.display()))?;
        let mut child = ns
            .command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("in netns {}: start {label}", ns.name()))?;
        let stdin = child.stdin.take().context("stdin pipe")?;
        let stdout = child.stdout.take().context("stdout pipe")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            label: label.to_owned(),
            stderr_log: stderr_log.to_path_buf(),
        })
    }

    /// Its PID (the program's own: the namespace wrappers exec it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command.
    pub fn send<T: Serialize>(&mut self, command: &T) -> Result<()> {
        let mut line = serde_json::to_vec(command).context("serialize a command")?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("write to {}: {}", self.label, self.stderr_tail()))
    }

    /// The next event, waiting at most `timeout`; `None` if none came.
    pub fn try_recv<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<Option<T>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line).map(Some).with_context(|| {
                format!(
                    "{} printed something else than an event: {line}",
                    self.label
                )
            }),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "{} exited ({status:?}); its stderr:\n{}",
                    self.label,
                    self.stderr_tail()
                )
            }
        }
    }

    /// The next event, waiting at most `timeout`; fails if none came.
    pub fn recv<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T> {
        match self.try_recv(timeout)? {
            Some(event) => Ok(event),
            None => bail!("{} said nothing for {timeout:?}", self.label),
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        // By PID: `Child::kill` signals exactly this process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
