//! ferrolb's node agent: it makes the network deliver the service addresses the allocator
//! assigns to its node.

pub mod agent;
pub mod bgp;
pub mod bind;
pub mod defense;
pub mod l2;
pub mod links;
pub mod metrics;
pub mod packet;
pub mod stream;
