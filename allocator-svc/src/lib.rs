//! ferrolb's allocator: address pools and persistent leases with MetalLB's allocation semantics,
//! served over gRPC to Kubernetes adapters and external IPAM clients.

pub mod addr;
pub mod assignments;
pub mod bgp;
pub mod cluster;
pub mod election;
pub mod error;
pub mod grpc;
pub mod lease;
pub mod metrics;
pub mod pki;
pub mod pool;
pub mod secrets;
pub mod selector;
pub mod server;
pub mod state;
pub mod store;
pub mod tokens;
