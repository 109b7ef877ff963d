//! The home-lab scenario end to end in a network lab, with real clients: the allocator, three
//! announcers and an HTTP server per node; arping, ndisc6, ping and curl on the client; tcpdump
//! on the LAN.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrolb_e2e::home::{CLUSTER, HomeLab, NODES, Options, VIP, mac};

const SECOND: Duration = Duration::from_secs(1);

/// The MACs that answered arping for `ip` (Habets arping, `-c count`).
fn arping_macs(lab: &HomeLab, ip: &str, count: &str) -> Vec<String> {
    let o = lab.lab.run(
        "client",
        &["arping", "-c", count, "-W", "0.05", "-i", "eth0", ip],
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(" from ").nth(1))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn ndisc(lab: &HomeLab, ip: &str) -> Option<String> {
    let o = lab.lab.run(
        "client",
        &["ndisc6", "-1", "-r", "3", "-w", "300", ip, "eth0"],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    out.lines()
        .find_map(|l| l.strip_prefix("Target link-layer address: "))
        .map(|m| m.trim().to_lowercase())
}

/// What kube-proxy in IPVS mode does on every node: the service addresses on a local interface,
/// with MetalLB's required strictARP (arp_ignore=1, arp_announce=2) so that the kernels keep
/// quiet about them and the announcer alone answers.
fn kube_proxy_ipvs(lab: &HomeLab, addrs: &[&str]) {
    for n in NODES {
        lab.must(
            n,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
            ],
        );
        for a in addrs {
            let plen = if a.contains(':') { "128" } else { "32" };
            lab.must(
                n,
                &["ip", "addr", "add", &format!("{a}/{plen}"), "dev", "lo"],
            );
        }
    }
}

fn end_to_end(answerer: &'static str) {
    let lab = HomeLab::up(
        &format!("h{}", &answerer[..1]),
        Options {
            answerer,
            ..Options::default()
        },
    );
    if answerer == "userspace" {
        kube_proxy_ipvs(&lab, &[VIP, "fd00:250::240"]);
    }
    lab.serve_home_nginx(&NODES, false);
    let owner = lab.wait_owner(VIP, 5 * SECOND, Result::is_ok).unwrap();

    // arping resolves the address to the owner's MAC, and only to it.
    let macs = arping_macs(&lab, VIP, "3");
    assert!(!macs.is_empty(), "no ARP answer\n{}", lab.logs());
    assert!(
        macs.iter().all(|m| m == mac(&owner)),
        "{macs:?} for owner {owner}"
    );
    // The client kernel's own resolution: curl reaches the page, the neighbour entry is the owner.
    assert_eq!(lab.curl_until(VIP, 5 * SECOND, |_| true), owner);
    lab.must("client", &["ping", "-c", "1", "-W", "1", VIP]);
    assert_eq!(lab.client_neighbour(VIP).as_deref(), Some(mac(&owner)));

    // IPv6: ndisc6 resolves, curl reaches it.
    let v6 = lab.serve_v6();
    let owner6 = lab.wait_owner(&v6, 5 * SECOND, Result::is_ok).unwrap();
    let mut seen = None;
    for _ in 0..20 {
        seen = ndisc(&lab, &v6);
        if seen.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        seen.as_deref(),
        Some(mac(&owner6)),
        "ndisc6 {v6}\n{}",
        lab.logs()
    );
    if answerer == "userspace" {
        // The owner's interface joined the address's solicited-node group (ff02::1:ff00:240).
        let groups = lab.must(&owner6, &["ip", "maddr", "show", "dev", "eth0"]);
        assert!(groups.contains("33:33:ff:00:02:40"), "{groups}");
    }
    assert_eq!(lab.curl_until(&v6, 5 * SECOND, |_| true), owner6);

    // tcpdump on the LAN: every ARP reply and neighbor advertisement for the addresses comes
    // from the owner.
    let capture = lab.dir.0.join("lan.txt");
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", &format!("{}-lan", lab.lab.0)])
        .args(["tcpdump", "-l", "-nn", "-e", "-i", "br0", "arp or icmp6"])
        .stdout(std::fs::File::create(&capture).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut err = BufReader::new(tcpdump.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("listening on") {
        line.clear();
    }
    assert_eq!(arping_macs(&lab, VIP, "5").len(), 5);
    for _ in 0..3 {
        assert_eq!(ndisc(&lab, &v6).as_deref(), Some(mac(&owner6)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    let _ = tcpdump.wait();
    let seen = std::fs::read_to_string(&capture).unwrap();
    let replies: Vec<&str> = seen
        .lines()
        .filter(|l| l.contains(&format!("Reply {VIP} is-at")))
        .collect();
    assert!(
        replies.len() >= 5,
        "too few ARP replies on the LAN:\n{seen}"
    );
    for l in &replies {
        assert!(l.starts_with_mac(mac(&owner)), "a non-owner answered: {l}");
    }
    let adverts: Vec<&str> = seen
        .lines()
        .filter(|l| l.contains(&format!("neighbor advertisement, tgt is {v6}")))
        .collect();
    assert!(
        adverts.len() >= 3,
        "too few advertisements on the LAN:\n{seen}"
    );
    for l in &adverts {
        assert!(
            l.starts_with_mac(mac(&owner6)),
            "a non-owner advertised: {l}"
        );
    }
}

/// A tcpdump `-e` line's source MAC (after the timestamp).
trait SourceMac {
    fn starts_with_mac(&self, mac: &str) -> bool;
}

impl SourceMac for &str {
    fn starts_with_mac(&self, mac: &str) -> bool {
        self.split_whitespace().nth(1) == Some(mac)
    }
}

#[test]
fn home_lab_with_the_kernel_answering() {
    end_to_end("kernel");
}

#[test]
fn home_lab_with_the_userspace_responder() {
    end_to_end("userspace");
}

#[test]
fn failover_on_crash_and_on_link_cut() {
    let mut lab = HomeLab::up("fo", Options::default());
    lab.serve_home_nginx(&NODES, false);
    let first = lab.wait_owner(VIP, 5 * SECOND, Result::is_ok).unwrap();
    assert_eq!(lab.curl_until(VIP, 5 * SECOND, |_| true), first);

    // The owner's announcer is killed: another node answers, the client's entry moved to it.
    let pid = lab.announcer_pid(&first).to_string();
    let (took, next) = lab.failover(VIP, &first, || {
        Command::new("kill").args(["-9", &pid]).status().unwrap();
    });
    lab.kill_announcer(&first);
    assert!(took < 2 * SECOND, "crash failover took {took:?}");
    assert_eq!(lab.owner(VIP), Ok(next.clone()));
    assert_eq!(lab.client_neighbour(VIP).as_deref(), Some(mac(&next)));

    // It comes back and, by MetalLB's rule, wins the address back; the stand-in lets go.
    lab.start_announcer(&first);
    lab.wait_owner(VIP, 5 * SECOND, |o| o.as_deref() == Ok(first.as_str()))
        .unwrap();
    assert_eq!(lab.curl_until(VIP, 5 * SECOND, |n| n == first), first);
    let bound = lab.must(&next, &["ip", "-4", "addr", "show", "dev", "eth0"]);
    assert!(!bound.contains(VIP), "{next} still holds {VIP}: {bound}");

    // The owner's link is cut: the same, through missed heartbeats.
    let (took, next) = lab.failover(VIP, &first, || {
        lab.must(&first, &["ip", "link", "set", "eth0", "down"]);
    });
    assert!(took < 2 * SECOND, "link-cut failover took {took:?}");
    assert_ne!(next, first);
    assert_eq!(lab.client_neighbour(VIP).as_deref(), Some(mac(&next)));
    // The allocator timed both failovers, each by its reason; the move back was none.
    let start = std::time::Instant::now();
    loop {
        let m = lab.must("router", &["curl", "-s", "http://10.250.0.1:7471/metrics"]);
        let count = |reason: &str| {
            m.contains(&format!(
                "ferrolb_allocator_failover_seconds_count{{reason=\"{reason}\"}} 1\n"
            ))
        };
        if count("stream_ended") && count("heartbeats_stopped") {
            break;
        }
        assert!(start.elapsed() < 3 * SECOND, "{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `ferrolbctl history` lists both: the address, from which node to which, why, how long.
    let history = lab.ctl(&["history", "--cluster", CLUSTER]);
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{history}");
    for (row, reason) in rows.iter().zip(["stream_ended", "heartbeats_stopped"]) {
        assert_eq!(row[1..3], [VIP, first.as_str()], "{history}");
        assert_ne!(row[3], first, "{history}");
        assert_eq!(row[4], reason, "{history}");
        assert!(row[0].ends_with('Z') && row[6] == "ms", "{history}");
    }
    lab.must(&first, &["ip", "link", "set", "eth0", "up"]);
    lab.wait_owner(VIP, 10 * SECOND, |o| o.as_deref() == Ok(first.as_str()))
        .unwrap();
    assert_eq!(lab.curl_until(VIP, 10 * SECOND, |n| n == first), first);

    // A stopped announcer (SIGTERM) takes its addresses off the node before it exits.
    lab.stop_announcer(&first);
    let bound = lab.must(&first, &["ip", "-4", "addr", "show", "dev", "eth0"]);
    assert!(!bound.contains(VIP), "{first} still holds {VIP}: {bound}");
    lab.wait_owner(VIP, 5 * SECOND, |o| o.as_ref().is_ok_and(|n| n != &first))
        .unwrap();
}

/// Polls arping until every answer comes from `node` (or, with `None`, until nobody answers).
fn arping_settles(lab: &HomeLab, ip: &str, node: Option<&str>) {
    let start = std::time::Instant::now();
    loop {
        let macs = arping_macs(lab, ip, "2");
        let ok = match node {
            Some(n) => !macs.is_empty() && macs.iter().all(|m| m == mac(n)),
            None => macs.is_empty(),
        };
        if ok {
            return;
        }
        assert!(
            start.elapsed() < 5 * SECOND,
            "{ip}: answers {macs:?}, wanted {node:?}\n{}",
            lab.logs()
        );
    }
}

#[test]
fn fail_static_while_the_allocator_is_away() {
    let mut lab = HomeLab::up("fs", Options::default());
    lab.serve_home_nginx(&NODES, false);
    let owner = lab.wait_owner(VIP, 5 * SECOND, Result::is_ok).unwrap();
    lab.kill_allocator();
    // Longer than the announcers wait for a silent allocator (ten heartbeat timeouts).
    std::thread::sleep(4 * SECOND);
    arping_settles(&lab, VIP, Some(&owner));
    assert_eq!(lab.curl(VIP).as_deref(), Some(owner.as_str()));

    // The allocator is back: changes flow again.
    lab.start_allocator();
    let other = NODES.into_iter().find(|n| *n != owner).unwrap();
    lab.set_endpoints("home-nginx", &[other], true);
    lab.wait_owner(VIP, 5 * SECOND, |o| o.as_deref() == Ok(other))
        .unwrap();
    arping_settles(&lab, VIP, Some(other));
}

#[test]
fn traffic_policy_exclusion_and_shared_addresses() {
    let lab = HomeLab::up("po", Options::default());
    // externalTrafficPolicy Local with the only endpoint on n2: n2 announces.
    lab.serve_home_nginx(&["n2"], true);
    lab.wait_owner(VIP, 5 * SECOND, |o| o.as_deref() == Ok("n2"))
        .unwrap();
    arping_settles(&lab, VIP, Some("n2"));

    // The exclusion label takes n2 out: nobody may announce, nobody answers.
    let exclude = "node.kubernetes.io/exclude-from-external-load-balancers=";
    lab.ctl(&[
        "nodes",
        "apply",
        "n2",
        "--cluster",
        CLUSTER,
        "--label",
        exclude,
    ]);
    let o = lab.wait_owner(VIP, 5 * SECOND, Result::is_err);
    assert_eq!(o, Err("noEligibleNode".into()));
    arping_settles(&lab, VIP, None);

    // An endpoint on n3 too: n3 announces; NetworkUnavailable on n3 silences it again.
    lab.set_endpoints("home-nginx", &["n2", "n3"], true);
    lab.wait_owner(VIP, 5 * SECOND, |o| o.as_deref() == Ok("n3"))
        .unwrap();
    arping_settles(&lab, VIP, Some("n3"));
    lab.ctl(&[
        "nodes",
        "apply",
        "n3",
        "--cluster",
        CLUSTER,
        "--network-unavailable",
    ]);
    lab.wait_owner(VIP, 5 * SECOND, Result::is_err).unwrap_err();
    arping_settles(&lab, VIP, None);
    lab.ctl(&["nodes", "apply", "n2", "--cluster", CLUSTER]);
    lab.wait_owner(VIP, 5 * SECOND, |o| o.as_deref() == Ok("n2"))
        .unwrap();

    // Two Services share 192.168.1.241 with endpoints on different nodes: one node announces.
    for (name, port, node) in [("dns-tcp", "tcp/53", "n1"), ("dns-udp", "udp/53", "n3")] {
        lab.ctl(&[
            "allocate",
            "--cluster",
            CLUSTER,
            "--namespace",
            "default",
            "--name",
            name,
            "--ip",
            "192.168.1.241",
            "--sharing-key",
            "dns",
            "--port",
            port,
        ]);
        lab.set_endpoints(name, &[node], true);
    }
    let shared = lab
        .wait_owner("192.168.1.241", 5 * SECOND, Result::is_ok)
        .unwrap();
    let macs = arping_macs(&lab, "192.168.1.241", "4");
    assert_eq!(macs.len(), 4, "{macs:?}");
    assert!(
        macs.iter().all(|m| m == mac(&shared)),
        "{macs:?} for {shared}"
    );
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let lab = HomeLab::up("mf", Options::default());
    lab.serve_home_nginx(&NODES, false);
    let owner = lab.wait_owner(VIP, 5 * SECOND, Result::is_ok).unwrap();
    let malformed =
        |node: &str| lab.announcer_metric(node, "ferrolb_announcer_malformed_frames_total");
    let before = malformed(&owner);
    let sender = ferrolb_e2e::bin("lab-malformed");
    let sent: u64 = lab
        .must("client", &[&sender.to_string_lossy(), "eth0"])
        .trim()
        .parse()
        .unwrap();
    let start = std::time::Instant::now();
    while malformed(&owner) < before + sent {
        assert!(
            start.elapsed() < 5 * SECOND,
            "{} of {sent} counted",
            malformed(&owner) - before
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still answering, and counting what it hears.
    arping_settles(&lab, VIP, Some(&owner));
    assert!(lab.announcer_metric(&owner, "ferrolb_announcer_arp_requests_received_total") > 0);
    assert_eq!(
        lab.announcer_metric(&owner, "ferrolb_announcer_addresses_announced"),
        1
    );
    assert_eq!(
        lab.announcer_metric(&owner, "ferrolb_announcer_stream_connected"),
        1
    );
}

/// MetalLB's walk-through, typed into the real kubectl against the lab's API server, with the
/// real adapter (its webhook registered by the install file), allocator and announcers:
/// `kubectl expose` leaves the Service `<pending>` while there is no pool, the walk-through's two
/// files turn it into 192.168.1.240, `kubectl get ipaddresspools` prints MetalLB's columns, and
/// the client's curl gets the page. Where it is announced follows the announcers.
#[test]
fn metallbs_walk_through_in_kubectl_answers_on_the_lan() {
    let mut lab = HomeLab::up("kb", Options::default());
    let mut kube = lab.start_kube_empty();
    let kubectl = |args: &[&str]| {
        let (ok, out) = lab.kubectl(args);
        assert!(ok, "kubectl {args:?}: {out}\n{}", lab.logs());
        out
    };
    let install = format!(
        "{}/../deploy/ferrolb-native.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = kubectl(&["apply", "-f", &install]);
    assert!(
        out.contains("validatingwebhookconfiguration.admissionregistration.k8s.io/ferrolb-webhook-configuration created"),
        "{out}"
    );
    let _adapter =
        ferrolb_e2e::Process(lab.start_adapter_with(&["--webhook-listen", "127.0.0.1:443"]));
    lab.wait_webhook(&mut kube);

    kubectl(&["create", "deployment", "nginx", "--image=nginx"]);
    let out = kubectl(&[
        "expose",
        "deployment",
        "nginx",
        "--type=LoadBalancer",
        "--port=80",
    ]);
    assert_eq!(out.trim(), "service/nginx exposed");
    lab.write_endpoints(&mut kube, "nginx", &NODES);
    // `kubectl get svc`'s row for nginx: NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE.
    let row = |out: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with("nginx "))
            .unwrap_or_else(|| panic!("no nginx in {out}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let get_svc = || kubectl(&["get", "svc"]);
    // No pool yet: the adapter has tried the Service, said why it failed, and left it pending.
    let start = std::time::Instant::now();
    while !kube
        .list("/apis/events.k8s.io/v1/events")
        .iter()
        .any(|e| e["regarding"]["name"] == "nginx" && e["reason"] == "AllocationFailed")
    {
        assert!(start.elapsed() < 10 * SECOND, "{}", lab.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = get_svc();
    assert!(out.starts_with("NAME "), "{out}");
    let pending = row(&out);
    assert_eq!(
        pending[1..4],
        ["LoadBalancer", pending[2].as_str(), "<pending>"],
        "{out}"
    );
    assert!(
        pending[4].starts_with("80:") && pending[4].ends_with("/TCP"),
        "{out}"
    );

    let scenarios = ferrolb_e2e::home::scenarios();
    let out = kubectl(&[
        "apply",
        "-f",
        &scenarios.join("ip-pool.yaml").to_string_lossy(),
    ]);
    assert_eq!(out.trim(), "ipaddresspool.metallb.io/example-pool created");
    let out = kubectl(&[
        "apply",
        "-f",
        &scenarios.join("l2-config.yaml").to_string_lossy(),
    ]);
    assert_eq!(out.trim(), "l2advertisement.metallb.io/example created");
    let start = std::time::Instant::now();
    loop {
        let out = get_svc();
        let r = row(&out);
        if r[3] == VIP {
            assert_eq!(r[..3], pending[..3], "{out}");
            assert_eq!(r[4], pending[4], "{out}");
            break;
        }
        assert!(start.elapsed() < 20 * SECOND, "{out}\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = kubectl(&["get", "ipaddresspools", "-n", "metallb-system"]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "AUTO",
            "ASSIGN",
            "AVOID",
            "BUGGY",
            "IPS",
            "ADDRESSES"
        ],
        "{out}"
    );
    assert_eq!(
        lines[1],
        [
            "example-pool",
            "true",
            "false",
            "[\"192.168.1.240-192.168.1.250\"]"
        ],
        "{out}"
    );

    let owner = lab.wait_owner(VIP, 10 * SECOND, Result::is_ok).unwrap();
    assert_eq!(lab.curl_until(VIP, 10 * SECOND, |_| true), owner);
    arping_settles(&lab, VIP, Some(&owner));
    // MetalLB's speaker metrics, by address: the client's requests (the kernel answered them)
    // and the announcement.
    let metric = |name: &str| lab.announcer_metric(&owner, &format!("{name}{{ip=\"{VIP}\"}}"));
    assert!(metric("metallb_layer2_requests_received") >= 1);
    assert!(metric("metallb_layer2_gratuitous_sent") >= 1);
    // Where it is announced, as `kubectl get servicel2statuses -A` shows it.
    let st = l2_status_names(&mut kube, "nginx", &owner, 10 * SECOND);
    assert_eq!(st["metadata"]["labels"]["metallb.io/service-name"], "nginx");
    // The status follows the allocator's announcements as they change: after the owner's
    // announcer dies, the object names the node that took over, within a couple of seconds.
    lab.kill_announcer(&owner);
    let next = lab
        .wait_owner(VIP, 10 * SECOND, |o| o.as_ref().is_ok_and(|n| *n != owner))
        .unwrap();
    l2_status_names(&mut kube, "nginx", &next, 3 * SECOND);
    // The allocator timed the failover: from the dead stream to the new node's report.
    let metrics = lab.must("router", &["curl", "-s", "http://10.250.0.1:7471/metrics"]);
    assert!(
        metrics.contains("ferrolb_allocator_failover_seconds_count{reason=\"stream_ended\"} 1"),
        "{metrics}"
    );
    // And the Service's events tell both, in MetalLB's words.
    let notes = |kube: &mut ferrolb_e2e::home::LabKube| -> Vec<String> {
        kube.list("/apis/events.k8s.io/v1/events")
            .iter()
            .filter(|e| e["regarding"]["name"] == "nginx" && e["reason"] == "nodeAssigned")
            .map(|e| e["note"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let first = format!("announcing from node \"{owner}\" with protocol \"layer2\"");
    // The move says why, and how long the address was dark, as the allocator timed it.
    let moved = format!(
        "announcing from node \"{next}\" with protocol \"layer2\", after node \"{owner}\" (stream_ended: "
    );
    let told = |notes: &[String]| {
        notes.contains(&first)
            && notes.iter().any(|n| {
                n.strip_prefix(&moved)
                    .and_then(|rest| rest.strip_suffix(" ms without an announcer)"))
                    .is_some_and(|ms| ms.parse::<u32>().is_ok())
            })
    };
    let start = std::time::Instant::now();
    while !told(&notes(&mut kube)) {
        assert!(start.elapsed() < 5 * SECOND, "{:?}", notes(&mut kube));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the ServiceL2Status of Service `default/<service>` names `node`; returns it.
fn l2_status_names(
    kube: &mut ferrolb_e2e::home::LabKube,
    service: &str,
    node: &str,
    within: Duration,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let st = kube.get(
            "/apis/metallb.io/v1beta1/servicel2statuses",
            "metallb-system",
            &format!("l2-default-{service}"),
        );
        if st["status"]["node"] == node {
            return st;
        }
        assert!(
            start.elapsed() < within,
            "the ServiceL2Status does not name {node}: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The credentials deploy/base/announcer.yaml gives the announcer's container, as a container
/// runtime applies them: the user, no supplementary groups, the bounding set cut to the added
/// capabilities, no inheritable or ambient capabilities, no_new_privs. Returns the `setpriv`
/// command that runs a program under them.
fn daemonset_credentials() -> Vec<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/announcer.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let ds: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let uid = sc["runAsUser"]
        .as_u64()
        .expect("the announcer's securityContext names its user");
    let drop = sc["capabilities"]["drop"].as_sequence().unwrap();
    assert_eq!(drop, &vec![serde_yaml::Value::from("ALL")]);
    let add: Vec<String> = sc["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| format!("+{}", c.as_str().unwrap().to_lowercase()))
        .collect();
    let mut cmd = vec![
        "setpriv".to_string(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        format!("--bounding-set=-all,{}", add.join(",")),
    ];
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        cmd.push("--no-new-privs".into());
    }
    cmd.push("--".into());
    cmd
}

/// The capabilities a process holds in effect, from /proc, once it runs the announcer (it
/// starts as `ip netns exec`, then `setpriv`, each replacing itself).
fn effective_caps(pid: u32) -> u64 {
    let start = std::time::Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim()
        != "ferrolb-announc"
    {
        assert!(
            start.elapsed() < 5 * SECOND,
            "process {pid} never became the announcer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The announcer under exactly the DaemonSet's credentials still makes the address reachable;
/// the same capabilities given to a non-root user (what the manifest used to say) leave nothing
/// in effect.
#[test]
fn the_announcer_works_with_the_daemonsets_credentials() {
    const NET_ADMIN_AND_RAW: u64 = (1 << 12) | (1 << 13);
    let creds = daemonset_credentials();
    // A non-root user with the same added capabilities: none of them in effect.
    let nonroot: Vec<String> = creds
        .iter()
        .map(|a| match a.as_str() {
            a if a.starts_with("--reuid=") => "--reuid=65532".into(),
            a if a.starts_with("--regid=") => "--regid=65532".into(),
            a => a.into(),
        })
        .collect();
    let out = Command::new(&nonroot[0])
        .args(&nonroot[1..])
        .args(["grep", "CapEff", "/proc/self/status"])
        .output()
        .expect("setpriv (util-linux) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0000000000000000"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let lab = HomeLab::up(
        "hc",
        Options {
            announcer_wrapper: creds,
            ..Options::default()
        },
    );
    for n in NODES {
        assert_eq!(
            effective_caps(lab.announcer_pid(n)),
            NET_ADMIN_AND_RAW,
            "{n}'s announcer"
        );
    }
    lab.serve_home_nginx(&NODES, false);
    let owner = lab.wait_owner(VIP, 5 * SECOND, Result::is_ok).unwrap();
    assert_eq!(
        lab.curl_until(VIP, 5 * SECOND, |_| true),
        owner,
        "{}",
        lab.logs()
    );
    let macs = arping_macs(&lab, VIP, "2");
    assert!(
        macs.iter().all(|m| m == mac(&owner)) && !macs.is_empty(),
        "{macs:?}"
    );
}

/// A genuine allocator assigns n1 a loopback, a multicast address and n1's own address (an
/// admin's pool can hold anything): n1 refuses each, counts it by reason, and still announces
/// the ordinary address beside them.
#[test]
fn the_announcer_refuses_what_no_service_may_have() {
    let lab = HomeLab::up("hd", Options::default());
    let file = lab.dir.0.join("odd.yaml");
    std::fs::write(
        &file,
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: odd}\n\
         spec:\n  addresses: [127.0.0.100/32, 224.0.0.100/32, 10.250.0.11/32, 192.168.1.250/32]\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: odd}\n\
         spec:\n  ipAddressPools: [odd]\n",
    )
    .unwrap();
    lab.ctl(&["apply", "-f", &file.to_string_lossy(), "--cluster", CLUSTER]);
    let cases = [
        ("lo", "127.0.0.100", "loopback"),
        ("mc", "224.0.0.100", "multicast"),
        ("own", "10.250.0.11", "node_address"),
    ];
    for (name, ip) in cases
        .iter()
        .map(|(n, ip, _)| (*n, *ip))
        .chain([("ok", "192.168.1.250")])
    {
        lab.ctl(&[
            "allocate",
            "--cluster",
            CLUSTER,
            "--namespace",
            "default",
            "--name",
            name,
            "--pool",
            "odd",
            "--ip",
            ip,
        ]);
        // Endpoints on n1 only, traffic policy Local: n1 is the one to announce each.
        lab.set_endpoints(name, &["n1"], true);
    }
    let start = std::time::Instant::now();
    for (_, _, reason) in cases {
        let metric = format!("ferrolb_announcer_assignments_refused_total{{reason=\"{reason}\"}}");
        while lab.announcer_metric("n1", &metric) == 0 {
            assert!(
                start.elapsed() < 10 * SECOND,
                "n1 did not refuse ({reason})\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(lab.curl_until("192.168.1.250", 5 * SECOND, |_| true), "n1");
    // Only the ordinary address was bound (as /32; the node's own address is /24).
    let bound = lab.must("n1", &["ip", "-o", "addr", "show"]);
    assert!(bound.contains("192.168.1.250/32"), "{bound}");
    for (_, ip, _) in cases {
        assert!(!bound.contains(&format!("{ip}/32")), "{ip} bound: {bound}");
    }
    let log = lab.log("n1");
    assert!(
        log.contains("refused") && log.contains("224.0.0.100"),
        "the refusal names the address:\n{log}"
    );
}

/// The allocator's certificate, key and CA bundle are swapped while the lab serves: the
/// announcers' streams stay open (no reconnect), the client reaches the address throughout, and
/// new handshakes see the new files (a client of a second CA gets in once the bundle holds it).
#[test]
fn certificates_rotate_while_the_lab_serves() {
    use ferrolb_common::pki::{self, LeafSpec, Validity};
    use ferrolb_common::tls::TlsFiles;
    use ferrolb_e2e::pki::{DOMAIN, Pki, args_for};

    let old = ferrolb_e2e::test_pki();
    let dir = ferrolb_e2e::TempDir::new("ferrolb-lab-rotate");
    let server = TlsFiles {
        cert: dir.0.join("allocator.pem"),
        key: dir.0.join("allocator-key.pem"),
        ca: dir.0.join("bundle.pem"),
    };
    let first = old.files("allocator");
    let copy = |from: &std::path::Path, to: &std::path::Path, mode| {
        pki::write_file(to, &std::fs::read_to_string(from).unwrap(), mode).unwrap();
    };
    copy(&first.cert, &server.cert, 0o644);
    copy(&first.key, &server.key, 0o600);
    copy(&old.ca_path(), &server.ca, 0o644);
    let mut allocator_args = args_for(&server);
    allocator_args.extend([
        "--secrets-key-file".into(),
        old.secrets_key().display().to_string(),
    ]);
    let lab = HomeLab::up(
        "hr",
        Options {
            allocator_args,
            ..Options::default()
        },
    );
    lab.serve_home_nginx(&NODES, false);
    let owner = lab.wait_owner(VIP, 5 * SECOND, Result::is_ok).unwrap();
    assert_eq!(lab.curl_until(VIP, 5 * SECOND, |_| true), owner);
    let reconnects = |lab: &HomeLab| -> Vec<u64> {
        NODES
            .iter()
            .map(|n| lab.announcer_metric(n, "ferrolb_announcer_stream_reconnects_total"))
            .collect()
    };
    let before = reconnects(&lab);

    // A new key and certificate for the allocator, and a bundle with a second CA beside the first.
    let new_ca = Pki::named("ferrolb-lab-second-ca", DOMAIN);
    let next = pki::issue(
        &old.ca,
        &LeafSpec {
            principal: &ferrolb_common::Principal::Allocator,
            domain: DOMAIN,
            dns_names: &[],
            ips: &[],
            validity: Validity::for_next(Duration::from_secs(3600)),
        },
    )
    .unwrap();
    pki::write(&dir.0, "allocator", &next).unwrap();
    let bundle = std::fs::read_to_string(old.ca_path()).unwrap()
        + &std::fs::read_to_string(new_ca.ca_path()).unwrap();
    pki::write_file(&server.ca, &bundle, 0o644).unwrap();

    // Through the swap and the reload, the client keeps reaching the address.
    let start = std::time::Instant::now();
    while start.elapsed() < 3 * SECOND {
        assert_eq!(
            lab.curl(VIP).as_deref(),
            Some(owner.as_str()),
            "lost {VIP} during the rotation"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        reconnects(&lab),
        before,
        "an announcer's stream was cut\n{}",
        lab.logs()
    );
    // New handshakes: the old admin still gets in, and so does one of the second CA.
    lab.ctl(&["pools", "list"]);
    let second_admin = TlsFiles {
        ca: old.ca_path(),
        ..new_ca.files("admin")
    };
    let ctl = ferrolb_e2e::bin("ferrolbctl")
        .to_string_lossy()
        .into_owned();
    let args = args_for(&second_admin);
    let mut cmd = vec![ctl.as_str(), "--server", ferrolb_e2e::home::SERVER];
    cmd.extend(args.iter().map(String::as_str));
    cmd.extend(["pools", "list"]);
    let out = lab.lab.run("router", &cmd);
    assert!(
        out.status.success(),
        "a client of the second CA: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lab.log("allocator").contains("reloaded"),
        "{}",
        lab.log("allocator")
    );
}

/// Something else answers at the allocator's address with a valid certificate of the same CA,
/// but not the allocator's identity (the allocator of another trust domain): every announcer
/// refuses it, says why, and keeps announcing what it had.
#[test]
fn announcers_refuse_a_server_that_is_not_the_allocator() {
    use ferrolb_common::pki::{self, LeafSpec, Validity};
    use ferrolb_common::tls::TlsFiles;
    use ferrolb_e2e::pki::args_for;

    let mut lab = HomeLab::up("hi", Options::default());
    lab.serve_home_nginx(&NODES, false);
    let owner = lab.wait_owner(VIP, 5 * SECOND, Result::is_ok).unwrap();
    assert_eq!(lab.curl_until(VIP, 5 * SECOND, |_| true), owner);
    lab.kill_allocator();

    let ca = ferrolb_e2e::test_pki();
    let impostor = pki::issue(
        &ca.ca,
        &LeafSpec {
            principal: &ferrolb_common::Principal::Allocator,
            domain: "other.example",
            dns_names: &[],
            ips: &[],
            validity: Validity::for_next(Duration::from_secs(3600)),
        },
    )
    .unwrap();
    let dir = ferrolb_e2e::TempDir::new("ferrolb-impostor");
    pki::write(&dir.0, "impostor", &impostor).unwrap();
    let (cert, key) = pki::paths(&dir.0, "impostor");
    let mut args = args_for(&TlsFiles {
        cert,
        key,
        ca: ca.ca_path(),
    });
    args.extend([
        "--secrets-key-file".into(),
        ca.secrets_key().display().to_string(),
    ]);
    lab.start_allocator_as(&args);

    let start = std::time::Instant::now();
    for n in NODES {
        while !lab.log(n).contains("spiffe://other.example/allocator") {
            assert!(
                start.elapsed() < 10 * SECOND,
                "{n} did not refuse the impostor\n{}",
                lab.log(n)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            lab.announcer_metric(n, "ferrolb_announcer_stream_connected"),
            0
        );
    }
    // Fail static: what the real allocator assigned is still announced.
    assert_eq!(lab.curl_until(VIP, 5 * SECOND, |_| true), owner);
}

/// An announcer whose layer-2 agent dies (a failure injected by `FERROLB_FAULTS`) does not stay
/// connected to the allocator as if it announced: it exits non-zero and says which part it lost,
/// so that its node's addresses move and the DaemonSet restarts it.
#[test]
fn an_announcer_that_loses_its_layer2_agent_exits() {
    let mut lab = HomeLab::up(
        "hf",
        Options {
            announcer_wrapper: vec!["env".into(), "FERROLB_FAULTS=l2-agent".into()],
            ..Options::default()
        },
    );
    let deadline = std::time::Instant::now() + 10 * SECOND;
    let status = loop {
        if let Some(s) = lab.announcer_exit("n1") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n1's announcer went on without its agent: {}",
            lab.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success(), "exit status {status}");
    let log = lab.log("n1");
    assert!(log.contains("fault injected at l2-agent"), "{log}");
    assert!(log.contains("the layer-2 agent stopped"), "{log}");
}
