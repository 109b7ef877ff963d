//! PostgreSQL fails over under load: a primary with a synchronous streaming standby, three
//! allocator replicas given both hosts, 32 clients allocating and releasing. The primary is
//! killed (immediate stop) and the standby promoted: every acknowledged lease that was not
//! released is on the new primary, no address has two owners, health says NOT_SERVING while no
//! server takes writes, and every replica serves again without a restart. And a replica stopped inside its transaction holds the others up only
//! for the configured idle-in-transaction timeout.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::churn::{Churn, compare, fail_over_under_load};
use ferrolb_e2e::{Allocator, PrivatePg, apply, pool, service};
use ferrolb_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_failover_loses_nothing_acknowledged() {
    let run = fail_over_under_load(3, 32, true).await;
    let t = &run.tally;
    eprintln!(
        "promote {:?}, first allocation {:?} after the kill; {} calls ok, {} unavailable, after the kill per replica {:?}; {} acknowledged leases checked",
        run.promote, run.outage, t.ok, t.unavailable, t.ok_after_mark, run.kept
    );
    assert!(t.ok > 200, "too little load to mean anything");
    assert!(run.kept > 50, "too few acknowledged leases to check");
    assert_eq!(run.lost, Vec::<String>::new(), "acknowledged but not kept");
    for (r, n) in t.ok_after_mark.iter().enumerate() {
        assert!(*n > 10, "replica {r} did not serve again: {n} calls");
    }
    assert_eq!(
        run.not_serving_seen,
        Some(true),
        "NOT_SERVING while no server takes writes"
    );
    assert_eq!(run.serving, vec![true; 3], "every replica says SERVING");
}

/// A replica stopped (SIGSTOP) inside its transaction, holding the writer lock: the other
/// replica waits for the lock, gets it once PostgreSQL ends the idle transaction
/// (`--db-idle-in-transaction-timeout-ms`), and allocates; the stopped one serves again when
/// continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stopped_inside_its_transaction_holds_up_the_others_only_briefly() {
    const IDLE_MS: u64 = 1500;
    let pg = PrivatePg::start();
    let flags = [
        "--db-acquire-timeout-ms",
        "500",
        "--db-idle-in-transaction-timeout-ms",
        &IDLE_MS.to_string(),
    ];
    let stalled = Allocator::start(Some(&pg.url()), &flags);
    let other = Allocator::start(Some(&pg.url()), &flags);
    let mut admin = other.client("admin").await;
    apply(&mut admin, pool("p", &["10.50.0.0/22"])).await;
    let churn = Churn::start(&[stalled.url()], 8).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Stop it until it is caught holding the writer lock (the revision row), between two
    // statements of its transaction.
    let pid = stalled.child.id().to_string();
    let mut caught = false;
    for _ in 0..100 {
        signal("STOP", &pid);
        std::thread::sleep(Duration::from_millis(50));
        let free = pg.try_query(
            "BEGIN; SELECT value FROM revision WHERE id = 1 FOR UPDATE NOWAIT; ROLLBACK",
        );
        if free.is_err_and(|e| e.contains("could not obtain lock")) {
            caught = true;
            break;
        }
        signal("CONT", &pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        caught,
        "the loaded replica was never stopped inside a transaction"
    );

    let mut c = other.client("cluster/c1").await;
    let started = Instant::now();
    let call = tokio::spawn(async move {
        c.allocate(pb::AllocateRequest {
            owner: Some(service("c1", "d", "while-stalled")),
            ..Default::default()
        })
        .await
    });
    // The other replica does wait on the stopped one's lock.
    let other_pid = other.child.id();
    pg.wait_for(
        &format!(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = \
             'ferrolb-allocator/{other_pid}' AND wait_event_type = 'Lock'"
        ),
        "t",
        Duration::from_secs(1),
    );
    let answer = call.await.unwrap();
    let waited = started.elapsed();
    assert!(answer.is_ok(), "the other replica's call: {answer:?}");
    assert!(
        waited < Duration::from_millis(IDLE_MS + 1000),
        "the other replica waited {waited:?} for the stopped one's lock"
    );

    signal("CONT", &pid);
    let resumed = churn.mark();
    let back = churn
        .until_recovered(Duration::from_secs(10))
        .await
        .expect("the stopped replica never served again");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = churn.stop().await;
    eprintln!(
        "waited {waited:?} for the lock; the stopped replica served again {:?} after SIGCONT",
        back - resumed
    );
    assert!(tally.ok_after_mark[0] > 10, "{:?}", tally.ok_after_mark);
    let (_, lost) = compare(&mut stalled.client("cluster/c1").await, &tally.acked).await;
    assert_eq!(lost, Vec::<String>::new(), "acknowledged but not kept");
}

fn signal(sig: &str, pid: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}
