//! The network lab (`scripts/lab`): built in namespaces of its own, hosts reach each other over
//! IPv4 and IPv6 with the fixed MACs, a second `up` is refused, and `down` leaves nothing behind,
//! even with processes still running inside.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use ferrolb_e2e::{Lab, lab};

fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

#[test]
fn lab_comes_up_and_goes_away() {
    let guard = Lab::up("lt");
    let name = guard.0.clone();
    assert_eq!(namespaces(&format!("{name}-")).len(), 6);
    for target in ["10.250.0.11", "fd00:250::13"] {
        let ping = guard.run("client", &["ping", "-c1", "-W2", target]);
        assert!(
            ping.status.success(),
            "ping {target}: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }
    let neigh = guard.run("client", &["ip", "neigh", "show", "10.250.0.11"]);
    assert!(String::from_utf8_lossy(&neigh.stdout).contains("02:fa:00:00:00:11"));
    let again = lab(&["up", &name]);
    assert!(!again.status.success(), "a second up must be refused");
    // A process left running inside must not keep the lab alive.
    let sleeper = Command::new("ip")
        .args(["netns", "exec", &format!("{name}-n1"), "sleep", "300"])
        .spawn()
        .unwrap();
    drop(guard);
    assert!(
        namespaces(&format!("{name}-")).is_empty(),
        "namespaces left behind"
    );
    let mut sleeper = sleeper;
    assert!(sleeper.wait().is_ok());
}

/// `scripts/demo`, the README's first command, runs both scenarios to their end and leaves no
/// namespace behind.
#[test]
fn the_demo_runs_to_its_end() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("scripts/demo"))
        .env("FERROLB_DEMO_PREBUILT", "1")
        .output()
        .expect("run scripts/demo");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("served by"), "{text}");
    // The walk-through's story, typed into kubectl: <pending>, then the address.
    let pending = text
        .find("<pending>")
        .expect("kubectl get svc showed <pending>");
    let applied = text
        .find("ipaddresspool.metallb.io/example-pool created")
        .expect("ip-pool.yaml applied");
    let served = text
        .find("192.168.1.240   80:")
        .expect("kubectl get svc showed 192.168.1.240");
    assert!(pending < applied && applied < served, "{text}");
    assert!(
        text.contains("denied the request: IPAddressPool \"more-ips\""),
        "{text}"
    );
    // `ferrolbctl history` timed it. The node's processes die and its link goes down at once,
    // so the allocator sees whichever comes first: the stream's end or the missing heartbeats.
    assert!(
        text.lines().any(|l| l.contains(" 192.168.1.240 ")
            && (l.contains(" stream_ended ") || l.contains(" heartbeats_stopped "))
            && l.ends_with(" ms")),
        "{text}"
    );
    // `ferrolbctl announcements --watch` saw the address move off the dead node.
    assert!(
        text.lines().any(|l| l.contains(" 192.168.1.240 n1 -> n")
            || l.contains(" 192.168.1.240 n2 -> n")
            || l.contains(" 192.168.1.240 n3 -> n")),
        "{text}"
    );
    assert!(
        text.contains("demo done: nginx got 192.168.1.240; it answered from"),
        "{text}"
    );
    // The company scenario: the /32 over the two live nodes, one ECMP route at the router.
    assert!(
        text.contains("10.100.50.1/32 is routed over") && text.matches("nexthop via").count() == 2,
        "{text}"
    );
    assert!(
        namespaces("demo").is_empty(),
        "the demo left namespaces behind"
    );
}
