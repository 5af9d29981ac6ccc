//! Waiting for a condition by polling, instead of sleeping a fixed time.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often [`poll_until`] checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` every 50 ms until it returns `Ok(Some(value))`, and returns
/// that value; fails after `timeout`, naming `what` and the last error
/// `check` returned (an `Err` from `check` is retried, not fatal).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!("timed out after {timeout:?} waiting for {what}: {error:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
