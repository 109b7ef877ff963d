//! Bidirectional Forwarding Detection (RFC 5880; single hop RFC 5881, multihop RFC 5883): the
//! Control packet ([`packet`]), the session state machine without I/O ([`session`]) in the style
//! of the BGP speaker's, and the UDP shell that runs the node's sessions ([`runner`],
//! [`socket`]).

pub mod packet;
pub mod runner;
pub mod session;
pub mod socket;

/// A BFDProfile as a BGP peer's session runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub config: session::Config,
    /// Multihop sessions: the least TTL accepted.
    pub minimum_ttl: u8,
}

#[cfg(test)]
mod tests;

/// The UDP port of single-hop Control packets (RFC 5881 §4).
pub const SINGLE_HOP_PORT: u16 = 3784;
/// The UDP port of multihop Control packets (RFC 5883 §3).
pub const MULTIHOP_PORT: u16 = 4784;
/// Single-hop packets are sent with TTL 255 and accepted only with it (RFC 5881 §5, GTSM).
pub const SINGLE_HOP_TTL: u8 = 255;
