//! Addresses as integers, and the CIDRs and ranges that pools are made of.
//!
//! Every address is kept as a `u128` key: an IPv6 address is its own 128-bit value, an IPv4 address
//! is mapped to `::ffff:a.b.c.d`. The keys of one family sort in address order, and their 16-byte
//! big-endian form sorts the same way in the database (bytea and blob compare bytewise). IPv6
//! addresses inside `::ffff:0:0/96` are refused so that the two families never share a key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

const V4_MAPPED: u128 = 0xffff_0000_0000;

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// The number stored in the database's `family` columns.
    pub fn code(self) -> i64 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    pub fn from_code(code: i64) -> Option<Family> {
        match code {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why a string is not an address, CIDR or range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    #[error("{0:?} is not a CIDR or a start-end range")]
    BadEntry(String),
    #[error("{0:?} has an invalid prefix length")]
    BadPrefix(String),
    #[error("range {0:?} mixes IPv4 and IPv6")]
    MixedRange(String),
    #[error("range {0:?} starts after it ends")]
    Reversed(String),
    #[error("{0:?} is an IPv4-mapped IPv6 address; write the IPv4 address instead")]
    V4Mapped(String),
    #[error("{0:?} covers the whole IPv6 space")]
    TooLarge(String),
}

/// The key of an address.
pub fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => V4_MAPPED | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of a key of the given family.
pub fn ip(family: Family, key: u128) -> IpAddr {
    match family {
        // The low 32 bits of a v4 key are the address; the mask makes the truncation exact.
        Family::V4 => IpAddr::V4(Ipv4Addr::from((key & 0xffff_ffff) as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(key)),
    }
}

/// The key as stored in the database.
pub fn key_bytes(key: u128) -> Vec<u8> {
    key.to_be_bytes().to_vec()
}

/// A key read back from the database.
pub fn key_from_bytes(bytes: &[u8]) -> Option<u128> {
    let arr: [u8; 16] = bytes.try_into().ok()?;
    Some(u128::from_be_bytes(arr))
}

/// Parses an IP address, refusing IPv4-mapped IPv6 addresses.
pub fn parse_ip(s: &str) -> Result<IpAddr, AddrError> {
    let ip: IpAddr = s
        .trim()
        .parse()
        .map_err(|_| AddrError::BadIp(s.to_string()))?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(AddrError::V4Mapped(s.to_string()));
    }
    Ok(ip)
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub family: Family,
    pub start: u128,
    pub end: u128,
}

impl Range {
    pub fn single(ip: IpAddr) -> Range {
        let k = key(ip);
        Range {
            family: Family::of(ip),
            start: k,
            end: k,
        }
    }

    /// Parses a pool entry as MetalLB does: a CIDR (host bits are masked off) or `start-end`.
    pub fn parse_entry(s: &str) -> Result<Range, AddrError> {
        if let Some((a, b)) = s.split_once('-') {
            let start = parse_ip(a)?;
            let end = parse_ip(b)?;
            if Family::of(start) != Family::of(end) {
                return Err(AddrError::MixedRange(s.to_string()));
            }
            let r = Range {
                family: Family::of(start),
                start: key(start),
                end: key(end),
            };
            if r.start > r.end {
                return Err(AddrError::Reversed(s.to_string()));
            }
            return Ok(r);
        }
        let (a, len) = s
            .split_once('/')
            .ok_or_else(|| AddrError::BadEntry(s.to_string()))?;
        let ip = parse_ip(a)?;
        let len: u32 = len
            .trim()
            .parse()
            .map_err(|_| AddrError::BadPrefix(s.to_string()))?;
        let bits = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if len > bits {
            return Err(AddrError::BadPrefix(s.to_string()));
        }
        if bits == 128 && len == 0 {
            return Err(AddrError::TooLarge(s.to_string()));
        }
        let host_bits = bits - len;
        let host_mask: u128 = if host_bits == 0 {
            0
        } else {
            (1u128 << host_bits) - 1
        };
        let k = key(ip);
        Ok(Range {
            family: Family::of(ip),
            start: k & !host_mask,
            end: (k & !host_mask) | host_mask,
        })
    }

    /// Parses an exclusion: a single address, a CIDR or a range.
    pub fn parse_exclusion(s: &str) -> Result<Range, AddrError> {
        if s.contains('/') || s.contains('-') {
            Range::parse_entry(s)
        } else {
            parse_ip(s).map(Range::single)
        }
    }

    /// Number of addresses; exact, since `::/0` is refused.
    pub fn len(&self) -> u128 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, family: Family, k: u128) -> bool {
        self.family == family && self.start <= k && k <= self.end
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.family == other.family && self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", ip(self.family, self.start))
        } else {
            write!(
                f,
                "{}-{}",
                ip(self.family, self.start),
                ip(self.family, self.end)
            )
        }
    }
}

