//! `scripts/bench tls`: what mutual TLS costs the allocator. Two allocators on one PostgreSQL,
//! one with mutual TLS (the default) and one in the development plaintext mode, take turns
//! allocating with 32 concurrent clients; each client connects once, so handshakes happen only at
//! connect. The figure is the median over the turns of the ratio of their rates, each turn one
//! run of each back to back, so that the machine's noise falls on both alike.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use ferrolb_e2e::{Allocator, PgDb, allocate_many, apply, client, percentile, pool, service};
use ferrolb_proto::v1 as pb;

const CLIENTS: usize = 32;
/// Allocations per run.
const PER_TURN: usize = 3000;
const TURNS: usize = 7;

#[tokio::main]
async fn main() {
    let db = PgDb::new();
    let tls = Allocator::start(Some(&db.url), &["--max-in-flight", "4096"]);
    let plain = Allocator::start(
        Some(&db.url),
        &["--max-in-flight", "4096", "--dev-plaintext"],
    );
    let mut admin = client(&tls.url(), "admin").await;
    apply(&mut admin, pool("bench", &["10.64.0.0/12"])).await;
    for (name, a) in [("tls", &tls), ("plain", &plain)] {
        allocate_many(&a.url(), 300, 8, move |i| pb::AllocateRequest {
            owner: Some(service("bench", &format!("warm-{name}"), &format!("s{i}"))),
            ..Default::default()
        })
        .await;
    }
    println!(
        "{:>5} {:>6} {:>10} {:>8} {:>8}",
        "turn", "mode", "allocs/s", "p50 ms", "p99 ms"
    );
    let (mut rate_tls, mut rate_plain) = (0.0, 0.0);
    let mut ratios = Vec::new();
    for turn in 0..TURNS {
        let mut pair = [0.0f64; 2];
        for (name, a) in [("plain", &plain), ("tls", &tls)] {
            let start = Instant::now();
            let lat = allocate_many(&a.url(), PER_TURN, CLIENTS, move |i| pb::AllocateRequest {
                owner: Some(service(
                    "bench",
                    &format!("{name}-{turn}"),
                    &format!("s{i}"),
                )),
                ..Default::default()
            })
            .await;
            let rate = PER_TURN as f64 / start.elapsed().as_secs_f64();
            let ms = |p| percentile(&lat, p).as_secs_f64() * 1000.0;
            println!(
                "{turn:>5} {name:>6} {rate:>10.0} {:>8.2} {:>8.2}",
                ms(50.0),
                ms(99.0)
            );
            if name == "tls" {
                rate_tls += rate;
                pair[1] = rate;
            } else {
                rate_plain += rate;
                pair[0] = rate;
            }
        }
        ratios.push(pair[1] / pair[0]);
    }
    ratios.sort_by(f64::total_cmp);
    let n = TURNS as f64;
    println!(
        "RESULT tls ratio_tls_vs_plain_32={:.2} allocs_per_s_tls_32={:.0} allocs_per_s_plain_32={:.0}",
        ratios[TURNS / 2],
        rate_tls / n,
        rate_plain / n
    );
}
