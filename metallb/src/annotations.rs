//! ferrolb's own settings on MetalLB objects ride along as annotations, so that a file stays
//! valid for MetalLB:
//! - `ferrolb.io/clusters` on an IPAddressPool: the clusters that may draw from it, comma
//!   separated (a cluster's adapter may name only clusters an operator already opened it to);
//! - `ferrolb.io/clients`: the external IPAM clients that may draw from it;
//! - `ferrolb.io/excluded-addresses`: addresses, CIDRs or ranges never handed out.

use std::collections::BTreeMap;

pub const CLUSTERS: &str = "ferrolb.io/clusters";
pub const CLIENTS: &str = "ferrolb.io/clients";
pub const EXCLUDED_ADDRESSES: &str = "ferrolb.io/excluded-addresses";

/// The comma-separated list an annotation holds (empty when absent).
pub fn list(annotations: &BTreeMap<String, String>, key: &str) -> Vec<String> {
    annotations
        .get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}
