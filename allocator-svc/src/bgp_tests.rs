//! The BGP rules and the per-node decision, case by case.

use super::*;

fn peer(name: &str, asn: u32) -> BgpPeer {
    BgpPeer {
        cluster: "corp".into(),
        name: name.into(),
        my_asn: 64513,
        peer_asn: asn,
        address: "10.250.0.1".parse().expect("ip"),
        port: 179,
        source: None,
        hold_time: DEFAULT_HOLD_TIME,
        keepalive: None,
        router_id: None,
        node_selectors: vec![],
        password: Secret::default(),
        ebgp_multihop: false,
        graceful_restart: false,
        bfd: None,
    }
}

fn ad(name: &str) -> BgpAd {
    BgpAd {
        cluster: "corp".into(),
        name: name.into(),
        aggregation_length: 32,
        aggregation_length_v6: 128,
        local_pref: 0,
        communities: vec![],
        pools: vec![],
        pool_selectors: vec![],
        node_selectors: vec![],
        peers: vec![],
        service_selectors: vec![],
    }
}

fn node(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
    NodeInfo {
        cluster: "corp".into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        network_unavailable: false,
    }
}

fn lease(name: &str, ips: &[&str]) -> Lease {
    crate::lease::service_lease("corp", name, "corp-pool", ips)
}

struct World {
    nodes: Vec<NodeInfo>,
    peers: Vec<BgpPeer>,
    ads: Vec<BgpAd>,
    communities: Vec<CommunitySet>,
    endpoints: BTreeMap<(String, String), Endpoints>,
    leases: Vec<Lease>,
}

impl World {
    fn new() -> World {
        World {
            nodes: vec![node("n1", &[]), node("n2", &[]), node("n3", &[])],
            peers: vec![peer("router", 64512)],
            ads: vec![ad("all")],
            communities: vec![],
            endpoints: [(
                ("default".to_string(), "web".to_string()),
                Endpoints {
                    nodes: ["n1".to_string()].into(),
                    any_serving: true,
                    local: false,
                    labels: Labels::new(),
                },
            )]
            .into(),
            leases: vec![lease("web", &["10.251.0.10", "fd00:251::10"])],
        }
    }

    fn decide(&self) -> Decision {
        let leases: Vec<&Lease> = self.leases.iter().collect();
        decide(Input {
            nodes: &self.nodes,
            peers: &self.peers,
            ads: &self.ads,
            communities: &self.communities,
            endpoints: &self.endpoints,
            leases: &leases,
            pools: &BTreeMap::new(),
            ignore_exclude_label: false,
        })
    }

    fn advertisers(&self, ip: &str) -> Vec<String> {
        let ip: IpAddr = ip.parse().expect("ip");
        self.decide()
            .announcements
            .into_iter()
            .find(|a| a.ip == ip)
            .map(|a| a.nodes.into_keys().collect())
            .unwrap_or_default()
    }
}

#[test]
fn every_eligible_node_advertises_with_policy_cluster() {
    let mut w = World::new();
    assert_eq!(w.advertisers("10.251.0.10"), ["n1", "n2", "n3"]);
    assert_eq!(w.advertisers("fd00:251::10"), ["n1", "n2", "n3"]);
    w.nodes[1].network_unavailable = true;
    w.nodes[2]
        .labels
        .insert(EXCLUDE_LABEL.into(), String::new());
    assert_eq!(w.advertisers("10.251.0.10"), ["n1"]);
}

#[test]
fn policy_local_keeps_to_nodes_with_endpoints_and_reasons_otherwise() {
    let mut w = World::new();
    let key = ("default".to_string(), "web".to_string());
    w.endpoints.get_mut(&key).expect("web").local = true;
    assert_eq!(w.advertisers("10.251.0.10"), ["n1"]);
    w.endpoints.get_mut(&key).expect("web").nodes.clear();
    w.endpoints.get_mut(&key).expect("web").any_serving = false;
    let d = w.decide();
    assert_eq!(d.announcements[0].silence, Some(Silence::NoEndpoints));
    assert!(d.nodes["n1"].routes.is_empty());
    // Sessions stay up without routes.
    assert_eq!(d.nodes["n1"].sessions.len(), 1);
    w.ads[0].pools = vec!["other".into()];
    assert_eq!(
        w.decide().announcements[0].silence,
        Some(Silence::NoMatchingAdvertisement)
    );
}

