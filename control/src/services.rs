//! `switchyard services`: reads `/services` from a running daemon and prints it.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::datapath::FrontendView;

/// Why the daemon's table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(
        "cannot reach the switchyard daemon at {addr} (is it running? see --metrics-address): {source}"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("request to {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("{addr} answered {status}")]
    Status {
        addr: SocketAddr,
        status: hyper::StatusCode,
    },
    #[error("{addr} sent a table that does not parse: {source}")]
    Parse {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// GETs `path` from the daemon's metrics address.
async fn get(addr: SocketAddr, path: &str) -> Result<Bytes, ServicesError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ServicesError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ServicesError::Http { addr, source })?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a request built from a path is valid");
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| ServicesError::Http { addr, source })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|source| ServicesError::Http { addr, source })?
        .to_bytes();
    if !status.is_success() {
        return Err(ServicesError::Status { addr, status });
    }
    Ok(body)
}

/// Fetches the daemon's frontends (in eBPF mode, as read back from the kernel's maps).
pub async fn fetch(addr: SocketAddr) -> Result<Vec<FrontendView>, ServicesError> {
    let body = get(addr, "/services").await?;
    serde_json::from_slice(&body).map_err(|source| ServicesError::Parse { addr, source })
}

/// Fetches the daemon's proxy mode (`ebpf` or `userspace`).
pub async fn fetch_mode(addr: SocketAddr) -> Result<String, ServicesError> {
    let body = get(addr, "/proxyMode").await?;
    Ok(String::from_utf8_lossy(&body).trim().to_owned())
}

/// Renders the frontends as an aligned table, one line per backend.
pub fn render_table(views: &[FrontendView]) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "SERVICE".into(),
        "FRONTEND".into(),
        "ALGORITHM".into(),
        "BACKEND".into(),
        "STATE".into(),
        "ACTIVE".into(),
        "TOTAL".into(),
    ]];
    for view in views {
        // North-south frontends say which kind they are; ClusterIPs are the usual case.
        let frontend = match view.kind.as_str() {
            "" | "ClusterIP" => view.frontend.clone(),
            kind => format!("{} ({kind})", view.frontend),
        };
        let algorithm = match view.affinity_seconds {
            Some(s) => format!("{} (ClientIP {s}s)", view.algorithm),
            None => view.algorithm.clone(),
        };
        if view.backends.is_empty() {
            let state = if view.listening {
                "no backends (drop)"
            } else {
                "no backends (reject)"
            };
            rows.push([
                view.service.clone(),
                frontend.clone(),
                algorithm,
                "-".into(),
                state.into(),
                "0".into(),
                "0".into(),
            ]);
            continue;
        }
        for (i, backend) in view.backends.iter().enumerate() {
            let (service, frontend, algorithm) = if i == 0 {
                (view.service.clone(), frontend.clone(), algorithm.clone())
            } else {
                (String::new(), String::new(), String::new())
            };
            rows.push([
                service,
                frontend,
                algorithm,
                backend.backend.clone(),
                backend.state.clone(),
                backend.connections_active.to_string(),
                backend.connections_total.to_string(),
            ]);
        }
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
