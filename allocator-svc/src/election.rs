//! Which node announces a layer-2 address: MetalLB's election (`speaker/layer2_controller.go`
//! `ShouldAnnounce`), as a pure function the allocator evaluates once for everybody.
//!
//! Candidates are the nodes with a live announcer that an applicable L2Advertisement selects,
//! without `NetworkUnavailable`, without the exclusion label (unless told to ignore it), and —
//! for externalTrafficPolicy Local — with a serving endpoint of the service. Nobody announces a
//! service without any serving endpoint. The winner has the highest sum of preferred-node weights,
//! then the lowest `sha256(node + "#" + first IP)`. Every address of one service (both families,
//! and every service sharing the address) hashes on the same first IP, so they land on one node;
//! a node that joins takes only the addresses it now wins.

use std::collections::BTreeSet;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::selector::{LabelSelector, Labels};

/// Kubernetes' label that keeps a node out of external load balancing, by presence.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// A node as the election sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// The `NetworkUnavailable` condition is true.
    pub network_unavailable: bool,
}

/// A soft preference of an L2Advertisement (`preferredNodeSelectors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    /// 1 to 100.
    pub weight: u32,
    pub selector: LabelSelector,
}

/// An L2Advertisement that applies to the service (its pools and service selectors match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertisement {
    /// Empty: every node.
    pub node_selectors: Vec<LabelSelector>,
    pub preferences: Vec<Preference>,
}

impl Advertisement {
    fn selects(&self, node: &Node) -> bool {
        self.node_selectors.is_empty()
            || self.node_selectors.iter().any(|s| s.matches(&node.labels))
    }
}

/// The service's side of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service<'a> {
    /// The first address of the service (its primary family's).
    pub first_ip: IpAddr,
    /// externalTrafficPolicy Local: only nodes with a serving endpoint may announce.
    pub local: bool,
    /// Some endpoint serves, wherever it runs.
    pub any_serving: bool,
    /// Nodes hosting at least one serving endpoint (ready, or terminating but serving).
    pub endpoint_nodes: &'a BTreeSet<String>,
}

/// The election's inputs beside the service.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    pub nodes: &'a [Node],
    /// Nodes whose announcer is connected and heartbeating.
    pub live: &'a BTreeSet<String>,
    /// MetalLB's `--ignore-exclude-lb`.
    pub ignore_exclude_label: bool,
}

/// MetalLB's tie-breaker: the bytes of sha256(node + "#" + ip).
fn hash(node: &str, ip: IpAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update(b"#");
    h.update(ip.to_string().as_bytes());
    h.finalize().into()
}

