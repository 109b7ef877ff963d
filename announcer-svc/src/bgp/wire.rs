//! BGP-4 messages on the wire (RFC 4271), with the parts ferrolb speaks: capabilities (RFC 5492),
//! multiprotocol IPv6 unicast (RFC 4760), 4-octet AS numbers (RFC 6793), communities (RFC 1997),
//! large communities (RFC 8092), route refresh (RFC 2918) and graceful restart (RFC 4724).
//!
//! Decoding never panics: every defect maps to the NOTIFICATION code and subcode the RFCs name
//! for it, with the data they ask for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 19;
pub const MAX_LEN: usize = 4096;
/// The 2-octet AS that stands for a 4-octet one (RFC 6793).
pub const AS_TRANS: u16 = 23456;

pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
pub const SAFI_UNICAST: u8 = 1;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 4486 for Cease subcodes).
pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;

    // Message Header Error subcodes.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
    // OPEN Message Error subcodes.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    // UPDATE Message Error subcodes.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    pub const INVALID_ORIGIN: u8 = 6;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;
    // Route-Refresh Message Error subcodes (RFC 7313).
    pub const INVALID_MESSAGE_LENGTH: u8 = 1;
    // Cease subcodes (RFC 4486).
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
}

/// A defect in a received message: what to put in the NOTIFICATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl WireError {
    fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> WireError {
        WireError {
            code,
            subcode,
            data: data.into(),
        }
    }

    fn update(subcode: u8) -> WireError {
        WireError::new(code::UPDATE, subcode, [])
    }

    pub fn notification(&self) -> Notification {
        Notification {
            code: self.code,
            subcode: self.subcode,
            data: self.data.clone(),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", describe(self.code, self.subcode))
    }
}

/// The RFC names of a NOTIFICATION code and subcode.
pub fn describe(c: u8, sub: u8) -> String {
    let (name, subs): (&str, &[&str]) = match c {
        code::HEADER => (
            "message header error",
            &[
                "",
                "connection not synchronized",
                "bad message length",
                "bad message type",
            ],
        ),
        code::OPEN => (
            "OPEN message error",
            &[
                "",
                "unsupported version number",
                "bad peer AS",
                "bad BGP identifier",
                "unsupported optional parameter",
                "",
                "unacceptable hold time",
                "unsupported capability",
            ],
        ),
        code::UPDATE => (
            "UPDATE message error",
            &[
                "",
                "malformed attribute list",
                "unrecognized well-known attribute",
                "missing well-known attribute",
                "attribute flags error",
                "attribute length error",
                "invalid ORIGIN attribute",
                "",
                "invalid NEXT_HOP attribute",
                "optional attribute error",
                "invalid network field",
                "malformed AS_PATH",
            ],
        ),
        code::HOLD_TIMER_EXPIRED => ("hold timer expired", &[]),
        code::FSM => ("finite state machine error", &[]),
        code::CEASE => (
            "cease",
            &[
                "",
                "maximum number of prefixes reached",
                "administrative shutdown",
                "peer de-configured",
                "administrative reset",
                "connection rejected",
                "other configuration change",
                "connection collision resolution",
                "out of resources",
                "hard reset",
            ],
        ),
        code::ROUTE_REFRESH => (
            "ROUTE-REFRESH message error",
            &["", "invalid message length"],
        ),
        _ => ("unknown error code", &[]),
    };
    match subs.get(usize::from(sub)).filter(|s| !s.is_empty()) {
        Some(s) => format!("{name} ({c}): {s} ({sub})"),
        None => format!("{name} ({c}/{sub})"),
    }
}

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

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.len);
        let bytes = usize::from(self.len).div_ceil(8);
        match self.addr {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..bytes]),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..bytes]),
        }
    }

    fn encoded_len(&self) -> usize {
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

/// Path attributes ferrolb sends (and the ones it reads back in tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attributes {
    /// The AS path as one AS_SEQUENCE (empty for iBGP).
    pub as_path: Vec<u32>,
    pub next_hop: Option<IpAddr>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
}

