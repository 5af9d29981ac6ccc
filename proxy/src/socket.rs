//! Building frontend sockets. The frontend IP is usually a Service VIP that the
//! controller puts on `lo`, possibly only after asking for the frontend, so
//! sockets bind with `IP_FREEBIND`.
//!
//! Every socket also binds with `SO_REUSEPORT`, so that the next instance of the
//! daemon (an upgrade) can bind the same addresses while this one still serves, and
//! take over without a moment where nothing listens: when this instance then closes
//! a listener, the kernel moves the connections queued on it to the successor's
//! (with `net.ipv4.tcp_migrate_req=1`). The kernel only groups sockets of the same
//! user, so no other user's process can join a group switchyard's root owns.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking socket bound to `addr` with `SO_REUSEADDR`, `SO_REUSEPORT`,
/// `IP_FREEBIND` and, for IPv6, `IPV6_V6ONLY` (an IPv6 VIP must not capture IPv4
/// traffic).
fn bound(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, ty, Some(protocol))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A listening TCP socket on `addr` that a successor instance can bind too (see the
/// module docs); for the daemon's own listeners (metrics, health checks) as well as
/// frontends. Must be called inside a tokio runtime.
pub fn tcp_listener(addr: SocketAddr, backlog: u32) -> io::Result<tokio::net::TcpListener> {
    let socket = bound(addr, Type::STREAM, Protocol::TCP)?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// A UDP frontend socket. Must be called inside a tokio runtime.
pub(crate) fn udp_socket(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = bound(addr, Type::DGRAM, Protocol::UDP)?;
    tokio::net::UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ipv6_frontend_is_v6only_and_freebind() {
        let listener = tcp_listener("[::1]:0".parse().unwrap(), 16).unwrap();
        let sock = socket2::SockRef::from(&listener);
        assert!(sock.only_v6().unwrap());
        assert!(sock.freebind_v6().unwrap());
        assert!(sock.reuse_address().unwrap());
        assert!(sock.reuse_port().unwrap());
    }

    /// A second listener (the next instance's) binds the same address while the first
    /// listens, and takes the connections once the first has closed.
    #[tokio::test]
    async fn a_second_listener_shares_the_address() {
        let first = tcp_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = first.local_addr().unwrap();
        let second = tcp_listener(addr, 16).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        drop(first);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = second.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop(accepted);
    }

    #[tokio::test]
    async fn ipv4_frontend_is_freebind() {
        let socket = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let sock = socket2::SockRef::from(&socket);
        assert!(sock.freebind_v4().unwrap());
        assert!(sock.reuse_address().unwrap());
        assert!(sock.reuse_port().unwrap());
    }
}
