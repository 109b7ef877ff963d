//! Real BGP routers in a lab's router namespace (BIRD 2 and GoBGP), and their tables read back
//! in one form tests can assert on.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::home::HomeLab;

/// The company scenario's router in the lab: AS 65000 for eBGP sessions over IPv4 and IPv6, one
/// per node and family; routes go to the router's kernel with ECMP.
pub const BIRD_COMPANY: &str = r#"
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

/// One path to a prefix in a router's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path {
    pub prefix: String,
    /// The router's session the path came over: BIRD's protocol name, GoBGP's neighbor address.
    pub from: String,
    pub next_hop: String,
    pub as_path: String,
    pub local_pref: Option<u32>,
    /// As BIRD prints them: `(65535,65281)`, `(65000, 1, 2)`.
    pub communities: String,
    pub large_communities: String,
    /// Kept by the router for a peer in graceful restart (GoBGP says so; BIRD does not).
    pub stale: bool,
}

fn need(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: this test needs a real BGP router (apt-get install {package}; scripts/test installs it)"
    );
}

/// BIRD 2 running in the lab's router.
pub struct Bird {
    ctl: String,
    netns: String,
    child: Child,
}

impl Bird {
    /// Starts BIRD in the router with `config` (a complete bird.conf) and waits for its control
    /// socket.
    pub fn start(lab: &HomeLab, config: &str) -> Bird {
        Bird::start_in(lab, "router", config)
    }

