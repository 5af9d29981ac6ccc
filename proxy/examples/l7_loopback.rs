//! A profiling aid: one L7 frontend of `switchyard-proxy` on loopback in front of the
//! backends given, on one tokio worker, until killed.
//!
//! `cargo run --release -p switchyard-proxy --example l7_loopback -- 127.0.0.1:18000 h1|h2 BACKEND...`

use std::net::SocketAddr;

use switchyard_proxy::l7::{L7Spec, RequestBalancer, UpstreamProtocol};
use switchyard_proxy::{BackendSpec, Proto, Proxy, ProxyConfig, ServiceSpec};

// As the `switchyard` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let frontend: SocketAddr = args
        .next()
        .expect("frontend")
        .parse()
        .expect("frontend address");
    let upstream = match args.next().as_deref() {
        Some("h2") => UpstreamProtocol::Http2,
        _ => UpstreamProtocol::Http1,
    };
    let backends: Vec<BackendSpec> = args
        .map(|a| BackendSpec::ready(a.parse().expect("backend address")))
        .collect();
    // SY_RUNTIME=current: a current-thread runtime instead of one multi-thread worker.
    let runtime = if std::env::var("SY_RUNTIME").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        b
    }
    .enable_all()
    .build()
    .expect("runtime");
    runtime.block_on(async {
        // SY_L7_THREADS=N: N L7 threads of their own, as the daemon's `--l7-threads`.
        let l7_threads = std::env::var("SY_L7_THREADS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let proxy = Proxy::new(ProxyConfig {
            l7_threads,
            ..ProxyConfig::default()
        });
        let spec = ServiceSpec {
            name: "bench/web:http".into(),
            backends,
            l7: Some(L7Spec {
                upstream,
                balancer: RequestBalancer::RoundRobin,
                ..L7Spec::default()
            }),
            ..ServiceSpec::default()
        };
        proxy
            .upsert(frontend, Proto::Tcp, spec)
            .await
            .expect("frontend");
        println!("ready");
        std::future::pending::<()>().await;
    });
}
