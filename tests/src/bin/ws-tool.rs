//! `ws-tool`: a WebSocket echo server and client for the end-to-end tests of
//! switchyard's L7 proxy, which must pass an HTTP/1.1 `Upgrade: websocket`
//! through to one backend and then relay the upgraded stream both ways.
//!
//! - `ws-tool server --name NAME --listen ADDR` answers every text message `m`
//!   with `NAME:m`, on any path. Prints `ready` on stdout once listening.
//! - `ws-tool client --url ws://IP:PORT/path --messages K` sends `m0`..`m{K-1}`,
//!   reads K answers and prints `{"answers": [...]}`. It exits nonzero, with
//!   the error on stderr, if the handshake fails or an answer is missing
//!   within 5 s.
//!
//! It never talks to anything but the addresses it is given.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The limit on the handshake and on each answer.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(about = "A WebSocket echo server and client for switchyard's end-to-end tests")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Debug, Subcommand)]
enum Command {
    /// Answer every text message `m` with `NAME:m`.
    Server(ServerConfig),
    /// Send K text messages and print the answers as JSON.
    Client(ClientConfig),
}

#[derive(Clone, Debug, clap::Args)]
struct ServerConfig {
    /// The pod's name, put before every answer.
    #[arg(long)]
    name: String,
    /// The address to listen on, e.g. `0.0.0.0:8080` or `[::]:8080`.
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(Clone, Debug, clap::Args)]
struct ClientConfig {
    /// The WebSocket URL, e.g. `ws://10.96.0.10:80/chat`.
    #[arg(long)]
    url: String,
    /// How many messages to send.
    #[arg(long, default_value_t = 1)]
    messages: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.command {
        Command::Server(config) => runtime.block_on(serve(config)),
        Command::Client(config) => runtime.block_on(run_client(config)),
    }
}

async fn serve(config: ServerConfig) -> Result<()> {
    let listener = switchyard_tests::sockets::tcp_listener(config.listen)?;
    let name: Arc<str> = Arc::from(config.name.as_str());
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    loop {
        let (stream, peer) = listener
            .accept()
            .await
            .with_context(|| format!("accept on {}", config.listen))?;
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = echo(stream, &name).await {
                eprintln!("ws-tool server: {peer}: {e:#}");
            }
        });
    }
}

/// Serves one connection until the peer closes it. Pings are answered by
/// tungstenite itself.
async fn echo(stream: TcpStream, name: &str) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut ws = tokio::time::timeout(TIMEOUT, tokio_tungstenite::accept_async(stream))
        .await
        .map_err(|_| anyhow!("handshake timed out"))?
        .context("handshake")?;
    while let Some(message) = ws.next().await {
        match message.context("read")? {
            Message::Text(text) => {
                ws.send(Message::text(format!("{name}:{}", text.as_str())))
                    .await
                    .context("write")?;
            }
            Message::Close(_) => break,
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}

async fn run_client(config: ClientConfig) -> Result<()> {
    let (mut ws, _response) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(config.url.as_str()),
    )
    .await
    .map_err(|_| anyhow!("handshake with {}: timed out after {TIMEOUT:?}", config.url))?
    .with_context(|| format!("handshake with {}", config.url))?;
    for i in 0..config.messages {
        ws.send(Message::text(format!("m{i}")))
            .await
            .with_context(|| format!("send m{i}"))?;
    }
    let mut answers = Vec::with_capacity(config.messages);
    while answers.len() < config.messages {
        let missing = || format!("answer {} of {}", answers.len() + 1, config.messages);
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow!("{}: none within {TIMEOUT:?}", missing()))?;
        match message {
            None => bail!("{}: connection closed", missing()),
            Some(Err(e)) => return Err(e).with_context(missing),
            Some(Ok(Message::Text(text))) => answers.push(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                bail!("{}: server closed the connection ({frame:?})", missing())
            }
            Some(Ok(
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
            )) => {}
        }
    }
    // Best effort: the answers are in, a failed goodbye changes nothing.
    let _ = tokio::time::timeout(TIMEOUT, ws.close(None)).await;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", json!({ "answers": answers }))?;
    stdout.flush()?;
    Ok(())
}
