//! Golden tests of the two announcement decisions: `testdata/l2/<case>/input.json` (nodes, live
//! announcers, L2Advertisements, endpoints, leases, pools) gives `expected.json` (who announces
//! each address, or why nobody does), and `testdata/bgp/<case>/input.json` gives each node's
//! sessions and routes. After a deliberate change of a decision, regenerate the expected files
//! with `FERROLB_UPDATE_GOLDEN=1 cargo test -p ferrolb-allocator --test decisions` and read the
//! diff.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ferrolb_allocator::addr::Family;
use ferrolb_allocator::bgp::{self, BgpAd, BgpPeer, Community, CommunitySet};
use ferrolb_allocator::cluster::{self, Endpoints, L2Ad, NodeInfo};
use ferrolb_allocator::lease::{Lease, LeaseAddr, Owner};
use ferrolb_allocator::selector::Labels;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const CLUSTER: &str = "lab";

/// An object with its name beside its stored form.
#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    spec: T,
}

#[derive(Deserialize)]
struct Node {
    name: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    network_unavailable: bool,
}

#[derive(Deserialize)]
struct ServiceEndpoints {
    namespace: String,
    name: String,
    #[serde(flatten)]
    endpoints: Endpoints,
}

#[derive(Deserialize)]
struct ServiceLease {
    namespace: String,
    name: String,
    ips: Vec<IpAddr>,
    pool: String,
    #[serde(default)]
    sharing_key: String,
}

/// What both decisions read.
#[derive(Deserialize)]
struct Input {
    nodes: Vec<Node>,
    #[serde(default)]
    live: BTreeSet<String>,
    #[serde(default)]
    l2: Vec<Named<L2Ad>>,
    #[serde(default)]
    peers: Vec<Named<BgpPeer>>,
    #[serde(default)]
    bgp: Vec<Named<BgpAd>>,
    #[serde(default)]
    communities: Vec<Named<CommunitySet>>,
    #[serde(default)]
    endpoints: Vec<ServiceEndpoints>,
    leases: Vec<ServiceLease>,
    #[serde(default)]
    pools: BTreeMap<String, Labels>,
    #[serde(default)]
    ignore_exclude_label: bool,
}

fn named<T>(list: Vec<Named<T>>, set: impl Fn(&mut T, String)) -> Vec<T> {
    list.into_iter()
        .map(|n| {
            let mut t = n.spec;
            set(&mut t, n.name);
            t
        })
        .collect()
}

struct World {
    nodes: Vec<NodeInfo>,
    live: BTreeSet<String>,
    l2: Vec<L2Ad>,
    peers: Vec<BgpPeer>,
    bgp: Vec<BgpAd>,
    communities: Vec<CommunitySet>,
    endpoints: BTreeMap<(String, String), Endpoints>,
    leases: Vec<Lease>,
    pools: BTreeMap<String, Labels>,
    ignore_exclude_label: bool,
}

fn world(input: Input) -> World {
    World {
        nodes: input
            .nodes
            .into_iter()
            .map(|n| NodeInfo {
                cluster: CLUSTER.into(),
                name: n.name,
                labels: n.labels,
                network_unavailable: n.network_unavailable,
            })
            .collect(),
        live: input.live,
        l2: named(input.l2, |a, n| {
            a.cluster = CLUSTER.into();
            a.name = n;
        }),
        peers: named(input.peers, |p, n| {
            p.cluster = CLUSTER.into();
            p.name = n;
        }),
        bgp: named(input.bgp, |a, n| {
            a.cluster = CLUSTER.into();
            a.name = n;
        }),
        communities: named(input.communities, |c, n| {
            c.cluster = CLUSTER.into();
            c.name = n;
        }),
        endpoints: input
            .endpoints
            .into_iter()
            .map(|e| ((e.namespace, e.name), e.endpoints))
            .collect(),
        leases: input
            .leases
            .into_iter()
            .map(|l| Lease {
                owner: Owner::Service {
                    cluster: CLUSTER.into(),
                    namespace: l.namespace,
                    name: l.name,
                },
                addrs: l
                    .ips
                    .iter()
                    .map(|ip| LeaseAddr {
                        family: if ip.is_ipv4() { Family::V4 } else { Family::V6 },
                        ip: *ip,
                        pool: l.pool.clone(),
                        stranded: false,
                    })
                    .collect(),
                sharing_key: l.sharing_key,
                backend_key: String::new(),
                ports: vec![],
                created_ms: 0,
                expires_ms: None,
                revision: 1,
            })
            .collect(),
        pools: input.pools,
        ignore_exclude_label: input.ignore_exclude_label,
    }
}

