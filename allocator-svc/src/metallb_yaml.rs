//! MetalLB's IPAddressPool and L2Advertisement YAML, as users write it, translated to ferrolb's
//! API messages.
//!
//! The MetalLB fields are read exactly (unknown spec fields are refused, so a typo is not silently
//! ignored). ferrolb's own pool settings ride along as annotations, so the file stays valid for
//! MetalLB:
//! - `ferrolb.io/clusters`: clusters that may draw from the pool, comma separated;
//! - `ferrolb.io/clients`: external IPAM clients that may draw from it;
//! - `ferrolb.io/excluded-addresses`: addresses, CIDRs or ranges never handed out.

use std::collections::{BTreeMap, HashMap};

use ferrolb_proto::v1 as pb;
use serde::Deserialize;

/// A document of a multi-document YAML file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_yaml::Value,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    labels: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IpAddressPoolSpec {
    addresses: Vec<String>,
    auto_assign: Option<bool>,
    #[serde(rename = "avoidBuggyIPs")]
    avoid_buggy_ips: Option<bool>,
    service_allocation: Option<ServiceAllocation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct L2AdvertisementSpec {
    #[serde(default)]
    ip_address_pools: Vec<String>,
    #[serde(default)]
    ip_address_pool_selectors: Vec<Selector>,
    #[serde(default)]
    node_selectors: Vec<Selector>,
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    service_selectors: Vec<Selector>,
    #[serde(default)]
    preferred_node_selectors: Vec<PreferredNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferredNode {
    weight: u32,
    preference: Selector,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceAllocation {
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    namespace_selectors: Vec<Selector>,
    #[serde(default)]
    service_selectors: Vec<Selector>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    #[serde(default)]
    match_labels: HashMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<Expression>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expression {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

/// What a YAML file holds for the allocator.
#[derive(Debug, Default)]
pub struct Parsed {
    pub pools: Vec<pb::Pool>,
    /// With an empty cluster: the caller says which cluster they belong to.
    pub l2_advertisements: Vec<pb::L2Advertisement>,
    /// `Kind/name` of documents the allocator does not take, for the caller to report.
    pub skipped: Vec<String>,
}

fn selectors(s: Vec<Selector>) -> Vec<pb::LabelSelector> {
    s.into_iter().map(selector).collect()
}

fn selector(s: Selector) -> pb::LabelSelector {
    pb::LabelSelector {
        match_labels: s.match_labels,
        match_expressions: s
            .match_expressions
            .into_iter()
            .map(|e| pb::LabelSelectorRequirement {
                key: e.key,
                operator: e.operator,
                values: e.values,
            })
            .collect(),
    }
}

fn list(annotations: &BTreeMap<String, String>, key: &str) -> Vec<String> {
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

/// Parses every document of a file; an error names the document and the problem.
pub fn parse(text: &str) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            serde_yaml::Value::deserialize(de).map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let doc: Document =
            serde_yaml::from_value(value).map_err(|e| format!("document {}: {e}", i + 1))?;
        let group = doc.api_version.split('/').next().unwrap_or_default();
        if group == "metallb.io" && doc.kind == "L2Advertisement" {
            let where_ = format!("L2Advertisement {:?}", doc.metadata.name);
            let spec: L2AdvertisementSpec =
                serde_yaml::from_value(doc.spec).map_err(|e| format!("{where_}: spec: {e}"))?;
            parsed.l2_advertisements.push(pb::L2Advertisement {
                cluster: String::new(),
                name: doc.metadata.name,
                ip_address_pools: spec.ip_address_pools,
                ip_address_pool_selectors: selectors(spec.ip_address_pool_selectors),
                node_selectors: selectors(spec.node_selectors),
                interfaces: spec.interfaces,
                service_selectors: selectors(spec.service_selectors),
                preferred_node_selectors: spec
                    .preferred_node_selectors
                    .into_iter()
                    .map(|p| pb::PreferredNode {
                        weight: p.weight,
                        preference: Some(selector(p.preference)),
                    })
                    .collect(),
            });
            continue;
        }
        if doc.kind != "IPAddressPool" || group != "metallb.io" {
            parsed
                .skipped
                .push(format!("{}/{}", doc.kind, doc.metadata.name));
            continue;
        }
        let where_ = format!("IPAddressPool {:?}", doc.metadata.name);
        let spec: IpAddressPoolSpec =
            serde_yaml::from_value(doc.spec).map_err(|e| format!("{where_}: spec: {e}"))?;
        let annotations = &doc.metadata.annotations;
        parsed.pools.push(pb::Pool {
            name: doc.metadata.name.clone(),
            addresses: spec.addresses,
            auto_assign: spec.auto_assign,
            avoid_buggy_ips: spec.avoid_buggy_ips.unwrap_or(false),
            service_allocation: spec.service_allocation.map(|sa| pb::ServiceAllocation {
                priority: sa.priority,
                namespaces: sa.namespaces,
                namespace_selectors: selectors(sa.namespace_selectors),
                service_selectors: selectors(sa.service_selectors),
            }),
            excluded_addresses: list(annotations, "ferrolb.io/excluded-addresses"),
            clusters: list(annotations, "ferrolb.io/clusters"),
            clients: list(annotations, "ferrolb.io/clients"),
            declared_by: String::new(),
            labels: doc.metadata.labels,
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metallb_pool_with_every_field() {
        let text = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: web
  namespace: metallb-system
  annotations:
    ferrolb.io/clusters: "east, west"
    ferrolb.io/excluded-addresses: 10.0.0.1
spec:
  addresses: [10.0.0.0/24, "fc00::1-fc00::ff"]
  autoAssign: false
  avoidBuggyIPs: true
  serviceAllocation:
    priority: 50
    namespaces: [web]
    namespaceSelectors:
    - matchLabels: {team: web}
    serviceSelectors:
    - matchExpressions:
      - {key: tier, operator: In, values: [gold]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: bgp}
"#;
        let p = parse(text).expect("valid");
        assert_eq!(p.skipped, ["BGPAdvertisement/bgp"]);
        let pool = &p.pools[0];
        assert_eq!(pool.addresses, ["10.0.0.0/24", "fc00::1-fc00::ff"]);
        assert_eq!(pool.auto_assign, Some(false));
        assert!(pool.avoid_buggy_ips);
        assert_eq!(pool.clusters, ["east", "west"]);
        assert_eq!(pool.excluded_addresses, ["10.0.0.1"]);
        let sa = pool.service_allocation.as_ref().expect("serviceAllocation");
        assert_eq!(sa.priority, 50);
        assert_eq!(
            sa.service_selectors[0].match_expressions[0].values,
            ["gold"]
        );
    }

    #[test]
    fn l2_advertisement_with_every_field() {
        let text = r#"
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2, namespace: metallb-system}
spec:
  ipAddressPools: [home-pool]
  ipAddressPoolSelectors:
  - matchLabels: {zone: a}
  nodeSelectors:
  - matchLabels: {kubernetes.io/hostname: n1}
  interfaces: [eth0]
  serviceSelectors:
  - matchExpressions: [{key: app, operator: Exists}]
  preferredNodeSelectors:
  - weight: 50
    preference: {matchLabels: {rack: r1}}
"#;
        let p = parse(text).expect("valid");
        let ad = &p.l2_advertisements[0];
        assert_eq!(ad.name, "l2");
        assert_eq!(ad.ip_address_pools, ["home-pool"]);
        assert_eq!(ad.ip_address_pool_selectors[0].match_labels["zone"], "a");
        assert_eq!(ad.interfaces, ["eth0"]);
        assert_eq!(
            ad.service_selectors[0].match_expressions[0].operator,
            "Exists"
        );
        assert_eq!(ad.preferred_node_selectors[0].weight, 50);
        let typo = text.replace("interfaces:", "interface:");
        let err = parse(&typo).expect_err("typo");
        assert!(err.contains("L2Advertisement \"l2\""), "{err}");
    }

    #[test]
    fn typos_are_refused_with_the_pool_named() {
        let text = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec:\n  adresses: [10.0.0.0/24]\n";
        let err = parse(text).expect_err("typo");
        assert!(
            err.contains("IPAddressPool \"p\"") && err.contains("adresses"),
            "{err}"
        );
        assert!(parse("kind: [").is_err());
    }
}
