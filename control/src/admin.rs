//! The admin socket: a Unix socket (root's alone, mode 0600) on which a running daemon takes
//! requests that change what it does, as opposed to the read-only metrics address. It serves:
//! - `POST /repair`, which checks the datapath against the wanted state at once and answers
//!   with what it repaired; `switchyard repair` is its client;
//! - `POST /handover`, from the next instance (an upgrade): that one found this socket
//!   answering when it started, bound the same listeners (`SO_REUSEPORT`) and programmed its
//!   first view; this one then closes its listeners, stops programming, lets its open
//!   connections finish and leaves the VIPs in place, and answers once its listeners are
//!   closed. [`Predecessor`] is the successor's side.

use std::convert::Infallible;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::controller::{CheckNow, CheckOutcome};

/// The default path of the admin socket.
pub const DEFAULT_SOCKET: &str = "/run/switchyard/admin.sock";

/// How long a `POST /repair` waits for the controller (which may be busy with a large sync),
/// and a `POST /handover` for the daemon to close its listeners.
const REPAIR_TIMEOUT: Duration = Duration::from_mins(1);

/// A successor's request to take over, answered once this instance's listeners are closed.
#[derive(Debug)]
pub struct Handover {
    pub reply: oneshot::Sender<()>,
}

/// Where the admin socket's requests go.
#[derive(Clone, Debug)]
pub struct Requests {
    /// Checks of the datapath (to the controller).
    pub checks: mpsc::Sender<CheckNow>,
    /// Handovers to a successor (to the daemon's shutdown).
    pub handovers: mpsc::Sender<Handover>,
}

/// The body of a `POST /repair` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Each difference between the wanted and the programmed state that was repaired.
    pub repaired: Vec<String>,
}

/// Why the admin socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on the admin socket {path}: {source}")]
pub struct BindError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Binds the admin socket at `path`: its folder is made (mode 0700) if missing, a socket left
/// by an earlier instance is replaced, and the socket is made readable by its owner alone.
/// Anything else at `path` is an error, never removed.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let fail = |source| BindError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(fail)?,
        Ok(_) => {
            return Err(fail(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(fail(error)),
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

/// How long the admin socket's open connections may take to finish once it is cancelled.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves HTTP/1.1 on the admin socket until cancelled; each request goes to `requests`. Once
/// cancelled, answers being written are finished (a successor's handover answer, which the
/// daemon sends just before it exits) and idle connections closed, for up to 2 s.
pub async fn serve(listener: UnixListener, requests: Requests, cancel: CancellationToken) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "admin socket accept failed");
                continue;
            }
        };
        let requests = requests.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let requests = requests.clone();
                async move { Ok::<_, Infallible>(route(&requests, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "admin socket connection failed");
            }
        });
    }
    connections.close();
    if tokio::time::timeout(CLOSE_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("admin socket connections still open at exit");
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

async fn route(requests: &Requests, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path != "/repair" && path != "/handover" {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    if request.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    if path == "/handover" {
        return hand_over(&requests.handovers).await;
    }
    let (reply, outcome) = oneshot::channel();
    if requests
        .checks
        .send(CheckNow { reply: Some(reply) })
        .await
        .is_err()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    match tokio::time::timeout(REPAIR_TIMEOUT, outcome).await {
        Ok(Ok(CheckOutcome::Checked { repaired })) => {
            tracing::info!(repaired = repaired.len(), "datapath checked on request");
            json(
                StatusCode::OK,
                &serde_json::json!(RepairReport { repaired }),
            )
        }
        Ok(Ok(CheckOutcome::NotSynced)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the first complete view of the cluster has not arrived yet; nothing to check against",
        ),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the controller did not answer within 60 s",
        ),
    }
}

/// Answers a successor once the listeners are closed.
async fn hand_over(handovers: &mpsc::Sender<Handover>) -> Response<Full<Bytes>> {
    let (reply, closed) = oneshot::channel();
    if handovers.send(Handover { reply }).await.is_err() {
        return error(
            StatusCode::CONFLICT,
            "already handed over to another instance",
        );
    }
    match tokio::time::timeout(REPAIR_TIMEOUT, closed).await {
        Ok(Ok(())) => json(StatusCode::OK, &serde_json::json!({ "listening": false })),
        Ok(Err(_)) => error(
            StatusCode::CONFLICT,
            "already handed over to another instance",
        ),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the listeners were not closed within 60 s",
        ),
    }
}

