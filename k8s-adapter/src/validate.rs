//! The rules MetalLB's webhooks and config parser enforce that a schema cannot express
//! (`internal/config/config.go`, `validator.go`). Each rejection names the object and the field;
//! the adapter leaves a rejected object out (the rest of the configuration keeps serving) and
//! reports it in the object's status, an event and a metric.
//!
//! Address ranges, overlaps between pools and L2Advertisement fields are checked by the
//! allocator when the adapter applies them (so that pools of every cluster are checked against
//! each other); the rules here are the ones that stay within one cluster's objects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use kube::ResourceExt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::crd::{
    BFDProfile, BGPAdvertisement, Community, IPAddressPool, L2Advertisement, v1beta2::BGPPeer,
};

/// Why an object is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub message: String,
    /// Caused by another object that may appear later (a missing alias or profile): MetalLB's
    /// "transient" errors.
    pub transient: bool,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?}: {}: {}",
            self.kind, self.name, self.field, self.message
        )
    }
}

fn reject(kind: &'static str, name: &str, field: &str, message: impl Into<String>) -> Rejection {
    Rejection {
        kind,
        name: name.to_string(),
        field: field.to_string(),
        message: message.into(),
        transient: false,
    }
}

/// Every object of one cluster's configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub pools: Vec<IPAddressPool>,
    pub l2: Vec<L2Advertisement>,
    pub bgp: Vec<BGPAdvertisement>,
    pub peers: Vec<BGPPeer>,
    pub communities: Vec<Community>,
    pub bfd_profiles: Vec<BFDProfile>,
    /// The labels of the cluster's nodes, for advertisements' node sets.
    pub nodes: Vec<BTreeMap<String, String>>,
}

/// Whether a Kubernetes label selector matches `labels`.
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let have = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// The prefix lengths of a pool entry per family (v4 true): a CIDR's own, or for a range the
/// widest block of its summary, as MetalLB checks aggregation against.
fn prefix_of(entry: &str) -> Option<(bool, u8)> {
    if let Some((ip, len)) = entry.split_once('/') {
        let ip: IpAddr = ip.trim().parse().ok()?;
        return Some((ip.is_ipv4(), len.trim().parse().ok()?));
    }
    let (a, b) = entry.split_once('-')?;
    let (a, b): (IpAddr, IpAddr) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let (v4, bits, lo, hi) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (true, 32, u128::from(u32::from(a)), u128::from(u32::from(b)))
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (false, 128, u128::from(a), u128::from(b)),
        _ => return None,
    };
    if lo > hi {
        return None;
    }
    // Walk the range in aligned blocks; keep the largest.
    let mut widest = bits;
    let mut at = lo;
    loop {
        let mut size = if at == 0 {
            bits
        } else {
            at.trailing_zeros().min(bits)
        };
        while size > 0
            && (size >= 128
                || at
                    .checked_add((1u128 << size) - 1)
                    .is_none_or(|end| end > hi))
        {
            size -= 1;
        }
        widest = widest.min(bits - size);
        let step = if size >= 128 {
            return Some((v4, widest as u8));
        } else {
            1u128 << size
        };
        match at.checked_add(step) {
            Some(next) if next <= hi => at = next,
            _ => return Some((v4, widest as u8)),
        }
    }
}

/// The first entry that appears twice in a list, as MetalLB's "duplicate" errors report.
fn duplicate<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> Option<T> {
    let mut seen = BTreeSet::new();
    items.into_iter().find(|i| !seen.insert(i.clone()))
}

fn serialized<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A Go duration (`90s`, `1m30s`, `500ms`).
pub fn duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

/// A community value: `AA:NN` (two 16-bit numbers) or `large:G:L1:L2` (three 32-bit numbers).
pub fn community_value(v: &str) -> Result<(), String> {
    if let Some(large) = v.strip_prefix("large:") {
        let parts: Vec<&str> = large.split(':').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
            return Err(format!(
                "{v:?} is not a large community (large:G:L1:L2, 32-bit numbers)"
            ));
        }
        return Ok(());
    }
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.parse::<u16>().is_err()) {
        return Err(format!("{v:?} is not a community (AA:NN, 16-bit numbers)"));
    }
    Ok(())
}

