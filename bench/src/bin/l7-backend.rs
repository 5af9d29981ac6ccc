//! `l7-backend`: the backend of the `l7` benchmark, HTTP/1.1 and h2c on one
//! port, one thread. Prints `ready` once it listens. See
//! `switchyard_bench::l7::backend`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;
use switchyard_bench::l7::backend::{self, BackendConfig};

#[derive(Debug, Parser)]
#[command(
    about = "Serve a tiny HTTP/1.1 and h2c response on one port (the l7 benchmark's backend)"
)]
struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// The name `/name` answers with.
    #[arg(long)]
    name: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    runtime.block_on(backend::serve(BackendConfig {
        listen: args.listen,
        name: args.name,
    }))
}
