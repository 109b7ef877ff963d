//! `scripts/bench db-failover`: allocation load on three replicas, the PostgreSQL primary killed
//! (immediate stop) and its synchronous standby promoted. Per trial: the time from the kill to
//! the first allocation that succeeds on the new primary, beside the time PostgreSQL itself took
//! to promote, and the acknowledged changes the new primary lacks. The last line reports the
//! trial with the longest outage beyond the promotion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrolb_e2e::churn::fail_over_under_load;

const TRIALS: usize = 5;

#[tokio::main]
async fn main() {
    let mut worst: Option<(Duration, Duration)> = None;
    let mut lost = 0;
    for trial in 1..=TRIALS {
        let run = fail_over_under_load(3, 32, false).await;
        println!(
            "trial {trial}: outage {:>6.1} ms  promote {:>6.1} ms  beyond promotion {:>6.1} ms  calls {} ok / {} unavailable  acknowledged leases checked {}  lost {}",
            ms(run.outage),
            ms(run.promote),
            ms(run.outage.saturating_sub(run.promote)),
            run.tally.ok,
            run.tally.unavailable,
            run.kept,
            run.lost.len()
        );
        for l in &run.lost {
            println!("  lost: {l}");
        }
        lost += run.lost.len();
        let beyond = |(o, p): (Duration, Duration)| o.saturating_sub(p);
        if worst.is_none_or(|w| beyond((run.outage, run.promote)) > beyond(w)) {
            worst = Some((run.outage, run.promote));
        }
    }
    let (outage, promote) = worst.unwrap();
    println!(
        "RESULT db-failover outage_ms={:.0} promote_ms={:.0} lost={lost}",
        ms(outage),
        ms(promote)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
