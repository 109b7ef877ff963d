//! ferrolb's Kubernetes adapter: MetalLB's custom resources and Service annotations, fed to the
//! allocator.

pub mod bgp;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod service;
pub mod validate;
