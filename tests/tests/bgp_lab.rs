//! BGP mode end to end in a network lab: the allocator and three announcers, real routers
//! (BIRD 2) in the router's namespace, and what they hold in their tables.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::home::{CLUSTER, HomeLab, Options, scenarios};
use ferrolb_e2e::routers::{Bird, Path, eventually};

const WAIT: Duration = Duration::from_secs(5);

/// The router: AS 65000 for the scenario's eBGP sessions over IPv4 and IPv6, one session per
/// node and family; routes go to the kernel with ECMP.
const BIRD_COMPANY: &str = r#"
router id 10.250.0.1;
log stderr all;
protocol device { }
protocol direct { ipv4; }
protocol kernel { ipv4 { export where source = RTS_BGP; }; merge paths on; }
protocol kernel { ipv6 { export where source = RTS_BGP; }; merge paths on; }
template bgp company4 {
  local 10.250.0.1 as 65000; passive on; hold time 9; keepalive time 3;
  ipv4 { import all; export none; };
}
template bgp company6 {
  local fd00:250::1 as 65000; passive on; hold time 9; keepalive time 3;
  ipv6 { import all; export none; };
}
protocol bgp c4_n1 from company4 { neighbor 10.250.0.11 as 65001; }
protocol bgp c4_n2 from company4 { neighbor 10.250.0.12 as 65001; }
protocol bgp c4_n3 from company4 { neighbor 10.250.0.13 as 65001; }
protocol bgp c6_n1 from company6 { neighbor fd00:250::11 as 65001; }
protocol bgp c6_n2 from company6 { neighbor fd00:250::12 as 65001; }
protocol bgp c6_n3 from company6 { neighbor fd00:250::13 as 65001; }
"#;

fn company_bird(lab: &HomeLab) -> Bird {
    Bird::start(lab, BIRD_COMPANY)
}

/// The scenario's file with the router's address of the lab, and what the test adds: a second
/// BGPPeer over IPv6, communities, and an IPv6 pool.
fn company_yaml(lab: &HomeLab) -> String {
    let scenario = std::fs::read_to_string(scenarios().join("company-bgp-pool.yaml"))
        .expect("the company scenario");
    assert!(scenario.contains("10.100.1.1"));
    let text = scenario.replace("10.100.1.1", "10.250.0.1")
        + r#"
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: company-router-v6, namespace: metallb-system}
spec: {myASN: 65001, peerASN: 65000, peerAddress: "fd00:250::1"}
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: company-communities, namespace: metallb-system}
spec:
  communities:
  - {name: no-advertise, value: "65535:65282"}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: company-tagged, namespace: metallb-system}
spec:
  ipAddressPools: [company-pool]
  communities: [no-advertise, "65000:100", "large:65000:1:2"]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: company-v6, namespace: metallb-system}
spec: {addresses: ["fd00:251::1-fd00:251::e"]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: company-v6, namespace: metallb-system}
spec: {ipAddressPools: [company-v6]}
"#;
    let file = lab.dir.0.join("company.yaml");
    std::fs::write(&file, text).expect("write the company file");
    file.to_string_lossy().into_owned()
}

