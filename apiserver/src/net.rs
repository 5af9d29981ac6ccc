//! Service CIDRs and the `ClusterIP` and `NodePort` allocators over them.

use std::net::IpAddr;

use crate::ApiServerError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    prefix: u8,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, ApiServerError> {
        let err = |reason| ApiServerError::ServiceRange {
            range: s.to_owned(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("not a CIDR"))?;
        let base: IpAddr = addr.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
        let bits = if base.is_ipv4() { 32 } else { 128 };
        if prefix > bits || bits - prefix < 2 {
            return Err(err("prefix too long for a service range"));
        }
        if bits - prefix > 24 {
            return Err(err("range too large (at most 2^24 addresses)"));
        }
        let cidr = Self { base, prefix };
        if to_u128(base) & !cidr.mask() != 0 {
            return Err(err("address has host bits set"));
        }
        Ok(cidr)
    }

    fn bits(self) -> u8 {
        if self.base.is_ipv4() { 32 } else { 128 }
    }

    fn mask(self) -> u128 {
        let host_bits = u32::from(self.bits() - self.prefix);
        let all = if self.base.is_ipv4() {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all & !((1u128 << host_bits) - 1)
    }

    pub fn is_ipv4(self) -> bool {
        self.base.is_ipv4()
    }

    pub fn family(self) -> &'static str {
        if self.is_ipv4() { "IPv4" } else { "IPv6" }
    }

    pub fn contains(self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && to_u128(ip) & self.mask() == to_u128(self.base)
    }

    /// Usable service addresses: not the network address, and for IPv4 not the broadcast one.
    fn usable(self, ip: IpAddr) -> bool {
        let offset = to_u128(ip) - to_u128(self.base);
        let size = 1u128 << (self.bits() - self.prefix);
        self.contains(ip) && offset != 0 && (!self.is_ipv4() || offset != size - 1)
    }

    /// The lowest usable address not in `used`.
    pub fn allocate(self, used: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
        let size = 1u128 << (self.bits() - self.prefix);
        let last = if self.is_ipv4() { size - 1 } else { size };
        (1..last)
            .map(|off| from_u128(to_u128(self.base) + off, self.is_ipv4()))
            .find(|ip| !used(*ip))
    }

    /// Why `ip` may not be requested, if it may not.
    pub fn check(self, ip: IpAddr, used: impl Fn(IpAddr) -> bool) -> Result<(), String> {
        if !self.usable(ip) {
            return Err(format!(
                "provided IP is not in the valid range. The range of valid IPs is {self}"
            ));
        }
        if used(ip) {
            return Err("provided IP is already allocated".to_owned());
        }
        Ok(())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// What allocation works from.
#[derive(Clone, Debug)]
pub struct Ranges {
    pub service: Vec<Cidr>,
    pub node_ports: (u16, u16),
}

impl Ranges {
    pub fn family(&self, family: &str) -> Option<Cidr> {
        self.service.iter().copied().find(|c| c.family() == family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn parses_and_allocates_lowest_free() {
        let c = Cidr::parse("10.96.0.0/30").unwrap();
        let mut used = HashSet::new();
        let a = c.allocate(|ip| used.contains(&ip)).unwrap();
        assert_eq!(a.to_string(), "10.96.0.1");
        used.insert(a);
        let b = c.allocate(|ip| used.contains(&ip)).unwrap();
        assert_eq!(b.to_string(), "10.96.0.2");
        used.insert(b);
        // .3 is the broadcast address.
        assert_eq!(c.allocate(|ip| used.contains(&ip)), None);
        assert!(
            c.check("10.96.0.3".parse().unwrap(), |ip| used.contains(&ip))
                .is_err()
        );
        assert!(
            c.check("10.97.0.1".parse().unwrap(), |ip| used.contains(&ip))
                .is_err()
        );
        assert_eq!(
            c.check("10.96.0.1".parse().unwrap(), |ip| used.contains(&ip))
                .unwrap_err(),
            "provided IP is already allocated"
        );
        let v6 = Cidr::parse("fd00:96::/108").unwrap();
        assert_eq!(v6.allocate(|_| false).unwrap().to_string(), "fd00:96::1");
        assert!(v6.contains("fd00:96::f:ffff".parse().unwrap()));
        assert!(!v6.contains("fd00:96::10:0".parse().unwrap()));
        for bad in [
            "10.96.0.1/16",
            "10.96.0.0",
            "10.96.0.0/31",
            "fd00::/64",
            "x/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
