//! BGP mode end to end in a network lab: the allocator and three announcers, real routers
//! (BIRD 2 and GoBGP) in the router's namespace, and what they hold in their tables.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::home::{CLUSTER, HomeLab, NODES, Options, scenarios};
use ferrolb_e2e::routers::{BIRD_COMPANY, Bird, GoBgp, Path, eventually};

const WAIT: Duration = Duration::from_secs(5);

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
    release(&lab, "company-web");
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
    // And under MetalLB's names: up, UPDATEs sent (the announcement and the withdrawal).
    let metallb = |name: &str| {
        lab.announcer_metric(
            "n1",
            &format!("metallb_bgp_{name}{{peer=\"10.250.0.1:179\"}}"),
        )
    };
    assert_eq!(metallb("session_up"), 1);
    assert!(metallb("updates_total") >= 2);
    // What the session should advertise includes what it holds (and a prefix of a family the
    // session cannot carry, which stays pending).
    assert!(metallb("pending_prefixes_total") >= metallb("announced_prefixes_total"));
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

/// One BGPPeer per node (picked by hostname), each a different kind of session; an advertisement
/// with a local preference and a community; the nodes carry their hostname labels.
fn per_node_peers(lab: &HomeLab, peers: &[(&str, &str)]) -> String {
    for n in ["n1", "n2", "n3"] {
        lab.ctl(&[
            "nodes",
            "apply",
            n,
            "--cluster",
            CLUSTER,
            "--label",
            &format!("kubernetes.io/hostname={n}"),
        ]);
    }
    let mut text = String::from(
        r#"apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: peers-pool, namespace: metallb-system}
spec: {addresses: [10.100.60.0/28]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: peers, namespace: metallb-system}
spec: {ipAddressPools: [peers-pool], localPref: 250, communities: ["65000:7"]}
"#,
    );
    for (node, spec) in peers {
        text += &format!(
            "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\n\
             metadata: {{name: peer-{node}, namespace: metallb-system}}\n\
             spec: {{{spec}, nodeSelectors: [{{matchLabels: {{kubernetes.io/hostname: {node}}}}}]}}\n"
        );
    }
    let path = lab.dir.0.join("peers.yaml");
    std::fs::write(&path, text).expect("write the peers file");
    path.to_string_lossy().into_owned()
}

/// Applies `file`, waits for three sessions, and has `peers-web` served on all three nodes;
/// returns its prefix and a look-up of the router's path to it by session.
fn served_by_three(
    lab: &HomeLab,
    file: &str,
    established: impl FnMut() -> Vec<String>,
    paths: impl FnMut() -> Vec<Path>,
) -> (String, Vec<Path>) {
    lab.ctl(&["apply", "-f", file, "--cluster", CLUSTER]);
    eventually(WAIT, "three sessions", established, |e| e.len() == 3);
    let web = allocate(lab, "peers-web", "peers-pool", "ipv4");
    lab.set_endpoints("peers-web", &["n1", "n2", "n3"], false);
    let prefix = format!("{web}/32");
    let paths = eventually(WAIT, "the /32 from all three", paths, |p| {
        next_hops(p, &prefix, "").len() == 3
    });
    (prefix, paths)
}

fn path_from(paths: &[Path], prefix: &str, session: &str) -> Path {
    paths
        .iter()
        .find(|p| p.prefix == prefix && p.from == session)
        .cloned()
        .unwrap_or_else(|| panic!("no path to {prefix} from {session}: {paths:?}"))
}

fn release(lab: &HomeLab, name: &str) {
    lab.ctl(&[
        "release",
        "--cluster",
        CLUSTER,
        "--namespace",
        "default",
        "--name",
        name,
    ]);
}

