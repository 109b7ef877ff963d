//! `scripts/bench arp-latency`: the client's arping round trip to a service address answered by
//! the announcer's userspace responder, beside the same to a node's own address answered by its
//! kernel, in the same lab and run. IPv4 only so far (ndisc6 prints no round-trip time).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use ferrolb_e2e::{Lab, bin};

const PROBES: &str = "200";

/// Round trips in microseconds, sorted, from Habets arping's "time=… usec" lines.
fn probe(lab: &Lab, ip: &str) -> Vec<f64> {
    let out = lab.run(
        "client",
        &["arping", "-c", PROBES, "-W", "0.005", "-i", "eth0", ip],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let t = l.split("time=").nth(1)?;
            let mut parts = t.split_whitespace();
            let n: f64 = parts.next()?.parse().ok()?;
            Some(match parts.next()? {
                "msec" => n * 1000.0,
                "sec" => n * 1e6,
                _ => n,
            })
        })
        .collect();
    assert!(v.len() > 100, "too few answers from {ip}: {text}");
    v.sort_by(f64::total_cmp);
    v
}

fn main() {
    let lab = Lab::up("ab");
    let mut responder = Command::new("ip")
        .args(["netns", "exec", &format!("{}-n1", lab.0)])
        .arg(bin("lab-responder"))
        .args(["eth0", "10.250.0.200"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let kernel = probe(&lab, "10.250.0.11");
    let vip = probe(&lab, "10.250.0.200");
    let _ = responder.kill();
    let _ = responder.wait();
    let median = |v: &[f64]| v[v.len() / 2];
    let p99 = |v: &[f64]| v[v.len() * 99 / 100];
    println!(
        "{:<34} {:>10} {:>10}",
        "arping round trip (IPv4)", "p50 µs", "p99 µs"
    );
    println!(
        "{:<34} {:>10.1} {:>10.1}",
        "node address, kernel answers",
        median(&kernel),
        p99(&kernel)
    );
    println!(
        "{:<34} {:>10.1} {:>10.1}",
        "service address, userspace answers",
        median(&vip),
        p99(&vip)
    );
    println!(
        "RESULT arp-latency ratio_vip_vs_kernel={:.2}",
        median(&vip) / median(&kernel)
    );
}
