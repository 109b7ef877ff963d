//! The announcer's BFD against BIRD 2's (`protocol bfd`) in the lab: a single-hop session from
//! node n1 to the router comes up with the profile's timers, and the router finds the node gone
//! within the detection time (3 × 100 ms, plus a margin) when its link is cut and when its BFD
//! process is killed. Needs root (the lab) and BIRD (`scripts/test` installs it).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::home::{HomeLab, Options};
use ferrolb_e2e::routers::{self, Bird};

const BIRD_BFD: &str = r#"
router id 10.250.0.1;
log stderr all;
protocol device { }
protocol bfd {
  interface "*" { interval 100 ms; multiplier 3; };
  neighbor 10.250.0.11 local 10.250.0.1;
}
"#;

/// The state BIRD shows for its session to n1 ("Up", "Down", "Init", …).
fn bird_state(bird: &Bird) -> String {
    let out = bird.birdc(&["show", "bfd", "sessions"]);
    out.lines()
        .find(|l| l.trim_start().starts_with("10.250.0.11"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_default()
        .to_string()
}

fn wait_bird(bird: &Bird, state: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if bird_state(bird) == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "BIRD's session not {state} after {within:?}: {}",
            bird.birdc(&["show", "bfd", "sessions"])
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_bfd(lab: &HomeLab) -> ferrolb_e2e::Process {
    ferrolb_e2e::Process(lab.spawn(
        "n1",
        &ferrolb_e2e::bin("lab-bfd").to_string_lossy(),
        &["10.250.0.11", "10.250.0.1", "100"],
        "bfd-n1",
    ))
}

#[test]
fn bfd_sessions_with_bird_come_up_and_a_lost_node_is_detected_within_the_detection_time() {
    let lab = HomeLab::up("bf", Options::default());
    let bird = Bird::start(&lab, BIRD_BFD);
    let bfd = start_bfd(&lab);
    wait_bird(&bird, "Up", Duration::from_secs(10));
    let start = Instant::now();
    while !lab.log("bfd-n1").contains("Up None") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            lab.log("bfd-n1")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The profile's timers are what BIRD runs: 100 ms, a 300 ms timeout.
    let shown = bird.birdc(&["show", "bfd", "sessions"]);
    assert!(
        shown.contains("0.100") && shown.contains("0.300"),
        "{shown}"
    );

    // The node's link goes down: BIRD's session is Down within 300 ms and a margin (the 10 ms
    // polling of birdc and its own start).
    let cut = Instant::now();
    lab.must("n1", &["ip", "link", "set", "eth0", "down"]);
    wait_bird(&bird, "Down", Duration::from_secs(2));
    let took = cut.elapsed();
    eprintln!("link cut: BIRD's session down after {took:?}");
    assert!(
        took <= Duration::from_millis(450),
        "link cut seen after {took:?}"
    );
    lab.must("n1", &["ip", "link", "set", "eth0", "up"]);
    wait_bird(&bird, "Up", Duration::from_secs(10));

    // The process dies: likewise.
    let killed = Instant::now();
    drop(bfd);
    wait_bird(&bird, "Down", Duration::from_secs(2));
    let took = killed.elapsed();
    eprintln!("process killed: BIRD's session down after {took:?}");
    assert!(
        took <= Duration::from_millis(450),
        "kill seen after {took:?}"
    );
}

#[test]
fn a_bgp_peer_with_a_bfd_profile_loses_a_cut_nodes_path_within_the_detection_time() {
    let lab = HomeLab::up("bb", Options::default());
    let (bird, prefix) = routers::three_node_bgp(&lab, 9, Some(100));
    // Each node's BFD session runs the profile's timers with BIRD's.
    let start = Instant::now();
    loop {
        let shown = bird.birdc(&["show", "bfd", "sessions"]);
        let up = shown.lines().filter(|l| l.contains(" Up ")).count();
        if up == 3 && shown.contains("0.300") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{shown}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // n1's link is cut: BFD takes its BGP session, and the path, down within 3 × 100 ms and a
    // margin; the hold timer (9 s) alone would take seconds.
    let cut = Instant::now();
    lab.must("n1", &["ip", "link", "set", "eth0", "down"]);
    routers::wait_via(&bird, &prefix, &["n2", "n3"], Duration::from_secs(5));
    let took = cut.elapsed();
    eprintln!("link cut: n1's path gone after {took:?}");
    assert!(
        took <= Duration::from_millis(600),
        "path gone after {took:?}"
    );

    // The link back: BFD, then BGP, come up again and the path returns.
    lab.must("n1", &["ip", "link", "set", "eth0", "up"]);
    routers::wait_via(&bird, &prefix, &["n1", "n2", "n3"], Duration::from_secs(20));
    // (Its counters may have started over: a node without a live link loses its BGP sessions at
    // the allocator, and gets them back, with a new BFD session, when the link returns.)
    let metrics = lab.must("router", &["curl", "-s", "http://10.250.0.11:7472/metrics"]);
    for want in [
        "metallb_bfd_session_up{peer=\"10.250.0.1\"} 1",
        "metallb_bfd_session_up_events_total{peer=\"10.250.0.1\"} ",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
}
