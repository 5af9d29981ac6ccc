//! The backend of the L7 benchmark (binary `l7-backend`): HTTP/1.1 and
//! HTTP/2 over cleartext with prior knowledge (h2c) on one port, telling the
//! two apart by the HTTP/2 preface (hyper-util's auto builder), on one tokio
//! thread.
//!
//! Every proxy under test talks to the same three of these, whatever
//! protocol it speaks upstream: nginx and HAProxy HTTP/1.1, switchyard
//! HTTP/1.1 or h2c depending on the Service's `appProtocol`. nginx as a
//! backend cannot serve both on one port, hence a server of our own.
//!
//! Two paths: `/name` answers the server's name (the setup checks with it
//! how each proxy balances the requests of one connection); anything else
//! answers [`BODY`], the small fixed response every load requests.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The body of every measured response: 3 bytes.
pub const BODY: &[u8] = b"ok\n";
/// The path that answers the server's name.
pub const NAME_PATH: &str = "/name";
/// The line the backend prints once it listens.
pub const READY: &str = "ready";
/// Streams one HTTP/2 connection may have open at once: well above what any
/// proxy multiplexes onto one upstream connection in the benchmark, so the
/// backend never makes a proxy queue (hyper's default is 200).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// What one backend serves.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The name `/name` answers with.
    pub name: String,
}

/// Serves `config` until the process is killed, on the current thread.
pub async fn serve(config: BackendConfig) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    println!("{READY}");
    let name = Bytes::from(format!("{}\n", config.name));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: the load sees refused
            // connections, the backend goes on.
            Err(error) => {
                eprintln!("accept: {error}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let body = if request.uri().path() == NAME_PATH {
                name.clone()
            } else {
                Bytes::from_static(BODY)
            };
            async move { Ok::<_, Infallible>(respond(body)) }
        });
        let builder = builder.clone();
        tokio::spawn(async move {
            // A client going away mid-request is no news.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
