//! `scripts/bench bgp-scale`: how fast a node's announcer fills a router's table, beside GoBGP
//! doing the same in the same lab and run.
//!
//! BIRD 2 in the lab's router peers with the announcer on n1 (protocol `ferrolb`) and with
//! gobgpd on n2 (protocol `gobgp`). Both advertise the same 10,000 /32s: the announcer from
//! 10,000 leases made through the allocator's API, GoBGP from an MRT dump of those prefixes.
//! Each round restarts one BIRD protocol and measures, from BIRD's own millisecond timestamps,
//! the time from the session reaching Established to the last of the 10,000 routes imported.
//! Then: release to withdrawn at BIRD for single leases, and the announcer's resident memory
//! with no routes, with 10,000 prefixes to one peer and to three.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::home::{CLUSTER, HomeLab, Options, SERVER, load_bulk};
use ferrolb_e2e::routers::{Bird, GoBgp};
use ferrolb_e2e::{bin, client, rss_mib, service};
use ferrolb_proto::v1 as pb;

const PREFIXES: usize = 10_000;
const ROUNDS: usize = 3;
const WITHDRAWALS: usize = 20;

const BIRD_CONF: &str = r#"
router id 10.250.0.1;
log stderr all;
timeformat protocol iso long ms;
timeformat route iso long ms;
protocol device { }
template bgp bench {
  hold time 90; connect delay time 1; connect retry time 1;
  ipv4 { import all; export none; };
}
protocol bgp ferrolb from bench { local 10.250.0.1 as 65000; neighbor 10.250.0.11 as 65001; passive on; }
protocol bgp gobgp from bench { local 10.250.0.1 as 65000; neighbor 10.250.0.12 as 65002; }
protocol bgp ferrolb2 from bench { local 10.250.0.2 as 65000; neighbor 10.250.0.21 as 65001; passive on; }
protocol bgp ferrolb3 from bench { local 10.250.0.3 as 65000; neighbor 10.250.0.31 as 65001; passive on; }
"#;

const GOBGP_CONF: &str = r#"
[global.config]
  as = 65002
  router-id = "10.250.0.12"
  local-address-list = ["10.250.0.12"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.250.0.1"
    peer-as = 65000
  [neighbors.transport.config]
    passive-mode = true
"#;

const POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: bulk}\n\
    spec:\n  addresses: [10.200.0.0/18]\n---\n\
    apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: bulk}\n\
    spec:\n  ipAddressPools: [bulk]\n";

fn peer(name: &str, router: &str, source: &str) -> String {
    format!(
        "---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: {name}}}\n\
         spec: {{myASN: 65001, peerASN: 65000, peerAddress: {router}, sourceAddress: {source}}}\n"
    )
}

/// Seconds since midnight of a BIRD `YYYY-MM-DD HH:MM:SS.mmm` time (the benchmark runs in
/// minutes, so only a midnight in between needs care).
fn seconds(date: &str, time: &str) -> (String, f64) {
    let mut f = time.split(':').map(|x| x.parse::<f64>().unwrap());
    let (h, m, s) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
    (date.to_string(), h * 3600.0 + m * 60.0 + s)
}

fn elapsed(from: &(String, f64), to: &(String, f64)) -> f64 {
    let d = to.1 - from.1;
    if from.0 != to.0 { d + 86_400.0 } else { d }
}

/// The protocol's state line: (established?, since).
fn protocol(bird: &Bird, name: &str) -> (bool, (String, f64)) {
    let out = bird.birdc(&["show", "protocols", name]);
    let line = out
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no protocol {name} in {out}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    (line.contains("Established"), seconds(w[4], w[5]))
}

fn count(bird: &Bird, name: &str) -> usize {
    let out = bird.birdc(&["show", "route", "protocol", name, "count"]);
    out.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0)
}

/// The import times of the protocol's routes, as (prefix, time).
fn routes(bird: &Bird, name: &str) -> Vec<(String, (String, f64))> {
    let tag = format!("[{name} ");
    let mut prefix = String::new();
    let mut out = Vec::new();
    for line in bird.birdc(&["show", "route", "protocol", name]).lines() {
        if !line.starts_with(char::is_whitespace)
            && let Some(p) = line.split_whitespace().next()
            && p.contains('/')
        {
            prefix = p.to_string();
        }
        if let Some((_, rest)) = line.split_once(&tag) {
            let w: Vec<&str> = rest.split_whitespace().collect();
            out.push((prefix.clone(), seconds(w[0], w[1].trim_end_matches(']'))));
        }
    }
    out
}

fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restarts BIRD's protocol `name` and returns seconds from Established to the last route.
fn round(bird: &Bird, name: &str) -> f64 {
    let (_, before) = protocol(bird, name);
    bird.birdc(&["restart", name]);
    wait(
        &format!("{name} back with all routes"),
        Duration::from_secs(120),
        || {
            let (up, since) = protocol(bird, name);
            up && since != before && count(bird, name) == PREFIXES
        },
    );
    let (_, up) = protocol(bird, name);
    let times = routes(bird, name);
    assert_eq!(times.len(), PREFIXES);
    let first = times
        .iter()
        .map(|(_, t)| elapsed(&up, t))
        .fold(f64::MAX, f64::min);
    assert!(first >= -0.001, "{name}: a route older than its session");
    times
        .iter()
        .map(|(_, t)| elapsed(&up, t))
        .fold(0.0, f64::max)
}

/// An MRT TABLE_DUMP_V2 file (RFC 6396) with the prefixes, for `gobgp mrt inject`.
fn mrt(prefixes: &[String]) -> Vec<u8> {
    fn record(out: &mut Vec<u8>, subtype: u16, body: &[u8]) {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&13u16.to_be_bytes());
        out.extend_from_slice(&subtype.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut out = Vec::new();
    // PEER_INDEX_TABLE: collector ID, no view name, one peer (IPv4, 4-octet AS).
    let mut b = vec![
        10, 250, 0, 12, 0, 0, 0, 1, 0x02, 10, 250, 0, 12, 10, 250, 0, 12,
    ];
    b.extend_from_slice(&65002u32.to_be_bytes());
    record(&mut out, 1, &b);
    // ORIGIN IGP, empty AS_PATH, NEXT_HOP.
    let attrs = [0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 10, 250, 0, 12];
    for (seq, p) in prefixes.iter().enumerate() {
        let (addr, len) = p.split_once('/').unwrap();
        let addr: std::net::Ipv4Addr = addr.parse().unwrap();
        let len: u8 = len.parse().unwrap();
        let mut b = (seq as u32).to_be_bytes().to_vec();
        b.push(len);
        b.extend_from_slice(&addr.octets()[..usize::from(len).div_ceil(8)]);
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(&attrs);
        // RIB_IPV4_UNICAST
        record(&mut out, 2, &b);
    }
    out
}

/// Inside the router's namespace: releases leases one at a time and prints, per lease, the
/// milliseconds from the release call to its prefix gone from BIRD.
fn withdraw(url: &str, ctl: &str, n: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = client(url, "admin").await;
        for i in 0..n {
            let owner = service(CLUSTER, "bulk", &format!("s{i}"));
            let lease = c
                .get_lease(pb::GetLeaseRequest {
                    owner: Some(owner.clone()),
                })
                .await
                .unwrap()
                .into_inner();
            let prefix = format!("{}/32", lease.ips[0]);
            let start = Instant::now();
            c.release(pb::ReleaseRequest { owner: Some(owner) })
                .await
                .unwrap();
            loop {
                let o = std::process::Command::new("birdc")
                    .args(["-s", ctl, "show", "route", &prefix, "protocol", "ferrolb"])
                    .output()
                    .unwrap();
                if !String::from_utf8_lossy(&o.stdout).contains(&prefix) {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(10), "{prefix} stays");
            }
            println!("{:.1}", start.elapsed().as_secs_f64() * 1000.0);
        }
    });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--load") => return load_bulk(&args[2], args[3].parse().unwrap()),
        Some("--withdraw") => return withdraw(&args[2], &args[3], args[4].parse().unwrap()),
        _ => {}
    }
    let mut lab = HomeLab::up(
        "bs",
        Options {
            announcer_args: vec!["--bgp-max-backoff-ms".into(), "500".into()],
            ..Options::default()
        },
    );
    lab.kill_announcer("n2");
    lab.kill_announcer("n3");
    for a in ["10.250.0.2/24", "10.250.0.3/24"] {
        lab.must("router", &["ip", "addr", "add", a, "dev", "eth0"]);
    }
    for a in ["10.250.0.21/24", "10.250.0.31/24"] {
        lab.must("n1", &["ip", "addr", "add", a, "dev", "eth0"]);
    }
    let bird = Bird::start(&lab, BIRD_CONF);
    let file = lab.dir.0.join("bulk.yaml");
    std::fs::write(
        &file,
        format!("{POOL}{}", peer("router", "10.250.0.1", "10.250.0.11")),
    )
    .unwrap();
    lab.ctl(&["apply", "-f", &file.to_string_lossy(), "--cluster", CLUSTER]);
    wait("the announcer's session", Duration::from_secs(20), || {
        protocol(&bird, "ferrolb").0
    });
    let pid = lab.announcer_pid("n1");
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_mib(pid);

    let start = Instant::now();
    lab.load_bulk("bench-bgp-scale", PREFIXES);
    wait(
        "10,000 routes from the announcer",
        Duration::from_secs(300),
        || count(&bird, "ferrolb") == PREFIXES,
    );
    println!(
        "{PREFIXES} leases made through the API and at the router in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // GoBGP on n2 gets the same prefixes.
    let prefixes: Vec<String> = routes(&bird, "ferrolb")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let dump = lab.dir.0.join("prefixes.mrt");
    std::fs::write(&dump, mrt(&prefixes)).unwrap();
    let gobgp = GoBgp::start_in(&lab, "n2", GOBGP_CONF);
    // `gobgp mrt inject` (gobgp 3.10) loses some of its stream; what it lost is added one by
    // one with the same attributes.
    gobgp
        .cli(&["mrt", "inject", "global", &dump.to_string_lossy()])
        .expect("gobgp mrt inject");
    let held = gobgp
        .json(&["global", "rib", "-a", "ipv4"])
        .unwrap_or_default();
    let held = held.as_object().cloned().unwrap_or_default();
    for p in prefixes.iter().filter(|p| !held.contains_key(*p)) {
        gobgp
            .cli(&[
                "global",
                "rib",
                "add",
                "-a",
                "ipv4",
                p,
                "nexthop",
                "10.250.0.12",
            ])
            .expect("gobgp global rib add");
    }
    wait("10,000 routes from GoBGP", Duration::from_secs(300), || {
        count(&bird, "gobgp") == PREFIXES
    });

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for r in 0..ROUNDS {
        let a = round(&bird, "ferrolb");
        let b = round(&bird, "gobgp");
        println!(
            "round {}: Established to {PREFIXES} routes at BIRD: ferrolb {:.0} ms, GoBGP {:.0} ms",
            r + 1,
            a * 1000.0,
            b * 1000.0
        );
        ours.push(a);
        theirs.push(b);
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let one_peer = rss_mib(pid);
    let gobgp_rss = rss_mib(gobgp.pid());

    let me = bin("bench-bgp-scale").to_string_lossy().into_owned();
    let out = lab.must(
        "router",
        &[
            &me,
            "--withdraw",
            SERVER,
            bird.ctl(),
            &WITHDRAWALS.to_string(),
        ],
    );
    let ms: Vec<f64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(ms.len(), WITHDRAWALS, "{out}");
    let withdraw_ms = median(ms.clone());
    let worst = ms.iter().copied().fold(0.0, f64::max);
    println!(
        "release to withdrawn at BIRD, {WITHDRAWALS} leases: median {withdraw_ms:.1} ms, worst {worst:.1} ms"
    );

    // Two more peers for the same node: the same routes go to three sessions.
    std::fs::write(
        &file,
        format!(
            "{POOL}{}{}{}",
            peer("router", "10.250.0.1", "10.250.0.11"),
            peer("router2", "10.250.0.2", "10.250.0.21"),
            peer("router3", "10.250.0.3", "10.250.0.31")
        ),
    )
    .unwrap();
    lab.ctl(&["apply", "-f", &file.to_string_lossy(), "--cluster", CLUSTER]);
    let left = PREFIXES - WITHDRAWALS;
    wait(
        "the routes over three sessions",
        Duration::from_secs(120),
        || {
            ["ferrolb", "ferrolb2", "ferrolb3"]
                .iter()
                .all(|p| count(&bird, p) == left)
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let three_peers = rss_mib(pid);
    println!(
        "announcer RSS: {idle:.1} MiB with one session and no routes, {one_peer:.1} MiB with \
         {PREFIXES} prefixes to one peer, {three_peers:.1} MiB with {left} to three peers; \
         gobgpd {gobgp_rss:.1} MiB with {PREFIXES} to one peer"
    );
    println!(
        "RESULT bgp-scale ratio_vs_gobgp={:.2} withdraw_ms={withdraw_ms:.1} ferrolb_ms={:.0} gobgp_ms={:.0} rss_mib_three_peers={three_peers:.1}",
        ours / theirs,
        ours * 1000.0,
        theirs * 1000.0
    );
}