/// An UPDATE as ferrolb builds it; decoding fills what it understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub withdrawn: Vec<Prefix>,
    pub attributes: Option<Attributes>,
    pub announced: Vec<Prefix>,
    /// MP_UNREACH_NLRI for IPv6 unicast: the prefixes (an empty list with `mp_unreach` set is
    /// the IPv6 End-of-RIB marker).
    pub withdrawn_v6: Vec<Prefix>,
    pub mp_unreach: bool,
    /// MP_REACH_NLRI for IPv6 unicast.
    pub announced_v6: Vec<Prefix>,
}

impl Update {
    /// The End-of-RIB marker for a family (RFC 4724 §2).
    pub fn end_of_rib(afi: u16) -> Update {
        Update {
            mp_unreach: afi == AFI_IPV6,
            ..Update::default()
        }
    }

    pub fn is_end_of_rib(&self) -> bool {
        self.withdrawn.is_empty()
            && self.announced.is_empty()
            && self.withdrawn_v6.is_empty()
            && self.announced_v6.is_empty()
            && (self.attributes.is_none() || self.mp_unreach)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", describe(self.code, self.subcode))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh { afi: u16, safi: u8 },
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "open",
            Message::Update(_) => "update",
            Message::Notification(_) => "notification",
            Message::Keepalive => "keepalive",
            Message::RouteRefresh { .. } => "route-refresh",
        }
    }
}

/// Reads big-endian fields from a slice; running short is the caller's chosen error.
struct Reader<'a> {
    buf: &'a [u8],
    err: WireError,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], err: WireError) -> Reader<'a> {
        Reader { buf, err }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(self.err.clone());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// How many bytes the message at the start of `buf` takes, once its header has arrived: Ok(None)
/// while fewer than 19 bytes are there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|&b| b != 0xff) {
        return Err(WireError::new(
            code::HEADER,
            code::CONNECTION_NOT_SYNCHRONIZED,
            [],
        ));
    }
    let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    if !(HEADER_LEN..=MAX_LEN).contains(&len) {
        return Err(WireError::new(
            code::HEADER,
            code::BAD_MESSAGE_LENGTH,
            (len as u16).to_be_bytes(),
        ));
    }
    Ok(Some(len))
}

/// Decodes one whole message (header included); `four_octet` says whether AS numbers in paths
/// take four octets (both sides have the capability).
pub fn decode(msg: &[u8], four_octet: bool) -> Result<Message, WireError> {
    let len = frame_len(msg)?.ok_or_else(|| {
        WireError::new(
            code::HEADER,
            code::BAD_MESSAGE_LENGTH,
            (msg.len() as u16).to_be_bytes(),
        )
    })?;
    let bad_len = || {
        WireError::new(
            code::HEADER,
            code::BAD_MESSAGE_LENGTH,
            (len as u16).to_be_bytes(),
        )
    };
    if len != msg.len() {
        return Err(bad_len());
    }
    let body = &msg[HEADER_LEN..];
    match msg[18] {
        1 => {
            if len < 29 {
                return Err(bad_len());
            }
            decode_open(body).map(Message::Open)
        }
        2 => {
            if len < 23 {
                return Err(bad_len());
            }
            decode_update(body, four_octet).map(Message::Update)
        }
        3 => {
            if len < 21 {
                return Err(bad_len());
            }
            Ok(Message::Notification(Notification {
                code: body[0],
                subcode: body[1],
                data: body[2..].to_vec(),
            }))
        }
        4 => {
            if len != HEADER_LEN {
                return Err(bad_len());
            }
            Ok(Message::Keepalive)
        }
        5 => {
            if body.len() != 4 {
                return Err(WireError::new(
                    code::ROUTE_REFRESH,
                    code::INVALID_MESSAGE_LENGTH,
                    msg.to_vec(),
                ));
            }
            Ok(Message::RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                safi: body[3],
            })
        }
        t => Err(WireError::new(code::HEADER, code::BAD_MESSAGE_TYPE, [t])),
    }
}