#[test]
fn aggregation_communities_local_pref_and_peers() {
    let mut w = World::new();
    w.peers.push(peer("backup", 64513));
    w.communities.push(CommunitySet {
        cluster: "corp".into(),
        name: "aliases".into(),
        aliases: vec![("no-export".into(), "65535:65281".into())],
    });
    w.ads = vec![
        BgpAd {
            aggregation_length: 24,
            communities: vec!["no-export".into(), "64512:100".into()],
            peers: vec!["router".into()],
            ..ad("agg")
        },
        BgpAd {
            communities: vec!["large:64512:1:2".into()],
            local_pref: 200,
            ..ad("host")
        },
    ];
    let d = w.decide();
    let n1 = &d.nodes["n1"];
    let agg = &n1.routes[&("10.251.0.0".parse().expect("ip"), 24)];
    assert_eq!(agg.keys().collect::<Vec<_>>(), ["router"]);
    assert_eq!(
        agg["router"].communities,
        [
            Community::Standard((64512 << 16) | 100),
            Community::Standard(0xffff_ff01)
        ]
        .into()
    );
    let host = &n1.routes[&("10.251.0.10".parse().expect("ip"), 32)];
    assert_eq!(host.len(), 2);
    assert_eq!(host["backup"].local_pref, 200);
    assert_eq!(
        host["backup"].communities,
        [Community::Large(64512, 1, 2)].into()
    );
}

#[test]
fn overlapping_ads_union_their_communities() {
    let mut w = World::new();
    w.ads = vec![
        BgpAd {
            communities: vec!["1:1".into()],
            ..ad("a")
        },
        BgpAd {
            communities: vec!["2:2".into()],
            ..ad("b")
        },
    ];
    let d = w.decide();
    let r = &d.nodes["n2"].routes[&("10.251.0.10".parse().expect("ip"), 32)]["router"];
    assert_eq!(r.communities.len(), 2);
}

#[test]
fn peers_and_ads_follow_node_selectors() {
    let mut w = World::new();
    w.nodes[0].labels.insert("rack".into(), "a".into());
    let rack_a = LabelSelector {
        match_labels: [("rack".to_string(), "a".to_string())].into(),
        match_expressions: vec![],
    };
    w.peers[0].node_selectors = vec![rack_a.clone()];
    let d = w.decide();
    assert_eq!(d.nodes.keys().collect::<Vec<_>>(), ["n1"]);
    w.peers[0].node_selectors = vec![];
    w.ads[0].node_selectors = vec![rack_a];
    assert_eq!(w.advertisers("10.251.0.10"), ["n1"]);
    assert_eq!(w.decide().nodes.len(), 3);
}

#[test]
fn validation_rules() {
    let ok = peer("p", 64512);
    assert!(ok.validate().is_ok());
    let bad = [
        BgpPeer {
            my_asn: 0,
            ..ok.clone()
        },
        BgpPeer {
            hold_time: 2,
            ..ok.clone()
        },
        BgpPeer {
            keepalive: Some(100),
            ..ok.clone()
        },
        BgpPeer {
            port: 0,
            ..ok.clone()
        },
        BgpPeer {
            peer_asn: 64513,
            ebgp_multihop: true,
            ..ok.clone()
        },
        BgpPeer {
            password: Secret::new("x".repeat(81)),
            ..ok.clone()
        },
        BgpPeer {
            source: Some("fd00::1".parse().expect("ip")),
            ..ok.clone()
        },
    ];
    for b in bad {
        assert!(b.validate().is_err(), "{b:?}");
    }
    let none = BTreeMap::new();
    assert!(ad("a").validate(&none).is_ok());
    for b in [
        BgpAd {
            aggregation_length: 33,
            ..ad("a")
        },
        BgpAd {
            aggregation_length_v6: 129,
            ..ad("a")
        },
        BgpAd {
            communities: vec!["99999999:1".into()],
            ..ad("a")
        },
        BgpAd {
            communities: vec!["1:1".into(), "1:1".into()],
            ..ad("a")
        },
        BgpAd {
            communities: vec!["unknown".into()],
            ..ad("a")
        },
        BgpAd {
            peers: vec!["p".into(), "p".into()],
            ..ad("a")
        },
        BgpAd {
            aggregation_length: 24,
            service_selectors: vec![LabelSelector::default()],
            ..ad("a")
        },
        BgpAd {
            aggregation_length_v6: 64,
            service_selectors: vec![LabelSelector::default()],
            ..ad("a")
        },
    ] {
        assert!(b.validate(&none).is_err(), "{b:?}");
    }
    let selective = BgpAd {
        service_selectors: vec![LabelSelector::default()],
        ..ad("a")
    };
    assert!(selective.validate(&none).is_ok());
    let set = |name: &str, alias: &str, value: &str| CommunitySet {
        cluster: "corp".into(),
        name: name.into(),
        aliases: vec![(alias.into(), value.into())],
    };
    assert!(set("c", "x", "1:2").validate(&[]).is_ok());
    assert!(set("c", "x", "1:").validate(&[]).is_err());
    assert!(
        set("c", "x", "1:2")
            .validate(&[set("d", "x", "3:4")])
            .is_err()
    );
    assert_eq!(
        Community::parse("large:4200000000:1:2"),
        Ok(Some(Community::Large(4_200_000_000, 1, 2)))
    );
}