/// Polls `paths` until `done` holds and fails if `prefix` ever lacks a path from `from` on
/// the way; returns how many times it looked.
fn never_without(
    what: &str,
    within: Duration,
    mut paths: impl FnMut() -> Vec<Path>,
    prefix: &str,
    from: &str,
    mut done: impl FnMut(&[Path]) -> bool,
) -> usize {
    let start = Instant::now();
    let mut looks = 0;
    loop {
        let p = paths();
        looks += 1;
        assert!(
            p.iter().any(|p| p.prefix == prefix && p.from == from),
            "{what}: the path of {prefix} from {from} left the router after {:?}: {p:?}",
            start.elapsed()
        );
        if done(&p) {
            return looks;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// BIRD with one session per node: iBGP with 4-octet AS numbers and MD5 (n1), eBGP from a
/// 2-octet node AS to a 4-octet router AS with graceful restart (n2), eBGP from a 4-octet
/// node AS with MD5 (n3).
const BIRD_PEERS: &str = r#"
router id 10.250.0.1;
log stderr all;
protocol device { }
template bgp node {
  passive on; direct; hold time 9; keepalive time 3;
  ipv4 { import all; export none; };
}
protocol bgp n1 from node { local 10.250.0.1 as 4200000001; neighbor 10.250.0.11 as 4200000001; password "n1-secret"; }
protocol bgp n2 from node { local 10.250.0.1 as 4200000000; neighbor 10.250.0.12 as 65001; }
protocol bgp n3 from node { local 10.250.0.1 as 65000; neighbor 10.250.0.13 as 4200000002; password "n3-secret"; }
"#;

#[test]
fn ibgp_four_octet_md5_and_graceful_restart_against_bird() {
    let mut lab = HomeLab::up("bgi", Options::default());
    let bird = Bird::start(&lab, BIRD_PEERS);
    let n1 =
        r#"myASN: 4200000001, peerASN: 4200000001, peerAddress: 10.250.0.1, password: n1-secret"#;
    let peers = [
        ("n1", n1),
        (
            "n2",
            "myASN: 65001, peerASN: 4200000000, peerAddress: 10.250.0.1, enableGracefulRestart: true",
        ),
        (
            "n3",
            "myASN: 4200000002, peerASN: 65000, peerAddress: 10.250.0.1, password: n3-secret",
        ),
    ];
    let file = per_node_peers(&lab, &peers);
    let (prefix, paths) = served_by_three(&lab, &file, || bird.established(), || bird.paths());
    let from = |session: &str| path_from(&paths, &prefix, session);
    // iBGP: no AS of its own on the path, the advertisement's local preference.
    let p1 = from("n1");
    assert_eq!(
        (p1.as_path.as_str(), p1.local_pref),
        ("", Some(250)),
        "{p1:?}"
    );
    assert_eq!(p1.next_hop, "10.250.0.11");
    // eBGP: the node's AS, 2- and 4-octet; local preference is BIRD's default, not ours.
    let p2 = from("n2");
    assert_eq!(
        (p2.as_path.as_str(), p2.local_pref),
        ("65001", Some(100)),
        "{p2:?}"
    );
    let p3 = from("n3");
    assert_eq!(p3.as_path, "4200000002", "{p3:?}");
    for p in [&p1, &p2, &p3] {
        assert_eq!(p.communities, "(65000,7)", "{p:?}");
    }

    // MD5 is real: with the wrong password n1 cannot come back.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("password: n1-secret", "password: wrong"),
    )
    .unwrap();
    lab.ctl(&["apply", "-f", &file, "--cluster", CLUSTER]);
    eventually(
        WAIT,
        "n1's path gone with its session",
        || bird.paths(),
        |p| next_hops(p, &prefix, "n").len() == 2,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !bird.established().contains(&"n1".to_string()),
        "a session with the wrong password came up: {}",
        bird.birdc(&["show", "protocols", "all", "n1"])
    );
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("password: wrong", "password: n1-secret"),
    )
    .unwrap();
    lab.ctl(&["apply", "-f", &file, "--cluster", CLUSTER]);
    eventually(
        Duration::from_secs(40),
        "n1 back with the right password",
        || bird.paths(),
        |p| next_hops(p, &prefix, "n").len() == 3,
    );

    // Graceful restart: n2's announcer restarts and its path never leaves BIRD's table. A
    // lease released meanwhile is withdrawn once the new session has sent everything.
    let gone = allocate(&lab, "peers-gone", "peers-pool", "ipv4");
    lab.set_endpoints("peers-gone", &["n2"], true);
    let gone_prefix = format!("{gone}/32");
    eventually(
        WAIT,
        "n2 advertises the second service",
        || bird.paths(),
        |p| next_hops(p, &gone_prefix, "n2") == ["10.250.0.12"],
    );
    let restarted = Instant::now();
    lab.stop_announcer("n2");
    release(&lab, "peers-gone");
    // While n2 is down BIRD holds its routes as stale.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        next_hops(&bird.paths(), &gone_prefix, "n2") == ["10.250.0.12"],
        "BIRD dropped the routes of a restarting peer"
    );
    lab.start_announcer("n2");
    let looks = never_without(
        "n2's restart",
        Duration::from_secs(20),
        || bird.paths(),
        &prefix,
        "n2",
        |p| next_hops(p, &gone_prefix, "").is_empty(),
    );
    eprintln!(
        "announcer restart: n2's path stayed through {looks} looks; the released prefix went after {:?}",
        restarted.elapsed()
    );
    assert!(bird.established().contains(&"n2".to_string()));
}

