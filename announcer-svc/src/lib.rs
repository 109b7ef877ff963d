//! ferrolb's node agent: it makes the network deliver the service addresses the allocator
//! assigns to its node.

pub mod l2;
pub mod packet;
