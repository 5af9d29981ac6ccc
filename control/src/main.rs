//! The `switchyard` binary: parses the command line, sets up logging and the runtime, and
//! hands over to the library.

use clap::Parser;
use switchyard_control::cli::{Cli, Command, LogFormat, Output};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: the L7 proxy allocates and frees small buffers on
/// every request, where glibc's arenas cost several percent of a core.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Structured logs on stderr; verbosity as kube-proxy's `--v`, `RUST_LOG` overrides.
fn init_logging(verbosity: u8, format: LogFormat) {
    let level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    // kube's client logs each failed request as an error; switchyard logs the failed watch
    // itself, once, with what it does about it.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},kube_client::client::builder=off")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    switchyard_control::controller::mark_process_start();
    let cli = Cli::parse();
    // Capabilities are per thread and inherited: the daemon drops what it does not need
    // here, before the runtime makes its threads.
    let privileges = match &cli.command {
        Command::Run(args) if !args.keep_capabilities => {
            let keep =
                switchyard_control::privileges::needed(args.proxy_mode, args.close_stale_sockets);
            Some(switchyard_control::privileges::drop_all_but(
                &keep,
                args.proxy_mode,
            )?)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => {
            init_logging(args.verbosity, args.log_format);
            match privileges {
                Some(dropped) => tracing::info!(
                    kept = ?dropped.kept,
                    dropped = dropped.dropped.len(),
                    bounding_set_lowered = dropped.bounding,
                    "capabilities dropped but those needed"
                ),
                None => tracing::warn!("--keep-capabilities: every capability kept"),
            }
            let config = args.daemon_config();
            runtime.block_on(switchyard_control::daemon::run(config))?;
        }
        Command::Apiserver(args) => {
            init_logging(args.verbosity, LogFormat::Text);
            runtime.block_on(async {
                let running = switchyard_apiserver::start(args.config()).await?;
                tracing::info!(
                    address = %running.local_addr(),
                    kubeconfig = %running.kubeconfig_path().display(),
                    "API server serving; clients use the kubeconfig"
                );
                let mut sigterm =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                running.shutdown().await;
                anyhow::Ok(())
            })?;
        }
        Command::Cleanup(args) => {
            let cgroup = args
                .cgroup_path
                .unwrap_or_else(switchyard_control::cli::default_cgroup_path);
            switchyard_ebpf::cleanup(&args.bpf_pin_path, &cgroup)?;
            switchyard_ebpf::cleanup_clsact(&args.devices);
            println!(
                "removed switchyard's eBPF state from {} (cgroup {})",
                args.bpf_pin_path.display(),
                cgroup.display()
            );
        }
        Command::Repair(args) => {
            let report = runtime.block_on(switchyard_control::admin::repair(&args.admin_socket))?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!("{}", switchyard_control::admin::render(&report)),
            }
        }
        Command::Services(args) => {
            let views =
                runtime.block_on(switchyard_control::services::fetch(args.metrics_address))?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&views)?),
                Output::Table => {
                    let mode = runtime.block_on(switchyard_control::services::fetch_mode(
                        args.metrics_address,
                    ))?;
                    println!("proxy mode: {mode}");
                    print!("{}", switchyard_control::services::render_table(&views));
                }
            }
        }
    }
    Ok(())
}
