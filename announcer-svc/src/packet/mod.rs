//! Wire formats the announcer speaks on a LAN, as pure codecs: `decode(&[u8]) -> Result<_, _>`
//! and `encode(&self) -> Vec<u8>`, no I/O. Frames include their Ethernet header.

pub mod arp;
pub mod ndp;

use std::fmt;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);

    fn read(b: &[u8]) -> Mac {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[..6]);
        Mac(m)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why a frame was dropped. Every variant is counted by the announcer, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame too short: {got} bytes, need {need}")]
    Truncated { need: usize, got: usize },
    #[error("not the expected EtherType: 0x{0:04x}")]
    EtherType(u16),
    #[error("ARP for hardware type {hardware} and protocol 0x{protocol:04x} is not Ethernet/IPv4")]
    ArpKind { hardware: u16, protocol: u16 },
    #[error("ARP address lengths {hardware}/{protocol}, expected 6/4")]
    ArpLengths { hardware: u8, protocol: u8 },
    #[error("unknown ARP operation {0}")]
    ArpOperation(u16),
    #[error("IPv6 version field is {0}")]
    IpVersion(u8),
    #[error("next header {0} is not ICMPv6 (extension headers are not accepted for NDP)")]
    NextHeader(u8),
    #[error("IPv6 payload length {claimed} exceeds the {available} bytes present")]
    PayloadLength { claimed: usize, available: usize },
    #[error("hop limit {0}: NDP messages must carry 255 (RFC 4861 §7.1)")]
    HopLimit(u8),
    #[error("ICMPv6 type {0} code {1} is not a neighbor solicitation or advertisement")]
    IcmpType(u8, u8),
    #[error("ICMPv6 checksum mismatch")]
    Checksum,
    #[error("NDP option of length 0")]
    OptionLength,
    #[error("target address is multicast")]
    MulticastTarget,
}

/// Ethernet II header: destination, source, EtherType.
pub(crate) const ETH_HEADER: usize = 14;

pub(crate) fn need(buf: &[u8], n: usize) -> Result<(), DecodeError> {
    if buf.len() < n {
        Err(DecodeError::Truncated {
            need: n,
            got: buf.len(),
        })
    } else {
        Ok(())
    }
}

pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// `count` frames made from `seed` by changing a few random bytes and cutting it at a random
/// length (a fixed xorshift sequence, so failures reproduce): input for the no-panic tests.
#[cfg(test)]
pub(crate) fn mutations(seed: &[u8], count: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.len() as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seed = seed.to_vec();
    (0..count).map(move |_| {
        let mut f = seed.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % f.len().max(1);
            if let Some(b) = f.get_mut(i) {
                *b = next() as u8;
            }
        }
        f.truncate((next() as usize) % (f.len() + 8));
        f
    })
}

#[cfg(test)]
mod tests {
    use super::arp::Arp;
    use super::ndp::Ndp;
    use super::*;

    /// Every prefix and many random mutations of valid frames decode to a value or an error,
    /// never a panic.
    #[test]
    fn garbage_never_panics() {
        let seeds = [
            Arp::gratuitous(
                "10.0.0.1".parse().expect("ip"),
                Mac([2, 0, 0, 0, 0, 1]),
                arp::Operation::Reply,
            )
            .encode(),
            Ndp::unsolicited(
                "fd00::1".parse().expect("ip"),
                Mac([2, 0, 0, 0, 0, 1]),
                "fe80::1".parse().expect("ip"),
            )
            .encode(),
        ];
        for seed in &seeds {
            for n in 0..=seed.len() {
                let _ = Arp::decode(&seed[..n]);
                let _ = Ndp::decode(&seed[..n]);
            }
            for f in mutations(seed, 20_000) {
                let _ = Arp::decode(&f);
                let _ = Ndp::decode(&f);
            }
        }
    }
}
