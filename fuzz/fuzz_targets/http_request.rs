//! The L7 request path: arbitrary bytes sent by a client to an L7 frontend (HTTP/1.1, or
//! HTTP/2 when they start with the h2c preface) in front of one backend, on loopback. The
//! proxy must never panic (a panic in any of its tasks aborts the process, which libFuzzer
//! reports) and must stay able to serve the next client.
#![no_main]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_proxy::l7::{L7Spec, RequestBalancer, UpstreamProtocol};
use switchyard_proxy::{BackendSpec, Proto, Proxy, ProxyConfig, ServiceSpec};

/// A free loopback port (bound, then released for the proxy to take).
fn free_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The frontend's address, set up once: a backend that reads each request's body and
/// answers, and the L7 frontend in front of it, on a runtime of their own.
fn frontend() -> SocketAddr {
    static FRONTEND: OnceLock<SocketAddr> = OnceLock::new();
    *FRONTEND.get_or_init(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::abort();
        }));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("backend listener");
                let backend_addr = backend.local_addr().expect("backend address");
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = backend.accept().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(|request: hyper::Request<Incoming>| async move {
                                let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{}\n", body.len())))))
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
                let frontend = free_port();
                let proxy = Proxy::new(ProxyConfig::default());
                let spec = ServiceSpec {
                    name: "fuzz/web:http".into(),
                    backends: vec![BackendSpec::ready(backend_addr)],
                    l7: Some(L7Spec {
                        upstream: UpstreamProtocol::Http1,
                        balancer: RequestBalancer::RoundRobin,
                        ..L7Spec::default()
                    }),
                    ..ServiceSpec::default()
                };
                proxy
                    .upsert(frontend, Proto::Tcp, spec)
                    .await
                    .expect("the L7 frontend");
                ready_tx.send(frontend).expect("ready");
                std::future::pending::<()>().await;
            });
        });
        ready_rx.recv().expect("the proxy starts")
    })
}

/// Sends `data`, half-closes if asked, and reads what comes back for a short while.
fn exchange(addr: SocketAddr, data: &[u8], half_close: bool) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.write_all(data)?;
    if half_close {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    Ok(out)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let addr = frontend();
    let _ = exchange(addr, data, true);
    // The proxy still serves a well-formed request after this input.
    let answer = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        false,
    )
        .expect("the frontend still accepts");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "the frontend stopped serving after an input: {:?}",
        String::from_utf8_lossy(&answer)
    );
});
