//! `scripts/bench otel`: what exporting traces costs. The allocator benchmark's load (32 clients
//! allocating on PostgreSQL) against two allocators, one exporting every span to an OTLP receiver
//! and one without an endpoint, in alternating rounds; and the failover benchmark's announcer
//! SIGKILL in two home labs side by side, one whose allocator and announcers export traces, with
//! the trials interleaved. Each figure is with tracing over without, from the same run.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use ferrolb_e2e::home::{HomeLab, NODES, Options, VIP};
use ferrolb_e2e::otlp::Spans;
use ferrolb_e2e::{Allocator, PgDb, allocate_many, apply, client, percentile, pool, service};
use ferrolb_proto::v1 as pb;

/// Allocations per round and allocator, rounds, and clients.
const PER_ROUND: usize = 4000;
const ROUNDS: usize = 3;
const CLIENTS: usize = 32;
/// Failover trials per lab.
const TRIALS: usize = 30;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn allocator(receiver: Option<&str>) -> (Allocator, PgDb) {
    let db = PgDb::new();
    let mut args = vec!["--max-in-flight", "4096"];
    if let Some(r) = receiver {
        args.extend(["--otlp-endpoint", r]);
    }
    let a = Allocator::start(Some(&db.url), &args);
    let mut admin = client(&a.url(), "admin").await;
    apply(&mut admin, pool("bench", &["10.64.0.0/12"])).await;
    allocate_many(&a.url(), 300, 8, |i| pb::AllocateRequest {
        owner: Some(service("bench", "warm", &format!("s{i}"))),
        ..Default::default()
    })
    .await;
    (a, db)
}

/// Allocations per second and the p99 latency of each allocator over alternating rounds.
async fn allocations(plain: &Allocator, traced: &Allocator) -> [(f64, Duration); 2] {
    let mut took = [Duration::ZERO; 2];
    let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for (i, a) in [plain, traced].into_iter().enumerate() {
            let start = Instant::now();
            let l = allocate_many(&a.url(), PER_ROUND, CLIENTS, move |n| pb::AllocateRequest {
                owner: Some(service("bench", &format!("r{round}"), &format!("s{n}"))),
                ..Default::default()
            })
            .await;
            took[i] += start.elapsed();
            lat[i].extend(l);
        }
    }
    [0, 1].map(|i| {
        lat[i].sort();
        (
            (PER_ROUND * ROUNDS) as f64 / took[i].as_secs_f64(),
            percentile(&lat[i], 99.0),
        )
    })
}

/// Waits until `node` owns the address again and serves the client.
fn settle(lab: &HomeLab, node: &str) {
    lab.wait_owner(VIP, Duration::from_secs(20), |o| o.as_deref() == Ok(node))
        .unwrap();
    lab.curl_until(VIP, Duration::from_secs(20), |n| n == node);
    std::thread::sleep(Duration::from_millis(300));
}

fn lab(prefix: &str, otlp: &[String]) -> (HomeLab, String) {
    let lab = HomeLab::up(
        prefix,
        Options {
            allocator_args: otlp.to_vec(),
            announcer_args: otlp.to_vec(),
            ..Options::default()
        },
    );
    lab.serve_home_nginx(&NODES, false);
    let owner = lab
        .wait_owner(VIP, Duration::from_secs(10), Result::is_ok)
        .unwrap();
    settle(&lab, &owner);
    (lab, owner)
}

/// One announcer SIGKILL of the owner: the time to the client's first answer elsewhere.
fn crash(lab: &mut HomeLab, owner: &str) -> Duration {
    let pid = lab.announcer_pid(owner).to_string();
    let (took, _) = lab.failover(VIP, owner, || {
        Command::new("kill").args(["-9", &pid]).status().unwrap();
    });
    lab.kill_announcer(owner);
    lab.start_announcer(owner);
    settle(lab, owner);
    took
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (alloc, spans_allocator) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = format!("http://{}", listener.local_addr().unwrap());
        let spans = Spans::default();
        tokio::spawn(ferrolb_e2e::otlp::serve(listener, spans.clone()));
        let (plain, _plain_db) = allocator(None).await;
        let (traced, _traced_db) = allocator(Some(&receiver)).await;
        let figures = allocations(&plain, &traced).await;
        // The batch exporter sends every few seconds.
        let start = Instant::now();
        while spans.count() < PER_ROUND && start.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (figures, spans.count())
    });
    assert!(
        spans_allocator >= PER_ROUND,
        "the traced allocator exported only {spans_allocator} spans"
    );
    println!(
        "{:<34} {:>10} {:>9}",
        "allocator, 32 clients", "allocs/s", "p99 ms"
    );
    for (what, (rate, p99)) in [("no endpoint", alloc[0]), ("traces exported", alloc[1])] {
        println!("{what:<34} {rate:>10.0} {:>9.2}", ms(p99));
    }
    println!("spans received from the traced allocator: {spans_allocator}");

    let otlp = vec![
        "--otlp-endpoint".to_string(),
        "http://10.250.0.1:4317".to_string(),
    ];
    let (mut plain, plain_owner) = lab("of", &[]);
    let (mut traced, traced_owner) = lab("on", &otlp);
    let file = traced.dir.0.join("spans.jsonl");
    let _receiver = ferrolb_e2e::Process(traced.spawn(
        "router",
        &ferrolb_e2e::bin("otlp-sink").to_string_lossy(),
        &["10.250.0.1:4317", &file.to_string_lossy()],
        "otlp",
    ));
    let mut took: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..TRIALS {
        took[0].push(crash(&mut plain, &plain_owner));
        took[1].push(crash(&mut traced, &traced_owner));
        eprintln!(
            "trial {i:>2}: {:.0} ms without, {:.0} ms with traces",
            ms(took[0][i]),
            ms(took[1][i])
        );
    }
    let exported = Spans::read(&file)
        .iter()
        .filter(|s| s.name == "announcer gone")
        .count();
    assert!(exported > 0, "the traced lab exported no failover trace");
    for v in &mut took {
        v.sort();
    }
    println!(
        "{:<34} {:>8} {:>8}",
        "failover (announcer SIGKILL)", "p50 ms", "p99 ms"
    );
    for (what, v) in [("no endpoint", &took[0]), ("traces exported", &took[1])] {
        println!(
            "{what:<34} {:>8.0} {:>8.0}",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0))
        );
    }
    println!("failover traces received from the traced lab: {exported}");
    let p99 = |v: &[Duration]| ms(percentile(v, 99.0));
    println!(
        "RESULT otel overhead_allocator={:.2} overhead_failover_p99={:.2}",
        alloc[0].0 / alloc[1].0,
        p99(&took[1]) / p99(&took[0]),
    );
}