/// GoBGP listening on port 1790: iBGP with MD5 (n1), eBGP to a 4-octet node AS with graceful
/// restart (n2), eBGP from the router's 4-octet local AS (n3).
const GOBGP_PEERS: &str = r#"
[global.config]
  as = 65000
  router-id = "10.250.0.1"
  port = 1790
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.250.0.11"
    peer-as = 65000
    auth-password = "gobgp-n1"
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.250.0.12"
    peer-as = 4200000002
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
  [neighbors.graceful-restart.config]
    enabled = true
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.250.0.13"
    peer-as = 65001
    local-as = 4200000000
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
"#;

#[test]
fn ibgp_ebgp_peer_port_and_graceful_restart_against_gobgp() {
    let mut lab = HomeLab::up("bgg", Options::default());
    let gobgp = GoBgp::start(&lab, GOBGP_PEERS);
    let peers = [
        (
            "n1",
            "myASN: 65000, peerASN: 65000, peerAddress: 10.250.0.1, peerPort: 1790, password: gobgp-n1",
        ),
        (
            "n2",
            "myASN: 4200000002, peerASN: 65000, peerAddress: 10.250.0.1, peerPort: 1790, enableGracefulRestart: true",
        ),
        (
            "n3",
            "myASN: 65001, peerASN: 4200000000, peerAddress: 10.250.0.1, peerPort: 1790",
        ),
    ];
    let file = per_node_peers(&lab, &peers);
    let (prefix, paths) = served_by_three(&lab, &file, || gobgp.established(), || gobgp.paths());
    let from = |session: &str| path_from(&paths, &prefix, session);
    let three = ["10.250.0.11", "10.250.0.12", "10.250.0.13"];
    let p1 = from("10.250.0.11");
    assert_eq!(
        (p1.as_path.as_str(), p1.local_pref),
        ("", Some(250)),
        "{p1:?}"
    );
    let p2 = from("10.250.0.12");
    assert_eq!(
        (p2.as_path.as_str(), p2.local_pref),
        ("4200000002", None),
        "{p2:?}"
    );
    let p3 = from("10.250.0.13");
    assert_eq!(
        (p3.as_path.as_str(), p3.local_pref),
        ("65001", None),
        "{p3:?}"
    );
    for p in [&p1, &p2, &p3] {
        assert_eq!(p.communities, "(65000,7)", "{p:?}");
    }

    // Graceful restart: GoBGP keeps n2's path, marked stale, until the new session refreshes it.
    lab.stop_announcer("n2");
    let stale = eventually(
        WAIT,
        "n2's path kept as stale",
        || gobgp.paths(),
        |p| {
            p.iter()
                .any(|p| p.prefix == prefix && p.from == "10.250.0.12" && p.stale)
        },
    );
    assert_eq!(next_hops(&stale, &prefix, ""), three);
    lab.start_announcer("n2");
    never_without(
        "n2's restart",
        Duration::from_secs(20),
        || gobgp.paths(),
        &prefix,
        "10.250.0.12",
        |p| {
            p.iter()
                .any(|p| p.prefix == prefix && p.from == "10.250.0.12" && !p.stale)
        },
    );

    // Release: withdrawn from every session.
    release(&lab, "peers-web");
    eventually(
        WAIT,
        "the released prefix gone",
        || gobgp.paths(),
        |p| next_hops(p, &prefix, "").is_empty(),
    );
}