/// Checks a cluster's configuration; `namespace` is where its objects must live.
pub fn check(cfg: &Config, namespace: &str) -> Vec<Rejection> {
    let mut out = vec![];
    let wrong_ns = |kind: &'static str, obj: &dyn ResourceExtDyn| {
        let ns = obj.ns();
        (ns != namespace).then(|| {
            reject(
                kind,
                &obj.nm(),
                "metadata.namespace",
                format!("resource must be created in {namespace} namespace"),
            )
        })
    };

    for p in &cfg.pools {
        let name = p.name_any();
        out.extend(wrong_ns("IPAddressPool", p));
        if p.spec.addresses.is_empty() {
            out.push(reject(
                "IPAddressPool",
                &name,
                "spec.addresses",
                "pool has no prefixes defined",
            ));
        }
        if let Some(sa) = &p.spec.service_allocation {
            if let Some(d) = duplicate(sa.namespaces.iter().cloned()) {
                out.push(reject(
                    "IPAddressPool",
                    &name,
                    "spec.serviceAllocation.namespaces",
                    format!("duplicate namespace {d:?}"),
                ));
            }
            if duplicate(sa.namespace_selectors.iter().map(serialized)).is_some() {
                out.push(reject(
                    "IPAddressPool",
                    &name,
                    "spec.serviceAllocation.namespaceSelectors",
                    "duplicate selector",
                ));
            }
            if duplicate(sa.service_selectors.iter().map(serialized)).is_some() {
                out.push(reject(
                    "IPAddressPool",
                    &name,
                    "spec.serviceAllocation.serviceSelectors",
                    "duplicate selector",
                ));
            }
        }
    }
    if let Some(d) = duplicate(cfg.pools.iter().map(|p| p.name_any())) {
        out.push(reject(
            "IPAddressPool",
            &d,
            "metadata.name",
            "duplicate pool name",
        ));
    }

    for a in &cfg.l2 {
        out.extend(wrong_ns("L2Advertisement", a));
        if let Some(d) = duplicate(a.spec.ip_address_pools.iter().cloned()) {
            out.push(reject(
                "L2Advertisement",
                &a.name_any(),
                "spec.ipAddressPools",
                format!("duplicate pool {d:?}"),
            ));
        }
    }

    // Communities: aliases are unique across every Community object; values must parse.
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    for c in &cfg.communities {
        out.extend(wrong_ns("Community", c));
        for (i, alias) in c.spec.communities.iter().enumerate() {
            if let Err(e) = community_value(&alias.value) {
                out.push(reject(
                    "Community",
                    &c.name_any(),
                    &format!("spec.communities[{i}].value"),
                    e,
                ));
            }
            if aliases
                .insert(alias.name.clone(), alias.value.clone())
                .is_some()
            {
                out.push(reject(
                    "Community",
                    &c.name_any(),
                    &format!("spec.communities[{i}].name"),
                    format!("duplicate definition of community {:?}", alias.name),
                ));
            }
        }
    }

    for a in &cfg.bgp {
        let name = a.name_any();
        let s = &a.spec;
        out.extend(wrong_ns("BGPAdvertisement", a));
        if let Some(l) = s.aggregation_length.filter(|l| !(1..=32).contains(l)) {
            out.push(reject(
                "BGPAdvertisement",
                &name,
                "spec.aggregationLength",
                format!("invalid aggregation length {l}: at most 32"),
            ));
        }
        if let Some(l) = s.aggregation_length_v6.filter(|l| !(1..=128).contains(l)) {
            out.push(reject(
                "BGPAdvertisement",
                &name,
                "spec.aggregationLengthV6",
                format!("invalid aggregation length {l}: at most 128"),
            ));
        }
        let custom_aggregation = s.aggregation_length.is_some_and(|l| l != 32)
            || s.aggregation_length_v6.is_some_and(|l| l != 128);
        if custom_aggregation && !s.service_selectors.is_empty() {
            out.push(reject(
                "BGPAdvertisement",
                &name,
                "spec.serviceSelectors",
                "cannot be combined with an aggregation length other than the default",
            ));
        }
        for (field, list) in [
            ("spec.ipAddressPools", &s.ip_address_pools),
            ("spec.peers", &s.peers),
            ("spec.communities", &s.communities),
        ] {
            if let Some(d) = duplicate(list.iter().cloned()) {
                out.push(reject(
                    "BGPAdvertisement",
                    &name,
                    field,
                    format!("duplicate entry {d:?}"),
                ));
            }
        }
        for (field, list) in [
            ("spec.ipAddressPoolSelectors", &s.ip_address_pool_selectors),
            ("spec.nodeSelectors", &s.node_selectors),
            ("spec.serviceSelectors", &s.service_selectors),
        ] {
            if duplicate(list.iter().map(serialized)).is_some() {
                out.push(reject(
                    "BGPAdvertisement",
                    &name,
                    field,
                    "duplicate selector",
                ));
            }
        }
        if s.communities.len() > 63 {
            out.push(reject(
                "BGPAdvertisement",
                &name,
                "spec.communities",
                format!("{} communities: at most 63", s.communities.len()),
            ));
        }
        for (i, c) in s.communities.iter().enumerate() {
            if c.contains(':') {
                if let Err(e) = community_value(c) {
                    out.push(reject(
                        "BGPAdvertisement",
                        &name,
                        &format!("spec.communities[{i}]"),
                        e,
                    ));
                }
            } else if !aliases.contains_key(c) {
                out.push(Rejection {
                    transient: true,
                    ..reject(
                        "BGPAdvertisement",
                        &name,
                        &format!("spec.communities[{i}]"),
                        format!("community alias {c:?} is not defined"),
                    )
                });
            }
        }
    }
    // The pools each advertisement covers: by name, by label, or every pool.
    let covers = |a: &BGPAdvertisement, p: &IPAddressPool| {
        (a.spec.ip_address_pools.is_empty() && a.spec.ip_address_pool_selectors.is_empty())
            || a.spec.ip_address_pools.contains(&p.name_any())
            || a.spec
                .ip_address_pool_selectors
                .iter()
                .any(|s| matches(s, p.labels()))
    };
    for a in &cfg.bgp {
        let v4 = a.spec.aggregation_length.unwrap_or(32);
        let v6 = a.spec.aggregation_length_v6.unwrap_or(128);
        for p in cfg.pools.iter().filter(|p| covers(a, p)) {
            for entry in &p.spec.addresses {
                let Some((is_v4, len)) = prefix_of(entry) else {
                    continue;
                };
                let (agg, field) = if is_v4 {
                    (v4, "spec.aggregationLength")
                } else {
                    (v6, "spec.aggregationLengthV6")
                };
                if i32::from(len) > agg {
                    out.push(reject("BGPAdvertisement", &a.name_any(), field, format!(
                        "invalid aggregation length {agg}: prefix {len} in pool {:?} is more specific than the aggregation length", p.name_any())));
                }
            }
        }
    }
    // Two advertisements of one pool must agree on localPref, unless something keeps their
    // routes apart: different aggregation, disjoint peers, disjoint nodes, service selectors.
    let node_set = |a: &BGPAdvertisement| -> BTreeSet<usize> {
        (0..cfg.nodes.len())
            .filter(|&i| {
                a.spec.node_selectors.is_empty()
                    || a.spec
                        .node_selectors
                        .iter()
                        .any(|s| matches(s, &cfg.nodes[i]))
            })
            .collect()
    };
    for (i, a) in cfg.bgp.iter().enumerate() {
        for b in &cfg.bgp[i + 1..] {
            let (sa, sb) = (&a.spec, &b.spec);
            if sa.local_pref == sb.local_pref
                || !cfg.pools.iter().any(|p| covers(a, p) && covers(b, p))
                || sa.aggregation_length != sb.aggregation_length
                || sa.aggregation_length_v6 != sb.aggregation_length_v6
                || (!sa.peers.is_empty()
                    && !sb.peers.is_empty()
                    && sa.peers.iter().all(|p| !sb.peers.contains(p)))
                || (!cfg.nodes.is_empty() && node_set(a).is_disjoint(&node_set(b)))
                || !sa.service_selectors.is_empty()
                || !sb.service_selectors.is_empty()
            {
                continue;
            }
            out.push(reject(
                "BGPAdvertisement",
                &b.name_any(),
                "spec.localPref",
                format!(
                    "conflicting localPref with BGPAdvertisement {:?} on the same pool",
                    a.name_any()
                ),
            ));
        }
    }
    let mut seen_ads: BTreeMap<String, String> = BTreeMap::new();
    for a in &cfg.bgp {
        if let Some(first) = seen_ads.insert(serialized(&a.spec), a.name_any()) {
            out.push(reject(
                "BGPAdvertisement",
                &a.name_any(),
                "spec",
                format!("duplicate of BGPAdvertisement {first:?}"),
            ));
        }
    }

    let mut seen_peers: BTreeMap<String, String> = BTreeMap::new();
    for p in &cfg.peers {
        let name = p.name_any();
        let s = &p.spec;
        let r = |field: &str, m: String| reject("BGPPeer", &name, field, m);
        out.extend(wrong_ns("BGPPeer", p));
        if s.common.my_asn == 0 {
            out.push(r("spec.myASN", "missing local ASN".into()));
        }
        match (s.peer_asn, s.dynamic_asn) {
            (None, None) => out.push(r(
                "spec.peerASN",
                "one of peerASN and dynamicASN is required".into(),
            )),
            (Some(_), Some(_)) => out.push(r(
                "spec.dynamicASN",
                "peerASN and dynamicASN cannot both be set".into(),
            )),
            _ => {}
        }
        if s.peer_asn == Some(s.common.my_asn) && s.common.ebgp_multi_hop == Some(true) {
            out.push(r(
                "spec.ebgpMultiHop",
                "invalid ebgp-multihop parameter set for an ibgp peer".into(),
            ));
        }
        match (&s.peer_address, &s.interface) {
            (None, None) => out.push(r(
                "spec.peerAddress",
                "one of peerAddress and interface is required".into(),
            )),
            (Some(_), Some(_)) => out.push(r(
                "spec.interface",
                "peerAddress and interface cannot both be set".into(),
            )),
            _ => {}
        }
        for (field, v) in [
            ("spec.peerAddress", &s.peer_address),
            ("spec.sourceAddress", &s.common.source_address),
            ("spec.routerID", &s.common.router_id),
        ] {
            if let Some(v) = v
                && v.parse::<IpAddr>().is_err()
            {
                out.push(r(field, format!("invalid address {v:?}")));
            }
        }
        let hold = s.common.hold_time.as_deref().map(|h| (h, duration(h)));
        let keepalive = s.common.keepalive_time.as_deref().map(|k| (k, duration(k)));
        if let Some((h, d)) = hold {
            match d {
                None => out.push(r("spec.holdTime", format!("invalid duration {h:?}"))),
                Some(d) if !d.is_zero() && d < Duration::from_secs(3) => out.push(r(
                    "spec.holdTime",
                    format!("invalid hold time {h:?}: must be 0 or >=3s"),
                )),
                _ => {}
            }
        }
        if let Some((k, d)) = keepalive {
            match (d, hold.and_then(|(_, d)| d)) {
                (None, _) => out.push(r("spec.keepaliveTime", format!("invalid duration {k:?}"))),
                (Some(k), Some(h)) if k > h => out.push(r(
                    "spec.keepaliveTime",
                    "keepalive time cannot be greater than the hold time".into(),
                )),
                _ => {}
            }
        }
        if let Some(profile) = &s.common.bfd_profile
            && !cfg.bfd_profiles.iter().any(|b| &b.name_any() == profile)
        {
            out.push(Rejection {
                transient: true,
                ..r(
                    "spec.bfdProfile",
                    format!("BFDProfile {profile:?} does not exist"),
                )
            });
        }
        // BFD echo mode is refused towards a peer that receives an IPv6 pool's prefixes.
        let echo = |b: &BFDProfile| b.spec.echo_mode == Some(true);
        let gets_v6 = cfg.bgp.iter().any(|a| {
            (a.spec.peers.is_empty() || a.spec.peers.contains(&name))
                && cfg.pools.iter().any(|p| {
                    covers(a, p)
                        && p.spec
                            .addresses
                            .iter()
                            .any(|e| prefix_of(e).is_some_and(|(v4, _)| !v4))
                })
        });
        if let Some(profile) = &s.common.bfd_profile
            && gets_v6
            && cfg
                .bfd_profiles
                .iter()
                .any(|b| &b.name_any() == profile && echo(b))
        {
            out.push(r(
                "spec.bfdProfile",
                format!("BFDProfile {profile:?} has echo mode, which cannot run with IPv6 pools"),
            ));
        }
        if s.common.password.is_some() && s.password_secret.is_some() {
            out.push(r(
                "spec.passwordSecret",
                "password and passwordSecret cannot both be set".into(),
            ));
        }
        if let Some(first) = seen_peers.insert(serialized(&p.spec), name.clone()) {
            out.push(r(
                "spec",
                format!("peer {name} already exists (same as {first:?})"),
            ));
        }
    }
    out
}

