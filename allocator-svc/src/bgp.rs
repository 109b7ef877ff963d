//! BGP mode: MetalLB's BGPPeer, BGPAdvertisement and Community, checked as MetalLB's webhook
//! checks them, and the decision made from them: for every node, the sessions it runs and, per
//! prefix, what each of its peers receives. Every eligible node advertises (there is no election
//! in BGP mode), so the decision does not depend on which announcers are connected.

use ferrolb_common::Secret;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::cluster::{Endpoints, NodeInfo, Silence, pool_applies, serves, service_of};
use crate::election::EXCLUDE_LABEL;
use crate::error::{Error, Result};
use crate::lease::Lease;
use crate::pool::{check_unique, validate_name};
use crate::selector::{LabelSelector, Labels};

/// MetalLB's default hold time for its native speaker.
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// Linux takes TCP MD5 keys of up to 80 bytes.
const MAX_PASSWORD: usize = 80;
/// MetalLB's limit per advertisement.
const MAX_COMMUNITIES: usize = 63;

/// A validated BGPPeer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    #[serde(skip)]
    pub cluster: String,
    #[serde(skip)]
    pub name: String,
    pub my_asn: u32,
    pub peer_asn: u32,
    pub address: IpAddr,
    pub port: u16,
    pub source: Option<IpAddr>,
    pub hold_time: u16,
    pub keepalive: Option<u16>,
    pub router_id: Option<Ipv4Addr>,
    pub node_selectors: Vec<LabelSelector>,
    /// Never stored as it is: the store seals it (`crate::secrets`).
    #[serde(skip)]
    pub password: Secret,
    pub ebgp_multihop: bool,
    pub graceful_restart: bool,
    /// The BFD session beside the BGP one (MetalLB's BFDProfile, defaults filled in).
    #[serde(default)]
    pub bfd: Option<Bfd>,
}

/// A BFDProfile as a peer's session runs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bfd {
    pub profile: String,
    pub receive_interval_ms: u32,
    pub transmit_interval_ms: u32,
    pub detect_multiplier: u8,
    pub passive: bool,
    pub minimum_ttl: u8,
}

impl Bfd {
    /// MetalLB's ranges (`bfdProfileFromCR`).
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("bfd_profile.receive_interval_ms", self.receive_interval_ms),
            (
                "bfd_profile.transmit_interval_ms",
                self.transmit_interval_ms,
            ),
        ] {
            if !(10..=60000).contains(&v) {
                return Err(Error::invalid(
                    field,
                    format!("{v} ms is not within 10-60000"),
                ));
            }
        }
        if self.detect_multiplier < 2 {
            return Err(Error::invalid(
                "bfd_profile.detect_multiplier",
                format!("{} is not within 2-255", self.detect_multiplier),
            ));
        }
        if !(1..=254).contains(&self.minimum_ttl) {
            return Err(Error::invalid(
                "bfd_profile.minimum_ttl",
                format!("{} is not within 1-254", self.minimum_ttl),
            ));
        }
        Ok(())
    }
}

impl BgpPeer {
    /// Checks the rules MetalLB's webhook applies to a BGPPeer (§6.4).
    pub fn validate(&self) -> Result<()> {
        validate_name("cluster", &self.cluster)?;
        validate_name("name", &self.name)?;
        if self.my_asn == 0 {
            return Err(Error::invalid("my_asn", "missing local ASN"));
        }
        if self.peer_asn == 0 {
            return Err(Error::invalid("peer_asn", "missing peer ASN"));
        }
        if self.port == 0 || self.port > 16384 {
            return Err(Error::invalid(
                "peer_port",
                format!("{} is not between 1 and 16384", self.port),
            ));
        }
        if self.hold_time != 0 && self.hold_time < 3 {
            return Err(Error::invalid(
                "hold_time",
                format!("{} s: must be 0 or at least 3 s", self.hold_time),
            ));
        }
        if let Some(k) = self.keepalive
            && k > self.hold_time
        {
            return Err(Error::invalid(
                "keepalive_time",
                format!("{k} s is longer than the hold time ({} s)", self.hold_time),
            ));
        }
        if self.ebgp_multihop && self.my_asn == self.peer_asn {
            return Err(Error::invalid(
                "ebgp_multihop",
                "invalid ebgp-multihop parameter set for an ibgp peer",
            ));
        }
        if self.password.expose().len() > MAX_PASSWORD {
            return Err(Error::invalid(
                "password",
                format!("at most {MAX_PASSWORD} bytes (the kernel's TCP MD5 key limit)"),
            ));
        }
        if let Some(s) = self.source
            && s.is_ipv4() != self.address.is_ipv4()
        {
            return Err(Error::invalid(
                "source_address",
                format!("{s} is not of the peer address's family"),
            ));
        }
        Ok(())
    }

