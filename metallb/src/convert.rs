//! MetalLB objects as ferrolb's API messages (`ferrolb.v1`), after [`crate::validate::check`]
//! has accepted them: numbers are in range and durations parse.

use ferrolb_proto::v1 as pb;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::annotations;
use crate::crd::{
    BGPAdvertisementSpec, CommunitySpec, IPAddressPoolSpec, L2AdvertisementSpec,
    v1beta2::BGPPeerSpec,
};
use crate::object::Object;
use crate::parse;

/// A pool. Its clusters are those its `ferrolb.io/clusters` annotation names, else `clusters`
/// (the cluster whose configuration it is); the allocator decides who may open it how wide.
pub fn pool(p: &Object<IPAddressPoolSpec>, clusters: &[String]) -> pb::Pool {
    let named = annotations::list(&p.annotations, annotations::CLUSTERS);
    pb::Pool {
        name: p.name.clone(),
        addresses: p.spec.addresses.clone(),
        auto_assign: p.spec.auto_assign,
        avoid_buggy_ips: p.spec.avoid_buggy_ips.unwrap_or(false),
        service_allocation: p
            .spec
            .service_allocation
            .as_ref()
            .map(|sa| pb::ServiceAllocation {
                priority: sa.priority.unwrap_or(0),
                namespaces: sa.namespaces.clone(),
                namespace_selectors: selectors(&sa.namespace_selectors),
                service_selectors: selectors(&sa.service_selectors),
            }),
        excluded_addresses: annotations::list(&p.annotations, annotations::EXCLUDED_ADDRESSES),
        clusters: if named.is_empty() {
            clusters.to_vec()
        } else {
            named
        },
        clients: annotations::list(&p.annotations, annotations::CLIENTS),
        declared_by: String::new(),
        labels: p.labels.clone().into_iter().collect(),
    }
}

pub fn l2_advertisement(a: &Object<L2AdvertisementSpec>, cluster: &str) -> pb::L2Advertisement {
    let s = &a.spec;
    pb::L2Advertisement {
        cluster: cluster.to_string(),
        name: a.name.clone(),
        ip_address_pools: s.ip_address_pools.clone(),
        ip_address_pool_selectors: selectors(&s.ip_address_pool_selectors),
        node_selectors: selectors(&s.node_selectors),
        interfaces: s.interfaces.clone(),
        service_selectors: selectors(&s.service_selectors),
        preferred_node_selectors: s
            .preferred_node_selectors
            .iter()
            .map(|p| pb::PreferredNode {
                weight: u32::try_from(p.weight).unwrap_or(0),
                preference: Some(selector(&p.preference)),
            })
            .collect(),
    }
}

pub fn bgp_advertisement(a: &Object<BGPAdvertisementSpec>, cluster: &str) -> pb::BgpAdvertisement {
    let s = &a.spec;
    let length = |l: Option<i32>| l.and_then(|l| u32::try_from(l).ok());
    pb::BgpAdvertisement {
        cluster: cluster.to_string(),
        name: a.name.clone(),
        aggregation_length: length(s.aggregation_length),
        aggregation_length_v6: length(s.aggregation_length_v6),
        local_pref: s.local_pref.unwrap_or(0),
        communities: s.communities.clone(),
        ip_address_pools: s.ip_address_pools.clone(),
        ip_address_pool_selectors: selectors(&s.ip_address_pool_selectors),
        node_selectors: selectors(&s.node_selectors),
        peers: s.peers.clone(),
        service_selectors: selectors(&s.service_selectors),
    }
}

/// A peer with its password (from [`crate::validate::password`]).
/// The profile a peer names (validation has checked it exists).
fn bfd_of(cfg: &crate::object::Config, p: &Object<BGPPeerSpec>) -> Option<pb::BfdProfile> {
    let name = p
        .spec
        .common
        .bfd_profile
        .as_deref()
        .filter(|n| !n.is_empty())?;
    cfg.bfd_profiles
        .iter()
        .find(|b| b.name == name)
        .map(bfd_profile)
}

/// A BFDProfile with MetalLB's defaults filled in (300 ms each way, 3 packets, a minimum TTL of
/// 254 for multihop sessions).
pub fn bfd_profile(b: &Object<crate::crd::BFDProfileSpec>) -> pb::BfdProfile {
    let s = &b.spec;
    pb::BfdProfile {
        name: b.name.clone(),
        receive_interval_ms: s.receive_interval.unwrap_or(300),
        transmit_interval_ms: s.transmit_interval.unwrap_or(300),
        detect_multiplier: s.detect_multiplier.unwrap_or(3),
        passive_mode: s.passive_mode.unwrap_or(false),
        minimum_ttl: s.minimum_ttl.unwrap_or(254),
    }
}

