//! `scripts/bench memory`: the allocator's resident memory with no lease, then with 100,000
//! leases made through the API (on PostgreSQL).
#![allow(clippy::unwrap_used)]

use ferrolb_e2e::{Allocator, PgDb, allocate_many, apply, client, pool, rss_mib, service};
use ferrolb_proto::v1 as pb;

const LEASES: usize = 100_000;

#[tokio::main]
async fn main() {
    let db = PgDb::new();
    let a = Allocator::start(Some(&db.url), &["--max-in-flight", "4096"]);
    let mut admin = client(&a.url(), "admin").await;
    apply(&mut admin, pool("big", &["10.0.0.0/8", "2001:db8::/48"])).await;
    // Serve some calls first, so the baseline includes warmed-up connections and buffers.
    allocate_many(&a.url(), 200, 32, |i| pb::AllocateRequest {
        owner: Some(service("bench", "warm", &format!("s{i}"))),
        ..Default::default()
    })
    .await;
    let before = rss_mib(a.child.id());
    let start = std::time::Instant::now();
    allocate_many(&a.url(), LEASES, 32, |i| pb::AllocateRequest {
        owner: Some(service(
            "bench",
            &format!("ns{}", i % 100),
            &format!("s{i}"),
        )),
        family_policy: if i % 4 == 0 { 2 } else { 1 },
        ..Default::default()
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    let stats = admin
        .get_stats(pb::GetStatsRequest { pool: "big".into() })
        .await
        .unwrap()
        .into_inner();
    let leases: u64 = stats.stats.iter().map(|s| s.leases).sum::<u64>();
    let after = rss_mib(a.child.id());
    println!("leases rows (one per family): {leases}; made in {secs:.1} s");
    println!("allocator RSS: {before:.1} MiB before, {after:.1} MiB with {LEASES} leases");
    println!(
        "RESULT memory rss_mib_warm={before:.1} rss_mib_100000={after:.1} ratio={:.2}",
        after / before
    );
}
