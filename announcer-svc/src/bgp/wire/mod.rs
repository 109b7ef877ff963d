//! BGP-4 messages on the wire (RFC 4271), with the parts ferrolb speaks: capabilities (RFC 5492),
//! multiprotocol IPv6 unicast (RFC 4760), 4-octet AS numbers (RFC 6793), communities (RFC 1997),
//! large communities (RFC 8092), route refresh (RFC 2918) and graceful restart (RFC 4724). One
//! module per message, each with the RFC's diagram.
//!
//! Every message starts with the header (RFC 4271 §4.1):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                                                               +
//! |                           Marker                              |
//! +                        (16 octets of 1)                       +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Types: 1 OPEN, 2 UPDATE, 3 NOTIFICATION, 4 KEEPALIVE (the header alone), 5 ROUTE-REFRESH
//! (AFI, a reserved octet, SAFI). Decoding never panics: every defect is a [`DecodeError`], which
//! names the NOTIFICATION the RFCs ask for.

mod error;
mod notification;
mod open;
mod prefix;
#[cfg(test)]
mod tests;
mod update;

pub use error::{DecodeError, code, describe};
pub use notification::Notification;
pub use open::{Capability, GracefulRestart, Open};
pub use prefix::Prefix;
pub use update::{Attributes, Update, chunks, nlri_room};

pub const HEADER_LEN: usize = 19;
pub const MAX_LEN: usize = 4096;
/// The 2-octet AS that stands for a 4-octet one (RFC 6793).
pub const AS_TRANS: u16 = 23456;

pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
pub const SAFI_UNICAST: u8 = 1;

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
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    err: DecodeError,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], err: DecodeError) -> Reader<'a> {
        Reader { buf, err }
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.err.clone());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// How many bytes the message at the start of `buf` takes, once its header has arrived: Ok(None)
/// while fewer than 19 bytes are there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|&b| b != 0xff) {
        return Err(DecodeError::NotSynchronized);
    }
    let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    if !(HEADER_LEN..=MAX_LEN).contains(&len) {
        return Err(DecodeError::BadLength(len as u16));
    }
    Ok(Some(len))
}

/// Decodes one whole message (header included); `four_octet` says whether AS numbers in paths
/// take four octets (both sides have the capability).
pub fn decode(msg: &[u8], four_octet: bool) -> Result<Message, DecodeError> {
    let len = frame_len(msg)?.ok_or(DecodeError::BadLength(msg.len() as u16))?;
    let bad_len = || DecodeError::BadLength(len as u16);
    if len != msg.len() {
        return Err(bad_len());
    }
    let body = &msg[HEADER_LEN..];
    match msg[18] {
        1 => {
            if len < 29 {
                return Err(bad_len());
            }
            open::decode_open(body).map(Message::Open)
        }
        2 => {
            if len < 23 {
                return Err(bad_len());
            }
            update::decode_update(body, four_octet).map(Message::Update)
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
                return Err(DecodeError::RouteRefreshLength(msg.to_vec()));
            }
            Ok(Message::RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                safi: body[3],
            })
        }
        t => Err(DecodeError::BadType(t)),
    }
}

/// A message: the header, then `body`.
pub(super) fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Encodes a message; `four_octet` matters only for UPDATEs.
pub fn encode(m: &Message, four_octet: bool) -> Vec<u8> {
    match m {
        Message::Open(o) => open::encode_open(o),
        Message::Update(u) => update::encode_update(u, four_octet),
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
