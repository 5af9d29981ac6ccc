//! Real loopback servers and clients for the socket tests.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::{Algorithm, BackendSpec, EmptyAction, ServiceSpec};

/// Upper bound for any single network step in a test, so a bug fails the test
/// instead of hanging it.
pub(crate) const STEP: Duration = Duration::from_secs(5);

pub(crate) fn service(backends: &[SocketAddr]) -> ServiceSpec {
    ServiceSpec {
        name: "default/web:http".into(),
        backends: backends.iter().copied().map(BackendSpec::ready).collect(),
        algorithm: Algorithm::RoundRobin,
        affinity: None,
        on_empty: EmptyAction::Reject,
        l7: None,
    }
}

/// A loopback address (in 127.1.0.0/16) no other test uses. Outgoing
/// connections take their source port on 127.0.0.1, so a port found free here
/// stays free.
pub(crate) fn fresh_ip() -> IpAddr {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    IpAddr::from([127, 1, (n / 250) as u8, (n % 250 + 1) as u8])
}

/// A port free for both TCP and UDP on a fresh loopback address.
pub(crate) fn frontend_v4() -> SocketAddr {
    free_port(fresh_ip())
}

/// A port on `ip` that was free for TCP and UDP a moment ago.
pub(crate) fn free_port(ip: impl Into<IpAddr>) -> SocketAddr {
    let ip = ip.into();
    loop {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind ephemeral TCP port");
        let addr = listener.local_addr().expect("local addr");
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A TCP and UDP address nothing listens on: connecting is refused.
pub(crate) fn dead_backend() -> SocketAddr {
    frontend_v4()
}

/// A TCP backend that answers every line `l` with `name:l`.
pub(crate) async fn echo_backend(name: &'static str) -> SocketAddr {
    echo_backend_on("127.0.0.1:0".parse().expect("addr"), name).await
}

pub(crate) async fn echo_backend_on(addr: SocketAddr, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.expect("bind echo backend");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{name}:{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP backend that reads until the client half-closes, then answers
/// `name:<everything read>` and closes.
pub(crate) async fn collect_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collect backend");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                if stream.read_to_end(&mut request).await.is_ok() {
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&request);
                    let _ = stream.write_all(&reply).await;
                }
            });
        }
    });
    addr
}

/// A UDP backend that answers every datagram `d` with `name:d`.
pub(crate) async fn udp_echo_backend(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind UDP backend");
    let addr = socket.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

/// A client speaking the echo backends' line protocol.
pub(crate) struct LineClient {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl LineClient {
    pub(crate) async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = step(TcpStream::connect(addr)).await??;
        let (read, write) = stream.into_split();
        Ok(Self {
            read: BufReader::new(read),
            write,
        })
    }

    /// Sends `line`, returns the answer without its newline.
    pub(crate) async fn ask(&mut self, line: &str) -> io::Result<String> {
        self.write.write_all(format!("{line}\n").as_bytes()).await?;
        let mut answer = String::new();
        let n = step(self.read.read_line(&mut answer)).await??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(answer.trim_end().to_owned())
    }
}

/// One question on a fresh connection.
pub(crate) async fn round_trip(addr: SocketAddr, line: &str) -> io::Result<String> {
    LineClient::connect(addr).await?.ask(line).await
}

pub(crate) async fn assert_refused(addr: SocketAddr) {
    let err = step(TcpStream::connect(addr))
        .await
        .expect("connect did not time out")
        .expect_err("connect should be refused");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
}

/// Bounds a test step by [`STEP`].
pub(crate) async fn step<F: Future>(f: F) -> io::Result<F::Output> {
    tokio::time::timeout(STEP, f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "test step timed out"))
}

/// Waits (up to [`STEP`]) until `check` holds.
pub(crate) async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
