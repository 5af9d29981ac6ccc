//! Runs the embedded API server on its own, for trying it with kubectl:
//! `cargo run -p switchyard-apiserver --example apiserver -- DATA_DIR [127.0.0.1:6443]`,
//! then `kubectl --kubeconfig DATA_DIR/kubeconfig get ns`. Prints `serving ADDR KUBECONFIG`
//! once it accepts connections; stops on Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use switchyard_apiserver::ApiServerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let data_dir = PathBuf::from(args.next().context("usage: apiserver DATA_DIR [ADDR]")?);
    let mut config = ApiServerConfig {
        data_dir,
        ..ApiServerConfig::default()
    };
    if let Some(addr) = args.next() {
        config.bind_address = addr.parse().context("bind address")?;
    }
    let server = switchyard_apiserver::start(config).await?;
    println!(
        "serving {} {}",
        server.local_addr(),
        server.kubeconfig_path().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
