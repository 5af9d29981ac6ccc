//! The pod server's HTTP/1.1-and-h2c listener (hyper, told apart by the HTTP/2 preface), for
//! the L7 tests: every answer says which pod sent it, and a few paths misbehave on purpose.
//! The same answers can be served behind TLS ([`serve_with`], [`tls_config`]: ALPN `h2` and
//! `http/1.1`), for the proxy's TLS origination.
//!
//! - `/` (and any other path): `200` (or `--h2-status`), body `NAME\n`, header `X-Pod: NAME`;
//! - `/status/N`: status `N`, same body;
//! - `/slow/MS`: answers after `MS` milliseconds;
//! - `/headers`: the request's headers as `name: value` lines (to see what the proxy added);
//! - `/peer`: the client's address as this server saw it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Serves every connection of `listener` until the process ends.
pub async fn serve(listener: TcpListener, name: Arc<str>, status: u16) -> anyhow::Result<()> {
    serve_with(listener, name, status, None).await
}

/// A TLS server configuration from PEM files (a certificate chain and its key), offering
/// `h2` and `http/1.1` by ALPN.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("read {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// As [`serve`], behind TLS when `tls` is given.
pub async fn serve_with(
    listener: TcpListener,
    name: Arc<str>,
    status: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                eprintln!("accept: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let name = Arc::clone(&name);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| answer(req, Arc::clone(&name), peer, status));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(config) => {
                    match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                        Ok(stream) => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                        Err(error) => {
                            eprintln!("TLS handshake with {peer}: {error}");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = served {
                eprintln!("h2 connection from {peer}: {error}");
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    peer: SocketAddr,
    default_status: StatusCode,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut status = default_status;
    let mut body = format!("{name}\n");
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    } else if path == "/headers" {
        body = String::new();
        for (k, v) in req.headers() {
            body.push_str(k.as_str());
            body.push_str(": ");
            body.push_str(&String::from_utf8_lossy(v.as_bytes()));
            body.push('\n');
        }
    } else if path == "/peer" {
        body = format!("{peer}\n");
    }
    // Read the request body whole, as a real server would.
    let _ = req.into_body().collect().await;
    let response = Response::builder()
        .status(status)
        .header("x-pod", &*name)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(response)
}
