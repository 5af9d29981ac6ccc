//! Building frontend sockets. The frontend IP is usually a Service VIP that the
//! controller puts on `lo`, possibly only after asking for the frontend, so
//! sockets bind with `IP_FREEBIND`.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking socket bound to `addr` with `SO_REUSEADDR`, `IP_FREEBIND`
/// and, for IPv6, `IPV6_V6ONLY` (an IPv6 VIP must not capture IPv4 traffic).
fn bound(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, ty, Some(protocol))?;
    socket.set_reuse_address(true)?;
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

/// A listening TCP frontend socket. Must be called inside a tokio runtime.
pub(crate) fn tcp_listener(addr: SocketAddr, backlog: u32) -> io::Result<tokio::net::TcpListener> {
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
    }

    #[tokio::test]
    async fn ipv4_frontend_is_freebind() {
        let socket = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let sock = socket2::SockRef::from(&socket);
        assert!(sock.freebind_v4().unwrap());
        assert!(sock.reuse_address().unwrap());
    }
}
