//! MetalLB's IPAddressPool, L2Advertisement, BGPPeer, BGPAdvertisement and Community YAML, as
//! users write it, translated to ferrolb's API messages.
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BgpAdvertisementSpec {
    aggregation_length: Option<u32>,
    #[serde(rename = "aggregationLengthV6")]
    aggregation_length_v6: Option<u32>,
    #[serde(default)]
    local_pref: u32,
    #[serde(default)]
    communities: Vec<String>,
    #[serde(default)]
    ip_address_pools: Vec<String>,
    #[serde(default)]
    ip_address_pool_selectors: Vec<Selector>,
    #[serde(default)]
    node_selectors: Vec<Selector>,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default)]
    service_selectors: Vec<Selector>,
}

/// BGPPeer v1beta2 (v1beta1 has the same fields ferrolb's speaker takes). Any other field is
/// collected so that the refusal can say why it is not taken.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BgpPeerSpec {
    #[serde(rename = "myASN")]
    my_asn: u32,
    #[serde(rename = "peerASN", default)]
    peer_asn: u32,
    #[serde(default)]
    peer_address: String,
    #[serde(default)]
    source_address: String,
    #[serde(default)]
    peer_port: u32,
    hold_time: Option<String>,
    keepalive_time: Option<String>,
    #[serde(rename = "routerID", default)]
    router_id: String,
    #[serde(default)]
    node_selectors: Vec<Selector>,
    #[serde(default)]
    password: String,
    #[serde(default)]
    ebgp_multi_hop: bool,
    #[serde(default)]
    enable_graceful_restart: bool,
    #[serde(rename = "disableMP", default)]
    disable_mp: bool,
    /// Every other field: refused by name (FRR-only settings, passwordSecret, typos).
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommunitySpec {
    #[serde(default)]
    communities: Vec<CommunityAlias>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommunityAlias {
    name: String,
    value: String,
}

/// MetalLB fields ferrolb's speaker does not run (as MetalLB's native mode refuses them).
const FRR_ONLY: &[&str] = &[
    "bfdProfile",
    "dynamicASN",
    "localASN",
    "interface",
    "connectTime",
    "vrf",
    "dualStackAddressFamily",
];

/// Whole seconds of a Go duration (`90s`, `1m30s`, `2h`).
fn seconds(field: &str, s: &str) -> Result<u32, String> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{field}: {s:?} is not a duration like 90s"))?;
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("{field}: {s:?} is not a duration like 90s")),
        };
        digits.clear();
    }
    if !digits.is_empty() && s != "0" {
        return Err(format!("{field}: {s:?} needs a unit (90s)"));
    }
    u32::try_from(total).map_err(|_| format!("{field}: {s:?} is too long"))
}

