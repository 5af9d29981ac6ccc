//! What the integration tests share: a temporary data directory, an in-process server, a
//! Rust client (hyper over rustls, trusting the server's CA) and kubectl.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use switchyard_apiserver::{ApiServerConfig, RunningApiServer};

/// A directory removed when the guard drops.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "switchyard-apiserver-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn config(dir: &Path) -> ApiServerConfig {
    ApiServerConfig {
        data_dir: dir.to_owned(),
        bind_address: SocketAddr::from(([127, 0, 0, 1], 0)),
        bookmark_interval: Duration::from_millis(300),
        ..ApiServerConfig::default()
    }
}

/// A server in this process with its data directory.
pub struct Server {
    pub server: Option<RunningApiServer>,
    pub client: Client,
    pub dir: TempDir,
}

impl Server {
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new(name);
        Self::start_with(dir, |c| c).await
    }

    pub async fn start_with(
        dir: TempDir,
        tweak: impl FnOnce(ApiServerConfig) -> ApiServerConfig,
    ) -> anyhow::Result<Self> {
        let server = switchyard_apiserver::start(tweak(config(&dir.0))).await?;
        let client = Client::new(server.local_addr(), server.ca_pem(), server.token())?;
        Ok(Self {
            server: Some(server),
            client,
            dir,
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.0.join("kubeconfig")
    }

    /// Runs kubectl against this server; returns stdout, fails on a non-zero exit.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_output(args, None).await?;
        if !out.0 {
            bail!("kubectl {args:?} failed: {}", out.2);
        }
        Ok(out.1)
    }

    /// Runs kubectl with optional stdin; returns (success, stdout, stderr).
    pub async fn kubectl_output(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<(bool, String, String)> {
        let kubeconfig = self.kubeconfig();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let stdin = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(&args)
                .env("HOME", kubeconfig.parent().unwrap_or(Path::new("/tmp")))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("running kubectl")?;
            let mut pipe = child.stdin.take().context("stdin")?;
            if let Some(s) = stdin {
                pipe.write_all(s.as_bytes())?;
            }
            drop(pipe);
            let out = child.wait_with_output()?;
            Ok((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        })
        .await?
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A client that opens a TLS connection per request (and one per watch).
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    pub token: String,
}

pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Client {
    pub fn new(addr: SocketAddr, ca_pem: &str, token: &str) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            token: token.to_owned(),
        })
    }

    pub fn with_token(&self, token: &str) -> Self {
        let mut c = self.clone();
        c.token = token.to_owned();
        c
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let tls = self
            .tls
            .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("json"))
            .unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        // An empty token sends no credentials at all.
        if !self.token.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.token));
        }
        let req = req
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        Ok(sender.send_request(req).await?)
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Response> {
        let resp = self.send(method, path, content_type, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} {path}: {}", String::from_utf8_lossy(&bytes)))?
        };
        Ok(Response { status, body })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.request("GET", path, "application/json", None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Response> {
        self.request("POST", path, "application/json", Some(body))
            .await
    }
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Response> {
        self.request("PUT", path, "application/json", Some(body))
            .await
    }
    pub async fn patch(&self, path: &str, kind: &str, body: &Value) -> anyhow::Result<Response> {
        self.request("PATCH", path, kind, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> anyhow::Result<Response> {
        self.request("DELETE", path, "application/json", None).await
    }

    /// Opens a watch; events arrive one JSON object at a time.
    pub async fn watch(&self, path: &str) -> anyhow::Result<Watch> {
        let resp = self.send("GET", path, "application/json", None).await?;
        if resp.status() != 200 {
            bail!("watch {path}: {}", resp.status());
        }
        Ok(Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

pub struct Watch {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, or `None` when the stream ends; fails after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=pos).collect();
                    return Ok(Some(serde_json::from_slice(&line)?));
                }
                match self.body.frame().await {
                    None => return Ok(None),
                    Some(frame) => {
                        if let Ok(data) = frame?.into_data() {
                            self.buf.extend_from_slice(&data);
                        }
                    }
                }
            }
        })
        .await
        .context("timed out waiting for a watch event")?
    }

    /// The next event that is not a bookmark.
    pub async fn next_change(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        loop {
            let e = self.next(timeout).await?.context("watch ended")?;
            if e["type"] != "BOOKMARK" {
                return Ok(e);
            }
        }
    }
}

pub fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Polls `f` until it returns `Some`, for up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