/// The company scenario through Kubernetes: MetalLB's YAML into the API server (the router's
/// address mapped into the lab), a BGPPeer whose password comes from a Secret created after it,
/// a Service created through the API: its status gets the address, BIRD gets the /32 from all
/// three nodes, ServiceBGPStatus objects show who advertises it, and deleting the Service
/// withdraws it.
#[test]
fn company_scenario_through_kubernetes() {
    let lab = HomeLab::up("bgq", Options::default());
    // The router wants a TCP MD5 password on every session.
    let bird = Bird::start(
        &lab,
        &BIRD_COMPANY.replace("passive on;", "passive on; password \"from-a-secret\";"),
    );
    let mut kube = lab.start_kube();
    let mut adapter = lab.start_adapter();
    let collection = |kind: &str| match kind {
        "BGPPeer" => "/apis/metallb.io/v1beta2/bgppeers",
        "IPAddressPool" => "/apis/metallb.io/v1beta1/ipaddresspools",
        "BGPAdvertisement" => "/apis/metallb.io/v1beta1/bgpadvertisements",
        other => panic!("unexpected kind {other}"),
    };
    let scenario = std::fs::read_to_string(scenarios().join("company-bgp-pool.yaml")).unwrap();
    let mut peer = serde_json::Value::Null;
    for doc in scenario.replace("10.100.1.1", "10.250.0.1").split("\n---") {
        let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
        if v["kind"] == "BGPPeer" {
            peer = v.clone();
        }
        kube.put(collection(v["kind"].as_str().unwrap()), &v);
    }
    let peers = collection("BGPPeer");
    // The password from a Secret that does not exist yet: the peer waits.
    peer["spec"]["passwordSecret"] = serde_json::json!({"name": "company-router-pw"});
    kube.put(peers, &peer);
    let condition = |kube: &mut ferrolb_e2e::home::LabKube| {
        let p = kube.get(peers, "metallb-system", "company-router");
        let c = p["status"]["conditions"][0].clone();
        (
            c["reason"].as_str().unwrap_or_default().to_string(),
            c["message"].to_string(),
        )
    };
    eventually(
        WAIT,
        "the peer pending on its Secret",
        || condition(&mut kube),
        |(r, m)| r == "Pending" && m.contains("company-router-pw"),
    );
    assert!(bird.established().is_empty());
    kube.put(
        "/api/v1/secrets",
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
            "metadata": {"name": "company-router-pw", "namespace": "metallb-system"},
            // base64 of "from-a-secret"
            "data": {"password": "ZnJvbS1hLXNlY3JldA=="},
        }),
    );
    eventually(
        WAIT,
        "the peer reconciled",
        || condition(&mut kube),
        |(r, _)| r == "Reconciled",
    );
    eventually(
        Duration::from_secs(10),
        "three IPv4 sessions with the password",
        || bird.established(),
        |e| e.iter().filter(|p| p.starts_with("c4_")).count() == 3,
    );

    kube.put(
        "/api/v1/services",
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "company-web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]},
        }),
    );
    kube.put(
        "/apis/discovery.k8s.io/v1/endpointslices",
        &serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "company-web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "company-web"}},
            "addressType": "IPv4",
            "endpoints": NODES.iter().map(|n| serde_json::json!({
                "addresses": ["10.244.0.10"], "conditions": {"ready": true}, "nodeName": n,
            })).collect::<Vec<_>>(),
        }),
    );
    eventually(
        Duration::from_secs(20),
        "the Service's ingress",
        || kube.get("/api/v1/services", "default", "company-web")["status"].clone(),
        |s| s["loadBalancer"]["ingress"][0]["ip"] == "10.100.50.1",
    );
    let prefix = "10.100.50.1/32";
    eventually(
        WAIT,
        "the /32 from all three nodes",
        || bird.paths(),
        |p| next_hops(p, prefix, "c4_") == ["10.250.0.11", "10.250.0.12", "10.250.0.13"],
    );
    // Where it is advertised, as `kubectl get servicebgpstatuses -A` shows it.
    let statuses = eventually(
        WAIT,
        "a ServiceBGPStatus per node",
        || kube.list("/apis/metallb.io/v1beta1/servicebgpstatuses"),
        |l| l.len() == 3,
    );
    for s in &statuses {
        let node = s["status"]["node"].as_str().unwrap();
        assert_eq!(
            s["metadata"]["name"],
            format!("bgp-default-company-web-{node}")
        );
        assert_eq!(s["status"]["serviceName"], "company-web");
        assert_eq!(s["status"]["peers"], serde_json::json!(["company-router"]));
        assert_eq!(s["metadata"]["labels"]["metallb.io/node"], node);
    }

    // MetalLB 0.16's serviceSelectors: an advertisement for Services labelled tier=gold tags
    // their routes; the Service gets the tag when it gets the label.
    kube.put(
        collection("BGPAdvertisement"),
        &serde_json::json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement",
            "metadata": {"name": "company-gold", "namespace": "metallb-system"},
            "spec": {"ipAddressPools": ["company-pool"], "communities": ["65000:777"],
                     "serviceSelectors": [{"matchLabels": {"tier": "gold"}}]},
        }),
    );
    let gold = |p: &[Path]| {
        let from = p
            .iter()
            .filter(|p| p.prefix == prefix && p.from.starts_with("c4_"));
        let tagged: Vec<bool> = from
            .map(|p| p.communities.contains("(65000,777)"))
            .collect();
        (tagged.len() == 3).then(|| tagged.iter().all(|t| *t))
    };
    let ads = collection("BGPAdvertisement");
    eventually(
        WAIT,
        "the gold advertisement reconciled",
        || kube.get(ads, "metallb-system", "company-gold")["status"]["conditions"][0].clone(),
        |c| c["reason"] == "Reconciled",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gold(&bird.paths()), Some(false), "not selected yet");
    let mut svc = kube.get("/api/v1/services", "default", "company-web");
    svc["metadata"]["labels"] = serde_json::json!({"tier": "gold"});
    kube.put("/api/v1/services", &svc);
    eventually(
        WAIT,
        "the gold community on the labelled Service's routes",
        || bird.paths(),
        |p| gold(p) == Some(true),
    );

    // A peer that needs MetalLB's FRR mode is refused by name; the rest keeps serving.
    kube.put(
        peers,
        &serde_json::json!({
            "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": "in-a-vrf", "namespace": "metallb-system"},
            "spec": {"myASN": 65001, "peerASN": 65000, "peerAddress": "10.250.0.9", "vrf": "red"},
        }),
    );
    let refused = eventually(
        WAIT,
        "the VRF peer refused",
        || kube.get(peers, "metallb-system", "in-a-vrf")["status"]["conditions"][0].clone(),
        |c| c["reason"] == "ConfigurationError",
    );
    assert!(
        refused["message"].as_str().unwrap().contains("spec.vrf"),
        "{refused}"
    );
    assert_eq!(
        next_hops(&bird.paths(), prefix, "c4_").len(),
        3,
        "the good peer kept its routes"
    );

    // Deleting the Service withdraws its route and its status objects.
    kube.delete("/api/v1/services", "default", "company-web");
    eventually(
        WAIT,
        "the route withdrawn",
        || bird.paths(),
        |p| next_hops(p, prefix, "").is_empty(),
    );
    eventually(
        WAIT,
        "no ServiceBGPStatus left",
        || kube.list("/apis/metallb.io/v1beta1/servicebgpstatuses"),
        Vec::is_empty,
    );
    let _ = adapter.kill();
    let _ = adapter.wait();
}

