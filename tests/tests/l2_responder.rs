//! The announcer's layer-2 responder in the lab, against real clients: arping and ndisc6 resolve
//! the service addresses to the owner's MAC, an address nobody owns stays unanswered, the client
//! kernel's own resolution works, and a gratuitous ARP from a new owner moves the client's
//! neighbour entry.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use ferrolb_e2e::{Lab, bin};

/// Runs the layer-2 responder in `host` of the lab for `addrs`.
fn responder(lab: &Lab, host: &str, addrs: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &format!("{}-{host}", lab.0)])
        .arg(bin("lab-responder"))
        .arg("eth0")
        .args(addrs)
        .spawn()
        .expect("start lab-responder")
}
fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// arping from the client until it answers or `within` passes; the answer's text.
fn arping(lab: &Lab, ip: &str, within: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < within {
        let o = lab.run(
            "client",
            &["arping", "-c", "1", "-w", "1", "-i", "eth0", ip],
        );
        if o.status.success() {
            return Some(text(&o));
        }
    }
    None
}

#[test]
fn responder_answers_real_clients() {
    let lab = Lab::up("l2");
    let mut n1 = responder(&lab, "n1", &["10.250.0.200", "fd00:250::200"]);
    let seen =
        arping(&lab, "10.250.0.200", Duration::from_secs(5)).expect("the address answers ARP");
    assert!(seen.contains("02:fa:00:00:00:11"), "{seen}");
    let nd = lab.run(
        "client",
        &[
            "ndisc6",
            "-1",
            "-r",
            "3",
            "-w",
            "500",
            "fd00:250::200",
            "eth0",
        ],
    );
    assert!(
        text(&nd).contains("02:FA:00:00:00:11"),
        "ndisc6: {}",
        text(&nd)
    );
    // Nobody owns .201: no answer.
    let none = lab.run(
        "client",
        &["arping", "-c", "1", "-w", "1", "-i", "eth0", "10.250.0.201"],
    );
    assert!(!none.status.success(), "{}", text(&none));
    // The client kernel resolves the address itself (the ping is not answered: the address is
    // not bound on n1; it only makes the kernel ask).
    lab.run("client", &["ping", "-c", "1", "-W", "1", "10.250.0.200"]);
    let neigh = lab.run("client", &["ip", "neigh", "show", "10.250.0.200"]);
    assert!(
        text(&neigh).contains("02:fa:00:00:00:11"),
        "{}",
        text(&neigh)
    );

    // n2 takes the address over: its gratuitous ARP moves the client's entry at once.
    n1.kill().unwrap();
    n1.wait().unwrap();
    let mut n2 = responder(&lab, "n2", &["10.250.0.200"]);
    let start = Instant::now();
    let mut moved = false;
    while start.elapsed() < Duration::from_secs(3) && !moved {
        let neigh = lab.run("client", &["ip", "neigh", "show", "10.250.0.200"]);
        moved = text(&neigh).contains("02:fa:00:00:00:12");
        std::thread::sleep(Duration::from_millis(20));
    }
    n2.kill().unwrap();
    n2.wait().unwrap();
    assert!(
        moved,
        "the gratuitous ARP of the new owner did not move the client's neighbour entry"
    );
}