    fn selects(&self, labels: &Labels) -> bool {
        self.node_selectors.is_empty() || self.node_selectors.iter().any(|s| s.matches(labels))
    }
}

/// A validated BGPAdvertisement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpAd {
    #[serde(skip)]
    pub cluster: String,
    #[serde(skip)]
    pub name: String,
    pub aggregation_length: u8,
    pub aggregation_length_v6: u8,
    pub local_pref: u32,
    /// As given: values or alias names.
    pub communities: Vec<String>,
    pub pools: Vec<String>,
    pub pool_selectors: Vec<LabelSelector>,
    pub node_selectors: Vec<LabelSelector>,
    pub peers: Vec<String>,
    /// MetalLB 0.16: only Services whose labels match one of them (none: every Service).
    #[serde(default)]
    pub service_selectors: Vec<LabelSelector>,
}

impl BgpAd {
    /// Checks an advertisement; `aliases` are the cluster's Community aliases.
    pub fn validate(&self, aliases: &BTreeMap<String, Community>) -> Result<()> {
        validate_name("cluster", &self.cluster)?;
        validate_name("name", &self.name)?;
        if !(1..=32).contains(&self.aggregation_length) {
            return Err(Error::invalid(
                "aggregation_length",
                format!("{} is not between 1 and 32", self.aggregation_length),
            ));
        }
        if !(1..=128).contains(&self.aggregation_length_v6) {
            return Err(Error::invalid(
                "aggregation_length_v6",
                format!("{} is not between 1 and 128", self.aggregation_length_v6),
            ));
        }
        check_unique("ip_address_pools", &self.pools)?;
        check_unique("peers", &self.peers)?;
        check_unique("communities", &self.communities)?;
        if self.communities.len() > MAX_COMMUNITIES {
            return Err(Error::invalid(
                "communities",
                format!("at most {MAX_COMMUNITIES} communities"),
            ));
        }
        for c in &self.communities {
            if Community::parse(c)
                .map_err(|e| Error::invalid("communities", e))?
                .is_none()
                && !aliases.contains_key(c)
            {
                return Err(Error::invalid(
                    "communities",
                    format!("{c:?} is neither a community value nor an alias of a Community"),
                ));
            }
        }
        let aggregates = self.aggregation_length != 32 || self.aggregation_length_v6 != 128;
        if aggregates && !self.service_selectors.is_empty() {
            return Err(Error::invalid(
                "service_selectors",
                "service selectors and a non-default aggregation length are mutually exclusive: \
                 an aggregated route would stand for Services the selectors leave out",
            ));
        }
        Ok(())
    }

    fn selects(&self, labels: &Labels) -> bool {
        self.node_selectors.is_empty() || self.node_selectors.iter().any(|s| s.matches(labels))
    }

    /// MetalLB's rule that the advertisement may aggregate the pool's addresses, for a pool the
    /// advertisement covers: no block of the pool is more specific than the aggregation length.
    pub fn fits(&self, pool: &crate::pool::Pool) -> Result<(), Error> {
        let (v4, v6) = (self.aggregation_length, self.aggregation_length_v6);
        for entry in &pool.spec.addresses {
            let misfit = ferrolb_metallb::validate::aggregation_misfit(
                v4.into(),
                v6.into(),
                pool.name(),
                entry,
            );
            if let Some(m) = misfit {
                let field = match m.field {
                    "spec.aggregationLength" => "aggregation_length",
                    _ => "aggregation_length_v6",
                };
                return Err(Error::invalid(field, m.message));
            }
        }
        Ok(())
    }