/// BIRD in the client, speaking from 10.77.0.100 on its loopback, which the nodes reach only
/// through the router (forwarding, no redirects): two hops away. Only the peer with
/// `ebgpMultiHop` comes up; the other's packets leave with TTL 1 and die at the router.
const BIRD_FAR: &str = r#"
router id 10.77.0.100;
log stderr all;
protocol device { }
template bgp far {
  local 10.77.0.100 as 65000; passive on; multihop 2; hold time 9; keepalive time 3;
  ipv4 { import all; export none; };
}
protocol bgp far_n1 from far { neighbor 10.250.0.11 as 65001; }
protocol bgp far_n2 from far { neighbor 10.250.0.12 as 65001; }
"#;

#[test]
fn ebgp_multihop_reaches_a_router_two_hops_away() {
    let lab = HomeLab::up("bgm", Options::default());
    lab.must(
        "client",
        &["ip", "addr", "add", "10.77.0.100/32", "dev", "lo"],
    );
    lab.must(
        "router",
        &[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ],
    );
    lab.must(
        "router",
        &[
            "ip",
            "route",
            "add",
            "10.77.0.100/32",
            "via",
            "10.250.0.100",
        ],
    );
    for n in ["n1", "n2"] {
        lab.must(
            n,
            &["ip", "route", "add", "10.77.0.100/32", "via", "10.250.0.1"],
        );
    }
    let bird = Bird::start_in(&lab, "client", BIRD_FAR);
    let far = "myASN: 65001, peerASN: 65000, peerAddress: 10.77.0.100";
    let multihop = format!("{far}, ebgpMultiHop: true");
    let file = per_node_peers(&lab, &[("n1", &multihop), ("n2", far)]);
    lab.ctl(&["apply", "-f", &file, "--cluster", CLUSTER]);
    eventually(
        WAIT,
        "the multihop session",
        || bird.established(),
        |e| e.contains(&"far_n1".to_string()),
    );
    let web = allocate(&lab, "far-web", "peers-pool", "ipv4");
    lab.set_endpoints("far-web", &["n1", "n2"], false);
    let prefix = format!("{web}/32");
    eventually(
        WAIT,
        "the /32 from n1 over two hops",
        || bird.paths(),
        |p| next_hops(p, &prefix, "far_") == ["10.250.0.11"],
    );
    // Without ebgpMultiHop the session never comes up.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        bird.established(),
        ["far_n1"],
        "{}",
        bird.birdc(&["show", "protocols", "all", "far_n2"])
    );
}
