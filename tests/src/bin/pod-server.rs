//! `pod-server`: the backend that runs inside each test pod.
//!
//! `pod-server --name NAME [--http ADDR]... [--udp ADDR]...`
//!
//! - HTTP/1.1 on every `--http` address: any request gets `200 OK` with body
//!   `NAME\n`; `/bytes/N` answers N bytes of body (for bulk transfers);
//!   `/peer` answers the client's address as the server saw it. Keep-alive is
//!   honoured, as is `Connection: close`. Every response carries `X-Pod: NAME`.
//! - UDP on every `--udp` address: each datagram is echoed back prefixed with
//!   `NAME ` so the client sees which pod answered.
//!
//! IPv6 sockets are bound `IPV6_V6ONLY`, so `0.0.0.0:8080` and `[::]:8080`
//! can be served side by side. Prints `ready` on stdout once every socket is
//! bound. It never talks to anything but the peers that reach it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use socket2::{Protocol, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[derive(Clone, Debug, Parser)]
#[command(about = "A tiny HTTP and UDP backend for switchyard's end-to-end tests")]
struct Args {
    /// The pod's name, returned in every answer.
    #[arg(long)]
    name: String,
    /// An address to serve HTTP/1.1 on, e.g. `0.0.0.0:8080` or `[::]:8080`.
    #[arg(long = "http")]
    http: Vec<SocketAddr>,
    /// An address to echo UDP datagrams on.
    #[arg(long = "udp")]
    udp: Vec<SocketAddr>,
    /// An address to serve HTTP/1.1 and HTTP/2 with prior knowledge on (hyper; see
    /// `switchyard_tests::h2_backend` for its paths).
    #[arg(long = "h2")]
    h2: Vec<SocketAddr>,
    /// The status the `--h2` listeners answer `/` with (a failing pod: 503).
    #[arg(long, default_value_t = 200)]
    h2_status: u16,
    /// An address to serve the `--h2` answers on behind TLS (ALPN `h2` and `http/1.1`),
    /// with `--tls-cert` and `--tls-key`.
    #[arg(long = "https", requires_all = ["tls_cert", "tls_key"])]
    https: Vec<SocketAddr>,
    /// The PEM certificate chain of the `--https` listeners.
    #[arg(long)]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of the `--https` listeners.
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
}

/// Requests larger than this (head only) are refused: the tests never send one.
const MAX_HEAD: usize = 64 * 1024;

/// The body bytes of `/bytes/N`, written a chunk at a time.
static FILL: [u8; 64 * 1024] = [b'x'; 64 * 1024];

fn main() -> Result<()> {
    let args = Args::parse();
    if args.http.is_empty() && args.udp.is_empty() && args.h2.is_empty() && args.https.is_empty() {
        bail!("nothing to serve: give at least one --http, --h2, --https or --udp address");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let name: Arc<str> = Arc::from(args.name.as_str());
    let mut tasks = tokio::task::JoinSet::new();
    for addr in &args.http {
        let listener = switchyard_tests::sockets::tcp_listener(*addr)?;
        tasks.spawn(accept_loop(listener, name.clone()));
    }
    for addr in &args.h2 {
        let listener = switchyard_tests::sockets::tcp_listener(*addr)?;
        tasks.spawn(switchyard_tests::h2_backend::serve(
            listener,
            name.clone(),
            args.h2_status,
        ));
    }
    if let (false, Some(cert), Some(key)) = (args.https.is_empty(), &args.tls_cert, &args.tls_key) {
        let config = switchyard_tests::h2_backend::tls_config(cert, key)?;
        for addr in &args.https {
            let listener = switchyard_tests::sockets::tcp_listener(*addr)?;
            tasks.spawn(switchyard_tests::h2_backend::serve_with(
                listener,
                name.clone(),
                args.h2_status,
                Some(Arc::clone(&config)),
            ));
        }
    }
    for addr in &args.udp {
        let socket = switchyard_tests::sockets::bind(*addr, Type::DGRAM, Protocol::UDP)?;
        let socket = UdpSocket::from_std(socket.into())?;
        tasks.spawn(udp_echo(socket, name.clone()));
    }
    println!("ready");
    // Rust's stdout is line-buffered only on a terminal; the tests read a file.
    std::io::Write::flush(&mut std::io::stdout())?;
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, name: Arc<str>) -> Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                eprintln!("accept: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, peer, &name).await {
                eprintln!("connection from {peer}: {error}");
            }
        });
    }
}

/// One parsed request head.
struct Request {
    path: String,
    close: bool,
    body_len: usize,
}

fn parse_head(head: &[u8]) -> Result<Request> {
    let text = std::str::from_utf8(head).context("request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(_method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("bad request line {request_line:?}");
    };
    let mut close = version != "HTTP/1.1";
    let mut body_len = 0;
    for line in lines {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        } else if key.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().context("bad Content-Length")?;
        } else if key.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked request bodies are not supported");
        }
    }
    Ok(Request {
        path: path.to_owned(),
        close,
        body_len,
    })
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, name: &str) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Read until a whole head is buffered.
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEAD {
                bail!("request head larger than {MAX_HEAD} bytes");
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let request = parse_head(&buf[..head_end])?;
        buf.drain(..head_end);
        // Discard the request body.
        let mut remaining = request.body_len;
        let buffered = remaining.min(buf.len());
        buf.drain(..buffered);
        remaining -= buffered;
        while remaining > 0 {
            let want = remaining.min(chunk.len());
            let n = stream.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Ok(());
            }
            remaining -= n;
        }

        let connection = if request.close { "close" } else { "keep-alive" };
        if let Some(count) = request.path.strip_prefix("/bytes/") {
            let count: u64 = count.parse().context("bad /bytes/N")?;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {count}\r\nX-Pod: {name}\r\nConnection: {connection}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            let mut left = count;
            while left > 0 {
                let n = left.min(FILL.len() as u64) as usize;
                stream.write_all(&FILL[..n]).await?;
                left -= n as u64;
            }
        } else {
            let body = if request.path == "/peer" {
                format!("{peer}\n")
            } else {
                format!("{name}\n")
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Pod: {name}\r\nConnection: {connection}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await?;
        }
        if request.close {
            stream.shutdown().await?;
            return Ok(());
        }
    }
}

async fn udp_echo(socket: UdpSocket, name: Arc<str>) -> Result<()> {
    let prefix = format!("{name} ");
    let mut buf = vec![0u8; 65536];
    let mut reply = Vec::with_capacity(65536 + prefix.len());
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        reply.clear();
        reply.extend_from_slice(prefix.as_bytes());
        reply.extend_from_slice(&buf[..n]);
        if let Err(error) = socket.send_to(&reply, peer).await {
            eprintln!("udp reply to {peer}: {error}");
        }
    }
}
