//! MetalLB's configuration as ferrolb reads it, behind every door: the CRD types and their
//! defaults ([`crd`]), one parser per value type ([`parse`]), MetalLB's rules per kind
//! ([`validate`]), ferrolb's annotations ([`annotations`]), files ([`yaml`]) and the conversion
//! to ferrolb's API ([`convert`]). `ferrolbctl apply` and the Kubernetes adapter both go through
//! [`validate::check`], so one YAML gets one verdict.
//!
//! No I/O, no async: the crate is rules and types only.

pub mod admission;
pub mod annotations;
pub mod convert;
pub mod crd;
pub mod object;
pub mod parse;
#[cfg(test)]
mod property_tests;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
pub mod yaml;

pub use object::{Config, Object, Rejection, kind, verdict, verdicts, waiting};
