//! `grpc-echo`: a gRPC server and load client for the end-to-end tests of
//! switchyard's L7 proxy, which balances gRPC per request (per HTTP/2 stream),
//! not per connection.
//!
//! - `grpc-echo server --name NAME --listen ADDR` serves the `echo.Echo`
//!   service in plaintext HTTP/2 (h2c): unary `Who` answers the pod's name and
//!   the request's message, server-streaming `Count(n)` sends `n` such replies.
//!   Prints `ready` on stdout once listening.
//! - `grpc-echo client --target http://IP:PORT --requests N --concurrency C
//!   [--stream M]` opens one connection, sends N `Who` calls with C in flight
//!   (and then one `Count(M)`), and prints one JSON object counting the answers
//!   per pod. Failed calls are counted, not fatal: the test reads the JSON.
//!   Only a target that cannot be connected at all makes it exit nonzero.
//!
//! The messages and the service plumbing are written by hand over tonic's
//! generic `Grpc` types and `tonic-prost`'s codec, so the tests need no
//! `protoc`. The proto they match:
//!
//! ```proto
//! package echo;
//! service Echo {
//!   rpc Who(WhoRequest) returns (WhoReply);
//!   rpc Count(CountRequest) returns (stream WhoReply);
//! }
//! message WhoRequest { string message = 1; }
//! message WhoReply { string pod = 1; string message = 2; }
//! message CountRequest { uint32 n = 1; }
//! ```
//!
//! It never talks to anything but the addresses it is given.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use http::uri::PathAndQuery;
use serde_json::json;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// One call's limit, the connect's too.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole client run's limit: calls not finished by then count as failed.
const RUN_TIMEOUT: Duration = Duration::from_mins(1);
/// How many error strings the client's JSON keeps.
const MAX_ERRORS: usize = 5;

const WHO_PATH: &str = "/echo.Echo/Who";
const COUNT_PATH: &str = "/echo.Echo/Count";

#[derive(Clone, PartialEq, prost::Message)]
struct WhoRequest {
    #[prost(string, tag = "1")]
    message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WhoReply {
    #[prost(string, tag = "1")]
    pod: String,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountRequest {
    #[prost(uint32, tag = "1")]
    n: u32,
}

#[derive(Debug, Parser)]
#[command(about = "A gRPC echo server and load client for switchyard's end-to-end tests")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Debug, Subcommand)]
enum Command {
    /// Serve `echo.Echo` in plaintext HTTP/2.
    Server(ServerConfig),
    /// Call `echo.Echo` over one HTTP/2 connection and print a JSON summary.
    Client(ClientConfig),
}

#[derive(Clone, Debug, clap::Args)]
struct ServerConfig {
    /// The pod's name, returned in every reply.
    #[arg(long)]
    name: String,
    /// The address to listen on, e.g. `0.0.0.0:9090` or `[::]:9090`.
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(Clone, Debug, clap::Args)]
struct ClientConfig {
    /// The server or proxy to call, e.g. `http://10.96.0.10:9090`.
    #[arg(long)]
    target: String,
    /// How many unary `Who` calls to make.
    #[arg(long)]
    requests: usize,
    /// How many `Who` calls to keep in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Also make one `Count` call asking for this many streamed replies.
    #[arg(long)]
    stream: Option<u32>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Server(config) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(serve(config)),
        Command::Client(config) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run_client(config)),
    }
}

// ---------------------------------------------------------------- server

async fn serve(config: ServerConfig) -> Result<()> {
    let listener = switchyard_tests::sockets::tcp_listener(config.listen)?;
    let service = EchoService {
        name: Arc::from(config.name.as_str()),
    };
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    tonic::transport::Server::builder()
        .serve_with_incoming(
            service,
            TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .with_context(|| format!("serve gRPC on {}", config.listen))
}

/// The `echo.Echo` service: what tonic-build would generate, dispatching on
/// the request path.
#[derive(Clone, Debug)]
struct EchoService {
    name: Arc<str>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl tower_service::Service<http::Request<Body>> for EchoService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let name = self.name.clone();
        match req.uri().path() {
            WHO_PATH => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<WhoReply, WhoRequest>::default());
                Ok(grpc.unary(Who { name }, req).await)
            }),
            COUNT_PATH => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<WhoReply, CountRequest>::default());
                Ok(grpc.server_streaming(Count { name }, req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

struct Who {
    name: Arc<str>,
}

impl tonic::server::UnaryService<WhoRequest> for Who {
    type Response = WhoReply;
    type Future = BoxFuture<Result<Response<WhoReply>, Status>>;

    fn call(&mut self, request: Request<WhoRequest>) -> Self::Future {
        let reply = WhoReply {
            pod: self.name.to_string(),
            message: request.into_inner().message,
        };
        Box::pin(async move { Ok(Response::new(reply)) })
    }
}

struct Count {
    name: Arc<str>,
}

type ReplyStream = Pin<Box<dyn futures::Stream<Item = Result<WhoReply, Status>> + Send>>;

impl tonic::server::ServerStreamingService<CountRequest> for Count {
    type Response = WhoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<CountRequest>) -> Self::Future {
        let name = self.name.clone();
        let n = request.into_inner().n;
        let replies = futures::stream::iter(0..n).map(move |i| {
            Ok(WhoReply {
                pod: name.to_string(),
                message: i.to_string(),
            })
        });
        Box::pin(async move { Ok(Response::new(Box::pin(replies) as ReplyStream)) })
    }
}

// ---------------------------------------------------------------- client

/// Answers counted per pod, and the first few errors.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failed: usize,
    pods: BTreeMap<String, usize>,
    errors: Vec<String>,
}