fn decode_open(body: &[u8]) -> Result<Open, WireError> {
    // A short or inconsistent OPEN has no subcode of its own; RFC 4271 leaves it unspecific.
    let malformed = WireError::new(code::OPEN, 0, []);
    let mut r = Reader::new(body, malformed.clone());
    let version = r.u8()?;
    if version != 4 {
        return Err(WireError::new(
            code::OPEN,
            code::UNSUPPORTED_VERSION,
            4u16.to_be_bytes(),
        ));
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
            return Err(WireError::new(
                code::OPEN,
                code::UNSUPPORTED_OPTIONAL_PARAMETER,
                [],
            ));
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

fn decode_prefixes(mut buf: &[u8], v6: bool, err: &WireError) -> Result<Vec<Prefix>, WireError> {
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

fn decode_update(body: &[u8], four_octet: bool) -> Result<Update, WireError> {
    let list = WireError::update(code::MALFORMED_ATTRIBUTE_LIST);
    let mut r = Reader::new(body, list.clone());
    let wlen = usize::from(r.u16()?);
    let withdrawn = r.take(wlen)?;
    let alen = usize::from(r.u16()?);
    let attrs = r.take(alen)?;
    let nlri = r.buf;
    let network = WireError::update(code::INVALID_NETWORK_FIELD);
    let mut u = Update {
        withdrawn: decode_prefixes(withdrawn, false, &network)?,
        announced: decode_prefixes(nlri, false, &network)?,
        ..Update::default()
    };
    let mut a = Attributes::default();
    let mut seen = std::collections::BTreeSet::new();
    let mut r = Reader::new(attrs, list.clone());
    while !r.is_empty() {
        let flags = r.u8()?;
        let kind = r.u8()?;
        let len = if flags & 0x10 != 0 {
            usize::from(r.u16()?)
        } else {
            usize::from(r.u8()?)
        };
        let v = r.take(len)?;
        if !seen.insert(kind) {
            return Err(list);
        }
        // Well-known attributes must be transitive and not optional; optional ones optional.
        let attr_err = |sub: u8| {
            let mut data = vec![flags, kind];
            if flags & 0x10 != 0 {
                data.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                data.push(len as u8);
            }
            data.extend_from_slice(v);
            WireError::new(code::UPDATE, sub, data)
        };
        let well_known = matches!(kind, 1..=3 | 5 | 6);
        if well_known && flags & 0xc0 != 0x40 {
            return Err(attr_err(code::ATTRIBUTE_FLAGS_ERROR));
        }
        match kind {
            1 => {
                if len != 1 {
                    return Err(attr_err(code::ATTRIBUTE_LENGTH_ERROR));
                }
                if v[0] > 2 {
                    return Err(attr_err(code::INVALID_ORIGIN));
                }
            }
            2 => a.as_path = decode_as_path(v, four_octet)?,
            3 => {
                if len != 4 {
                    return Err(attr_err(code::ATTRIBUTE_LENGTH_ERROR));
                }
                a.next_hop = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3])));
            }
            4 | 5 => {
                if len != 4 {
                    return Err(attr_err(code::ATTRIBUTE_LENGTH_ERROR));
                }
                if kind == 5 {
                    a.local_pref = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                }
            }
            8 => {
                if len % 4 != 0 {
                    return Err(attr_err(code::ATTRIBUTE_LENGTH_ERROR));
                }
                a.communities = v
                    .chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
            }
            32 => {
                if len % 12 != 0 {
                    return Err(attr_err(code::ATTRIBUTE_LENGTH_ERROR));
                }
                a.large_communities = v
                    .chunks_exact(12)
                    .map(|c| {
                        let w = |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                        (w(0), w(4), w(8))
                    })
                    .collect();
            }
            14 => {
                let mut m = Reader::new(v, attr_err(code::ATTRIBUTE_LENGTH_ERROR));
                let afi = m.u16()?;
                let safi = m.u8()?;
                let nhlen = usize::from(m.u8()?);
                let nh = m.take(nhlen)?;
                m.u8()?;
                if afi == AFI_IPV6 && safi == SAFI_UNICAST {
                    if nhlen != 16 && nhlen != 32 {
                        return Err(attr_err(code::ATTRIBUTE_LENGTH_ERROR));
                    }
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&nh[..16]);
                    a.next_hop = Some(IpAddr::V6(Ipv6Addr::from(o)));
                    u.announced_v6 = decode_prefixes(m.buf, true, &network)?;
                }
            }
            15 => {
                let mut m = Reader::new(v, attr_err(code::ATTRIBUTE_LENGTH_ERROR));
                let afi = m.u16()?;
                let safi = m.u8()?;
                if afi == AFI_IPV6 && safi == SAFI_UNICAST {
                    u.mp_unreach = true;
                    u.withdrawn_v6 = decode_prefixes(m.buf, true, &network)?;
                }
            }
            _ => {}
        }
    }
    // Routes need ORIGIN and AS_PATH, and NEXT_HOP unless they came in MP_REACH_NLRI
    // (RFC 4271 §6.3, RFC 4760 §3); the data names the first one missing.
    let mut required = Vec::new();
    if !u.announced.is_empty() || !u.announced_v6.is_empty() {
        required.extend([1, 2]);
    }
    if !u.announced.is_empty() {
        required.push(3);
    }
    if let Some(&missing) = required.iter().find(|k| !seen.contains(*k)) {
        return Err(WireError::new(
            code::UPDATE,
            code::MISSING_WELL_KNOWN_ATTRIBUTE,
            [missing],
        ));
    }
    if !attrs.is_empty() {
        u.attributes = Some(a);
    }
    Ok(u)
}

