//! Service VIPs as local addresses: the userspace datapath adds each VIP to an interface of
//! the node (`lo` by default, as /32 or /128) so that traffic to it is delivered locally, and
//! removes it when no frontend uses it any more, over rtnetlink.
//!
//! switchyard owns every VIP it is asked to hold: an address already present when it starts
//! (left by an instance that was killed) is adopted and removed like one it added.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::Handle;

/// Why a VIP could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("netlink request on {iface} for {addr} failed: {source}")]
    Request {
        iface: String,
        addr: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// The VIPs on one interface, counted by the frontends that use them.
pub struct VipManager {
    handle: Handle,
    iface: String,
    index: u32,
    refs: BTreeMap<IpAddr, usize>,
}

fn is_errno(error: &rtnetlink::Error, errno: i32) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn prefix_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

impl VipManager {
    /// Opens rtnetlink and finds the interface.
    pub async fn new(iface: &str) -> Result<VipManager, VipError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(VipError::Connect)?;
        tokio::spawn(connection);
        let link = handle
            .link()
            .get()
            .match_name(iface.to_owned())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten()
            .ok_or_else(|| VipError::NoInterface(iface.to_owned()))?;
        Ok(VipManager {
            handle,
            iface: iface.to_owned(),
            index: link.header.index,
            refs: BTreeMap::new(),
        })
    }

    pub fn interface(&self) -> &str {
        &self.iface
    }

    fn request_error(&self, addr: IpAddr, source: rtnetlink::Error) -> VipError {
        VipError::Request {
            iface: self.iface.clone(),
            addr: addr.to_string(),
            source,
        }
    }

    async fn add(&self, addr: IpAddr) -> Result<(), VipError> {
        match self
            .handle
            .address()
            .add(self.index, addr, prefix_len(addr))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, nix::errno::Errno::EEXIST as i32) => Ok(()),
            Err(e) => Err(self.request_error(addr, e)),
        }
    }

    async fn delete(&self, addr: IpAddr) -> Result<(), VipError> {
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(addr)
            .execute();
        while let Some(message) = found
            .try_next()
            .await
            .map_err(|e| self.request_error(addr, e))?
        {
            if message.header.prefix_len != prefix_len(addr) {
                continue; // not a VIP we would have added (e.g. 127.0.0.1/8)
            }
            match self.handle.address().del(message).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, nix::errno::Errno::EADDRNOTAVAIL as i32) => {}
                Err(e) => return Err(self.request_error(addr, e)),
            }
        }
        Ok(())
    }

    /// Takes a reference on a VIP, adding the address for the first one.
    pub async fn acquire(&mut self, addr: IpAddr) -> Result<(), VipError> {
        let count = self.refs.get(&addr).copied().unwrap_or(0);
        if count == 0 {
            self.add(addr).await?;
        }
        self.refs.insert(addr, count + 1);
        Ok(())
    }

    /// Drops a reference on a VIP, removing the address with the last one.
    pub async fn release(&mut self, addr: IpAddr) -> Result<(), VipError> {
        match self.refs.get(&addr).copied() {
            None => Ok(()),
            Some(1) => {
                self.refs.remove(&addr);
                self.delete(addr).await
            }
            Some(n) => {
                self.refs.insert(addr, n - 1);
                Ok(())
            }
        }
    }

    /// The addresses the interface holds now.
    pub async fn present(&self) -> Result<BTreeSet<IpAddr>, VipError> {
        let mut out = BTreeSet::new();
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        while let Some(message) = found
            .try_next()
            .await
            .map_err(|e| self.request_error(IpAddr::from([0, 0, 0, 0]), e))?
        {
            for attr in &message.attributes {
                if let rtnetlink::packet_route::address::AddressAttribute::Address(ip) = attr {
                    out.insert(*ip);
                }
            }
        }
        Ok(out)
    }

    /// Re-adds every held VIP that is missing from the interface; returns those repaired.
    pub async fn repair(&mut self) -> Result<Vec<IpAddr>, VipError> {
        let present = self.present().await?;
        let mut repaired = Vec::new();
        for addr in self.refs.keys().copied().collect::<Vec<_>>() {
            if !present.contains(&addr) {
                self.add(addr).await?;
                repaired.push(addr);
            }
        }
        Ok(repaired)
    }

    /// Forgets every held VIP without removing it (another instance holds them now).
    pub fn forget_all(&mut self) {
        self.refs.clear();
    }

    /// Removes every held VIP.
    pub async fn release_all(&mut self) {
        let held: Vec<IpAddr> = std::mem::take(&mut self.refs).into_keys().collect();
        for addr in held {
            if let Err(error) = self.delete(addr).await {
                tracing::warn!(%error, "cannot remove VIP");
            }
        }
    }
}