/// The instance that answered on the admin socket when this one started: the one this
/// instance takes over from once it has programmed its first view.
pub struct Predecessor {
    path: PathBuf,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Predecessor {
    /// Connects to the daemon on `path`, if one answers there (before this instance replaces
    /// the socket with its own). Nothing there, or a socket left by a stopped instance: `None`.
    pub async fn find(path: &Path) -> Option<Predecessor> {
        let stream = UnixStream::connect(path).await.ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(Predecessor {
            path: path.to_path_buf(),
            sender,
        })
    }

    /// Asks it to close its listeners and leave the node to this instance; returns once it has.
    pub async fn hand_over(mut self) -> Result<(), AdminError> {
        let request = Request::post("/handover")
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .expect("a request built from constants is valid");
        let (status, body) = send(&self.path, &mut self.sender, request).await?;
        refused(status, &body)
    }
}

/// Sends `request` and reads the whole answer.
async fn send(
    path: &Path,
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, Bytes), AdminError> {
    let http = |source| AdminError::Http {
        path: path.to_path_buf(),
        source,
    };
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    Ok((status, body))
}

/// An error answer as [`AdminError::Refused`] with its message.
fn refused(status: StatusCode, body: &[u8]) -> Result<(), AdminError> {
    if status.is_success() {
        return Ok(());
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    Err(AdminError::Refused { status, message })
}

/// Why a request on the admin socket failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot reach the switchyard daemon at {path} (is it running? see --admin-socket): {source}"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("request to {path} failed: {source}")]
    Http {
        path: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("the daemon refused: {message} ({status})")]
    Refused { status: StatusCode, message: String },
    #[error("the daemon's answer does not parse: {0}")]
    Parse(#[source] serde_json::Error),
}

/// Asks the daemon on `path` to check its datapath now; returns what it repaired.
pub async fn repair(path: &Path) -> Result<RepairReport, AdminError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| AdminError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| AdminError::Http {
            path: path.to_path_buf(),
            source,
        })?;
    tokio::spawn(connection);
    let request = Request::post("/repair")
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .expect("a request built from constants is valid");
    let (status, body) = send(path, &mut sender, request).await?;
    refused(status, &body)?;
    serde_json::from_slice(&body).map_err(AdminError::Parse)
}

/// `switchyard repair`'s text: one line per repair, or a line saying there was none.
pub fn render(report: &RepairReport) -> String {
    if report.repaired.is_empty() {
        return "datapath checked: nothing to repair\n".to_owned();
    }
    let mut out = format!(
        "datapath checked: {} difference(s) repaired\n",
        report.repaired.len()
    );
    for line in &report.repaired {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_in(dir: &Path) -> PathBuf {
        dir.join("run").join("admin.sock")
    }

    #[tokio::test]
    async fn repair_round_trips_through_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(dir.path());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the socket is its owner's alone");
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);

        let (checks, mut asked) = mpsc::channel(1);
        let (handovers, _unused) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Requests { checks, handovers },
            cancel.clone(),
        ));
        // The controller's side: not synced first, then one repair.
        tokio::spawn(async move {
            let mut outcomes = vec![
                CheckOutcome::NotSynced,
                CheckOutcome::Checked {
                    repaired: vec!["frontend 10.96.0.1:80/TCP reprogrammed".to_owned()],
                },
            ]
            .into_iter();
            while let Some(check) = asked.recv().await {
                let outcome = outcomes.next().expect("two checks asked");
                check
                    .reply
                    .expect("a reply is wanted")
                    .send(outcome)
                    .unwrap();
            }
        });

        match repair(&path).await {
            Err(AdminError::Refused { status, message }) => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                assert!(message.contains("has not arrived"), "{message}");
            }
            other => panic!("expected a refusal before the first sync, got {other:?}"),
        }
        let report = repair(&path).await.unwrap();
        assert_eq!(
            report.repaired,
            vec!["frontend 10.96.0.1:80/TCP reprogrammed".to_owned()]
        );
        assert!(render(&report).contains("1 difference(s) repaired"));
        cancel.cancel();
    }

    /// The successor's side: it finds the running instance before replacing its socket, and
    /// its handover is answered once the daemon says its listeners are closed; one handover.
    #[tokio::test]
    async fn a_successor_finds_its_predecessor_and_takes_over_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(dir.path());
        assert!(Predecessor::find(&path).await.is_none(), "nothing there");
        let listener = bind(&path).unwrap();
        let (checks, _asked) = mpsc::channel(1);
        let (handovers, mut asked) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Requests { checks, handovers },
            cancel.clone(),
        ));
        let first = Predecessor::find(&path).await.expect("the daemon answers");
        let second = Predecessor::find(&path).await.expect("the daemon answers");
        // The successor replaces the socket; the connection it keeps still reaches the daemon.
        bind(&path).unwrap();
        let daemon = tokio::spawn(async move {
            let handover = asked.recv().await.expect("a handover is asked");
            // Only one: the daemon stops listening for more.
            drop(asked);
            handover.reply.send(()).unwrap();
        });
        first.hand_over().await.expect("handed over");
        daemon.await.unwrap();
        match second.hand_over().await {
            Err(AdminError::Refused { status, message }) => {
                assert_eq!(status, StatusCode::CONFLICT);
                assert!(message.contains("already handed over"), "{message}");
            }
            other => panic!("a second handover must be refused, got {other:?}"),
        }
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_in(dir.path());
        let first = bind(&path).unwrap();
        drop(first);
        // An earlier instance's socket file is still there, and nothing answers on it.
        assert!(path.exists());
        assert!(Predecessor::find(&path).await.is_none());
        bind(&path).expect("a stale socket is replaced");

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        let error = bind(&file).unwrap_err().to_string();
        assert!(error.contains("not a socket"), "{error}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn an_absent_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = repair(&dir.path().join("none.sock"))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("is it running?"), "{error}");
    }

    #[test]
    fn render_names_each_repair() {
        assert_eq!(
            render(&RepairReport { repaired: vec![] }),
            "datapath checked: nothing to repair\n"
        );
        let text = render(&RepairReport {
            repaired: vec!["a".into(), "b".into()],
        });
        assert_eq!(
            text,
            "datapath checked: 2 difference(s) repaired\n  a\n  b\n"
        );
    }
}