#[test]
fn aggregation_must_not_be_wider_than_the_pools_blocks() {
    let pool = |addresses: &[&str]| {
        crate::pool::Pool::new(crate::pool::PoolSpec::new("shared", addresses)).expect("a pool")
    };
    let agg = |v4: u8, v6: u8| BgpAd {
        aggregation_length: v4,
        aggregation_length_v6: v6,
        ..ad("a")
    };
    let cases: [(&[&str], u8, u8, Option<&str>); 6] = [
        (&["10.20.0.0/24"], 24, 128, None),
        (&["10.20.0.0/24"], 32, 128, None),
        (&["10.20.0.0/24"], 16, 128, Some("aggregation_length")),
        // A range is as specific as the widest block that covers it exactly (1-6: /31s).
        (&["10.20.1.1-10.20.1.6"], 31, 128, None),
        (
            &["10.20.1.1-10.20.1.6"],
            30,
            128,
            Some("aggregation_length"),
        ),
        (
            &["10.20.0.0/24", "fd00::/120"],
            24,
            112,
            Some("aggregation_length_v6"),
        ),
    ];
    for (addresses, v4, v6, refused) in cases {
        let r = agg(v4, v6).fits(&pool(addresses));
        match (refused, r) {
            (None, Ok(())) => {}
            (Some(field), Err(crate::error::Error::InvalidArgument { field: f, message })) => {
                assert_eq!(f, field, "{addresses:?} {v4} {v6}");
                assert!(
                    message.contains("more specific than the aggregation length"),
                    "{message}"
                );
                assert!(message.contains("of pool \"shared\""), "{message}");
            }
            (want, got) => panic!("{addresses:?} {v4} {v6}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn a_pool_may_not_outgrow_the_aggregation_of_the_advertisements_that_cover_it() {
    let pool = |clusters: &[&str]| {
        let spec = crate::pool::PoolSpec {
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            ..crate::pool::PoolSpec::new("shared", &["10.20.0.0/28"])
        };
        crate::pool::Pool::new(spec).expect("a pool")
    };
    let of = |cluster: &str, len: u8| BgpAd {
        cluster: cluster.into(),
        aggregation_length: len,
        ..ad("agg")
    };
    let ads = [of("east", 24), of("west", 28)];
    let refused = fits_advertisements(&pool(&["east", "west"]), &ads, None);
    assert!(
        matches!(&refused, Err(crate::error::Error::InvalidArgument { message, .. })
            if message.contains("\"agg\" of cluster \"east\"")),
        "{refused:?}"
    );
    // East's own apply is checked with its configuration; a pool not open to east is not its.
    assert!(fits_advertisements(&pool(&["east", "west"]), &ads, Some("east")).is_ok());
    assert!(fits_advertisements(&pool(&["west"]), &ads, None).is_ok());
}

fn select(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: [(key.to_string(), value.to_string())].into(),
        match_expressions: vec![],
    }
}

impl World {
    fn label(&mut self, service: &str, key: &str, value: &str) {
        let e = self
            .endpoints
            .entry(("default".to_string(), service.to_string()))
            .or_insert_with(|| Endpoints {
                nodes: ["n1".to_string()].into(),
                any_serving: true,
                ..Endpoints::default()
            });
        e.labels.insert(key.into(), value.into());
    }

    fn silence(&self, ip: &str) -> Option<Silence> {
        let ip: IpAddr = ip.parse().expect("ip");
        let d = self.decide();
        d.announcements.into_iter().find(|a| a.ip == ip)?.silence
    }
}

/// MetalLB 0.16's serviceSelectors on a BGPAdvertisement: ORed, and the pools still apply.
#[test]
fn service_selectors_choose_the_services() {
    let mut w = World::new();
    w.ads = vec![BgpAd {
        service_selectors: vec![select("tier", "front"), select("app", "dns")],
        communities: vec!["65000:1".into()],
        ..ad("front")
    }];
    assert_eq!(
        w.silence("10.251.0.10"),
        Some(Silence::NoMatchingAdvertisement)
    );
    w.label("web", "app", "dns");
    assert_eq!(w.advertisers("10.251.0.10"), ["n1", "n2", "n3"]);
    // A second advertisement for other Services adds nothing to this one's route.
    w.ads.push(BgpAd {
        service_selectors: vec![select("tier", "back")],
        communities: vec!["65000:2".into()],
        ..ad("back")
    });
    let d = w.decide();
    let prefix = ("10.251.0.10".parse().expect("ip"), 32);
    let route = &d.nodes["n1"].routes[&prefix]["router"];
    assert_eq!(
        route.communities,
        [Community::Standard(65000 << 16 | 1)].into()
    );
    w.ads[0].pools = vec!["other".into()];
    w.ads[1].service_selectors = vec![select("app", "dns")];
    assert_eq!(w.advertisers("10.251.0.10"), ["n1", "n2", "n3"]);
    w.ads[1].pools = vec!["other".into()];
    assert_eq!(
        w.silence("10.251.0.10"),
        Some(Silence::NoMatchingAdvertisement)
    );
}

/// A sharing Service that an advertisement with service selectors matches is not advertised.
#[test]
fn a_shared_address_with_service_selectors_is_not_advertised() {
    let mut w = World::new();
    w.leases = vec![
        lease("web", &["10.251.0.11"]),
        lease("dns", &["10.251.0.11"]),
    ];
    for l in &mut w.leases {
        l.sharing_key = "k".into();
    }
    w.label("web", "tier", "front");
    w.label("dns", "tier", "front");
    w.ads = vec![BgpAd {
        service_selectors: vec![select("tier", "front")],
        ..ad("front")
    }];
    assert_eq!(
        w.silence("10.251.0.11"),
        Some(Silence::SharedIpWithServiceSelector)
    );
    assert!(w.advertisers("10.251.0.11").is_empty());
    w.ads[0].service_selectors.clear();
    assert_eq!(w.advertisers("10.251.0.11"), ["n1", "n2", "n3"]);
}

/// Two advertisements that select one Service and would send it the same route with two
/// local preferences: nothing is advertised (MetalLB's conflictingAdvertisements), unless
/// their peers or nodes keep the routes apart.
#[test]
fn conflicting_local_preferences_are_not_advertised() {
    let mut w = World::new();
    w.peers = vec![peer("a", 64513), peer("b", 64513)];
    w.label("web", "tier", "front");
    w.ads = vec![
        BgpAd {
            local_pref: 100,
            ..ad("all")
        },
        BgpAd {
            local_pref: 200,
            service_selectors: vec![select("tier", "front")],
            ..ad("front")
        },
    ];
    assert_eq!(
        w.silence("10.251.0.10"),
        Some(Silence::ConflictingAdvertisements)
    );
    assert!(w.advertisers("10.251.0.10").is_empty());
    // Disjoint peers.
    w.ads[0].peers = vec!["a".into()];
    w.ads[1].peers = vec!["b".into()];
    assert_eq!(w.silence("10.251.0.10"), None);
    let d = w.decide();
    let prefix = ("10.251.0.10".parse().expect("ip"), 32);
    assert_eq!(d.nodes["n2"].routes[&prefix]["a"].local_pref, 100);
    assert_eq!(d.nodes["n2"].routes[&prefix]["b"].local_pref, 200);
    // Disjoint nodes.
    w.ads[1].peers.clear();
    w.nodes[0].labels.insert("rack".into(), "1".into());
    w.nodes[1].labels.insert("rack".into(), "2".into());
    w.ads[0].node_selectors = vec![select("rack", "1")];
    w.ads[1].node_selectors = vec![select("rack", "2")];
    assert_eq!(w.silence("10.251.0.10"), None);
    assert_eq!(w.advertisers("10.251.0.10"), ["n1", "n2"]);
    // The same local preference never conflicts.
    w.ads[0].node_selectors.clear();
    w.ads[1].node_selectors.clear();
    w.ads[1].local_pref = 100;
    assert_eq!(w.advertisers("10.251.0.10"), ["n1", "n2", "n3"]);
}