    fn prefix(&self, ip: IpAddr) -> (IpAddr, u8) {
        match ip {
            IpAddr::V4(a) => {
                let len = self.aggregation_length.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                (IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)), len)
            }
            IpAddr::V6(a) => {
                let len = self.aggregation_length_v6.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                (IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), len)
            }
        }
    }
}

/// The same rule from the pool's side: every advertisement of a cluster the pool is open to
/// that covers it can aggregate its blocks. `except` is the cluster applying the pool, whose
/// own advertisements its configuration checks together with the pool (they may be applied
/// right after it).
pub fn fits_advertisements(
    pool: &crate::pool::Pool,
    ads: &[BgpAd],
    except: Option<&str>,
) -> Result<(), Error> {
    let labels = Some(&pool.spec.labels);
    for ad in ads.iter().filter(|a| Some(a.cluster.as_str()) != except) {
        let open = pool.open_to(&crate::pool::Caller::Cluster(ad.cluster.clone()));
        if !open || !pool_applies(&ad.pools, &ad.pool_selectors, pool.name(), labels) {
            continue;
        }
        if let Err(e) = ad.fits(pool) {
            return Err(Error::invalid(
                "addresses",
                format!(
                    "BGPAdvertisement {:?} of cluster {:?} covers this pool and cannot aggregate it: {e}",
                    ad.name, ad.cluster
                ),
            ));
        }
    }
    Ok(())
}

/// A community value (RFC 1997 or RFC 8092).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Community {
    Standard(u32),
    Large(u32, u32, u32),
}

impl Community {
    /// Parses `AA:NN` or `large:G:L1:L2`; Ok(None) for a name that can only be an alias.
    pub fn parse(s: &str) -> std::result::Result<Option<Community>, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |p: &str| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty();
        match parts[..] {
            ["large", g, l1, l2] => {
                let v = |p: &str| {
                    p.parse::<u32>()
                        .map_err(|_| format!("{s:?}: {p:?} is not a 32-bit number"))
                };
                Ok(Some(Community::Large(v(g)?, v(l1)?, v(l2)?)))
            }
            [a, n] if num(a) && num(n) => {
                let v = |p: &str| {
                    p.parse::<u16>()
                        .map_err(|_| format!("{s:?}: {p:?} is not a 16-bit number"))
                };
                Ok(Some(Community::Standard(
                    (u32::from(v(a)?) << 16) | u32::from(v(n)?),
                )))
            }
            _ if s.contains(':') => {
                Err(format!("{s:?} is not a community (AA:NN or large:G:L1:L2)"))
            }
            _ if s.is_empty() => Err("an empty community".into()),
            _ => Ok(None),
        }
    }
}

/// A validated Community object: alias → value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunitySet {
    #[serde(skip)]
    pub cluster: String,
    #[serde(skip)]
    pub name: String,
    pub aliases: Vec<(String, String)>,
}

impl CommunitySet {
    /// `others` are the cluster's other Community objects: alias names must be unique across
    /// all of them.
    pub fn validate(&self, others: &[CommunitySet]) -> Result<()> {
        validate_name("cluster", &self.cluster)?;
        validate_name("name", &self.name)?;
        let mut seen = BTreeSet::new();
        for (alias, value) in &self.aliases {
            if alias.is_empty() || alias.contains(':') {
                return Err(Error::invalid(
                    "communities.name",
                    format!("{alias:?} is not an alias name"),
                ));
            }
            if !seen.insert(alias) {
                return Err(Error::invalid(
                    "communities.name",
                    format!("duplicate community alias {alias:?}"),
                ));
            }
            if let Some(o) = others
                .iter()
                .filter(|o| o.name != self.name)
                .find(|o| o.aliases.iter().any(|(a, _)| a == alias))
            {
                return Err(Error::invalid(
                    "communities.name",
                    format!(
                        "duplicate community alias {alias:?} (also in Community {:?})",
                        o.name
                    ),
                ));
            }
            if Community::parse(value)
                .map_err(|e| Error::invalid("communities.value", e))?
                .is_none()
            {
                return Err(Error::invalid(
                    "communities.value",
                    format!("{value:?} is not a community value"),
                ));
            }
        }
        Ok(())
    }
}

