//! Sockets the test servers bind (`pod-server`, `grpc-echo`, `ws-tool`): `SO_REUSEADDR`,
//! non-blocking, and IPv6 ones `IPV6_V6ONLY`, so a test can serve `0.0.0.0:P` and `[::]:P`
//! side by side.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// A bound socket of `ty` and `proto` at `addr`.
pub fn bind(addr: SocketAddr, ty: Type, proto: Protocol) -> Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    Ok(socket)
}

/// A listening TCP socket at `addr`, for tokio. Must be called inside a runtime.
pub fn tcp_listener(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = bind(addr, Type::STREAM, Protocol::TCP)?;
    socket
        .listen(1024)
        .with_context(|| format!("listen on {addr}"))?;
    Ok(tokio::net::TcpListener::from_std(socket.into())?)
}