impl Tally {
    fn record(&mut self, result: Result<String, String>) {
        match result {
            Ok(pod) => {
                self.ok += 1;
                *self.pods.entry(pod).or_default() += 1;
            }
            Err(error) => {
                self.failed += 1;
                if self.errors.len() < MAX_ERRORS {
                    self.errors.push(error);
                }
            }
        }
    }
}

async fn run_client(config: ClientConfig) -> Result<()> {
    let run_deadline = Instant::now() + RUN_TIMEOUT;
    let endpoint = Endpoint::from_shared(config.target.clone())
        .with_context(|| format!("target {:?}", config.target))?
        .connect_timeout(CALL_TIMEOUT);
    // One `connect`, one HTTP/2 connection: every call below is a stream on
    // it, so any spread over pods is the proxy's per-request balancing.
    let channel = tokio::time::timeout(CALL_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| {
            anyhow!(
                "connect {}: timed out after {CALL_TIMEOUT:?}",
                config.target
            )
        })?
        .map_err(|e| anyhow!("connect {}: {}", config.target, error_chain(&e)))?;

    let mut tally = Tally::default();
    let mut calls = futures::stream::iter(0..config.requests)
        .map(|i| call_who(tonic::client::Grpc::new(channel.clone()), i, run_deadline))
        .buffer_unordered(usize::from(config.concurrency));
    while let Some(result) = calls.next().await {
        tally.record(result);
    }

    let mut summary = json!({
        "ok": tally.ok,
        "failed": tally.failed,
        "pods": tally.pods,
        "errors": tally.errors,
    });
    if let Some(n) = config.stream {
        let grpc = tonic::client::Grpc::new(channel.clone());
        summary["stream"] = call_count(grpc, n, run_deadline).await;
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{summary}")?;
    stdout.flush()?;
    Ok(())
}

/// One `Who` call: the answering pod, or why there was none.
async fn call_who(
    mut grpc: tonic::client::Grpc<tonic::transport::Channel>,
    i: usize,
    run_deadline: Instant,
) -> Result<String, String> {
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| format!("channel not ready: {}", error_chain(&e)))?;
        let request = Request::new(WhoRequest {
            message: format!("m{i}"),
        });
        let reply = grpc
            .unary(
                request,
                PathAndQuery::from_static(WHO_PATH),
                ProstCodec::<WhoRequest, WhoReply>::default(),
            )
            .await
            .map_err(|status| status_string(&status))?;
        Ok(reply.into_inner().pod)
    };
    match tokio::time::timeout_at(call_deadline(run_deadline), call).await {
        Ok(result) => result,
        Err(_) => Err(format!("Who m{i}: timed out")),
    }
}

/// One `Count(n)` call: how many replies came, from which pods, and the error
/// that ended the stream early if one did.
async fn call_count(
    mut grpc: tonic::client::Grpc<tonic::transport::Channel>,
    n: u32,
    run_deadline: Instant,
) -> serde_json::Value {
    let mut received = 0usize;
    let mut pods = BTreeMap::<String, usize>::new();
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| format!("channel not ready: {}", error_chain(&e)))?;
        let mut replies = grpc
            .server_streaming(
                Request::new(CountRequest { n }),
                PathAndQuery::from_static(COUNT_PATH),
                ProstCodec::<CountRequest, WhoReply>::default(),
            )
            .await
            .map_err(|status| status_string(&status))?
            .into_inner();
        while let Some(reply) = replies
            .message()
            .await
            .map_err(|status| status_string(&status))?
        {
            received += 1;
            *pods.entry(reply.pod).or_default() += 1;
        }
        Ok::<(), String>(())
    };
    let error = match tokio::time::timeout_at(call_deadline(run_deadline), call).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some(format!("Count {n}: timed out")),
    };
    let mut stream = json!({ "received": received, "pods": pods });
    if let Some(error) = error {
        stream["error"] = json!(error);
    }
    stream
}

fn call_deadline(run_deadline: Instant) -> Instant {
    (Instant::now() + CALL_TIMEOUT).min(run_deadline)
}

fn status_string(status: &Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    let mut last = status.message().to_owned();
    append_sources(&mut s, &mut last, &mut source);
    s
}

/// An error and its sources, `: `-separated (transport errors hide the cause).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut s = error.to_string();
    let mut last = s.clone();
    let mut source = error.source();
    append_sources(&mut s, &mut last, &mut source);
    s
}

/// Appends each source's message, skipping one that repeats the message
/// before it (tonic and hyper wrap errors in same-named layers).
fn append_sources(
    s: &mut String,
    last: &mut String,
    source: &mut Option<&(dyn std::error::Error + 'static)>,
) {
    while let Some(e) = *source {
        let message = e.to_string();
        if message != *last {
            s.push_str(": ");
            s.push_str(&message);
            *last = message;
        }
        *source = e.source();
    }
}