/// Alias name → value, over a cluster's Community objects.
pub fn aliases(sets: &[CommunitySet]) -> BTreeMap<String, Community> {
    sets.iter()
        .flat_map(|s| &s.aliases)
        .filter_map(|(a, v)| Community::parse(v).ok().flatten().map(|c| (a.clone(), c)))
        .collect()
}

/// What one peer receives for one prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRoute {
    pub communities: BTreeSet<Community>,
    /// 0: none.
    pub local_pref: u32,
}

/// A prefix: address (masked) and length.
pub type Prefix = (IpAddr, u8);

/// What one node does in BGP mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeBgp {
    /// The BGPPeers whose node selectors pick the node, by name.
    pub sessions: BTreeMap<String, BgpPeer>,
    /// Per prefix, per peer name.
    pub routes: BTreeMap<Prefix, BTreeMap<String, PeerRoute>>,
}

/// Who advertises one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpAnnouncement {
    pub ip: IpAddr,
    pub services: BTreeSet<String>,
    /// Node → (prefix, peers).
    pub nodes: BTreeMap<String, (Prefix, BTreeSet<String>)>,
    pub silence: Option<Silence>,
}

/// Everything the BGP decision for one cluster reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub nodes: &'a [NodeInfo],
    pub peers: &'a [BgpPeer],
    pub ads: &'a [BgpAd],
    pub communities: &'a [CommunitySet],
    pub endpoints: &'a BTreeMap<(String, String), Endpoints>,
    pub leases: &'a [&'a Lease],
    pub pools: &'a BTreeMap<String, Labels>,
    pub ignore_exclude_label: bool,
}

/// The cluster's BGP decision: per node, and per address for status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub nodes: BTreeMap<String, NodeBgp>,
    pub announcements: Vec<BgpAnnouncement>,
}

/// Decides, for every node, its sessions and what each peer receives (MetalLB §5.1).
pub fn decide(input: Input<'_>) -> Decision {
    let values = community_values(&input);
    let mut nodes = sessions(&input);
    let eligible: Vec<&NodeInfo> = input
        .nodes
        .iter()
        .filter(|n| nodes.contains_key(&n.name))
        .filter(|n| !n.network_unavailable)
        .filter(|n| input.ignore_exclude_label || !n.labels.contains_key(EXCLUDE_LABEL))
        .collect();

    let mut by_ip: BTreeMap<IpAddr, BgpAnnouncement> = BTreeMap::new();
    let no_labels = Labels::new();
    for lease in input.leases {
        let svc = service_of(&lease.owner);
        let ends = svc.as_ref().and_then(|s| input.endpoints.get(s));
        let service_labels = ends.map_or(&no_labels, |e| &e.labels);
        for a in &lease.addrs {
            let ann = by_ip.entry(a.ip).or_insert_with(|| BgpAnnouncement {
                ip: a.ip,
                services: BTreeSet::new(),
                nodes: BTreeMap::new(),
                silence: None,
            });
            if let Some((ns, name)) = &svc {
                ann.services.insert(format!("{ns}/{name}"));
            }
            let labels = input.pools.get(&a.pool);
            let ads: Vec<&BgpAd> = input
                .ads
                .iter()
                .filter(|ad| pool_applies(&ad.pools, &ad.pool_selectors, &a.pool, labels))
                .filter(|ad| serves(&ad.service_selectors, service_labels))
                .collect();
            let refused = || refusal(lease, a.ip, &ads, &eligible);
            if let Some(s) = silence(&ads, ends).or_else(refused) {
                // Another lease on the same address may still advertise it.
                if ann.nodes.is_empty() {
                    ann.silence = Some(s);
                }
                continue;
            }
            let local = ends.filter(|e| e.local);
            for n in &eligible {
                if local.is_some_and(|e| !e.nodes.contains(&n.name)) {
                    continue;
                }
                if let Some(node) = nodes.get_mut(&n.name) {
                    advertise(node, n, a.ip, &ads, &values, ann);
                }
            }
        }
    }
    Decision {
        nodes,
        announcements: by_ip.into_values().collect(),
    }
}