/// AS_PATH segments flattened.
fn decode_as_path(v: &[u8], four_octet: bool) -> Result<Vec<u32>, WireError> {
    let err = WireError::update(code::MALFORMED_AS_PATH);
    let mut r = Reader::new(v, err.clone());
    let mut out = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let n = r.u8()?;
        if !(1..=4).contains(&kind) || n == 0 {
            return Err(err);
        }
        for _ in 0..n {
            out.push(if four_octet {
                r.u32()?
            } else {
                u32::from(r.u16()?)
            });
        }
    }
    Ok(out)
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
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

fn push_attr(out: &mut Vec<u8>, flags: u8, kind: u8, value: &[u8]) {
    if value.len() > 255 {
        out.extend_from_slice(&[flags | 0x10, kind]);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, kind, value.len() as u8]);
    }
    out.extend_from_slice(value);
}

/// Encodes the path attributes; `four_octet` says whether the peer takes 4-octet AS numbers.
fn encode_attributes(a: &Attributes, four_octet: bool, v6: &[Prefix], out: &mut Vec<u8>) {
    push_attr(out, 0x40, 1, &[0]); // ORIGIN IGP
    let mut path = Vec::new();
    let mut as4 = Vec::new();
    if !a.as_path.is_empty() {
        path.extend_from_slice(&[2, a.as_path.len() as u8]);
        as4.extend_from_slice(&[2, a.as_path.len() as u8]);
        for asn in &a.as_path {
            if four_octet {
                path.extend_from_slice(&asn.to_be_bytes());
            } else {
                let two = u16::try_from(*asn).unwrap_or(AS_TRANS);
                path.extend_from_slice(&two.to_be_bytes());
                as4.extend_from_slice(&asn.to_be_bytes());
            }
        }
    }
    push_attr(out, 0x40, 2, &path);
    if let Some(IpAddr::V4(nh)) = a.next_hop
        && v6.is_empty()
    {
        push_attr(out, 0x40, 3, &nh.octets());
    }
    if let Some(lp) = a.local_pref {
        push_attr(out, 0x40, 5, &lp.to_be_bytes());
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        push_attr(out, 0xc0, 8, &v);
    }
    if !v6.is_empty() {
        let mut v = AFI_IPV6.to_be_bytes().to_vec();
        v.push(SAFI_UNICAST);
        match a.next_hop {
            Some(IpAddr::V6(nh)) => {
                v.push(16);
                v.extend_from_slice(&nh.octets());
            }
            _ => v.push(0),
        }
        v.push(0);
        for p in v6 {
            p.encode(&mut v);
        }
        push_attr(out, 0x80, 14, &v);
    }
    // AS4_PATH only where a 2-octet path had to stand in for a 4-octet AS.
    if !four_octet && a.as_path.iter().any(|&x| x > u32::from(u16::MAX)) {
        push_attr(out, 0xc0, 17, &as4);
    }
    if !a.large_communities.is_empty() {
        let v: Vec<u8> = a
            .large_communities
            .iter()
            .flat_map(|(g, l1, l2)| [g.to_be_bytes(), l1.to_be_bytes(), l2.to_be_bytes()])
            .flatten()
            .collect();
        push_attr(out, 0xc0, 32, &v);
    }
}