    /// Starts BIRD in a host of the lab (its log: `bird.log` in the router, else
    /// `bird-<host>.log`).
    pub fn start_in(lab: &HomeLab, host: &str, config: &str) -> Bird {
        need("bird", "bird2");
        let name = if host == "router" {
            "bird".to_string()
        } else {
            format!("bird-{host}")
        };
        let conf = lab.dir.0.join(format!("{name}.conf"));
        std::fs::write(&conf, config).expect("write bird.conf");
        let ctl = lab
            .dir
            .0
            .join(format!("{name}.ctl"))
            .to_string_lossy()
            .into_owned();
        let child = lab.spawn(
            host,
            "bird",
            &["-f", "-c", &conf.to_string_lossy(), "-s", &ctl],
            &name,
        );
        let bird = Bird {
            ctl,
            netns: format!("{}-{host}", lab.lab.0),
            child,
        };
        let start = Instant::now();
        while !bird.birdc(&["show", "status"]).contains("Daemon is up") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "BIRD did not start: {}",
                lab.log(&name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bird
    }

    /// The control socket (a path, so birdc reaches it from any namespace).
    pub fn ctl(&self) -> &str {
        &self.ctl
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn birdc(&self, args: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.netns, "birdc", "-s", &self.ctl])
            .args(args)
            .output()
            .expect("run birdc");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Every path in BIRD's IPv4 and IPv6 tables.
    pub fn paths(&self) -> Vec<Path> {
        parse_bird(&self.birdc(&["show", "route", "all"]))
    }

    /// Names of the BGP protocols in state Established.
    pub fn established(&self) -> Vec<String> {
        self.birdc(&["show", "protocols"])
            .lines()
            .filter(|l| l.contains("BGP") && l.contains("Established"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GoBGP's daemon running in the lab's router, its API on 127.0.0.1:50051 of that namespace.
pub struct GoBgp {
    netns: String,
    child: Child,
}

impl GoBgp {
    /// Starts gobgpd in the router with `config` (TOML) and waits for its API.
    pub fn start(lab: &HomeLab, config: &str) -> GoBgp {
        GoBgp::start_in(lab, "router", config)
    }

    /// Starts gobgpd in a host of the lab (its log: `gobgp-<host>.log`).
    pub fn start_in(lab: &HomeLab, host: &str, config: &str) -> GoBgp {
        need("gobgpd", "gobgpd");
        let conf = lab.dir.0.join(format!("gobgp-{host}.toml"));
        std::fs::write(&conf, config).expect("write gobgp.toml");
        let log = format!("gobgp-{host}");
        let child = lab.spawn(
            host,
            "gobgpd",
            &[
                "-f",
                &conf.to_string_lossy(),
                "-p",
                "--pprof-disable",
                "--api-hosts",
                "127.0.0.1:50051",
            ],
            &log,
        );
        let gobgp = GoBgp {
            netns: format!("{}-{host}", lab.lab.0),
            child,
        };
        let start = Instant::now();
        while gobgp.json(&["global"]).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "gobgpd did not start: {}",
                lab.log(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gobgp
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the gobgp CLI; its output, or None when it fails.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.netns, "gobgp", "-u", "127.0.0.1"])
            .args(args)
            .output()
            .expect("run gobgp");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs the gobgp CLI with `-j`; None when it fails.
    pub fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let args: Vec<&str> = args.iter().copied().chain(["-j"]).collect();
        serde_json::from_str(&self.cli(&args)?).ok()
    }

    /// Every path in GoBGP's IPv4 and IPv6 tables.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        for family in ["ipv4", "ipv6"] {
            if let Some(v) = self.json(&["global", "rib", "-a", family]) {
                out.extend(parse_gobgp(&v));
            }
        }
        out
    }

    /// Addresses of the neighbors in state Established.
    pub fn established(&self) -> Vec<String> {
        let v = self.json(&["neighbor"]).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["state"]["session_state"] == 6)
            .filter_map(|n| n["state"]["neighbor_address"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for GoBgp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `gobgp global rib -j`: prefix → its paths, each with its attributes by type code.
pub fn parse_gobgp(v: &serde_json::Value) -> Vec<Path> {
    let mut out = Vec::new();
    let Some(prefixes) = v.as_object() else {
        return out;
    };
    for (prefix, paths) in prefixes {
        for p in paths.as_array().into_iter().flatten() {
            let mut path = Path {
                prefix: prefix.clone(),
                from: p["neighbor-ip"].as_str().unwrap_or_default().to_string(),
                stale: p["stale"].as_bool().unwrap_or(false),
                ..Path::default()
            };
            for a in p["attrs"].as_array().into_iter().flatten() {
                match a["type"].as_u64() {
                    // AS_PATH
                    Some(2) => {
                        let asns: Vec<String> = a["as_paths"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|seg| seg["asns"].as_array().cloned().unwrap_or_default())
                            .map(|n| n.to_string())
                            .collect();
                        path.as_path = asns.join(" ");
                    }
                    // NEXT_HOP, MP_REACH_NLRI
                    Some(3) | Some(14) => {
                        path.next_hop = a["nexthop"].as_str().unwrap_or_default().to_string()
                    }
                    Some(5) => path.local_pref = a["value"].as_u64().map(|n| n as u32),
                    Some(8) => {
                        let c: Vec<String> = a["communities"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(serde_json::Value::as_u64)
                            .map(|c| format!("({},{})", c >> 16, c & 0xffff))
                            .collect();
                        path.communities = c.join(" ");
                    }
                    Some(32) => {
                        let c: Vec<String> = a["value"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|l| {
                                format!("({}, {}, {})", l["ASN"], l["LocalData1"], l["LocalData2"])
                            })
                            .collect();
                        path.large_communities = c.join(" ");
                    }
                    _ => {}
                }
            }
            out.push(path);
        }
    }
    out
}

/// Parses `birdc show route all`: a line naming a prefix starts its first path, an indented
/// `KIND [protocol ...]` line another path of the same prefix, and `BGP.*` lines fill the path.
pub fn parse_bird(text: &str) -> Vec<Path> {
    let mut out: Vec<Path> = Vec::new();
    let mut prefix = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if !line.starts_with(char::is_whitespace) && trimmed.contains('/') && trimmed.contains('[')
        {
            prefix = trimmed
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            out.push(Path {
                prefix: prefix.clone(),
                from: protocol(trimmed),
                ..Path::default()
            });
        } else if trimmed
            .split_once(" [")
            .is_some_and(|(kind, _)| !kind.contains([' ', ':']))
        {
            // Another path of the same prefix: `unicast [...]`, or `unreachable [...]` for a
            // multihop path whose next hop BIRD cannot resolve.
            out.push(Path {
                prefix: prefix.clone(),
                from: protocol(trimmed),
                ..Path::default()
            });
        } else if let Some(p) = out.last_mut()
            && let Some((k, v)) = trimmed.split_once(": ")
        {
            match k {
                "BGP.next_hop" => {
                    p.next_hop = v.split_whitespace().next().unwrap_or_default().into()
                }
                "BGP.as_path" => p.as_path = v.to_string(),
                "BGP.local_pref" => p.local_pref = v.parse().ok(),
                "BGP.community" => p.communities = v.to_string(),
                "BGP.large_community" => p.large_communities = v.to_string(),
                _ => {}
            }
        }
    }
    out
}

/// The protocol in `... unicast [c4_1 12:00:00.000] ...`.
fn protocol(line: &str) -> String {
    line.split_once('[')
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// Waits until `check` holds, polling every 50 ms; panics with `what` and the last value.
pub fn eventually<T: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut read: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        let v = read();
        if check(&v) {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "{what}: not within {within:?}; last seen {v:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// BIRD with eBGP sessions to the three nodes (AS 65000 to 65001) with `hold` seconds of hold
/// time, and BFD with them at `bfd_ms` × 3 when given; after a failure BIRD takes connections
/// again within seconds (its default error wait is a minute or more).
pub fn bird_three_nodes(hold: u16, bfd_ms: Option<u32>) -> String {
    let keepalive = (hold / 3).max(1);
    let (bfd, on) = match bfd_ms {
        Some(ms) => (
            format!("protocol bfd {{ interface \"*\" {{ interval {ms} ms; multiplier 3; }}; }}"),
            "on",
        ),
        None => (String::new(), "off"),
    };
    format!(
        r#"
router id 10.250.0.1;
log stderr all;
protocol device {{ }}
{bfd}
template bgp nodes {{
  local 10.250.0.1 as 65000; passive on; hold time {hold}; keepalive time {keepalive}; bfd {on};
  error wait time 1, 2;
  ipv4 {{ import all; export none; }};
}}
protocol bgp n1 from nodes {{ neighbor 10.250.0.11 as 65001; }}
protocol bgp n2 from nodes {{ neighbor 10.250.0.12 as 65001; }}
protocol bgp n3 from nodes {{ neighbor 10.250.0.13 as 65001; }}
"#
    )
}

/// The ferrolb side of [`bird_three_nodes`]: a BGPPeer for the router (with a BFDProfile of
/// `bfd_ms` × 3 when given), a pool and its advertisement.
pub fn three_nodes_yaml(hold: u16, bfd_ms: Option<u32>) -> String {
    let (profile, named) = match bfd_ms {
        Some(ms) => (
            format!(
                "apiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {{name: fast, namespace: metallb-system}}\n\
                 spec: {{receiveInterval: {ms}, transmitInterval: {ms}, detectMultiplier: 3}}\n---\n"
            ),
            ", bfdProfile: fast",
        ),
        None => (String::new(), ""),
    };
    format!(
        "{profile}apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: router, namespace: metallb-system}}\n\
         spec: {{myASN: 65001, peerASN: 65000, peerAddress: 10.250.0.1, holdTime: {hold}s{named}}}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: bgp-pool, namespace: metallb-system}}\n\
         spec: {{addresses: [10.100.60.0/28]}}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {{name: bgp-pool, namespace: metallb-system}}\n\
         spec: {{ipAddressPools: [bgp-pool]}}\n"
    )
}

/// BIRD and ferrolb set up as above in `lab`, a Service's address advertised by all three
/// nodes; returns BIRD and the address's /32, once BIRD has a path to it from each node.
pub fn three_node_bgp(lab: &HomeLab, hold: u16, bfd_ms: Option<u32>) -> (Bird, String) {
    let bird = Bird::start(lab, &bird_three_nodes(hold, bfd_ms));
    let file = lab.dir.0.join("three-nodes.yaml");
    std::fs::write(&file, three_nodes_yaml(hold, bfd_ms)).expect("write the BGP file");
    lab.ctl(&[
        "apply",
        "-f",
        &file.to_string_lossy(),
        "--cluster",
        crate::home::CLUSTER,
    ]);
    let out = lab.ctl(&[
        "-o",
        "json",
        "allocate",
        "--cluster",
        crate::home::CLUSTER,
        "--namespace",
        "default",
        "--name",
        "web",
        "--pool",
        "bgp-pool",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("allocate -o json");
    let ip = v[0]["ips"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {out}"));
    let prefix = format!("{ip}/32");
    lab.set_endpoints("web", &["n1", "n2", "n3"], false);
    wait_via(&bird, &prefix, &["n1", "n2", "n3"], Duration::from_secs(30));
    (bird, prefix)
}

/// The BIRD protocols (nodes) with a path to `prefix`, sorted.
pub fn via(bird: &Bird, prefix: &str) -> Vec<String> {
    let mut from: Vec<String> = bird
        .paths()
        .into_iter()
        .filter(|p| p.prefix == prefix)
        .map(|p| p.from)
        .collect();
    from.sort();
    from
}

/// Waits until BIRD's paths to `prefix` come from exactly `want`; how long that took.
pub fn wait_via(bird: &Bird, prefix: &str, want: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if via(bird, prefix) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "paths to {prefix} from {:?}, not {want:?}, after {within:?}\n{}\n{}",
            via(bird, prefix),
            bird.birdc(&["show", "bfd", "sessions"]),
            bird.birdc(&["show", "protocols"]),
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