/// Each advertisement's community values, aliases resolved.
fn community_values<'a>(input: &Input<'a>) -> BTreeMap<&'a String, Vec<Community>> {
    let aliases = aliases(input.communities);
    input
        .ads
        .iter()
        .map(|ad| {
            let v = ad
                .communities
                .iter()
                .filter_map(|c| match Community::parse(c) {
                    Ok(Some(v)) => Some(v),
                    _ => aliases.get(c).copied(),
                })
                .collect();
            (&ad.name, v)
        })
        .collect()
}

/// Every node with at least one peer that selects it, with its sessions and no routes yet.
fn sessions(input: &Input<'_>) -> BTreeMap<String, NodeBgp> {
    let mut nodes = BTreeMap::new();
    for n in input.nodes {
        let sessions: BTreeMap<String, BgpPeer> = input
            .peers
            .iter()
            .filter(|p| p.selects(&n.labels))
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        if !sessions.is_empty() {
            let routes = BTreeMap::new();
            nodes.insert(n.name.clone(), NodeBgp { sessions, routes });
        }
    }
    nodes
}

/// Why an address is not advertised at all: no advertisement of its pool, or no endpoints.
fn silence(ads: &[&BgpAd], ends: Option<&Endpoints>) -> Option<Silence> {
    if ads.is_empty() {
        return Some(Silence::NoMatchingAdvertisement);
    }
    match ends {
        Some(e) if e.any_serving || !e.nodes.is_empty() => {
            (e.local && e.nodes.is_empty()).then_some(Silence::NoLocalEndpoints)
        }
        _ => Some(Silence::NoEndpoints),
    }
}

/// Why MetalLB 0.16 does not advertise an address its Service's advertisements select: the
/// Service shares it and one of them has service selectors, or two of them, one with service
/// selectors, would send the same route to the same peer from the same node with different
/// local preferences.
fn refusal(lease: &Lease, ip: IpAddr, ads: &[&BgpAd], eligible: &[&NodeInfo]) -> Option<Silence> {
    let selective = |ad: &&&BgpAd| !ad.service_selectors.is_empty();
    if !lease.sharing_key.is_empty() && ads.iter().any(|ad| selective(&ad)) {
        return Some(Silence::SharedIpWithServiceSelector);
    }
    let same_route = |a: &BgpAd, b: &BgpAd| {
        let peers_meet =
            a.peers.is_empty() || b.peers.is_empty() || a.peers.iter().any(|p| b.peers.contains(p));
        a.local_pref != b.local_pref
            && a.prefix(ip) == b.prefix(ip)
            && peers_meet
            && eligible
                .iter()
                .any(|n| a.selects(&n.labels) && b.selects(&n.labels))
    };
    let conflict = ads.iter().filter(selective).any(|a| {
        ads.iter()
            .any(|b| !std::ptr::eq(*a, *b) && same_route(a, b))
    });
    conflict.then_some(Silence::ConflictingAdvertisements)
}

/// Node `n` advertises `ip` by each of `ads` that selects it, to the advertisement's peers
/// among its sessions; the announcement records it.
fn advertise(
    node: &mut NodeBgp,
    n: &NodeInfo,
    ip: IpAddr,
    ads: &[&BgpAd],
    values: &BTreeMap<&String, Vec<Community>>,
    ann: &mut BgpAnnouncement,
) {
    for ad in ads.iter().filter(|ad| ad.selects(&n.labels)) {
        let prefix = ad.prefix(ip);
        let peers: Vec<&String> = node
            .sessions
            .keys()
            .filter(|p| ad.peers.is_empty() || ad.peers.contains(p))
            .collect();
        if peers.is_empty() {
            continue;
        }
        let routes = node.routes.entry(prefix).or_default();
        let entry = ann
            .nodes
            .entry(n.name.clone())
            .or_insert_with(|| (prefix, BTreeSet::new()));
        for p in peers {
            let r = routes.entry(p.clone()).or_default();
            r.communities.extend(values[&ad.name].iter().copied());
            r.local_pref = r.local_pref.max(ad.local_pref);
            entry.1.insert(p.clone());
        }
        ann.silence = None;
    }
}

#[cfg(test)]
#[path = "bgp_tests.rs"]
mod tests;