/// The node that announces the service's addresses, or `None` if nobody may.
pub fn owner(cluster: Cluster<'_>, ads: &[Advertisement], svc: &Service<'_>) -> Option<String> {
    if !svc.any_serving || ads.is_empty() {
        return None;
    }
    cluster
        .nodes
        .iter()
        .filter(|n| cluster.live.contains(&n.name))
        .filter(|n| !n.network_unavailable)
        .filter(|n| cluster.ignore_exclude_label || !n.labels.contains_key(EXCLUDE_LABEL))
        .filter(|n| !svc.local || svc.endpoint_nodes.contains(&n.name))
        .filter_map(|n| {
            let selecting: Vec<&Advertisement> = ads.iter().filter(|a| a.selects(n)).collect();
            if selecting.is_empty() {
                return None;
            }
            let weight: u64 = selecting
                .iter()
                .flat_map(|a| &a.preferences)
                .filter(|p| p.selector.matches(&n.labels))
                .map(|p| u64::from(p.weight))
                .sum();
            Some((
                std::cmp::Reverse(weight),
                hash(&n.name, svc.first_ip),
                &n.name,
            ))
        })
        .min()
        .map(|(_, _, name)| name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            network_unavailable: false,
        }
    }

    fn sel(k: &str, v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: [(k.to_string(), v.to_string())].into_iter().collect(),
            match_expressions: vec![],
        }
    }

    fn names(nodes: &[Node]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.name.clone()).collect()
    }

    fn elect(
        nodes: &[Node],
        ads: &[Advertisement],
        ip: &str,
        local: bool,
        endpoints: &[&str],
    ) -> Option<String> {
        let live = names(nodes);
        let endpoint_nodes: BTreeSet<String> = endpoints.iter().map(|s| s.to_string()).collect();
        owner(
            Cluster {
                nodes,
                live: &live,
                ignore_exclude_label: false,
            },
            ads,
            &Service {
                first_ip: ip.parse().expect("test address"),
                local,
                any_serving: !endpoint_nodes.is_empty(),
                endpoint_nodes: &endpoint_nodes,
            },
        )
    }

    fn three() -> Vec<Node> {
        vec![node("n1", &[]), node("n2", &[]), node("n3", &[])]
    }

    #[test]
    fn lowest_hash_wins_and_matches_metallb() {
        let nodes = three();
        let all = [Advertisement::default()];
        let winner = elect(&nodes, &all, "192.168.1.240", false, &["n1"]).expect("an owner");
        let mut by_hash: Vec<&Node> = nodes.iter().collect();
        by_hash.sort_by_key(|n| hash(&n.name, "192.168.1.240".parse().expect("ip")));
        assert_eq!(winner, by_hash[0].name);
        // The hash is sha256 over the bytes "n1#192.168.1.240", as MetalLB computes it.
        let digest = hash("n1", "192.168.1.240".parse().expect("ip"));
        let direct: [u8; 32] = Sha256::digest(b"n1#192.168.1.240").into();
        assert_eq!(digest, direct);
    }

    #[test]
    fn filters() {
        let mut nodes = three();
        let all = [Advertisement::default()];
        let first = elect(&nodes, &all, "10.0.0.1", false, &["n1"]).expect("owner");
        // No serving endpoint anywhere: nobody announces.
        assert_eq!(elect(&nodes, &all, "10.0.0.1", false, &[]), None);
        // No advertisement: nobody announces.
        assert_eq!(elect(&nodes, &[], "10.0.0.1", false, &["n1"]), None);
        // The winner becomes unavailable or excluded: another node takes over.
        let i = nodes
            .iter()
            .position(|n| n.name == first)
            .expect("winner is a node");
        nodes[i].network_unavailable = true;
        let second = elect(&nodes, &all, "10.0.0.1", false, &["n1"]).expect("owner");
        assert_ne!(second, first);
        nodes[i].network_unavailable = false;
        nodes[i].labels.insert(EXCLUDE_LABEL.into(), String::new());
        assert_eq!(
            elect(&nodes, &all, "10.0.0.1", false, &["n1"]),
            Some(second.clone())
        );
        let live = names(&nodes);
        let endpoints: BTreeSet<String> = ["n1".to_string()].into();
        let ignoring = owner(
            Cluster {
                nodes: &nodes,
                live: &live,
                ignore_exclude_label: true,
            },
            &all,
            &Service {
                first_ip: "10.0.0.1".parse().expect("ip"),
                local: false,
                any_serving: true,
                endpoint_nodes: &endpoints,
            },
        );
        assert_eq!(ignoring, Some(first), "the override brings it back");
        // externalTrafficPolicy Local: only nodes with endpoints.
        assert_eq!(
            elect(&three(), &all, "10.0.0.1", true, &["n3"]),
            Some("n3".into())
        );
        // Node selectors are a hard filter.
        let nodes = vec![node("n1", &[("zone", "a")]), node("n2", &[("zone", "b")])];
        let only_b = [Advertisement {
            node_selectors: vec![sel("zone", "b")],
            preferences: vec![],
        }];
        assert_eq!(
            elect(&nodes, &only_b, "10.0.0.1", false, &["n1"]),
            Some("n2".into())
        );
    }

    #[test]
    fn preferences_sum_across_advertisements() {
        let nodes = vec![
            node("n1", &[("ssd", "yes")]),
            node("n2", &[("gpu", "yes")]),
            node("n3", &[]),
        ];
        let ads = [
            Advertisement {
                node_selectors: vec![],
                preferences: vec![Preference {
                    weight: 30,
                    selector: sel("ssd", "yes"),
                }],
            },
            Advertisement {
                node_selectors: vec![],
                preferences: vec![
                    Preference {
                        weight: 20,
                        selector: sel("gpu", "yes"),
                    },
                    Preference {
                        weight: 20,
                        selector: sel("gpu", "yes"),
                    },
                ],
            },
        ];
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1"] {
            assert_eq!(
                elect(&nodes, &ads, ip, false, &["n3"]),
                Some("n2".into()),
                "{ip}"
            );
        }
    }

    #[test]
    fn a_joining_node_takes_only_what_it_wins() {
        let before = three();
        let mut after = three();
        after.push(node("n4", &[]));
        let all = [Advertisement::default()];
        let mut moved = 0;
        for i in 1..=200u8 {
            let ip = format!("10.0.1.{i}");
            let old = elect(&before, &all, &ip, false, &["n1"]).expect("owner");
            let new = elect(&after, &all, &ip, false, &["n1"]).expect("owner");
            if old != new {
                assert_eq!(new, "n4", "{ip} moved between old nodes");
                moved += 1;
            }
        }
        assert!(
            (20..=80).contains(&moved),
            "about a quarter should move to n4, moved {moved}"
        );
    }
}
