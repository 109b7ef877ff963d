//! ferrolb's Kubernetes adapter: MetalLB's custom resources and Service annotations, fed to the
//! allocator.

pub mod allocator;
pub mod config;
pub mod controller;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod pool_usage;
pub mod service;
pub mod status;
pub mod webhook;

/// MetalLB's custom resources, from the MetalLB model.
pub use ferrolb_metallb::crd;
#[cfg(test)]
pub(crate) mod testing;
