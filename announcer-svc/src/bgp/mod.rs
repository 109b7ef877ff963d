//! BGP mode: one session per BGPPeer that selects this node, each advertising the prefixes the
//! allocator assigned to it for that peer.

pub mod fsm;
pub mod rib;
pub mod socket;
pub mod speaker;
pub mod wire;
