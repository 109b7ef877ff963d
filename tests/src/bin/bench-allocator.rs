//! `scripts/bench allocator`: allocations per second and latency over gRPC on PostgreSQL with 1,
//! 8 and 32 concurrent clients, beside pgbench running a one-row INSERT transaction at the same
//! concurrency on the same server in the same run.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use ferrolb_e2e::{
    Allocator, PgDb, allocate_many, apply, client, percentile, pg_base, pool, psql, service,
};
use ferrolb_proto::v1 as pb;

/// Allocations per concurrency level.
const PER_LEVEL: usize = 6000;
/// pgbench run time per level.
const PGBENCH_SECONDS: u32 = 6;

fn pgbench(db: &str, clients: usize) -> f64 {
    let script = std::env::temp_dir().join(format!("ferrolb-pgbench-{}.sql", std::process::id()));
    std::fs::write(&script, "INSERT INTO t (v) VALUES (1);\n").unwrap();
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &PGBENCH_SECONDS.to_string(), "-f"])
        .arg(&script)
        .arg(db)
        .output()
        .expect("pgbench must be installed (scripts/bench installs postgresql)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "cannot read pgbench's tps: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[tokio::main]
async fn main() {
    let db = PgDb::new();
    let bench_db = PgDb::new();
    psql(&pg_base(), "SELECT 1");
    let create = Command::new("psql")
        .args([
            &bench_db.url,
            "-qc",
            "CREATE TABLE t (id bigserial PRIMARY KEY, v int)",
        ])
        .status()
        .unwrap();
    assert!(create.success());
    let a = Allocator::start(Some(&db.url), &["--max-in-flight", "4096"]);
    let mut admin = client(&a.url(), "admin").await;
    apply(&mut admin, pool("bench", &["10.64.0.0/12"])).await;
    // Warm up connections and caches.
    allocate_many(&a.url(), 300, 8, |i| pb::AllocateRequest {
        owner: Some(service("bench", "warm", &format!("s{i}"))),
        ..Default::default()
    })
    .await;

    println!(
        "{:>7} {:>12} {:>9} {:>9} {:>13} {:>7}",
        "clients", "allocs/s", "p50 ms", "p99 ms", "pgbench tps", "ratio"
    );
    let mut last = (0.0, 0.0);
    for clients in [1usize, 8, 32] {
        let start = Instant::now();
        let lat = allocate_many(&a.url(), PER_LEVEL, clients, move |i| pb::AllocateRequest {
            owner: Some(service("bench", &format!("c{clients}"), &format!("s{i}"))),
            ..Default::default()
        })
        .await;
        let rate = PER_LEVEL as f64 / start.elapsed().as_secs_f64();
        let tps = pgbench(&bench_db.url, clients);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (p50, p99) = (ms(percentile(&lat, 50.0)), ms(percentile(&lat, 99.0)));
        println!(
            "{clients:>7} {rate:>12.0} {p50:>9.2} {p99:>9.2} {tps:>13.0} {:>7.2}",
            rate / tps
        );
        last = (rate / tps, p99);
    }
    println!(
        "RESULT allocator ratio_vs_pgbench_32={:.2} p99_ms_32={:.2}",
        last.0, last.1
    );
}
