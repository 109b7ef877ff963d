//! Prefixes as UPDATEs carry them (RFC 4271 §4.3, RFC 4760 §5): a length in bits, then as
//! many octets of the address as the length needs.
//!
//! ```text
//! +---------------------------+
//! |   Length (1 octet)        |
//! +---------------------------+
//! |   Prefix (variable)       |
//! +---------------------------+
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{AFI_IPV4, AFI_IPV6, DecodeError};

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `addr/len` with the host bits cleared; None if `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let addr = match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
            _ => return None,
        };
        Some(Prefix { addr, len })
    }

    pub fn afi(&self) -> u16 {
        if self.addr.is_ipv4() {
            AFI_IPV4
        } else {
            AFI_IPV6
        }
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.len);
        let bytes = usize::from(self.len).div_ceil(8);
        match self.addr {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..bytes]),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..bytes]),
        }
    }

    pub(super) fn encoded_len(&self) -> usize {
        1 + usize::from(self.len).div_ceil(8)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?} is not a prefix"))?;
        let len: u8 = l.parse().map_err(|_| format!("{s:?} is not a prefix"))?;
        Prefix::new(addr, len).ok_or_else(|| format!("{s:?}: the length is too long"))
    }
}

/// Every prefix of a field; a defect is `err`.
pub(super) fn decode_prefixes(
    mut buf: &[u8],
    v6: bool,
    err: &DecodeError,
) -> Result<Vec<Prefix>, DecodeError> {
    let max = if v6 { 128 } else { 32 };
    let mut out = Vec::new();
    while let Some((&len, rest)) = buf.split_first() {
        let bytes = usize::from(len).div_ceil(8);
        if len > max || rest.len() < bytes {
            return Err(err.clone());
        }
        let addr = if v6 {
            let mut o = [0u8; 16];
            o[..bytes].copy_from_slice(&rest[..bytes]);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            let mut o = [0u8; 4];
            o[..bytes].copy_from_slice(&rest[..bytes]);
            IpAddr::V4(Ipv4Addr::from(o))
        };
        out.push(Prefix::new(addr, len).ok_or_else(|| err.clone())?);
        buf = &rest[bytes..];
    }
    Ok(out)
}