/// MetalLB's avoidBuggyIPs rule: IPv4 addresses ending in .0 or .255.
pub fn is_buggy(family: Family, k: u128) -> bool {
    family == Family::V4 && matches!(k & 0xff, 0 | 0xff)
}

/// How many IPv4 keys in `[start, end]` end in .0 or .255, without walking them.
pub fn buggy_count(range: &Range) -> u128 {
    if range.family != Family::V4 {
        return 0;
    }
    // Counts of .0 and .255 addresses in [0, n], on the low 32 bits.
    let upto = |n: u128| (n / 256 + 1) + (n + 1) / 256;
    let s = range.start & 0xffff_ffff;
    let e = range.end & 0xffff_ffff;
    upto(e) - if s == 0 { 0 } else { upto(s - 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        Range::parse_entry(s).expect("valid test entry")
    }

    #[test]
    fn cidr_masks_host_bits() {
        assert_eq!(r("192.168.1.5/24").to_string(), "192.168.1.0-192.168.1.255");
        assert_eq!(r("10.0.0.7/32").to_string(), "10.0.0.7");
        assert_eq!(r("2001:db8::1/126").to_string(), "2001:db8::-2001:db8::3");
        assert_eq!(r("2001:db8::/48").len(), 1u128 << 80);
    }

    #[test]
    fn ranges_trim_and_check_order() {
        assert_eq!(
            r(" 192.168.1.240 - 192.168.1.250 ").to_string(),
            "192.168.1.240-192.168.1.250"
        );
        assert_eq!(r("192.168.1.240-192.168.1.250").len(), 11);
        assert!(matches!(
            Range::parse_entry("192.168.1.9-192.168.1.1"),
            Err(AddrError::Reversed(_))
        ));
        assert!(matches!(
            Range::parse_entry("192.168.1.1-2001:db8::1"),
            Err(AddrError::MixedRange(_))
        ));
    }

    #[test]
    fn bad_entries_are_named() {
        for (s, want) in [
            (
                "192.168.1.0/33",
                AddrError::BadPrefix("192.168.1.0/33".into()),
            ),
            (
                "192.168.1.0/x",
                AddrError::BadPrefix("192.168.1.0/x".into()),
            ),
            ("192.168.300.0/24", AddrError::BadIp("192.168.300.0".into())),
            ("192.168.1.1", AddrError::BadEntry("192.168.1.1".into())),
            ("::/0", AddrError::TooLarge("::/0".into())),
            (
                "::ffff:10.0.0.1/128",
                AddrError::V4Mapped("::ffff:10.0.0.1".into()),
            ),
        ] {
            assert_eq!(Range::parse_entry(s), Err(want), "{s}");
        }
        assert!(Range::parse_exclusion("192.168.1.1").is_ok());
    }

    #[test]
    fn keys_round_trip_and_sort_by_family() {
        for s in [
            "0.0.0.0",
            "192.168.1.240",
            "255.255.255.255",
            "::1",
            "2001:db8::5",
        ] {
            let a: IpAddr = s.parse().expect("test address");
            let k = key(a);
            assert_eq!(ip(Family::of(a), k), a);
            assert_eq!(key_from_bytes(&key_bytes(k)), Some(k));
        }
        let lo = key_bytes(key("10.0.0.9".parse().expect("test address")));
        let hi = key_bytes(key("10.0.1.0".parse().expect("test address")));
        assert!(lo < hi, "byte order is address order");
    }

    #[test]
    fn buggy_counts_match_a_walk() {
        for s in [
            "192.168.0.0/24",
            "192.168.0.0/23",
            "10.0.0.250-10.0.2.3",
            "10.0.0.1-10.0.0.254",
            "0.0.0.0-0.0.1.0",
            "10.0.0.255/32",
        ] {
            let range = r(s);
            let walked = (range.start..=range.end)
                .filter(|k| is_buggy(Family::V4, *k))
                .count() as u128;
            assert_eq!(buggy_count(&range), walked, "{s}");
        }
        assert_eq!(buggy_count(&r("2001:db8::/120")), 0);
    }
}