/// What the namespace rule needs of any object.
trait ResourceExtDyn {
    fn ns(&self) -> String;
    fn nm(&self) -> String;
}

impl<K: ResourceExt> ResourceExtDyn for K {
    fn ns(&self) -> String {
        self.namespace().unwrap_or_default()
    }
    fn nm(&self) -> String {
        self.name_any()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        BGPAdvertisementSpec, CommunityAlias, CommunitySpec, IPAddressPoolSpec,
        L2AdvertisementSpec, PeerCommon, ServiceAllocation, v1beta2::BGPPeerSpec,
        v1beta2::SecretReference,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    const NS: &str = "metallb-system";

    fn named<K: kube::Resource>(mut k: K, name: &str) -> K {
        k.meta_mut().name = Some(name.into());
        k.meta_mut().namespace = Some(NS.into());
        k
    }

    fn pool(name: &str, spec: IPAddressPoolSpec) -> IPAddressPool {
        named(IPAddressPool::new(name, spec), name)
    }

    fn peer(name: &str, f: impl FnOnce(&mut BGPPeerSpec)) -> BGPPeer {
        let mut spec = BGPPeerSpec {
            common: PeerCommon {
                my_asn: 65001,
                ..PeerCommon::default()
            },
            peer_asn: Some(65000),
            peer_address: Some("10.100.1.1".into()),
            ..BGPPeerSpec::default()
        };
        f(&mut spec);
        named(BGPPeer::new(name, spec), name)
    }

    fn ad(name: &str, f: impl FnOnce(&mut BGPAdvertisementSpec)) -> BGPAdvertisement {
        let mut spec = BGPAdvertisementSpec::default();
        f(&mut spec);
        named(BGPAdvertisement::new(name, spec), name)
    }

    /// The fields rejected, as `Kind/name field`.
    fn rejected(cfg: &Config) -> Vec<String> {
        check(cfg, NS)
            .iter()
            .map(|r| format!("{}/{} {}", r.kind, r.name, r.field))
            .collect()
    }

    #[test]
    fn a_good_configuration_passes() {
        let cfg = Config {
            pools: vec![pool(
                "home-pool",
                IPAddressPoolSpec {
                    addresses: vec!["192.168.1.240-192.168.1.245".into()],
                    ..Default::default()
                },
            )],
            l2: vec![named(
                L2Advertisement::new(
                    "l2",
                    L2AdvertisementSpec {
                        ip_address_pools: vec!["home-pool".into()],
                        ..Default::default()
                    },
                ),
                "l2",
            )],
            bgp: vec![ad("bgp", |s| {
                s.communities = vec!["65000:100".into(), "no-export".into(), "large:1:2:3".into()]
            })],
            peers: vec![peer("router", |s| s.common.hold_time = Some("90s".into()))],
            communities: vec![named(
                Community::new(
                    "c",
                    CommunitySpec {
                        communities: vec![CommunityAlias {
                            name: "no-export".into(),
                            value: "65535:65281".into(),
                        }],
                    },
                ),
                "c",
            )],
            ..Config::default()
        };
        assert_eq!(check(&cfg, NS), vec![]);
    }

    #[test]
    fn pools() {
        let mut wrong_place = pool(
            "elsewhere",
            IPAddressPoolSpec {
                addresses: vec!["10.0.0.0/24".into()],
                ..Default::default()
            },
        );
        wrong_place.metadata.namespace = Some("default".into());
        let sa = ServiceAllocation {
            namespaces: vec!["a".into(), "a".into()],
            service_selectors: vec![LabelSelector::default(), LabelSelector::default()],
            ..Default::default()
        };
        let cfg = Config {
            pools: vec![
                wrong_place,
                pool("empty", IPAddressPoolSpec::default()),
                pool(
                    "dup",
                    IPAddressPoolSpec {
                        addresses: vec!["10.0.1.0/24".into()],
                        service_allocation: Some(sa),
                        ..Default::default()
                    },
                ),
            ],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "IPAddressPool/elsewhere metadata.namespace",
                "IPAddressPool/empty spec.addresses",
                "IPAddressPool/dup spec.serviceAllocation.namespaces",
                "IPAddressPool/dup spec.serviceAllocation.serviceSelectors",
            ]
        );
        let msg = check(&cfg, NS)[0].to_string();
        assert_eq!(
            msg,
            "IPAddressPool \"elsewhere\": metadata.namespace: resource must be created in metallb-system namespace"
        );
    }