/// Encodes a message; `four_octet` matters only for UPDATEs.
pub fn encode(m: &Message, four_octet: bool) -> Vec<u8> {
    match m {
        Message::Open(o) => {
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
        Message::Update(u) => {
            let mut b = Vec::new();
            let mut w = Vec::new();
            for p in &u.withdrawn {
                p.encode(&mut w);
            }
            b.extend_from_slice(&(w.len() as u16).to_be_bytes());
            b.extend_from_slice(&w);
            let mut attrs = Vec::new();
            if let Some(a) = &u.attributes {
                encode_attributes(a, four_octet, &u.announced_v6, &mut attrs);
            }
            if u.mp_unreach || !u.withdrawn_v6.is_empty() {
                let mut v = AFI_IPV6.to_be_bytes().to_vec();
                v.push(SAFI_UNICAST);
                for p in &u.withdrawn_v6 {
                    p.encode(&mut v);
                }
                push_attr(&mut attrs, 0x80, 15, &v);
            }
            b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
            b.extend_from_slice(&attrs);
            for p in &u.announced {
                p.encode(&mut b);
            }
            frame(2, &b)
        }
        Message::Notification(n) => {
            let mut b = vec![n.code, n.subcode];
            b.extend_from_slice(&n.data);
            frame(3, &b)
        }
        Message::Keepalive => frame(4, &[]),
        Message::RouteRefresh { afi, safi } => {
            let mut b = afi.to_be_bytes().to_vec();
            b.extend_from_slice(&[0, *safi]);
            frame(5, &b)
        }
    }
}

/// Room for NLRI in an UPDATE that carries `a` (bytes left under the 4096-byte limit).
pub fn nlri_room(a: &Attributes, four_octet: bool, v6: bool) -> usize {
    let mut attrs = Vec::new();
    // The MP_REACH attribute grows with its NLRI; reserve its extended header.
    encode_attributes(a, four_octet, &[], &mut attrs);
    let mp = if v6 { 4 + 3 + 1 + 16 + 1 } else { 0 };
    MAX_LEN - HEADER_LEN - 4 - attrs.len() - mp
}

/// Splits prefixes into chunks whose encoding fits in `room` bytes.
pub fn chunks(prefixes: &[Prefix], room: usize) -> Vec<Vec<Prefix>> {
    let mut out: Vec<Vec<Prefix>> = Vec::new();
    let mut used = room;
    for p in prefixes {
        let n = p.encoded_len();
        if used + n > room {
            out.push(Vec::new());
            used = 0;
        }
        used += n;
        if let Some(last) = out.last_mut() {
            last.push(*p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().expect("test prefix")
    }

    fn roundtrip(m: &Message, four: bool) -> Message {
        decode(&encode(m, four), four).expect("decodes")
    }

    #[test]
    fn open_roundtrip_with_every_capability() {
        let o = Message::Open(Open {
            version: 4,
            my_as: AS_TRANS,
            hold_time: 90,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            capabilities: vec![
                Capability::Multiprotocol {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                },
                Capability::Multiprotocol {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                },
                Capability::RouteRefresh,
                Capability::GracefulRestart(GracefulRestart {
                    restarting: true,
                    restart_time: 120,
                    families: vec![(AFI_IPV4, 1, true), (AFI_IPV6, 1, false)],
                }),
                Capability::FourOctetAs(4_200_000_000),
            ],
        });
        let back = roundtrip(&o, true);
        assert_eq!(back, o);
        let Message::Open(b) = back else {
            unreachable!()
        };
        assert_eq!(b.asn(), 4_200_000_000);
    }

    #[test]
    fn update_roundtrip_v4_and_v6() {
        let a = Attributes {
            as_path: vec![64513],
            next_hop: Some("10.0.0.11".parse().expect("ip")),
            local_pref: Some(100),
            communities: vec![(65000 << 16) | 100],
            large_communities: vec![(65000, 1, 2)],
        };
        let u = Message::Update(Update {
            attributes: Some(a.clone()),
            announced: vec![p("192.0.2.10/32"), p("198.51.100.0/24")],
            withdrawn: vec![p("192.0.2.11/32")],
            ..Update::default()
        });
        assert_eq!(roundtrip(&u, true), u);
        let u6 = Message::Update(Update {
            attributes: Some(Attributes {
                next_hop: Some("fd00::11".parse().expect("ip")),
                ..a
            }),
            announced_v6: vec![p("fd00:251::200/128"), p("2001:db8::/64")],
            withdrawn_v6: vec![p("2001:db8:1::/48")],
            mp_unreach: true,
            ..Update::default()
        });
        assert_eq!(roundtrip(&u6, true), u6);
    }

    #[test]
    fn two_octet_peers_get_as_trans_and_as4_path() {
        let u = Message::Update(Update {
            attributes: Some(Attributes {
                as_path: vec![4_200_000_000],
                next_hop: Some("10.0.0.11".parse().expect("ip")),
                ..Attributes::default()
            }),
            announced: vec![p("192.0.2.10/32")],
            ..Update::default()
        });
        let bytes = encode(&u, false);
        // AS_PATH [AS_TRANS] as 2 octets, then AS4_PATH (type 17) with the real AS.
        let trans = [2u8, 1, 0x5b, 0xa0];
        assert!(bytes.windows(4).any(|w| w == trans));
        assert!(bytes.windows(2).any(|w| w == [0xc0, 17]));
    }

    #[test]
    fn end_of_rib_markers() {
        let v4 = roundtrip(&Message::Update(Update::end_of_rib(AFI_IPV4)), true);
        let v6 = roundtrip(&Message::Update(Update::end_of_rib(AFI_IPV6)), true);
        for m in [v4, v6] {
            let Message::Update(u) = m else {
                unreachable!()
            };
            assert!(u.is_end_of_rib());
        }
        assert_eq!(
            encode(&Message::Update(Update::end_of_rib(1)), true).len(),
            23
        );
    }

    #[test]
    fn defects_map_to_their_notifications() {
        let ka = encode(&Message::Keepalive, true);
        let mut bad = ka.clone();
        bad[3] = 0;
        assert_eq!(frame_len(&bad).unwrap_err().subcode, 1);
        let mut long = ka.clone();
        long[17] = 20;
        long.push(0);
        let e = decode(&long, true).unwrap_err();
        assert_eq!((e.code, e.subcode, e.data), (1, 2, vec![0, 20]));
        let mut kind = ka.clone();
        kind[18] = 9;
        assert_eq!(decode(&kind, true).unwrap_err(), WireError::new(1, 3, [9]));
        let mut short = ka;
        short[17] = 18;
        assert_eq!(frame_len(&short).unwrap_err().subcode, 2);

        let open = |version: u8, params: &[u8]| {
            let mut b = vec![version, 0xfc, 0x01, 0, 90, 10, 0, 0, 1, params.len() as u8];
            b.extend_from_slice(params);
            frame(1, &b)
        };
        let e = decode(&open(3, &[]), true).unwrap_err();
        assert_eq!((e.code, e.subcode, e.data), (2, 1, vec![0, 4]));
        assert_eq!(decode(&open(4, &[1, 0]), true).unwrap_err().subcode, 4);
        assert_eq!(decode(&open(4, &[2, 5, 1]), true).unwrap_err().code, 2);

        // ORIGIN with a bad value, and with wrong flags.
        let upd = |attrs: &[u8]| {
            let mut b = vec![0, 0, 0, attrs.len() as u8];
            b.extend_from_slice(attrs);
            frame(2, &b)
        };
        assert_eq!(decode(&upd(&[0x40, 1, 1, 7]), true).unwrap_err().subcode, 6);
        assert_eq!(decode(&upd(&[0x80, 1, 1, 0]), true).unwrap_err().subcode, 4);
        assert_eq!(
            decode(&upd(&[0x40, 3, 3, 1, 2, 3]), true)
                .unwrap_err()
                .subcode,
            5
        );
        // An attribute longer than the list.
        assert_eq!(decode(&upd(&[0x40, 1, 9, 0]), true).unwrap_err().subcode, 1);
        // A prefix longer than 32 bits.
        let mut b = vec![0, 0, 0, 0, 33, 1, 2, 3, 4, 5];
        b = frame(2, &std::mem::take(&mut b));
        assert_eq!(decode(&b, true).unwrap_err().subcode, 10);
        // Routes without a mandatory attribute: the first one missing is named.
        let routes = |attrs: &[u8]| {
            let mut b = vec![0, 0, 0, attrs.len() as u8];
            b.extend_from_slice(attrs);
            b.extend_from_slice(&[8, 10]);
            frame(2, &b)
        };
        let e = decode(&routes(&[0x40, 1, 1, 0]), true).unwrap_err();
        assert_eq!((e.code, e.subcode, e.data), (3, 3, vec![2]));
        let e = decode(&routes(&[0x40, 1, 1, 0, 0x40, 2, 0]), true).unwrap_err();
        assert_eq!((e.code, e.subcode, e.data), (3, 3, vec![3]));
        let ok = routes(&[0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 10, 0, 0, 1]);
        assert!(decode(&ok, true).is_ok());
        // A route refresh of the wrong length.
        assert_eq!(decode(&frame(5, &[0, 1, 0]), true).unwrap_err().code, 7);
    }

    #[test]
    fn chunks_fit_the_message() {
        let prefixes: Vec<Prefix> = (0..2000u32)
            .map(|i| Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32).expect("p"))
            .collect();
        let a = Attributes {
            next_hop: Some("10.0.0.11".parse().expect("ip")),
            ..Attributes::default()
        };
        let room = nlri_room(&a, true, false);
        let parts = chunks(&prefixes, room);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 2000);
        for part in parts {
            let m = encode(
                &Message::Update(Update {
                    attributes: Some(a.clone()),
                    announced: part,
                    ..Update::default()
                }),
                true,
            );
            assert!(m.len() <= MAX_LEN);
        }
    }

    #[test]
    fn prefixes_are_masked() {
        assert_eq!(p("192.0.2.77/24").to_string(), "192.0.2.0/24");
        assert_eq!(p("fd00::1/64").to_string(), "fd00::/64");
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
    }
}
