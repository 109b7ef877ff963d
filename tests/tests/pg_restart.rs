//! PostgreSQL restarted under load: calls fail with UNAVAILABLE while it is down, succeed again
//! once it is back without restarting the allocator, and nothing acknowledged is lost.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrolb_e2e::churn::{Churn, compare};
use ferrolb_e2e::{Allocator, PrivatePg, apply, pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load() {
    let pg = PrivatePg::start();
    let a = Allocator::start(Some(&pg.url()), &["--db-acquire-timeout-ms", "500"]);
    let mut admin = a.client("admin").await;
    apply(&mut admin, pool("p", &["10.30.0.0/22"])).await;

    let churn = Churn::start(&[a.url()], 8).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.ctl("stop");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.ctl("start");
    churn.mark();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let total = churn.stop().await;
    let after = total.ok_after_mark[0];
    assert!(
        total.ok - after > 50,
        "{} calls before the outage",
        total.ok - after
    );
    assert!(
        total.unavailable > 0,
        "calls during the outage must fail with UNAVAILABLE"
    );
    assert!(
        after > 50,
        "the allocator must recover by itself: {after} calls after"
    );

    let mut c = a.client("cluster/c1").await;
    let (kept, lost) = compare(&mut c, &total.acked).await;
    assert!(kept > 20, "{kept} acknowledged leases to check");
    assert_eq!(lost, Vec::<String>::new(), "acknowledged but not kept");
}