    #[test]
    fn peers() {
        let cfg = Config {
            peers: vec![
                peer("no-asn", |s| s.common.my_asn = 0),
                peer("no-peer-asn", |s| s.peer_asn = None),
                peer("both-asn", |s| {
                    s.dynamic_asn = Some(crate::crd::v1beta2::DynamicAsn::External)
                }),
                peer("ibgp-multihop", |s| {
                    s.peer_asn = Some(65001);
                    s.common.ebgp_multi_hop = Some(true);
                }),
                peer("no-address", |s| s.peer_address = None),
                peer("both-address", |s| s.interface = Some("eth0".into())),
                peer("bad-address", |s| s.peer_address = Some("10.100.1".into())),
                peer("bad-router-id", |s| {
                    s.common.router_id = Some("router".into())
                }),
                peer("short-hold", |s| s.common.hold_time = Some("2s".into())),
                peer("keepalive-over-hold", |s| {
                    s.common.hold_time = Some("30s".into());
                    s.common.keepalive_time = Some("1m".into());
                }),
                peer("two-passwords", |s| {
                    s.common.password = Some("x".into());
                    s.password_secret = Some(SecretReference::default());
                }),
            ],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "BGPPeer/no-asn spec.myASN",
                "BGPPeer/no-peer-asn spec.peerASN",
                "BGPPeer/both-asn spec.dynamicASN",
                "BGPPeer/ibgp-multihop spec.ebgpMultiHop",
                "BGPPeer/no-address spec.peerAddress",
                "BGPPeer/both-address spec.interface",
                "BGPPeer/bad-address spec.peerAddress",
                "BGPPeer/bad-router-id spec.routerID",
                "BGPPeer/short-hold spec.holdTime",
                "BGPPeer/keepalive-over-hold spec.keepaliveTime",
                "BGPPeer/two-passwords spec.passwordSecret",
            ]
        );
        let twins = Config {
            peers: vec![peer("a", |_| {}), peer("b", |_| {})],
            ..Config::default()
        };
        assert_eq!(rejected(&twins), ["BGPPeer/b spec"]);
    }

    #[test]
    fn advertisements_and_communities() {
        let many: Vec<String> = (0..64).map(|i| format!("65000:{i}")).collect();
        let cfg = Config {
            bgp: vec![
                ad("long-v4", |s| s.aggregation_length = Some(33)),
                ad("long-v6", |s| s.aggregation_length_v6 = Some(129)),
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
                ad("twin-a", |s| s.local_pref = Some(100)),
                ad("twin-b", |s| s.local_pref = Some(100)),
            ],
            l2: vec![named(
                L2Advertisement::new(
                    "l2",
                    L2AdvertisementSpec {
                        ip_address_pools: vec!["p".into(), "p".into()],
                        ..Default::default()
                    },
                ),
                "l2",
            )],
            communities: vec![
                named(
                    Community::new(
                        "c1",
                        CommunitySpec {
                            communities: vec![CommunityAlias {
                                name: "gold2".into(),
                                value: "large:1:2".into(),
                            }],
                        },
                    ),
                    "c1",
                ),
                named(
                    Community::new(
                        "c2",
                        CommunitySpec {
                            communities: vec![CommunityAlias {
                                name: "gold2".into(),
                                value: "1:2".into(),
                            }],
                        },
                    ),
                    "c2",
                ),
            ],
            ..Config::default()
        };
        let got = check(&cfg, NS);
        let fields: Vec<String> = got
            .iter()
            .map(|r| format!("{}/{} {}", r.kind, r.name, r.field))
            .collect();
        assert_eq!(
            fields,
            [
                "L2Advertisement/l2 spec.ipAddressPools",
                "Community/c1 spec.communities[0].value",
                "Community/c2 spec.communities[0].name",
                "BGPAdvertisement/long-v4 spec.aggregationLength",
                "BGPAdvertisement/long-v6 spec.aggregationLengthV6",
                "BGPAdvertisement/selectors-and-aggregation spec.serviceSelectors",
                "BGPAdvertisement/dup-pool spec.ipAddressPools",
                "BGPAdvertisement/dup-peer spec.peers",
                "BGPAdvertisement/too-many spec.communities",
                "BGPAdvertisement/bad-community spec.communities[0]",
                "BGPAdvertisement/unknown-alias spec.communities[0]",
                "BGPAdvertisement/twin-b spec",
            ]
        );
        let alias = got
            .iter()
            .find(|r| r.name == "unknown-alias")
            .expect("rejected");
        assert!(alias.transient, "a missing alias may still come");
        assert!(
            !got.iter()
                .find(|r| r.name == "bad-community")
                .expect("rejected")
                .transient
        );
    }

    #[test]
    fn aggregation_local_pref_and_bfd_references() {
        let pool_of = |name: &str, addrs: &[&str]| {
            pool(
                name,
                IPAddressPoolSpec {
                    addresses: addrs.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            )
        };
        let cfg = Config {
            pools: vec![
                pool_of("p24", &["10.0.0.0/24", "10.0.1.0-10.0.1.127"]),
                pool_of("v6", &["fd00::/120"]),
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
                ad("other-peers", |s| {
                    s.ip_address_pools = vec!["v6".into()];
                    s.aggregation_length_v6 = Some(112);
                }),
            ],
            peers: vec![peer("with-bfd", |s| {
                s.common.bfd_profile = Some("fast".into())
            })],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "BGPAdvertisement/too-short spec.aggregationLength",
                "BGPAdvertisement/too-short spec.aggregationLength",
                "BGPAdvertisement/other-peers spec.aggregationLengthV6",
                "BGPAdvertisement/other-pref spec.localPref",
                "BGPPeer/with-bfd spec.bfdProfile",
            ]
        );
        let msg = check(&cfg, NS)[0].to_string();
        assert!(
            msg.contains("prefix 24 in pool \"p24\" is more specific"),
            "{msg}"
        );
        // Disjoint peers keep two local preferences apart.
        let mut apart = cfg.clone();
        apart.bgp[1].spec.peers = vec!["r1".into()];
        apart.bgp[2].spec.peers = vec!["r2".into()];
        assert!(!rejected(&apart).iter().any(|r| r.contains("localPref")));
        // The range 10.0.1.0-10.0.1.127 summarises to one /25.
        assert_eq!(prefix_of("10.0.1.0-10.0.1.127"), Some((true, 25)));
        assert_eq!(prefix_of("10.0.1.1-10.0.1.6"), Some((true, 31)));
        assert_eq!(prefix_of("fd00::-fd00::ff"), Some((false, 120)));
        assert_eq!(prefix_of("10.0.0.9-10.0.0.1"), None);
    }

    #[test]
    fn bfd_echo_mode_only_without_ipv6_pools() {
        use crate::crd::BFDProfileSpec;
        let profile = |name: &str, echo: bool| {
            named(
                BFDProfile::new(
                    name,
                    BFDProfileSpec {
                        echo_mode: Some(echo),
                        ..BFDProfileSpec::default()
                    },
                ),
                name,
            )
        };
        let with = |name: &str, address: &str, profile: &str| {
            let (address, profile) = (address.to_string(), profile.to_string());
            peer(name, move |s| {
                s.peer_address = Some(address);
                s.common.bfd_profile = Some(profile);
            })
        };
        let mut cfg = Config {
            pools: vec![
                pool(
                    "v4",
                    IPAddressPoolSpec {
                        addresses: vec!["10.0.0.0/24".into()],
                        ..Default::default()
                    },
                ),
                pool(
                    "v6",
                    IPAddressPoolSpec {
                        addresses: vec!["fd00::/120".into()],
                        ..Default::default()
                    },
                ),
            ],
            bgp: vec![
                ad("v4-to-all", |s| s.ip_address_pools = vec!["v4".into()]),
                ad("v6-to-r2", |s| {
                    s.ip_address_pools = vec!["v6".into()];
                    s.peers = vec!["r2".into()];
                }),
            ],
            peers: vec![
                with("r1", "10.0.0.1", "echo"),
                with("r2", "10.0.0.2", "echo"),
                with("r3", "10.0.0.3", "plain"),
            ],
            bfd_profiles: vec![profile("echo", true), profile("plain", false)],
            ..Config::default()
        };
        // Only r2 gets the IPv6 pool's prefixes.
        assert_eq!(rejected(&cfg), ["BGPPeer/r2 spec.bfdProfile"]);
        let msg = check(&cfg, NS)[0].to_string();
        assert!(msg.contains("echo mode"), "{msg}");
        // The referenced profile deleted: the peers wait for it (transient), keeping what they had.
        cfg.bfd_profiles.clear();
        let all = check(&cfg, NS);
        assert_eq!(all.len(), 3);
        assert!(
            all.iter()
                .all(|r| r.transient && r.message.contains("does not exist"))
        );
    }

    #[test]
    fn selectors() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        let sel = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: op.into(),
                values: Some(values.iter().map(|s| s.to_string()).collect()),
            }]),
            ..LabelSelector::default()
        };
        assert!(matches(&sel("In", &["a", "b"]), &labels));
        assert!(!matches(&sel("NotIn", &["a"]), &labels));
        assert!(matches(&sel("Exists", &[]), &labels));
        assert!(!matches(&sel("DoesNotExist", &[]), &labels));
        assert!(matches(&LabelSelector::default(), &labels));
    }

    #[test]
    fn durations() {
        assert_eq!(duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration("0"), Some(Duration::ZERO));
        assert_eq!(duration("90"), None);
        assert_eq!(duration("s"), None);
        assert_eq!(duration(""), None);
    }
}
