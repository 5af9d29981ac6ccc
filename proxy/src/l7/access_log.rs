//! The access log: one JSON object per request, written by a task of its own so that a slow
//! disk never stalls a request. When the writer falls behind, lines are dropped and counted
//! rather than queued without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Lines waiting for the writer at most.
const QUEUE: usize = 8192;

/// A handle on the access log; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

/// One request, as logged.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Entry<'a> {
    /// RFC 3339, UTC.
    pub(crate) time: String,
    pub(crate) service: &'a str,
    pub(crate) frontend: String,
    pub(crate) client: String,
    pub(crate) method: &'a str,
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) protocol: &'static str,
    pub(crate) status: u16,
    /// The backend that answered (or the last one tried); empty when none was.
    pub(crate) backend: String,
    pub(crate) retries: u32,
    pub(crate) duration_ms: f64,
}

impl AccessLog {
    /// Starts the writer task on `out` (a file, stdout). Must be called inside a tokio runtime.
    pub fn spawn<W>(mut out: W) -> AccessLog
    where
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut batch = line;
                // Write whatever else is queued in the same call.
                while batch.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.push_str(&more),
                        Err(_) => break,
                    }
                }
                if let Err(error) = out.write_all(batch.as_bytes()).await {
                    tracing::warn!(%error, "cannot write the access log; it is off from now on");
                    return;
                }
                let _ = out.flush().await;
            }
        });
        AccessLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn write(&self, entry: &Entry<'_>) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer fell behind (or stopped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// `now` in RFC 3339 with milliseconds, UTC, from the system clock.
#[allow(
    clippy::many_single_char_names,
    clippy::cast_possible_wrap,
    reason = "the civil-from-days algorithm, with its customary names; days fit in i64"
)]
pub(crate) fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20"), "{t}");
        assert!(t.ends_with('Z'));
        assert_eq!(&t[10..11], "T");
    }

    #[tokio::test]
    async fn lines_are_json_objects() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let log = AccessLog::spawn(client);
        log.write(&Entry {
            time: rfc3339_now(),
            service: "default/web:http",
            frontend: "10.96.0.10:80".into(),
            client: "10.244.0.5:40000".into(),
            method: "GET",
            authority: "web",
            path: "/x?y=\"z\"",
            protocol: "HTTP/1.1",
            status: 200,
            backend: "10.244.1.2:8080".into(),
            retries: 1,
            duration_ms: 0.25,
        });
        let mut buf = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut server, &mut buf)
            .await
            .unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/x?y=\"z\"");
        assert_eq!(v["retries"], 1);
        assert_eq!(log.dropped(), 0);
    }
}
