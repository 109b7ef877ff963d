//! BGPAdvertisement: MetalLB's `bgpAdvertisementFromCR`, `validateBGPAdvPerPool` (aggregation
//! against each pool's prefixes, local preferences that cannot both apply), and ferrolb's limit
//! on communities per route.

use std::collections::BTreeSet;

use super::community::aliases;
use super::{known, placed, selectors, unique};
use crate::crd::{BGPAdvertisementSpec, IPAddressPoolSpec};
use crate::object::{Config, Object, Rejection, kind::BGP_ADVERTISEMENT as KIND};
use crate::parse::{self, CommunityError, Family};

/// At most this many communities on one route: they must fit one attribute without the
/// extended length (4 octets each, 255 octets).
pub const MAX_COMMUNITIES: usize = 63;

pub(super) fn check(cfg: &Config, namespace: &str, out: &mut Vec<Rejection>) {
    for a in &cfg.bgp {
        placed(KIND, a, namespace, out);
        known(KIND, &a.name, "spec", &a.spec.other, out);
        aggregation_lengths(a, out);
        lists(a, out);
        communities(cfg, a, out);
    }
    per_pool(cfg, out);
}

fn aggregation_lengths(a: &Object<BGPAdvertisementSpec>, out: &mut Vec<Rejection>) {
    let s = &a.spec;
    for (field, len, max, family) in [
        ("spec.aggregationLength", s.aggregation_length, 32, "IPv4"),
        (
            "spec.aggregationLengthV6",
            s.aggregation_length_v6,
            128,
            "IPv6",
        ),
    ] {
        let Some(len) = len else { continue };
        if !(1..=max).contains(&len) {
            out.push(Rejection::new(
                KIND,
                &a.name,
                field,
                format!("invalid aggregation length {len} for {family}: 1 to {max}"),
            ));
        }
        if len != max && !s.service_selectors.is_empty() {
            let name = field.trim_start_matches("spec.");
            out.push(Rejection::new(
                KIND,
                &a.name,
                "spec.serviceSelectors",
                format!(
                    "serviceSelectors and {name} are mutually exclusive, both cannot be set in {}",
                    a.name
                ),
            ));
        }
    }
}

fn lists(a: &Object<BGPAdvertisementSpec>, out: &mut Vec<Rejection>) {
    let s = &a.spec;
    let n = &a.name;
    unique(
        KIND,
        n,
        "spec.ipAddressPools",
        "ipAddressPools",
        &s.ip_address_pools,
        out,
    );
    unique(
        KIND,
        n,
        "spec.communities",
        "community",
        &s.communities,
        out,
    );
    unique(KIND, n, "spec.peers", "peers", &s.peers, out);
    for (field, list) in [
        ("spec.ipAddressPoolSelectors", &s.ip_address_pool_selectors),
        ("spec.nodeSelectors", &s.node_selectors),
        ("spec.serviceSelectors", &s.service_selectors),
    ] {
        selectors(KIND, n, field, list, out);
    }
}

/// Each community is a value or the name of an alias a Community object defines (one that may
/// still come: transient).
fn communities(cfg: &Config, a: &Object<BGPAdvertisementSpec>, out: &mut Vec<Rejection>) {
    let list = &a.spec.communities;
    if list.len() > MAX_COMMUNITIES {
        out.push(Rejection::new(
            KIND,
            &a.name,
            "spec.communities",
            format!("{} communities: at most {MAX_COMMUNITIES}", list.len()),
        ));
    }
    let defined = aliases(cfg);
    for (i, c) in list.iter().enumerate() {
        let field = format!("spec.communities[{i}]");
        match parse::community(c) {
            Ok(_) => {}
            Err(CommunityError::Format(_)) if defined.contains(c.as_str()) => {}
            Err(CommunityError::Format(e)) => out.push(
                Rejection::new(
                    KIND,
                    &a.name,
                    &field,
                    format!("invalid community {c:?} in BGP advertisement: {e}, nor an alias a Community defines"),
                )
                .transient(),
            ),
            Err(CommunityError::Value(e)) => out.push(Rejection::new(
                KIND,
                &a.name,
                &field,
                format!("invalid community {c:?} in BGP advertisement: {e}"),
            )),
        }
    }
}

/// Whether an advertisement covers a pool: by name, by label, or (naming none) every pool.
pub fn covers(a: &BGPAdvertisementSpec, pool: &Object<IPAddressPoolSpec>) -> bool {
    (a.ip_address_pools.is_empty() && a.ip_address_pool_selectors.is_empty())
        || a.ip_address_pools.contains(&pool.name)
        || a.ip_address_pool_selectors
            .iter()
            .any(|s| parse::matches(s, &pool.labels))
}

