//! kube-proxy's rule shapes, written the way kube-proxy writes them, for the
//! same [`Cluster`](crate::cluster::Cluster) switchyard is given: the
//! iptables proxier's `iptables-restore` input ([`iptables`]) and the
//! nftables proxier's `nft -f` transactions ([`nftables`]). kube-proxy is
//! not installed here: these renderers follow its source (`pkg/proxy/iptables`
//! and `pkg/proxy/nftables` of Kubernetes 1.31+) line for line, so that the
//! kernel is given the same rules a node running kube-proxy would have.

pub mod iptables;
pub mod nftables;

use sha2::{Digest, Sha256};

/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
pub const MASQUERADE_MARK: &str = "0x4000";

/// `base32.StdEncoding.EncodeToString(sha256(input))[:chars]`, as kube-proxy
/// names its chains (RFC 4648 alphabet; the prefix never reaches padding).
pub fn hash_prefix(input: &str, chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(chars);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in digest {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
            if out.len() == chars {
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hash_prefix;

    #[test]
    fn chain_hashes_match_kube_proxys_own_test_vectors() {
        // From kube-proxy's proxier tests (iptables: ns1/svc1:p80 over TCP;
        // nftables: the same Service and its endpoint 10.180.0.1:80).
        assert_eq!(hash_prefix("ns1/svc1:p80tcp", 16), "XPGD46QRK7WJZT7O");
        assert_eq!(
            hash_prefix("ns1/svc1:p80tcp10.180.0.1:80", 16),
            "SXIVWICOYRO3J4NJ"
        );
        assert_eq!(hash_prefix("ns1/svc1/tcp/p80", 8), "ULMVA6XW");
        assert_eq!(
            hash_prefix("ns1/svc1/tcp/p80__10.180.0.1/80", 8),
            "5OJB2KTY"
        );
    }
}