fn allocate(lab: &HomeLab, name: &str, pool: &str, family: &str) -> String {
    let out = lab.ctl(&[
        "-o",
        "json",
        "allocate",
        "--cluster",
        CLUSTER,
        "--namespace",
        "default",
        "--name",
        name,
        "--pool",
        pool,
        "--family",
        family,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("allocate -o json");
    v[0]["ips"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {out}"))
        .to_string()
}

fn next_hops(paths: &[Path], prefix: &str, from: &str) -> Vec<String> {
    let mut hops: Vec<String> = paths
        .iter()
        .filter(|p| p.prefix == prefix && p.from.starts_with(from))
        .map(|p| p.next_hop.clone())
        .collect();
    hops.sort();
    hops
}

#[test]
fn company_scenario_against_bird() {
    let lab = HomeLab::up("bgp", Options::default());
    let bird = company_bird(&lab);
    lab.ctl(&["apply", "-f", &company_yaml(&lab), "--cluster", CLUSTER]);

    // Every node peers with every session the router offers.
    eventually(
        WAIT,
        "six sessions established",
        || bird.established(),
        |e| e.len() == 6,
    );

    let web = allocate(&lab, "company-web", "company-pool", "ipv4");
    assert_eq!(web, "10.100.50.1");
    lab.set_endpoints("company-web", &["n1", "n2", "n3"], false);
    let web_prefix = format!("{web}/32");
    let three = ["10.250.0.11", "10.250.0.12", "10.250.0.13"];
    let paths = eventually(
        WAIT,
        "the service /32 from all three nodes",
        || bird.paths(),
        |p| next_hops(p, &web_prefix, "c4_") == three,
    );
    for p in paths
        .iter()
        .filter(|p| p.prefix == web_prefix && p.from.starts_with("c4_"))
    {
        assert_eq!(p.as_path, "65001", "{p:?}");
        // The two advertisements of the pool: their communities are merged.
        assert!(p.communities.contains("(65535,65282)"), "{p:?}");
        assert!(p.communities.contains("(65000,100)"), "{p:?}");
        assert_eq!(p.large_communities, "(65000, 1, 2)", "{p:?}");
    }
    // The kernel's route through the router is one route over three next hops.
    let route = lab.must("router", &["ip", "route", "show", &web]);
    assert_eq!(route.matches("nexthop via").count(), 3, "{route}");

    // IPv6 over MP-BGP to the IPv6 peer.
    let web6 = allocate(&lab, "company-web6", "company-v6", "ipv6");
    lab.set_endpoints("company-web6", &["n1", "n2", "n3"], false);
    let web6_prefix = format!("{web6}/128");
    eventually(
        WAIT,
        "the service /128 from all three nodes",
        || bird.paths(),
        |p| next_hops(p, &web6_prefix, "c6_") == ["fd00:250::11", "fd00:250::12", "fd00:250::13"],
    );

    // Policy Local with endpoints on n2 only: only n2 advertises.
    lab.set_endpoints("company-web", &["n2"], true);
    eventually(
        WAIT,
        "only n2's path left",
        || bird.paths(),
        |p| next_hops(p, &web_prefix, "c4_") == ["10.250.0.12"],
    );
    lab.set_endpoints("company-web", &["n1", "n2", "n3"], false);
    // A node excluded from load balancers withdraws; the others stay.
    lab.ctl(&[
        "nodes",
        "apply",
        "n3",
        "--cluster",
        CLUSTER,
        "--label",
        "node.kubernetes.io/exclude-from-external-load-balancers=",
    ]);
    eventually(
        WAIT,
        "n3's path withdrawn",
        || bird.paths(),
        |p| next_hops(p, &web_prefix, "c4_") == ["10.250.0.11", "10.250.0.12"],
    );
    lab.ctl(&["nodes", "apply", "n3", "--cluster", CLUSTER]);
    eventually(
        WAIT,
        "n3's path back",
        || bird.paths(),
        |p| next_hops(p, &web_prefix, "c4_") == three,
    );

    // Release: withdrawn at the router.
    let released = Instant::now();
    lab.ctl(&[
        "release",
        "--cluster",
        CLUSTER,
        "--namespace",
        "default",
        "--name",
        "company-web",
    ]);
    eventually(
        WAIT,
        "the released prefix gone",
        || bird.paths(),
        |p| next_hops(p, &web_prefix, "").is_empty(),
    );
    eprintln!("release to withdrawn at BIRD: {:?}", released.elapsed());

    // Metrics of a session.
    let up = lab.announcer_metric(
        "n1",
        "ferrolb_announcer_bgp_session_up{peer=\"10.250.0.1:179\"}",
    );
    assert_eq!(up, 1);
}

#[test]
fn node_failures_withdraw_their_paths() {
    let mut lab = HomeLab::up("bgk", Options::default());
    let bird = company_bird(&lab);
    lab.ctl(&["apply", "-f", &company_yaml(&lab), "--cluster", CLUSTER]);
    let web = allocate(&lab, "company-web", "company-pool", "ipv4");
    lab.set_endpoints("company-web", &["n1", "n2", "n3"], false);
    let prefix = format!("{web}/32");
    eventually(
        WAIT,
        "three paths",
        || bird.paths(),
        |p| next_hops(p, &prefix, "c4_").len() == 3,
    );

    // SIGKILL: the kernel closes the connection, the router drops the path at once.
    let killed = Instant::now();
    lab.kill_announcer("n2");
    eventually(
        WAIT,
        "n2's path gone after SIGKILL",
        || bird.paths(),
        |p| next_hops(p, &prefix, "c4_") == ["10.250.0.11", "10.250.0.13"],
    );
    eprintln!("SIGKILL to withdrawn: {:?}", killed.elapsed());

    // A node that goes dark says nothing: its path goes when the hold timer (9 s) expires.
    let cut = Instant::now();
    lab.must("n3", &["ip", "link", "set", "eth0", "down"]);
    eventually(
        Duration::from_secs(15),
        "n3's path gone after its link went down",
        || bird.paths(),
        |p| next_hops(p, &prefix, "c4_") == ["10.250.0.11"],
    );
    let took = cut.elapsed();
    eprintln!("link cut to withdrawn: {took:?}");
    assert!(
        took > Duration::from_secs(3),
        "withdrawn by the hold timer, not before"
    );

    // SIGTERM without graceful restart: NOTIFICATION Cease, and the route goes at once.
    lab.stop_announcer("n1");
    eventually(
        WAIT,
        "no path left",
        || bird.paths(),
        |p| next_hops(p, &prefix, "").is_empty(),
    );
}
