//! What a cluster reports (nodes, endpoints, L2Advertisements) and the decision made from it:
//! which node announces each layer-2 address. The decision is a pure function of the reported
//! state, the leases and the live announcers, so every replica that reads the same database
//! reaches the same answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::election::{self, Advertisement, Preference};
use crate::error::{Error, Result};
use crate::lease::{Lease, Owner};
use crate::pool::validate_name;
use crate::selector::{LabelSelector, Labels};

/// A random number from the operating system's generator, for ids.
pub fn random_u64() -> u64 {
    use rand::{Rng, SeedableRng};
    rand::rngs::StdRng::from_os_rng().random()
}

/// A node of a cluster as its adapter reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub cluster: String,
    pub name: String,
    pub labels: Labels,
    pub network_unavailable: bool,
}

/// Where one Service's serving endpoints run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub nodes: BTreeSet<String>,
    pub any_serving: bool,
    /// externalTrafficPolicy Local.
    pub local: bool,
    /// The Service's labels.
    #[serde(default)]
    pub labels: Labels,
}

/// One weighted preference, stored form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferred {
    pub weight: u32,
    pub selector: LabelSelector,
}

/// A validated L2Advertisement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2Ad {
    #[serde(skip)]
    pub cluster: String,
    #[serde(skip)]
    pub name: String,
    pub pools: Vec<String>,
    pub pool_selectors: Vec<LabelSelector>,
    pub node_selectors: Vec<LabelSelector>,
    pub interfaces: Vec<String>,
    pub preferences: Vec<Preferred>,
    /// MetalLB 0.16: only Services whose labels match one of them (none: every Service).
    #[serde(default)]
    pub service_selectors: Vec<LabelSelector>,
}

impl L2Ad {
    /// Checks an advertisement as MetalLB's webhook would.
    pub fn validate(&self) -> Result<()> {
        validate_name("cluster", &self.cluster)?;
        validate_name("name", &self.name)?;
        let mut seen = BTreeSet::new();
        for p in &self.pools {
            if !seen.insert(p) {
                return Err(Error::invalid(
                    "ip_address_pools",
                    format!("pool {p:?} is listed twice"),
                ));
            }
        }
        for i in &self.interfaces {
            if i.is_empty() || i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) {
                return Err(Error::invalid(
                    "interfaces",
                    format!("{i:?} is not an interface name"),
                ));
            }
        }
        for p in &self.preferences {
            if !(1..=100).contains(&p.weight) {
                return Err(Error::invalid(
                    "preferred_node_selectors.weight",
                    format!("{} is not between 1 and 100", p.weight),
                ));
            }
        }
        Ok(())
    }

    fn applies_to(&self, pool: &str, labels: Option<&Labels>) -> bool {
        pool_applies(&self.pools, &self.pool_selectors, pool, labels)
    }

    fn serves(&self, service: &Labels) -> bool {
        serves(&self.service_selectors, service)
    }

    fn election(&self) -> Advertisement {
        Advertisement {
            node_selectors: self.node_selectors.clone(),
            preferences: self
                .preferences
                .iter()
                .map(|p| Preference {
                    weight: p.weight,
                    selector: p.selector.clone(),
                })
                .collect(),
        }
    }

    fn selects(&self, labels: &Labels) -> bool {
        self.node_selectors.is_empty() || self.node_selectors.iter().any(|s| s.matches(labels))
    }
}

/// MetalLB 0.16: an advertisement without service selectors serves every Service, one with
/// some the Services whose labels match any of them.
pub(crate) fn serves(selectors: &[LabelSelector], service: &Labels) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| s.matches(service))
}