fn community(c: &Community) -> String {
    match c {
        Community::Standard(v) => format!("{}:{}", v >> 16, v & 0xffff),
        Community::Large(g, a, b) => format!("large:{g}:{a}:{b}"),
    }
}

fn l2_decision(w: &World) -> Value {
    let leases: Vec<&Lease> = w.leases.iter().collect();
    let out = cluster::decide(cluster::Input {
        nodes: &w.nodes,
        live: &w.live,
        ads: &w.l2,
        endpoints: &w.endpoints,
        leases: &leases,
        pools: &w.pools,
        ignore_exclude_label: w.ignore_exclude_label,
    });
    Value::Array(
        out.iter()
            .map(|a| {
                let (node, silence) = match &a.owner {
                    Ok(n) => (json!(n), Value::Null),
                    Err(s) => (Value::Null, json!(s.as_str())),
                };
                json!({"ip": a.ip, "node": node, "silence": silence,
                       "interfaces": a.interfaces, "services": a.services})
            })
            .collect(),
    )
}

fn bgp_decision(w: &World) -> Value {
    let leases: Vec<&Lease> = w.leases.iter().collect();
    let d = bgp::decide(bgp::Input {
        nodes: &w.nodes,
        peers: &w.peers,
        ads: &w.bgp,
        communities: &w.communities,
        endpoints: &w.endpoints,
        leases: &leases,
        pools: &w.pools,
        ignore_exclude_label: w.ignore_exclude_label,
    });
    let nodes: serde_json::Map<String, Value> = d
        .nodes
        .iter()
        .map(|(node, n)| {
            let routes: serde_json::Map<String, Value> = n
                .routes
                .iter()
                .map(|((ip, len), peers)| {
                    let peers: serde_json::Map<String, Value> = peers
                        .iter()
                        .map(|(peer, r)| {
                            let c: Vec<String> = r.communities.iter().map(community).collect();
                            (
                                peer.clone(),
                                json!({"communities": c, "local_pref": r.local_pref}),
                            )
                        })
                        .collect();
                    (format!("{ip}/{len}"), Value::Object(peers))
                })
                .collect();
            let sessions: Vec<&String> = n.sessions.keys().collect();
            (
                node.clone(),
                json!({"sessions": sessions, "routes": routes}),
            )
        })
        .collect();
    let announcements: Vec<Value> = d
        .announcements
        .iter()
        .map(|a| {
            let by_node: serde_json::Map<String, Value> = a
                .nodes
                .iter()
                .map(|(n, ((ip, len), peers))| {
                    (
                        n.clone(),
                        json!({"prefix": format!("{ip}/{len}"), "peers": peers}),
                    )
                })
                .collect();
            json!({"ip": a.ip, "services": a.services, "nodes": by_node,
                   "silence": a.silence.map(|s| s.as_str())})
        })
        .collect();
    json!({"nodes": nodes, "announcements": announcements})
}

fn read<T: DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs every case of `testdata/<kind>/`, comparing with (or, with FERROLB_UPDATE_GOLDEN=1,
/// writing) its expected.json.
fn golden(kind: &str, decide: fn(&World) -> Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(kind);
    let update = std::env::var_os("FERROLB_UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no case in {}", dir.display());
    for case in cases {
        let got = decide(&world(read(&case.join("input.json"))));
        let expected = case.join("expected.json");
        if update {
            let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
            std::fs::write(&expected, text).unwrap();
            continue;
        }
        let want: Value = read(&expected);
        assert_eq!(
            got,
            want,
            "{}: the decision changed; if on purpose, regenerate with FERROLB_UPDATE_GOLDEN=1 and read the diff\ngot: {}",
            case.display(),
            serde_json::to_string_pretty(&got).unwrap()
        );
    }
}

#[test]
fn layer2_decisions() {
    golden("l2", l2_decision);
}

#[test]
fn bgp_decisions() {
    golden("bgp", bgp_decision);
}
