//! UPDATE (RFC 4271 §4.3) with the attributes ferrolb sends and reads: ORIGIN, AS_PATH (with
//! AS4_PATH, RFC 6793), NEXT_HOP, LOCAL_PREF, COMMUNITIES (RFC 1997), LARGE_COMMUNITY (RFC 8092),
//! MP_REACH_NLRI and MP_UNREACH_NLRI for IPv6 unicast (RFC 4760).
//!
//! ```text
//! +-----------------------------------------------------+
//! |   Withdrawn Routes Length (2 octets)                |
//! +-----------------------------------------------------+
//! |   Withdrawn Routes (variable)                       |
//! +-----------------------------------------------------+
//! |   Total Path Attribute Length (2 octets)            |
//! +-----------------------------------------------------+
//! |   Path Attributes (variable)                        |
//! +-----------------------------------------------------+
//! |   Network Layer Reachability Information (variable) |
//! +-----------------------------------------------------+
//! ```
//!
//! Each path attribute is (flags, type, length of 1 octet, or 2 with the Extended Length flag,
//! value).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::prefix::decode_prefixes;
use super::{
    AFI_IPV6, AS_TRANS, DecodeError, HEADER_LEN, MAX_LEN, Prefix, Reader, SAFI_UNICAST, frame,
};

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

/// An attribute as it came, for the data of its NOTIFICATION (RFC 4271 §6.3).
struct Attribute<'a> {
    flags: u8,
    kind: u8,
    value: &'a [u8],
}

impl Attribute<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut data = vec![self.flags, self.kind];
        if self.flags & 0x10 != 0 {
            data.extend_from_slice(&(self.value.len() as u16).to_be_bytes());
        } else {
            data.push(self.value.len() as u8);
        }
        data.extend_from_slice(self.value);
        data
    }

    fn length_error(&self) -> DecodeError {
        DecodeError::AttributeLength(self.bytes())
    }

    /// The value as 4-octet words, its length a multiple of `width` words' octets.
    fn words(&self, width: usize) -> Result<Vec<u32>, DecodeError> {
        if !self.value.len().is_multiple_of(4 * width) {
            return Err(self.length_error());
        }
        Ok(self
            .value
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

pub(super) fn decode_update(body: &[u8], four_octet: bool) -> Result<Update, DecodeError> {
    let mut r = Reader::new(body, DecodeError::MalformedAttributeList);
    let wlen = usize::from(r.u16()?);
    let withdrawn = r.take(wlen)?;
    let alen = usize::from(r.u16()?);
    let attrs = r.take(alen)?;
    let nlri = r.buf;
    let network = DecodeError::InvalidNetworkField;
    let mut u = Update {
        withdrawn: decode_prefixes(withdrawn, false, &network)?,
        announced: decode_prefixes(nlri, false, &network)?,
        ..Update::default()
    };
    let mut a = Attributes::default();
    let mut seen = BTreeSet::new();
    let mut r = Reader::new(attrs, DecodeError::MalformedAttributeList);
    while !r.is_empty() {
        let flags = r.u8()?;
        let kind = r.u8()?;
        let len = if flags & 0x10 != 0 {
            usize::from(r.u16()?)
        } else {
            usize::from(r.u8()?)
        };
        let value = r.take(len)?;
        if !seen.insert(kind) {
            return Err(DecodeError::MalformedAttributeList);
        }
        decode_attribute(
            &Attribute { flags, kind, value },
            four_octet,
            &mut a,
            &mut u,
        )?;
    }
    mandatory_present(&u, &seen)?;
    if !attrs.is_empty() {
        u.attributes = Some(a);
    }
    Ok(u)
}

/// One path attribute into the attributes (or the IPv6 routes) of the UPDATE.
fn decode_attribute(
    at: &Attribute<'_>,
    four_octet: bool,
    a: &mut Attributes,
    u: &mut Update,
) -> Result<(), DecodeError> {
    let v = at.value;
    // Well-known attributes must be transitive and not optional.
    let well_known = matches!(at.kind, 1..=3 | 5 | 6);
    if well_known && at.flags & 0xc0 != 0x40 {
        return Err(DecodeError::AttributeFlags(at.bytes()));
    }
    match at.kind {
        1 if v.len() != 1 => return Err(at.length_error()),
        1 if v[0] > 2 => return Err(DecodeError::InvalidOrigin(at.bytes())),
        2 => a.as_path = decode_as_path(v, four_octet)?,
        3..=5 if v.len() != 4 => return Err(at.length_error()),
        3 => a.next_hop = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        5 => a.local_pref = at.words(1)?.first().copied(),
        8 => a.communities = at.words(1)?,
        32 => {
            a.large_communities = at
                .words(3)?
                .chunks_exact(3)
                .map(|w| (w[0], w[1], w[2]))
                .collect()
        }
        14 => decode_mp_reach(at, a, u)?,
        15 => {
            let mut m = Reader::new(v, at.length_error());
            let (afi, safi) = (m.u16()?, m.u8()?);
            if afi == AFI_IPV6 && safi == SAFI_UNICAST {
                u.mp_unreach = true;
                u.withdrawn_v6 = decode_prefixes(m.buf, true, &DecodeError::InvalidNetworkField)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// MP_REACH_NLRI: IPv6 unicast routes and their next hop (global, or global and link-local).
fn decode_mp_reach(
    at: &Attribute<'_>,
    a: &mut Attributes,
    u: &mut Update,
) -> Result<(), DecodeError> {
    let mut m = Reader::new(at.value, at.length_error());
    let afi = m.u16()?;
    let safi = m.u8()?;
    let nhlen = usize::from(m.u8()?);
    let nh = m.take(nhlen)?;
    m.u8()?;
    if afi == AFI_IPV6 && safi == SAFI_UNICAST {
        if nhlen != 16 && nhlen != 32 {
            return Err(at.length_error());
        }
        let mut o = [0u8; 16];
        o.copy_from_slice(&nh[..16]);
        a.next_hop = Some(IpAddr::V6(Ipv6Addr::from(o)));
        u.announced_v6 = decode_prefixes(m.buf, true, &DecodeError::InvalidNetworkField)?;
    }
    Ok(())
}

/// Routes need ORIGIN and AS_PATH, and NEXT_HOP unless they came in MP_REACH_NLRI (RFC 4271
/// §6.3, RFC 4760 §3); the data names the first one missing.
fn mandatory_present(u: &Update, seen: &BTreeSet<u8>) -> Result<(), DecodeError> {
    let mut required = Vec::new();
    if !u.announced.is_empty() || !u.announced_v6.is_empty() {
        required.extend([1, 2]);
    }
    if !u.announced.is_empty() {
        required.push(3);
    }
    match required.iter().find(|k| !seen.contains(*k)) {
        Some(&missing) => Err(DecodeError::MissingWellKnownAttribute(missing)),
        None => Ok(()),
    }
}

/// AS_PATH segments flattened.
fn decode_as_path(v: &[u8], four_octet: bool) -> Result<Vec<u32>, DecodeError> {
    let err = DecodeError::MalformedAsPath;
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

/// The UPDATE as a whole message.
pub(super) fn encode_update(u: &Update, four_octet: bool) -> Vec<u8> {
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