/// The rules MetalLB applies as it attaches each advertisement to each pool it covers, in order.
fn per_pool(cfg: &Config, out: &mut Vec<Rejection>) {
    for p in &cfg.pools {
        let mut attached: Vec<&Object<BGPAdvertisementSpec>> = vec![];
        for a in cfg.bgp.iter().filter(|a| covers(&a.spec, p)) {
            aggregation_fits(a, p, out);
            local_pref_agrees(cfg, a, p, &attached, out);
            attached.push(a);
        }
    }
}

/// An advertisement cannot aggregate to a prefix longer than the pool's own blocks.
fn aggregation_fits(
    a: &Object<BGPAdvertisementSpec>,
    p: &Object<IPAddressPoolSpec>,
    out: &mut Vec<Rejection>,
) {
    let v4 = a.spec.aggregation_length.unwrap_or(32);
    let v6 = a.spec.aggregation_length_v6.unwrap_or(128);
    for entry in &p.spec.addresses {
        if let Some(misfit) = aggregation_misfit(v4, v6, &p.name, entry) {
            out.push(Rejection::new(KIND, &a.name, misfit.field, misfit.message));
        }
    }
}

/// Why an advertisement's aggregation cannot cover a pool's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// `spec.aggregationLength` or `spec.aggregationLengthV6`.
    pub field: &'static str,
    pub message: String,
}

/// MetalLB's `validateBGPAdvPerPool` for one entry of pool `pool`: an advertisement that
/// aggregates IPv4 to `v4` and IPv6 to `v6` bits cannot cover a block of the entry that is more
/// specific. The allocator applies it too, to pools shared from other clusters.
pub fn aggregation_misfit(v4: i32, v6: i32, pool: &str, entry: &str) -> Option<Misfit> {
    let e = parse::address_entry(entry).ok()?;
    let (len, field) = match e.family {
        Family::V4 => (v4, "spec.aggregationLength"),
        Family::V6 => (v6, "spec.aggregationLengthV6"),
    };
    (len < i32::from(e.shortest_prefix)).then(|| Misfit {
        field,
        message: format!(
            "invalid aggregation length {len}: prefix {} in this pool is more specific than the aggregation length for addresses {entry} of pool {pool:?}",
            e.shortest_prefix
        ),
    })
}

/// Two advertisements of one pool whose routes would be the same BGP update must agree on the
/// local preference (MetalLB's `BGPAdvertisementsHaveCompatibleLocalPref`).
fn local_pref_agrees(
    cfg: &Config,
    a: &Object<BGPAdvertisementSpec>,
    p: &Object<IPAddressPoolSpec>,
    attached: &[&Object<BGPAdvertisementSpec>],
    out: &mut Vec<Rejection>,
) {
    if !a.spec.service_selectors.is_empty() {
        return;
    }
    let conflict = attached
        .iter()
        .filter(|b| b.spec.service_selectors.is_empty())
        .find(|b| !compatible(cfg, &a.spec, &b.spec, p));
    if let Some(b) = conflict {
        out.push(Rejection::new(
            KIND,
            &a.name,
            "spec.localPref",
            format!(
                "invalid local preference {}: local preference {} was already set by BGPAdvertisement {:?} for the same BGP update of pool {:?}",
                a.spec.local_pref.unwrap_or(0),
                b.spec.local_pref.unwrap_or(0),
                b.name,
                p.name
            ),
        ));
    }
}

fn compatible(
    cfg: &Config,
    a: &BGPAdvertisementSpec,
    b: &BGPAdvertisementSpec,
    pool: &Object<IPAddressPoolSpec>,
) -> bool {
    let disjoint_peers =
        !a.peers.is_empty() && !b.peers.is_empty() && !a.peers.iter().any(|x| b.peers.contains(x));
    a.local_pref.unwrap_or(0) == b.local_pref.unwrap_or(0)
        || aggregation_differs(a, b, pool)
        || disjoint_peers
        || nodes(cfg, a).is_disjoint(&nodes(cfg, b))
}

/// The aggregation tells the updates apart: for each family the pool has, the lengths differ.
fn aggregation_differs(
    a: &BGPAdvertisementSpec,
    b: &BGPAdvertisementSpec,
    pool: &Object<IPAddressPoolSpec>,
) -> bool {
    let families: BTreeSet<Family> = pool
        .spec
        .addresses
        .iter()
        .filter_map(|e| parse::address_entry(e).ok())
        .map(|e| e.family)
        .collect();
    let v4 = a.aggregation_length.unwrap_or(32) != b.aggregation_length.unwrap_or(32);
    let v6 = a.aggregation_length_v6.unwrap_or(128) != b.aggregation_length_v6.unwrap_or(128);
    match (
        families.contains(&Family::V4),
        families.contains(&Family::V6),
    ) {
        (false, false) => true,
        (true, false) => v4,
        (false, true) => v6,
        (true, true) => v4 && v6,
    }
}