/// Why nobody announces an address (MetalLB's `serviceWithdrawn` reasons where they apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    NoMatchingAdvertisement,
    NoEndpoints,
    NoLocalEndpoints,
    /// No live announcer on an eligible node.
    NoEligibleNode,
    /// A Service that shares its address matches an advertisement with service selectors,
    /// which MetalLB does not announce (the sharing Services could select different nodes).
    SharedIpWithServiceSelector,
    /// The advertisements that select a Service would send one route with two local
    /// preferences (BGP only; only service selectors let such advertisements be applied).
    ConflictingAdvertisements,
}

impl Silence {
    pub fn as_str(self) -> &'static str {
        match self {
            Silence::NoMatchingAdvertisement => "noMatchingAdvertisement",
            Silence::NoEndpoints => "noEndpoints",
            Silence::NoLocalEndpoints => "noLocalEndpoints",
            Silence::NoEligibleNode => "noEligibleNode",
            Silence::SharedIpWithServiceSelector => "sharedIPWithServiceSelector",
            Silence::ConflictingAdvertisements => "conflictingAdvertisements",
        }
    }
}

/// Who announces one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub ip: IpAddr,
    pub owner: std::result::Result<String, Silence>,
    /// Empty: every eligible interface.
    pub interfaces: Vec<String>,
    /// `namespace/name` of the Services on the address.
    pub services: Vec<String>,
}

/// Everything the decision for one cluster reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The cluster's nodes (see `participants`).
    pub nodes: &'a [NodeInfo],
    /// Nodes whose announcer holds a stream and says it can announce.
    pub live: &'a BTreeSet<String>,
    pub ads: &'a [L2Ad],
    /// By (namespace, name).
    pub endpoints: &'a BTreeMap<(String, String), Endpoints>,
    /// The cluster's leases.
    pub leases: &'a [&'a Lease],
    /// Pool labels by pool name.
    pub pools: &'a BTreeMap<String, Labels>,
    pub ignore_exclude_label: bool,
}

/// MetalLB: an advertisement naming no pool, by name or selector, applies to every pool.
pub(crate) fn pool_applies(
    pools: &[String],
    selectors: &[LabelSelector],
    pool: &str,
    labels: Option<&Labels>,
) -> bool {
    (pools.is_empty() && selectors.is_empty())
        || pools.iter().any(|p| p == pool)
        || labels.is_some_and(|l| selectors.iter().any(|s| s.matches(l)))
}

/// The nodes that take part in a cluster's decisions: those its adapter reported, and those
/// known only by a live announcer (without labels).
pub fn participants(
    cluster: &str,
    reported: &[NodeInfo],
    live: &BTreeSet<String>,
) -> Vec<NodeInfo> {
    let mut nodes: Vec<NodeInfo> = reported
        .iter()
        .filter(|n| n.cluster == cluster)
        .cloned()
        .collect();
    let known: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    for name in live.difference(&known) {
        nodes.push(NodeInfo {
            cluster: cluster.to_string(),
            name: name.clone(),
            labels: Labels::new(),
            network_unavailable: false,
        });
    }
    nodes
}

/// The (namespace, name) of the Service that owns a lease.
pub(crate) fn service_of(owner: &Owner) -> Option<(String, String)> {
    match owner {
        Owner::Service {
            namespace, name, ..
        } => Some((namespace.clone(), name.clone())),
        Owner::External { .. } => None,
    }
}

/// Decides who announces every address of the cluster's leases, in address order.
///
/// Leases that share an address, and the addresses of one dual-stack lease, form one group that
/// is elected once: on the lowest first address of its leases, with the union of their serving
/// nodes (and policy Local only if every lease of the group has it).
pub fn decide(input: Input<'_>) -> Vec<Announcement> {
    let nodes: Vec<election::Node> = input
        .nodes
        .iter()
        .map(|n| election::Node {
            name: n.name.clone(),
            labels: n.labels.clone(),
            network_unavailable: n.network_unavailable,
        })
        .collect();
    let cluster = election::Cluster {
        nodes: &nodes,
        live: input.live,
        ignore_exclude_label: input.ignore_exclude_label,
    };
    let mut out = Vec::new();
    for members in sharing_groups(input.leases) {
        let Some(g) = Group::of(&input, &members) else {
            continue;
        };
        let owner = g.owner(cluster);
        let interfaces = match &owner {
            Ok(node) => g.interfaces(&nodes, node),
            Err(_) => vec![],
        };
        let services: Vec<String> = g.services.into_iter().collect();
        for ip in g.ips {
            out.push(Announcement {
                ip,
                owner: owner.clone(),
                interfaces: interfaces.clone(),
                services: services.clone(),
            });
        }
    }
    out.sort_by_key(|a| a.ip);
    out
}

