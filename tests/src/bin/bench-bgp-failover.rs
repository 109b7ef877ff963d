//! `scripts/bench bgp-failover`: in the lab with BIRD as the router, the time from a node's link
//! cut to its path leaving BIRD's table: 20 trials with a BFD profile of 100 ms × 3, beside 20
//! with the hold timer alone (3 s, the lowest common setting), in the same run.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::home::{HomeLab, Options};
use ferrolb_e2e::percentile;
use ferrolb_e2e::routers::{self, Bird};

const TRIALS: usize = 20;
const HOLD: u16 = 3;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// BIRD's BFD sessions that are Up.
fn bfd_up(bird: &Bird) -> usize {
    bird.birdc(&["show", "bfd", "sessions"])
        .lines()
        .filter(|l| l.contains(" Up "))
        .count()
}

fn trials(prefix: &str, bfd: bool) -> Vec<Duration> {
    let lab = HomeLab::up(if bfd { "gb" } else { "gh" }, Options::default());
    let (bird, route) = routers::three_node_bgp(&lab, HOLD, bfd.then_some(100));
    let mut took = Vec::new();
    for i in 0..TRIALS {
        if bfd {
            let start = Instant::now();
            while bfd_up(&bird) < 3 {
                assert!(start.elapsed() < Duration::from_secs(20), "BFD not up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Not right after a keepalive or a BFD packet, on average.
        std::thread::sleep(Duration::from_millis(200 + (i as u64 * 37) % 500));
        let cut = Instant::now();
        lab.must("n1", &["ip", "link", "set", "eth0", "down"]);
        routers::wait_via(&bird, &route, &["n2", "n3"], Duration::from_secs(15));
        let t = cut.elapsed();
        eprintln!("{prefix} {i:>2}: n1's path gone after {:.0} ms", ms(t));
        took.push(t);
        lab.must("n1", &["ip", "link", "set", "eth0", "up"]);
        routers::wait_via(&bird, &route, &["n1", "n2", "n3"], Duration::from_secs(30));
    }
    took.sort();
    took
}

fn main() {
    let with_bfd = trials("bfd ", true);
    let hold = trials("hold", false);
    println!(
        "{:<40} {:>8} {:>8} {:>8}",
        "link cut to path withdrawn at BIRD", "p50 ms", "p99 ms", "max ms"
    );
    for (what, v) in [
        ("BFD 100 ms x 3", &with_bfd),
        ("hold timer alone (3 s)", &hold),
    ] {
        println!(
            "{what:<40} {:>8.0} {:>8.0} {:>8.0}",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(*v.last().unwrap())
        );
    }
    println!(
        "RESULT bgp-failover bfd_p99_ms={:.0} hold_p99_ms={:.0}",
        ms(percentile(&with_bfd, 99.0)),
        ms(percentile(&hold, 99.0)),
    );
}
