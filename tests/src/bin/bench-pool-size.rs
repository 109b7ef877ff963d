//! `scripts/bench pool-size`: time per allocation in an IPv4 /24 pool against an IPv6 /48 pool,
//! each already holding 10,000 leases, measured alternately in the same run; and in a /48 whose
//! 10,000 leases each hold their own address (one long run of used addresses).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::{
    Allocator, Client, PgDb, allocate_many, apply, client, percentile, pool, service,
};
use ferrolb_proto::v1 as pb;

const LEASES: usize = 10_000;
/// A /24 holds 10,000 leases only with sharing: 250 addresses, 40 services on each.
const SHARERS: usize = 40;
const SAMPLES: usize = 1500;

fn shared(pool: &'static str, i: usize) -> pb::AllocateRequest {
    pb::AllocateRequest {
        owner: Some(service("bench", pool, &format!("s{i}"))),
        pool: pool.into(),
        sharing_key: format!("group{}", i / SHARERS),
        ports: vec![pb::Port {
            protocol: pb::Protocol::Tcp as i32,
            port: 1000 + (i % SHARERS) as u32,
        }],
        primary_family: if pool.starts_with("v6") { 2 } else { 1 },
        ..Default::default()
    }
}

/// One allocation of a new exclusive lease in `pool`, timed, then its release.
async fn sample(c: &mut Client, pool: &str, family: i32, i: usize) -> Duration {
    let owner = service("bench", "probe", &format!("{pool}-{i}"));
    let start = Instant::now();
    c.allocate(pb::AllocateRequest {
        owner: Some(owner.clone()),
        pool: pool.into(),
        primary_family: family,
        ..Default::default()
    })
    .await
    .unwrap();
    let took = start.elapsed();
    c.release(pb::ReleaseRequest { owner: Some(owner) })
        .await
        .unwrap();
    took
}

#[tokio::main]
async fn main() {
    let db = PgDb::new();
    let a = Allocator::start(Some(&db.url), &["--max-in-flight", "4096"]);
    let mut admin = client(&a.url(), "admin").await;
    for (name, cidr) in [
        ("v4-24", "10.99.0.0/24"),
        ("v6-48", "2001:db8:99::/48"),
        ("v6-48-exclusive", "2001:db8:aa::/48"),
    ] {
        apply(&mut admin, pool(name, &[cidr])).await;
    }
    eprintln!("filling three pools with {LEASES} leases each...");
    allocate_many(&a.url(), LEASES, 32, |i| shared("v4-24", i)).await;
    allocate_many(&a.url(), LEASES, 32, |i| shared("v6-48", i)).await;
    allocate_many(&a.url(), LEASES, 32, |i| pb::AllocateRequest {
        owner: Some(service("bench", "excl", &format!("s{i}"))),
        pool: "v6-48-exclusive".into(),
        primary_family: 2,
        ..Default::default()
    })
    .await;

    let mut c = client(&a.url(), "admin").await;
    let (mut v4, mut v6, mut v6x) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        v4.push(sample(&mut c, "v4-24", 1, i).await);
        v6.push(sample(&mut c, "v6-48", 2, i).await);
        v6x.push(sample(&mut c, "v6-48-exclusive", 2, i).await);
    }
    for v in [&mut v4, &mut v6, &mut v6x] {
        v.sort();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = |v: &[Duration]| v.iter().map(|d| us(*d)).sum::<f64>() / v.len() as f64;
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "pool (10,000 leases)", "mean µs", "p50 µs", "p99 µs"
    );
    for (name, v) in [
        ("IPv4 /24, 40 sharers per address", &v4),
        ("IPv6 /48, 40 sharers per address", &v6),
        ("IPv6 /48, one address per lease", &v6x),
    ] {
        println!(
            "{name:<34} {:>10.0} {:>10.0} {:>10.0}",
            mean(v),
            us(percentile(v, 50.0)),
            us(percentile(v, 99.0))
        );
    }
    println!(
        "RESULT pool-size ratio_v6_48_vs_v4_24={:.2} ratio_v6_48_exclusive_vs_v4_24={:.2}",
        mean(&v6) / mean(&v4),
        mean(&v6x) / mean(&v4)
    );
}
