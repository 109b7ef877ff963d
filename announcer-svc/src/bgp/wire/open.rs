//! OPEN (RFC 4271 §4.2) with its capabilities (RFC 5492): multiprotocol (RFC 4760), route
//! refresh (RFC 2918), graceful restart (RFC 4724), 4-octet AS numbers (RFC 6793).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+
//! |    Version    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     My Autonomous System      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Hold Time           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         BGP Identifier                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Opt Parm Len  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |             Optional Parameters (variable)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Each optional parameter is (type 2 = capabilities, length, value); each capability is (code,
//! length, value).

use std::net::Ipv4Addr;

use super::{DecodeError, Reader, frame};

/// Capabilities of an OPEN (RFC 5492); unknown ones are kept by code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    Multiprotocol { afi: u16, safi: u8 },
    RouteRefresh,
    GracefulRestart(GracefulRestart),
    FourOctetAs(u32),
    Other { code: u8, value: Vec<u8> },
}

/// The graceful restart capability (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R: the sender has restarted.
    pub restarting: bool,
    /// Seconds the peer should keep the sender's routes after the session drops (12 bits).
    pub restart_time: u16,
    /// (AFI, SAFI, forwarding state preserved).
    pub families: Vec<(u16, u8, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-octet AS field (AS_TRANS for a 4-octet AS).
    pub my_as: u16,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The sender's AS: the 4-octet capability's, else the 2-octet field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }

    pub fn has(&self, want: &Capability) -> bool {
        self.capabilities.iter().any(|c| c == want)
    }

    pub fn four_octet(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(g) => Some(g),
            _ => None,
        })
    }
}

pub(super) fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    // A short or inconsistent OPEN has no subcode of its own; RFC 4271 leaves it unspecific.
    let malformed = DecodeError::MalformedOpen;
    let mut r = Reader::new(body, malformed.clone());
    let version = r.u8()?;
    if version != 4 {
        return Err(DecodeError::UnsupportedVersion);
    }
    let my_as = r.u16()?;
    let hold_time = r.u16()?;
    let router_id = Ipv4Addr::from(r.u32()?);
    let params_len = usize::from(r.u8()?);
    let params = r.take(params_len)?;
    if !r.is_empty() {
        return Err(malformed);
    }
    let mut capabilities = Vec::new();
    let mut p = Reader::new(params, malformed.clone());
    while !p.is_empty() {
        let kind = p.u8()?;
        let plen = usize::from(p.u8()?);
        let value = p.take(plen)?;
        if kind != 2 {
            return Err(DecodeError::UnsupportedOptionalParameter);
        }
        let mut c = Reader::new(value, malformed.clone());
        while !c.is_empty() {
            let ccode = c.u8()?;
            let clen = usize::from(c.u8()?);
            let v = c.take(clen)?;
            capabilities.push(decode_capability(ccode, v).ok_or_else(|| malformed.clone())?);
        }
    }
    Ok(Open {
        version,
        my_as,
        hold_time,
        router_id,
        capabilities,
    })
}

fn decode_capability(ccode: u8, v: &[u8]) -> Option<Capability> {
    Some(match ccode {
        1 => {
            if v.len() != 4 {
                return None;
            }
            Capability::Multiprotocol {
                afi: u16::from_be_bytes([v[0], v[1]]),
                safi: v[3],
            }
        }
        2 if v.is_empty() => Capability::RouteRefresh,
        64 => {
            if v.len() < 2 || !(v.len() - 2).is_multiple_of(4) {
                return None;
            }
            let head = u16::from_be_bytes([v[0], v[1]]);
            Capability::GracefulRestart(GracefulRestart {
                restarting: head & 0x8000 != 0,
                restart_time: head & 0x0fff,
                families: v[2..]
                    .chunks_exact(4)
                    .map(|f| (u16::from_be_bytes([f[0], f[1]]), f[2], f[3] & 0x80 != 0))
                    .collect(),
            })
        }
        65 => {
            if v.len() != 4 {
                return None;
            }
            Capability::FourOctetAs(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        }
        _ => Capability::Other {
            code: ccode,
            value: v.to_vec(),
        },
    })
}

fn encode_capability(c: &Capability, out: &mut Vec<u8>) {
    let (ccode, value): (u8, Vec<u8>) = match c {
        Capability::Multiprotocol { afi, safi } => {
            let mut v = afi.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, *safi]);
            (1, v)
        }
        Capability::RouteRefresh => (2, vec![]),
        Capability::GracefulRestart(g) => {
            let head = (if g.restarting { 0x8000 } else { 0 }) | (g.restart_time & 0x0fff);
            let mut v = head.to_be_bytes().to_vec();
            for (afi, safi, fwd) in &g.families {
                v.extend_from_slice(&afi.to_be_bytes());
                v.extend_from_slice(&[*safi, if *fwd { 0x80 } else { 0 }]);
            }
            (64, v)
        }
        Capability::FourOctetAs(a) => (65, a.to_be_bytes().to_vec()),
        Capability::Other { code, value } => (*code, value.clone()),
    };
    out.push(ccode);
    out.push(value.len() as u8);
    out.extend_from_slice(&value);
}

/// The OPEN as a whole message.
pub(super) fn encode_open(o: &Open) -> Vec<u8> {
    let mut caps = Vec::new();
    for c in &o.capabilities {
        encode_capability(c, &mut caps);
    }
    let mut b = vec![o.version];
    b.extend_from_slice(&o.my_as.to_be_bytes());
    b.extend_from_slice(&o.hold_time.to_be_bytes());
    b.extend_from_slice(&o.router_id.octets());
    if caps.is_empty() {
        b.push(0);
    } else {
        b.push(caps.len() as u8 + 2);
        b.extend_from_slice(&[2, caps.len() as u8]);
        b.extend_from_slice(&caps);
    }
    frame(1, &b)
}
