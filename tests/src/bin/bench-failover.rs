//! `scripts/bench failover`: how long the client of a layer-2 address is without service when
//! its announcing node fails, in the home lab. Two faults, 20 trials each: the owner's announcer
//! gets SIGKILL, and the owner's link is cut (`ip link set eth0 down`). The time runs from the
//! fault to the client's first HTTP answer through the new owner (lab-probe, polling every few
//! milliseconds). Baseline of the same run: the probe's own time to a first answer when nothing
//! fails (process start and first connection).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use ferrolb_e2e::home::{HomeLab, NODES, Options, VIP};
use ferrolb_e2e::{percentile, plot};

const TRIALS: usize = 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits until `node` owns the address again and serves the client.
fn settle(lab: &HomeLab, node: &str) {
    lab.wait_owner(VIP, Duration::from_secs(20), |o| o.as_deref() == Ok(node))
        .unwrap();
    lab.curl_until(VIP, Duration::from_secs(20), |n| n == node);
    // Let the gratuitous period of the last move run out, as on a quiet network.
    std::thread::sleep(Duration::from_millis(300));
}

fn main() {
    let mut lab = HomeLab::up("bf", Options::default());
    lab.serve_home_nginx(&NODES, false);
    let owner = lab
        .wait_owner(VIP, Duration::from_secs(10), Result::is_ok)
        .unwrap();
    settle(&lab, &owner);

    // The client asking all along, for the picture.
    let timeline = lab.timeline(VIP);
    let mut faults = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..TRIALS {
        baseline.push(lab.failover(VIP, "nobody", || {}).0);
    }

    let mut crash = Vec::new();
    for i in 0..TRIALS {
        let pid = lab.announcer_pid(&owner).to_string();
        let mut at = 0;
        let (took, next) = lab.failover(VIP, &owner, || {
            at = plot::unix_micros();
            Command::new("kill").args(["-9", &pid]).status().unwrap();
        });
        eprintln!("crash {i:>2}: {owner} -> {next} in {:.0} ms", ms(took));
        crash.push(took);
        faults.push(plot::Fault {
            at_us: at,
            what: "kill".into(),
            gap: took,
        });
        lab.kill_announcer(&owner);
        lab.start_announcer(&owner);
        settle(&lab, &owner);
    }

    let mut linkdown = Vec::new();
    for i in 0..TRIALS {
        let mut at = 0;
        let (took, next) = lab.failover(VIP, &owner, || {
            at = plot::unix_micros();
            lab.must(&owner, &["ip", "link", "set", "eth0", "down"]);
        });
        eprintln!("link  {i:>2}: {owner} -> {next} in {:.0} ms", ms(took));
        linkdown.push(took);
        faults.push(plot::Fault {
            at_us: at,
            what: "cut".into(),
            gap: took,
        });
        lab.must(&owner, &["ip", "link", "set", "eth0", "up"]);
        settle(&lab, &owner);
    }

    let picture = plot::picture_path("bench-failover.svg");
    plot::timeline(
        &picture,
        &format!("the client's requests to {VIP}: {TRIALS} announcer kills, then {TRIALS} link cuts of {owner}"),
        &NODES,
        &timeline.stop(),
        &faults,
    )
    .unwrap();
    println!("picture of the client's view: {}", picture.display());
    for v in [&mut baseline, &mut crash, &mut linkdown] {
        v.sort();
    }
    println!(
        "{:<44} {:>8} {:>8} {:>8}",
        "time to first answer", "p50 ms", "p99 ms", "max ms"
    );
    for (what, v) in [
        ("baseline: no fault (probe start, connect)", &baseline),
        ("announcer SIGKILL", &crash),
        ("link cut", &linkdown),
    ] {
        println!(
            "{what:<44} {:>8.0} {:>8.0} {:>8.0}",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(*v.last().unwrap())
        );
    }
    println!(
        "RESULT failover crash_p50_ms={:.0} crash_p99_ms={:.0} linkdown_p50_ms={:.0} linkdown_p99_ms={:.0} baseline_p50_ms={:.0}",
        ms(percentile(&crash, 50.0)),
        ms(percentile(&crash, 99.0)),
        ms(percentile(&linkdown, 50.0)),
        ms(percentile(&linkdown, 99.0)),
        ms(percentile(&baseline, 50.0)),
    );
}