/// The nodes (by index) an advertisement's node selectors pick; none given: every node.
fn nodes(cfg: &Config, a: &BGPAdvertisementSpec) -> BTreeSet<usize> {
    (0..cfg.nodes.len())
        .filter(|&i| {
            a.node_selectors.is_empty()
                || a.node_selectors
                    .iter()
                    .any(|s| parse::matches(s, &cfg.nodes[i]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use crate::object::Config;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    #[test]
    fn fields_lists_and_communities() {
        let many: Vec<String> = (0..64).map(|i| format!("65000:{i}")).collect();
        let cfg = Config {
            bgp: vec![
                ad("long-v4", |s| s.aggregation_length = Some(33)),
                ad("long-v6", |s| s.aggregation_length_v6 = Some(129)),
                ad("zero", |s| s.aggregation_length = Some(0)),
                ad("selectors-and-aggregation", |s| {
                    s.aggregation_length = Some(24);
                    s.service_selectors = vec![LabelSelector::default()];
                }),
                ad("dup-pool", |s| {
                    s.ip_address_pools = vec!["p".into(), "p".into()]
                }),
                ad("dup-peer", |s| s.peers = vec!["r".into(), "r".into()]),
                ad("too-many", |s| s.communities = many.clone()),
                ad("bad-community", |s| {
                    s.communities = vec!["99999999:1".into()]
                }),
                ad("unknown-alias", |s| s.communities = vec!["gold".into()]),
            ],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "BGPAdvertisement/long-v4 spec.aggregationLength",
                "BGPAdvertisement/long-v6 spec.aggregationLengthV6",
                "BGPAdvertisement/zero spec.aggregationLength",
                "BGPAdvertisement/selectors-and-aggregation spec.serviceSelectors",
                "BGPAdvertisement/dup-pool spec.ipAddressPools",
                "BGPAdvertisement/dup-peer spec.peers",
                "BGPAdvertisement/too-many spec.communities",
                "BGPAdvertisement/bad-community spec.communities[0]",
                "BGPAdvertisement/unknown-alias spec.communities[0]",
            ]
        );
        let all = super::super::check(&cfg, NS);
        let by = |n: &str| all.iter().find(|r| r.name == n).expect(n);
        assert!(
            by("unknown-alias").transient,
            "a missing alias may still come"
        );
        assert!(!by("bad-community").transient);
        assert_eq!(
            by("selectors-and-aggregation").message,
            "serviceSelectors and aggregationLength are mutually exclusive, both cannot be set in selectors-and-aggregation"
        );
    }

    #[test]
    fn aggregation_and_local_preference_per_pool() {
        let cfg = Config {
            pools: vec![
                pool("p24", &["10.0.0.0/24", "10.0.1.0-10.0.1.127"]),
                pool("v6", &["fd00::/120"]),
            ],
            bgp: vec![
                ad("too-short", |s| {
                    s.ip_address_pools = vec!["p24".into()];
                    s.aggregation_length = Some(16);
                }),
                ad("fine", |s| {
                    s.ip_address_pools = vec!["p24".into()];
                    s.aggregation_length = Some(25);
                    s.local_pref = Some(100);
                }),
                ad("other-pref", |s| {
                    s.ip_address_pools = vec!["p24".into()];
                    s.aggregation_length = Some(25);
                    s.local_pref = Some(200);
                }),
                ad("v6-short", |s| {
                    s.ip_address_pools = vec!["v6".into()];
                    s.aggregation_length_v6 = Some(112);
                }),
            ],
            nodes: vec![BTreeMap::new()],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "BGPAdvertisement/too-short spec.aggregationLength",
                "BGPAdvertisement/too-short spec.aggregationLength",
                "BGPAdvertisement/other-pref spec.localPref",
                "BGPAdvertisement/v6-short spec.aggregationLengthV6",
            ]
        );
        let msg = super::super::check(&cfg, NS)[0].to_string();
        assert!(
            msg.contains("prefix 24 in this pool is more specific"),
            "{msg}"
        );
        // Disjoint peers keep two local preferences apart; so do disjoint nodes, and a cluster
        // without nodes (MetalLB's node sets are then empty).
        let mut apart = cfg.clone();
        apart.bgp[1].spec.peers = vec!["r1".into()];
        apart.bgp[2].spec.peers = vec!["r2".into()];
        assert!(!rejected(&apart).iter().any(|r| r.contains("localPref")));
        let mut no_nodes = cfg.clone();
        no_nodes.nodes.clear();
        assert!(!rejected(&no_nodes).iter().any(|r| r.contains("localPref")));
        // Two advertisements with the same spec and different names are fine, as in MetalLB.
        let mut twins = cfg.clone();
        twins.bgp = vec![ad("a", |_| {}), ad("b", |_| {})];
        assert_eq!(rejected(&twins), Vec::<String>::new());
    }
}
