//! `scripts/bench arp-latency`: the client's ARP (arping) and neighbor solicitation
//! (lab-nd-ping) round trips to a service address, beside the same to the owner node's own
//! address answered by its kernel, in the same lab and run. Measured with the announcer's
//! default answerer (the kernel, for bound addresses) and with its userspace responder
//! (MetalLB's way), both IPv4 and IPv6. The RESULT ratio is the default's worse family.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrolb_e2e::bin;
use ferrolb_e2e::home::{HomeLab, NODES, Options, VIP, node_address};

const PROBES: &str = "300";

/// Round trips in microseconds, sorted, from "time=… usec" lines.
fn times(text: &str) -> Vec<f64> {
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
    v.sort_by(f64::total_cmp);
    v
}

fn probe(lab: &HomeLab, ip: &str) -> Vec<f64> {
    let out = if ip.contains(':') {
        let nd = bin("lab-nd-ping").to_string_lossy().into_owned();
        lab.lab
            .run("client", &[&nd, "eth0", "fd00:250::100", ip, PROBES])
    } else {
        lab.lab.run(
            "client",
            &["arping", "-c", PROBES, "-W", "0.005", "-i", "eth0", ip],
        )
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = times(&text);
    assert!(v.len() > 250, "too few answers from {ip}: {text}");
    v
}

fn median(v: &[f64]) -> f64 {
    v[v.len() / 2]
}

fn p99(v: &[f64]) -> f64 {
    v[v.len() * 99 / 100]
}

/// (IPv4 ratio, IPv6 ratio) of one answerer, printing the rows.
fn measure(answerer: &'static str) -> (f64, f64) {
    let lab = HomeLab::up(
        "ab",
        Options {
            answerer,
            ..Options::default()
        },
    );
    lab.serve_home_nginx(&NODES, false);
    let v6 = lab.serve_v6();
    let ok = |o: &Result<String, String>| o.is_ok();
    let owner4 = lab.wait_owner(VIP, Duration::from_secs(10), ok).unwrap();
    let owner6 = lab.wait_owner(&v6, Duration::from_secs(10), ok).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let n4 = node_address(&owner4);
    let n6 = format!("fd00:250::{}", 10 + owner6[1..].parse::<u32>().unwrap());
    let mut ratios = vec![];
    for (family, node, vip) in [("IPv4", n4, VIP.to_string()), ("IPv6", n6, v6)] {
        let kernel = probe(&lab, &node);
        let service = probe(&lab, &vip);
        for (what, v) in [
            (format!("{family} node address (kernel)"), &kernel),
            (format!("{family} service address ({answerer})"), &service),
        ] {
            println!("{what:<40} {:>10.1} {:>10.1}", median(v), p99(v));
        }
        ratios.push(median(&service) / median(&kernel));
    }
    (ratios[0], ratios[1])
}

fn main() {
    println!("{:<40} {:>10} {:>10}", "round trip", "p50 µs", "p99 µs");
    let (k4, k6) = measure("kernel");
    let (u4, u6) = measure("userspace");
    println!(
        "ratios service/node: kernel answerer IPv4 {k4:.2} IPv6 {k6:.2}; userspace IPv4 {u4:.2} IPv6 {u6:.2}"
    );
    println!(
        "RESULT arp-latency ratio_vip_vs_kernel={:.2} ipv4={k4:.2} ipv6={k6:.2} userspace_ipv4={u4:.2} userspace_ipv6={u6:.2}",
        k4.max(k6)
    );
}
