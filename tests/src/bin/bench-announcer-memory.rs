//! `scripts/bench announcer-memory`: one announcer's resident memory while it announces nothing,
//! then with 10,000 addresses (each bound to its interface, the kernel answering), in the home
//! lab. The leases and their endpoints are made through the API by this program, run again
//! inside the lab's router namespace with `--load URL COUNT`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::home::{CLUSTER, HomeLab, Options, load_bulk};
use ferrolb_e2e::rss_mib;

const ADDRESSES: usize = 10_000;

fn announced(lab: &HomeLab) -> usize {
    lab.announcer_metric("n1", "ferrolb_announcer_addresses_announced") as usize
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        load_bulk(&args[2], args[3].parse().unwrap());
        return;
    }
    let mut lab = HomeLab::up("am", Options::default());
    lab.kill_announcer("n2");
    lab.kill_announcer("n3");
    let file = lab.dir.0.join("bulk.yaml");
    std::fs::write(
        &file,
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: bulk}\n\
         spec:\n  addresses: [10.200.0.0/18]\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: bulk}\n\
         spec:\n  ipAddressPools: [bulk]\n",
    )
    .unwrap();
    lab.ctl(&["apply", "-f", &file.to_string_lossy(), "--cluster", CLUSTER]);
    std::thread::sleep(Duration::from_secs(1));
    let pid = lab.announcer_pid("n1");
    let idle = rss_mib(pid);

    let start = Instant::now();
    lab.load_bulk("bench-announcer-memory", ADDRESSES);
    let loaded = start.elapsed();
    while announced(&lab) < ADDRESSES {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "n1 announces {} of {ADDRESSES}\n{}",
            announced(&lab),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = start.elapsed();
    let bound = lab
        .must("n1", &["ip", "-4", "addr", "show", "dev", "eth0"])
        .matches("inet 10.200.")
        .count();
    let full = rss_mib(pid);
    println!(
        "leases and endpoints made in {:.1} s; n1 announced all {ADDRESSES} after {:.1} s; {bound} bound on eth0",
        loaded.as_secs_f64(),
        all.as_secs_f64()
    );
    println!(
        "announcer RSS: {idle:.1} MiB announcing nothing, {full:.1} MiB with {ADDRESSES} addresses"
    );
    println!(
        "RESULT announcer-memory rss_mib_idle={idle:.1} rss_mib_{ADDRESSES}={full:.1} ratio={:.2}",
        full / idle
    );
}
