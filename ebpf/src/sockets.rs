//! Closing the sockets that talk to a backend that went away.
//!
//! The socket load balancer translates at connect time, so a connected
//! socket keeps its backend for life: when a backend is removed, its
//! connected UDP sockets would send into the void and its TCP connections
//! would hang until they time out. [`destroy_sockets_to`] closes them through
//! `sock_diag` (`SOCK_DESTROY`, `CONFIG_INET_DIAG_DESTROY`): the application
//! sees `ECONNABORTED` and reconnects, through the load balancer again.
//!
//! Only the **current network namespace** is searched, as `sock_diag` works
//! per namespace: the daemon calls it from the node's namespace, which holds
//! the node's host-network sockets. Sockets of pods live in the pods'
//! namespaces; closing those means running the call inside each of them
//! (for example from a thread that did `setns` into it).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

use crate::EbpfError;
use crate::maps::Proto;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg` up to and including its id.
const MSG_MIN_LEN: usize = 4 + SOCKID_LEN;

const TCP_ESTABLISHED: u32 = 1;
const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
const TCP_CLOSING: u32 = 11;

/// TCP states worth destroying: everything with a peer, except listeners
/// and time-wait (not a full socket; nothing to tell an application).
fn tcp_states() -> u32 {
    let all = (1..=TCP_CLOSING).fold(0u32, |mask, state| mask | (1 << state));
    all & !(1 << TCP_LISTEN) & !(1 << TCP_TIME_WAIT) & !(1 << TCP_CLOSE)
}

/// Closes every socket in the current network namespace connected to
/// `backend` over `proto`: TCP in any state but listen and time-wait, UDP
/// when connected. IPv6 sockets connected to the IPv4-mapped form of an
/// IPv4 backend are included. Returns how many were closed.
pub fn destroy_sockets_to(backend: SocketAddr, proto: Proto) -> Result<usize, EbpfError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|errno| netlink_error("open a NETLINK_SOCK_DIAG socket", errno))?;
    let mut diag = Diag { fd, seq: 0 };
    let states = match proto {
        Proto::Tcp => tcp_states(),
        Proto::Udp => 1 << TCP_ESTABLISHED,
    };
    let (families, v6_dst) = match backend.ip() {
        IpAddr::V4(v4) => (
            vec![libc::AF_INET as u8, libc::AF_INET6 as u8],
            v4.to_ipv6_mapped().octets(),
        ),
        IpAddr::V6(v6) => (vec![libc::AF_INET6 as u8], v6.octets()),
    };
    let mut closed = 0;
    for family in families {
        let mut dst = [0u8; 16];
        if family == libc::AF_INET as u8 {
            if let IpAddr::V4(v4) = backend.ip() {
                dst[..4].copy_from_slice(&v4.octets());
            }
        } else {
            dst = v6_dst;
        }
        let ids = diag.dump(family, proto.number(), states, &dst, backend.port())?;
        for id in ids {
            if diag.destroy(family, proto.number(), &id)? {
                closed += 1;
            }
        }
    }
    if closed > 0 {
        tracing::info!(%backend, %proto, closed, "closed sockets to a removed backend");
    }
    Ok(closed)
}

fn netlink_error(what: &str, errno: nix::errno::Errno) -> EbpfError {
    EbpfError::Netlink {
        what: what.to_owned(),
        source: io::Error::from(errno),
    }
}

struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    fn send(&mut self, kind: u16, flags: u16, payload: &[u8]) -> Result<u32, EbpfError> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + payload.len());
        msg.extend_from_slice(&((NLMSG_HDR_LEN + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        sendto(
            self.fd.as_raw_fd(),
            &msg,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|errno| netlink_error("send a request", errno))?;
        Ok(self.seq)
    }

    /// Reads messages of request `seq` until `f` says stop (returns `true`)
    /// or the dump ends; `f` gets each message's type and payload.
    fn receive(
        &mut self,
        seq: u32,
        mut f: impl FnMut(u16, &[u8]) -> Result<bool, EbpfError>,
    ) -> Result<(), EbpfError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|errno| netlink_error("receive a reply", errno))?;
            let mut rest = &buf[..n];
            while rest.len() >= NLMSG_HDR_LEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDR_LEN || len > rest.len() {
                    return Err(EbpfError::Netlink {
                        what: format!("malformed reply (length {len})"),
                        source: io::Error::from(io::ErrorKind::InvalidData),
                    });
                }
                let payload = &rest[NLMSG_HDR_LEN..len];
                if msg_seq == seq && (kind == NLMSG_DONE || f(kind, payload)?) {
                    return Ok(());
                }
                let aligned = (len + 3) & !3;
                rest = &rest[aligned.min(rest.len())..];
            }
        }
    }

    /// The socket ids of `family`/`protocol` sockets in `states` whose peer
    /// is `dst` (16 bytes, IPv4 in the first four) port `dport`.
    fn dump(
        &mut self,
        family: u8,
        protocol: u8,
        states: u32,
        dst: &[u8; 16],
        dport: u16,
    ) -> Result<Vec<[u8; SOCKID_LEN]>, EbpfError> {
        let req = request(family, protocol, states, &[0; SOCKID_LEN]);
        let seq = self.send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &req)?;
        let mut ids = Vec::new();
        let what = format!("dump family {family} protocol {protocol}");
        self.receive(seq, |kind, payload| {
            if kind == NLMSG_ERROR {
                return Err(
                    ack_error(&what, payload).unwrap_or_else(|| EbpfError::Netlink {
                        what: what.clone(),
                        source: io::Error::from(io::ErrorKind::InvalidData),
                    }),
                );
            }
            if kind == SOCK_DIAG_BY_FAMILY && payload.len() >= MSG_MIN_LEN {
                let id: [u8; SOCKID_LEN] = payload[4..4 + SOCKID_LEN]
                    .try_into()
                    .expect("checked length");
                // id: sport(2) dport(2) src(16) dst(16) if(4) cookie(8).
                let port = u16::from_be_bytes([id[2], id[3]]);
                if port == dport && id[20..36] == dst[..] {
                    ids.push(id);
                }
            }
            Ok(false)
        })?;
        Ok(ids)
    }

    /// Destroys the socket `id`; `false` if it was already gone.
    fn destroy(
        &mut self,
        family: u8,
        protocol: u8,
        id: &[u8; SOCKID_LEN],
    ) -> Result<bool, EbpfError> {
        let req = request(family, protocol, u32::MAX, id);
        let seq = self.send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &req)?;
        let mut outcome = Ok(false);
        self.receive(seq, |kind, payload| {
            if kind != NLMSG_ERROR {
                return Ok(false);
            }
            outcome = match ack_error("destroy a socket", payload) {
                None => Ok(true),
                Some(EbpfError::Netlink { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(false)
                }
                Some(error) => Err(error),
            };
            Ok(true)
        })?;
        outcome
    }
}

/// `struct inet_diag_req_v2`.
fn request(family: u8, protocol: u8, states: u32, id: &[u8; SOCKID_LEN]) -> [u8; REQ_LEN] {
    let mut req = [0u8; REQ_LEN];
    req[0] = family;
    req[1] = protocol;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    req[8..].copy_from_slice(id);
    req
}

/// The error an `NLMSG_ERROR` payload carries, `None` for an ACK (error 0).
fn ack_error(what: &str, payload: &[u8]) -> Option<EbpfError> {
    let code = payload.get(0..4).map_or(-libc::EIO, |b| {
        i32::from_ne_bytes(b.try_into().expect("4 bytes"))
    });
    (code != 0).then(|| EbpfError::Netlink {
        what: what.to_owned(),
        source: io::Error::from_raw_os_error(-code),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_states_exclude_listen_time_wait_and_close() {
        let states = tcp_states();
        for state in [TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE] {
            assert_eq!(states & (1 << state), 0, "state {state}");
        }
        for state in [1, 2, 3, 4, 5, 8, 9, 11] {
            assert_ne!(states & (1 << state), 0, "state {state}");
        }
    }

    #[test]
    fn request_layout() {
        let mut id = [0u8; SOCKID_LEN];
        id[2..4].copy_from_slice(&8080u16.to_be_bytes());
        let req = request(2, 17, 0b10, &id);
        assert_eq!(req.len(), 56);
        assert_eq!((req[0], req[1]), (2, 17));
        assert_eq!(&req[4..8], &2u32.to_ne_bytes());
        assert_eq!(&req[10..12], &8080u16.to_be_bytes());
    }

    #[test]
    fn ack_of_zero_is_success() {
        assert!(ack_error("x", &0i32.to_ne_bytes()).is_none());
        let error = ack_error("x", &(-libc::ENOENT).to_ne_bytes()).unwrap();
        assert!(
            matches!(error, EbpfError::Netlink { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
        );
    }
}