/// A BGPPeer as the allocator takes it; `bfd` is the profile it names, when it names one.
pub fn bgp_peer(
    p: &Object<BGPPeerSpec>,
    cluster: &str,
    password: String,
    bfd: Option<pb::BfdProfile>,
) -> pb::BgpPeer {
    let s = &p.spec;
    let seconds = |d: Option<&String>| {
        d.and_then(|d| parse::go_duration(d).ok())
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
    };
    pb::BgpPeer {
        cluster: cluster.to_string(),
        name: p.name.clone(),
        my_asn: s.common.my_asn,
        peer_asn: s.peer_asn.unwrap_or(0),
        peer_address: s.peer_address.clone().unwrap_or_default(),
        source_address: s.common.source_address.clone().unwrap_or_default(),
        peer_port: s.common.peer_port.map_or(0, u32::from),
        hold_time: seconds(s.common.hold_time.as_ref()),
        keepalive_time: seconds(s.common.keepalive_time.as_ref()),
        router_id: s.common.router_id.clone().unwrap_or_default(),
        node_selectors: selectors(&s.node_selectors),
        password,
        ebgp_multihop: s.common.ebgp_multi_hop.unwrap_or(false),
        enable_graceful_restart: s.enable_graceful_restart.unwrap_or(false),
        bfd_profile: bfd,
    }
}

pub fn community(c: &Object<CommunitySpec>, cluster: &str) -> pb::Community {
    pb::Community {
        cluster: cluster.to_string(),
        name: c.name.clone(),
        communities: c
            .spec
            .communities
            .iter()
            .map(|a| pb::CommunityAlias {
                name: a.name.clone(),
                value: a.value.clone(),
            })
            .collect(),
    }
}

pub fn selectors(list: &[LabelSelector]) -> Vec<pb::LabelSelector> {
    list.iter().map(selector).collect()
}

pub fn selector(s: &LabelSelector) -> pb::LabelSelector {
    pb::LabelSelector {
        match_labels: s
            .match_labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        match_expressions: s
            .match_expressions
            .iter()
            .flatten()
            .map(|e| pb::LabelSelectorRequirement {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// One object to apply at the allocator.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Pool(pb::Pool),
    L2Advertisement(pb::L2Advertisement),
    Community(pb::Community),
    BgpPeer(pb::BgpPeer),
    BgpAdvertisement(pb::BgpAdvertisement),
}

/// What the allocator is to be given, in the order both doors apply it (pools, then
/// L2Advertisements, then Communities before the BGPPeers and BGPAdvertisements that name them),
/// each with its kind and name: every object `rejected` does not name. A peer whose password
/// cannot be read joins `rejected` instead. `clusters` is the pools' default audience.
pub fn messages(
    cfg: &crate::Config,
    namespace: &str,
    cluster: &str,
    clusters: &[String],
    rejected: &mut Vec<crate::Rejection>,
) -> Vec<(&'static str, String, Message)> {
    use crate::kind;
    let good = |rejected: &[crate::Rejection], kind: &str, name: &str| {
        !rejected.iter().any(|r| r.kind == kind && r.name == name)
    };
    let mut out = vec![];
    for p in cfg
        .pools
        .iter()
        .filter(|p| good(rejected, kind::POOL, &p.name))
    {
        out.push((kind::POOL, p.name.clone(), Message::Pool(pool(p, clusters))));
    }
    for a in cfg.l2.iter().filter(|a| good(rejected, kind::L2, &a.name)) {
        let m = Message::L2Advertisement(l2_advertisement(a, cluster));
        out.push((kind::L2, a.name.clone(), m));
    }
    for c in cfg
        .communities
        .iter()
        .filter(|c| good(rejected, kind::COMMUNITY, &c.name))
    {
        let m = Message::Community(community(c, cluster));
        out.push((kind::COMMUNITY, c.name.clone(), m));
    }
    let peers: Vec<_> = cfg
        .peers
        .iter()
        .filter(|p| good(rejected, kind::PEER, &p.name))
        .collect();
    for p in peers {
        match crate::validate::password(p, namespace, &cfg.secrets) {
            Ok(pw) => out.push((
                kind::PEER,
                p.name.clone(),
                Message::BgpPeer(bgp_peer(p, cluster, pw, bfd_of(cfg, p))),
            )),
            Err(r) => rejected.push(r),
        }
    }
    for a in cfg
        .bgp
        .iter()
        .filter(|a| good(rejected, kind::BGP_ADVERTISEMENT, &a.name))
    {
        let m = Message::BgpAdvertisement(bgp_advertisement(a, cluster));
        out.push((kind::BGP_ADVERTISEMENT, a.name.clone(), m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_object(annotations: &[(&str, &str)]) -> Object<IPAddressPoolSpec> {
        let spec = serde_json::from_value(serde_json::json!({"addresses": ["192.168.1.240/28"]}))
            .expect("a pool");
        let mut o = Object::new("home", "metallb-system", spec);
        o.annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        o
    }

    #[test]
    fn a_pool_is_the_applying_clusters_unless_its_annotations_say_otherwise() {
        let home = ["home".to_string()];
        let own = pool(&pool_object(&[]), &home);
        assert_eq!(own.clusters, ["home"]);
        assert!(own.clients.is_empty() && own.excluded_addresses.is_empty());

        let shared = pool(
            &pool_object(&[
                (annotations::CLUSTERS, "east, west,"),
                (annotations::CLIENTS, "ipam"),
                (
                    annotations::EXCLUDED_ADDRESSES,
                    "192.168.1.241, 192.168.1.250-192.168.1.255",
                ),
            ]),
            &home,
        );
        assert_eq!(shared.clusters, ["east", "west"]);
        assert_eq!(shared.clients, ["ipam"]);
        assert_eq!(
            shared.excluded_addresses,
            ["192.168.1.241", "192.168.1.250-192.168.1.255"]
        );
        assert_eq!(shared.addresses, ["192.168.1.240/28"]);
    }
}