/// The leases connected by a shared address, as index lists (union-find over lease indexes).
fn sharing_groups(leases: &[&Lease]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..leases.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut holder: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, lease) in leases.iter().enumerate() {
        for a in &lease.addrs {
            if let Some(&j) = holder.get(&a.ip) {
                let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
                parent[ri] = rj;
            } else {
                holder.insert(a.ip, i);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..leases.len() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups.into_values().collect()
}

/// One group of leases that share addresses, announced together.
struct Group<'a> {
    ips: BTreeSet<IpAddr>,
    services: BTreeSet<String>,
    /// The lowest first address of the group's leases: the election's key.
    first_ip: IpAddr,
    /// The advertisements of the group's pools.
    ads: Vec<&'a L2Ad>,
    /// The group's endpoints, merged; None when no Service of it reported any.
    endpoints: Option<Endpoints>,
    /// A sharing Service of the group matched an advertisement with service selectors; it
    /// adds neither advertisements nor endpoints.
    refused_shared: bool,
}

impl<'a> Group<'a> {
    fn of(input: &Input<'a>, members: &[usize]) -> Option<Group<'a>> {
        let mut ips = BTreeSet::new();
        let mut services = BTreeSet::new();
        let mut first_ip: Option<IpAddr> = None;
        let mut ads: Vec<&L2Ad> = Vec::new();
        let mut ends = Endpoints {
            local: true,
            ..Endpoints::default()
        };
        let mut any_reported = false;
        let mut refused_shared = false;
        let no_labels = Labels::new();
        for &i in members {
            let lease = input.leases[i];
            if let Some(a) = lease.addrs.first() {
                first_ip = Some(first_ip.map_or(a.ip, |f| f.min(a.ip)));
            }
            ips.extend(lease.addrs.iter().map(|a| a.ip));
            let svc = service_of(&lease.owner);
            if let Some((ns, name)) = &svc {
                services.insert(format!("{ns}/{name}"));
            }
            let reported = svc.as_ref().and_then(|s| input.endpoints.get(s));
            let labels = reported.map_or(&no_labels, |e| &e.labels);
            let mine = input.ads.iter().filter(|ad| {
                ad.serves(labels)
                    && lease
                        .addrs
                        .iter()
                        .any(|a| ad.applies_to(&a.pool, input.pools.get(&a.pool)))
            });
            let mine: Vec<&L2Ad> = mine.collect();
            if !lease.sharing_key.is_empty() && mine.iter().any(|a| !a.service_selectors.is_empty())
            {
                refused_shared = true;
                continue;
            }
            for ad in mine {
                if !ads.iter().any(|x| x.name == ad.name) {
                    ads.push(ad);
                }
            }
            if let Some(e) = reported {
                any_reported = true;
                ends.any_serving |= e.any_serving || !e.nodes.is_empty();
                ends.local &= e.local;
                ends.nodes.extend(e.nodes.iter().cloned());
            }
        }
        Some(Group {
            ips,
            services,
            first_ip: first_ip?,
            ads,
            endpoints: any_reported.then_some(ends),
            refused_shared,
        })
    }

    /// The node that announces the group, or why none does.
    fn owner(&self, cluster: election::Cluster<'_>) -> Result<String, Silence> {
        if self.ads.is_empty() {
            return Err(if self.refused_shared {
                Silence::SharedIpWithServiceSelector
            } else {
                Silence::NoMatchingAdvertisement
            });
        }
        let ends = match &self.endpoints {
            Some(e) if e.any_serving => e,
            _ => return Err(Silence::NoEndpoints),
        };
        if ends.local && ends.nodes.is_empty() {
            return Err(Silence::NoLocalEndpoints);
        }
        let election_ads: Vec<Advertisement> = self.ads.iter().map(|a| a.election()).collect();
        let service = election::Service {
            first_ip: self.first_ip,
            local: ends.local,
            any_serving: true,
            endpoint_nodes: &ends.nodes,
        };
        election::owner(cluster, &election_ads, &service).ok_or(Silence::NoEligibleNode)
    }

    /// The interfaces `node` announces on: those of the advertisements that select it (empty:
    /// every eligible interface, when one of them names none).
    fn interfaces(&self, nodes: &[election::Node], node: &str) -> Vec<String> {
        let labels = nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        let selecting: Vec<&&L2Ad> = self.ads.iter().filter(|a| a.selects(&labels)).collect();
        if selecting.iter().any(|a| a.interfaces.is_empty()) {
            return vec![];
        }
        let all: BTreeSet<&String> = selecting.iter().flat_map(|a| &a.interfaces).collect();
        all.into_iter().cloned().collect()
    }
}

/// The addresses (with their interfaces) each node announces.
pub fn by_node(announcements: &[Announcement]) -> BTreeMap<String, BTreeMap<IpAddr, Duty>> {
    let mut m: BTreeMap<String, BTreeMap<IpAddr, Duty>> = BTreeMap::new();
    for a in announcements {
        if let Ok(node) = &a.owner {
            let duty = Duty {
                interfaces: a.interfaces.clone(),
                services: a.services.clone(),
            };
            m.entry(node.clone()).or_default().insert(a.ip, duty);
        }
    }
    m
}

/// What a node does for one address it announces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Duty {
    /// Empty: every eligible interface.
    pub interfaces: Vec<String>,
    /// `namespace/name` of the Services on the address.
    pub services: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, ips: &[&str]) -> Lease {
        crate::lease::service_lease("home", name, "home-pool", ips)
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            cluster: "home".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            network_unavailable: false,
        }
    }

    fn ad(pools: &[&str]) -> L2Ad {
        L2Ad {
            cluster: "home".into(),
            name: "home-l2".into(),
            pools: pools.iter().map(|s| s.to_string()).collect(),
            ..L2Ad::default()
        }
    }

    fn endpoints(entries: &[(&str, &[&str], bool)]) -> BTreeMap<(String, String), Endpoints> {
        entries
            .iter()
            .map(|(name, nodes, local)| {
                (
                    ("default".to_string(), name.to_string()),
                    Endpoints {
                        nodes: nodes.iter().map(|s| s.to_string()).collect(),
                        any_serving: !nodes.is_empty(),
                        local: *local,
                        labels: Labels::new(),
                    },
                )
            })
            .collect()
    }

    struct World {
        nodes: Vec<NodeInfo>,
        live: BTreeSet<String>,
        ads: Vec<L2Ad>,
        endpoints: BTreeMap<(String, String), Endpoints>,
        leases: Vec<Lease>,
        ignore: bool,
    }

    impl World {
        fn new() -> World {
            World {
                nodes: vec![node("n1", &[]), node("n2", &[]), node("n3", &[])],
                live: ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect(),
                ads: vec![ad(&["home-pool"])],
                endpoints: endpoints(&[("web", &["n1", "n2", "n3"], false)]),
                leases: vec![lease("web", &["192.168.1.240", "fd00::240"])],
                ignore: false,
            }
        }

        fn decide(&self) -> Vec<Announcement> {
            let leases: Vec<&Lease> = self.leases.iter().collect();
            decide(Input {
                nodes: &self.nodes,
                live: &self.live,
                ads: &self.ads,
                endpoints: &self.endpoints,
                leases: &leases,
                pools: &BTreeMap::new(),
                ignore_exclude_label: self.ignore,
            })
        }

        fn owner_of(&self, ip: &str) -> std::result::Result<String, Silence> {
            let ip: IpAddr = ip.parse().expect("test address");
            self.decide()
                .into_iter()
                .find(|a| a.ip == ip)
                .map(|a| a.owner)
                .expect("address announced or silenced")
        }
    }

    #[test]
    fn both_families_of_a_lease_go_to_one_node() {
        let w = World::new();
        let owner = w.owner_of("192.168.1.240").expect("an owner");
        assert_eq!(w.owner_of("fd00::240"), Ok(owner));
    }

    #[test]
    fn reasons_for_silence() {
        let mut w = World::new();
        w.ads = vec![ad(&["other-pool"])];
        assert_eq!(
            w.owner_of("192.168.1.240"),
            Err(Silence::NoMatchingAdvertisement)
        );
        w.ads = vec![ad(&[])];
        assert!(w.owner_of("192.168.1.240").is_ok(), "no pools: every pool");
        w.endpoints = BTreeMap::new();
        assert_eq!(w.owner_of("192.168.1.240"), Err(Silence::NoEndpoints));
        w.endpoints = endpoints(&[("web", &[], true)]);
        assert_eq!(w.owner_of("192.168.1.240"), Err(Silence::NoEndpoints));
        w.endpoints = endpoints(&[("web", &["n2"], true)]);
        assert_eq!(w.owner_of("192.168.1.240"), Ok("n2".into()));
        w.live.remove("n2");
        assert_eq!(w.owner_of("192.168.1.240"), Err(Silence::NoEligibleNode));
    }

    #[test]
    fn exclusion_label_and_network_unavailable_remove_a_node() {
        let mut w = World::new();
        let first = w.owner_of("192.168.1.240").expect("owner");
        let i = w.nodes.iter().position(|n| n.name == first).expect("node");
        w.nodes[i].network_unavailable = true;
        let second = w.owner_of("192.168.1.240").expect("owner");
        assert_ne!(first, second);
        w.nodes[i].network_unavailable = false;
        w.nodes[i]
            .labels
            .insert(election::EXCLUDE_LABEL.into(), "true".into());
        assert_eq!(w.owner_of("192.168.1.240"), Ok(second));
        w.ignore = true;
        assert_eq!(w.owner_of("192.168.1.240"), Ok(first));
    }

    #[test]
    fn a_shared_address_has_one_announcer() {
        let mut w = World::new();
        w.leases = vec![
            lease("web", &["192.168.1.241"]),
            lease("dns", &["192.168.1.241"]),
        ];
        // Different local endpoints: the group is elected once on the union.
        w.endpoints = endpoints(&[("web", &["n1"], true), ("dns", &["n3"], true)]);
        let all = w.decide();
        assert_eq!(all.len(), 1);
        assert!(matches!(all[0].owner.as_deref(), Ok("n1" | "n3")));
        assert_eq!(all[0].services, ["default/dns", "default/web"]);
    }

    #[test]
    fn interfaces_and_node_selectors() {
        let mut w = World::new();
        w.nodes[1].labels.insert("lb".into(), "yes".into());
        w.ads = vec![L2Ad {
            node_selectors: vec![LabelSelector {
                match_labels: [("lb".to_string(), "yes".to_string())].into(),
                match_expressions: vec![],
            }],
            interfaces: vec!["eth1".into(), "eth0".into()],
            ..ad(&["home-pool"])
        }];
        let a = &w.decide()[0];
        assert_eq!(a.owner, Ok("n2".into()));
        assert_eq!(a.interfaces, ["eth0", "eth1"]);
    }

    fn select(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: vec![],
        }
    }

    impl World {
        fn label(&mut self, service: &str, key: &str, value: &str) {
            let e = self
                .endpoints
                .get_mut(&("default".to_string(), service.to_string()));
            let e = e.expect("endpoints of the service");
            e.labels.insert(key.into(), value.into());
        }
    }

    /// MetalLB 0.16's serviceSelectors on an L2Advertisement, rule by rule.
    #[test]
    fn service_selectors() {
        let mut w = World::new();
        let front = L2Ad {
            name: "front".into(),
            service_selectors: vec![select(&[("tier", "front")]), select(&[("app", "dns")])],
            ..ad(&["home-pool"])
        };
        w.ads = vec![front.clone()];
        let ip = "192.168.1.240";
        assert_eq!(w.owner_of(ip), Err(Silence::NoMatchingAdvertisement));
        w.label("web", "tier", "front");
        assert!(w.owner_of(ip).is_ok(), "selected");
        w.endpoints = endpoints(&[("web", &["n1", "n2", "n3"], false)]);
        w.label("web", "app", "dns");
        assert!(w.owner_of(ip).is_ok(), "the selectors are ORed");
        // The pools still have to match (pool AND service selectors).
        w.ads = vec![L2Ad {
            pools: vec!["other-pool".into()],
            ..front.clone()
        }];
        assert_eq!(w.owner_of(ip), Err(Silence::NoMatchingAdvertisement));
    }

    /// A Service selects its own advertisements, and with them the nodes that may announce it.
    #[test]
    fn service_selectors_pick_the_candidates() {
        let mut w = World::new();
        w.nodes[1].labels.insert("zone".into(), "a".into());
        w.nodes[2].labels.insert("zone".into(), "b".into());
        let zone = |tier: &str, zone: &str| L2Ad {
            name: format!("{tier}-{zone}"),
            service_selectors: vec![select(&[("tier", tier)])],
            node_selectors: vec![select(&[("zone", zone)])],
            ..ad(&["home-pool"])
        };
        w.ads = vec![zone("front", "a"), zone("back", "b")];
        w.leases.push(lease("db", &["192.168.1.250"]));
        w.endpoints = endpoints(&[
            ("web", &["n1", "n2", "n3"], false),
            ("db", &["n1", "n2", "n3"], false),
        ]);
        w.label("web", "tier", "front");
        w.label("db", "tier", "back");
        assert_eq!(w.owner_of("192.168.1.240"), Ok("n2".into()));
        assert_eq!(w.owner_of("192.168.1.250"), Ok("n3".into()));
    }

    /// MetalLB does not announce a sharing Service that an advertisement with service selectors
    /// matches; one without selectors announces it as before.
    #[test]
    fn a_shared_address_and_service_selectors() {
        let mut w = World::new();
        w.leases = vec![
            lease("web", &["192.168.1.241"]),
            lease("dns", &["192.168.1.241"]),
        ];
        for l in &mut w.leases {
            l.sharing_key = "k".into();
        }
        w.endpoints = endpoints(&[("web", &["n1"], false), ("dns", &["n1"], false)]);
        w.label("web", "tier", "front");
        w.label("dns", "tier", "front");
        w.ads = vec![L2Ad {
            service_selectors: vec![select(&[("tier", "front")])],
            ..ad(&["home-pool"])
        }];
        assert_eq!(
            w.owner_of("192.168.1.241"),
            Err(Silence::SharedIpWithServiceSelector)
        );
        w.ads[0].service_selectors.clear();
        assert!(w.owner_of("192.168.1.241").is_ok());
    }

    #[test]
    fn validation() {
        let mut a = ad(&["p", "p"]);
        assert!(a.validate().is_err());
        a.pools = vec!["p".into()];
        assert!(a.validate().is_ok());
        a.service_selectors = vec![LabelSelector::default()];
        assert!(a.validate().is_ok());
        a.preferences.push(Preferred {
            weight: 0,
            selector: LabelSelector::default(),
        });
        assert!(a.validate().is_err());
    }
}