fn bgp_peer(name: String, spec: BgpPeerSpec) -> Result<pb::BgpPeer, String> {
    if let Some(field) = spec.other.keys().next() {
        return Err(if FRR_ONLY.contains(&field.as_str()) {
            format!(
                "spec.{field} is a MetalLB FRR-mode setting that ferrolb's speaker does not run"
            )
        } else if field == "passwordSecret" {
            "spec.passwordSecret names a Kubernetes Secret, which ferrolbctl does not read: \
             give spec.password (the Kubernetes adapter reads the Secret)"
                .to_string()
        } else {
            format!("unknown field `{field}`")
        });
    }
    let _ = spec.disable_mp; // deprecated by MetalLB, no effect
    Ok(pb::BgpPeer {
        cluster: String::new(),
        name,
        my_asn: spec.my_asn,
        peer_asn: spec.peer_asn,
        peer_address: spec.peer_address,
        source_address: spec.source_address,
        peer_port: spec.peer_port,
        hold_time: spec
            .hold_time
            .map(|h| seconds("spec.holdTime", &h))
            .transpose()?,
        keepalive_time: spec
            .keepalive_time
            .map(|k| seconds("spec.keepaliveTime", &k))
            .transpose()?,
        router_id: spec.router_id,
        node_selectors: selectors(spec.node_selectors),
        password: spec.password,
        ebgp_multihop: spec.ebgp_multi_hop,
        enable_graceful_restart: spec.enable_graceful_restart,
    })
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
    pub bgp_peers: Vec<pb::BgpPeer>,
    pub bgp_advertisements: Vec<pb::BgpAdvertisement>,
    pub communities: Vec<pb::Community>,
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
        let where_ = format!("{} {:?}", doc.kind, doc.metadata.name);
        if group == "metallb.io" && doc.kind == "BGPPeer" {
            let spec: BgpPeerSpec =
                serde_yaml::from_value(doc.spec).map_err(|e| format!("{where_}: spec: {e}"))?;
            let peer = bgp_peer(doc.metadata.name, spec).map_err(|e| format!("{where_}: {e}"))?;
            parsed.bgp_peers.push(peer);
            continue;
        }
        if group == "metallb.io" && doc.kind == "BGPAdvertisement" {
            let spec: BgpAdvertisementSpec =
                serde_yaml::from_value(doc.spec).map_err(|e| format!("{where_}: spec: {e}"))?;
            parsed.bgp_advertisements.push(pb::BgpAdvertisement {
                cluster: String::new(),
                name: doc.metadata.name,
                aggregation_length: spec.aggregation_length,
                aggregation_length_v6: spec.aggregation_length_v6,
                local_pref: spec.local_pref,
                communities: spec.communities,
                ip_address_pools: spec.ip_address_pools,
                ip_address_pool_selectors: selectors(spec.ip_address_pool_selectors),
                node_selectors: selectors(spec.node_selectors),
                peers: spec.peers,
                service_selectors: selectors(spec.service_selectors),
            });
            continue;
        }
        if group == "metallb.io" && doc.kind == "Community" {
            let spec: CommunitySpec =
                serde_yaml::from_value(doc.spec).map_err(|e| format!("{where_}: spec: {e}"))?;
            parsed.communities.push(pb::Community {
                cluster: String::new(),
                name: doc.metadata.name,
                communities: spec
                    .communities
                    .into_iter()
                    .map(|c| pb::CommunityAlias {
                        name: c.name,
                        value: c.value,
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
kind: BFDProfile
metadata: {name: bfd}
"#;
        let p = parse(text).expect("valid");
        assert_eq!(p.skipped, ["BFDProfile/bfd"]);
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
    fn bgp_objects_with_every_field() {
        let text = r#"
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: core, namespace: metallb-system}
spec:
  myASN: 4200000001
  peerASN: 65000
  peerAddress: 10.100.1.1
  sourceAddress: 10.100.1.11
  peerPort: 1179
  holdTime: 1m30s
  keepaliveTime: 30s
  routerID: 10.100.1.11
  nodeSelectors: [{matchLabels: {rack: a}}]
  password: s3cret
  ebgpMultiHop: true
  enableGracefulRestart: true
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: adv}
spec:
  aggregationLength: 24
  aggregationLengthV6: 64
  localPref: 100
  communities: [no-export, "65000:1", "large:65000:1:2"]
  ipAddressPools: [corp]
  peers: [core]
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: aliases}
spec:
  communities:
  - {name: no-export, value: "65535:65281"}
"#;
        let p = parse(text).expect("valid");
        let peer = &p.bgp_peers[0];
        assert_eq!((peer.my_asn, peer.peer_port), (4_200_000_001, 1179));
        assert_eq!((peer.hold_time, peer.keepalive_time), (Some(90), Some(30)));
        assert!(peer.ebgp_multihop && peer.enable_graceful_restart);
        assert_eq!(peer.node_selectors.len(), 1);
        let ad = &p.bgp_advertisements[0];
        assert_eq!(ad.aggregation_length, Some(24));
        assert_eq!(ad.communities.len(), 3);
        assert_eq!(p.communities[0].communities[0].value, "65535:65281");

        let frr = "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, bfdProfile: fast}\n";
        let err = parse(frr).unwrap_err();
        assert!(
            err.contains("BGPPeer \"p\"") && err.contains("spec.bfdProfile is a MetalLB FRR-mode"),
            "{err}"
        );
        let typo = frr.replace("bfdProfile", "holdtime");
        assert!(parse(&typo).unwrap_err().contains("unknown field"));
        let bad = frr.replace("bfdProfile: fast", "holdTime: \"90\"");
        assert!(parse(&bad).unwrap_err().contains("unit"));
        let secret = frr.replace("bfdProfile: fast", "passwordSecret: {name: pw}");
        let e = parse(&secret).unwrap_err();
        assert!(e.contains("give spec.password"), "{e}");
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
