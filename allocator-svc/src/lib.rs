//! ferrolb's allocator: address pools and persistent leases with MetalLB's allocation semantics,
//! served over gRPC to Kubernetes adapters and external IPAM clients.

pub mod addr;
pub mod error;
pub mod lease;
pub mod pool;
pub mod selector;
pub mod store;
