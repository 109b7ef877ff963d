//! PostgreSQL restarted under load: calls fail with UNAVAILABLE while it is down, succeed again
//! once it is back without restarting the allocator, and nothing acknowledged is lost.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferrolb_e2e::{Allocator, PrivatePg, apply, pool, service};
use ferrolb_proto::v1 as pb;
use tonic::Code;

#[derive(Default, Debug)]
struct Tally {
    ok_before: usize,
    unavailable: usize,
    ok_after: usize,
    /// owner → addresses acknowledged (None: released).
    acked: HashMap<String, Option<Vec<String>>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load() {
    let pg = PrivatePg::start();
    let a = Allocator::start(Some(&pg.url()), &["--db-acquire-timeout-ms", "500"]);
    let mut admin = a.client("admin").await;
    apply(&mut admin, pool("p", &["10.30.0.0/22"])).await;

    let back = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = a.client("cluster/c1").await;
        let (back, stop) = (Arc::clone(&back), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("w{w}-s{}", i % 20);
                let owner = service("c1", "d", &name);
                let release = i.is_multiple_of(3);
                let r = if release {
                    c.release(pb::ReleaseRequest { owner: Some(owner) })
                        .await
                        .map(|_| None)
                } else {
                    c.allocate(pb::AllocateRequest {
                        owner: Some(owner),
                        ..Default::default()
                    })
                    .await
                    .map(|r| Some(r.into_inner().lease.unwrap().ips))
                };
                let after = back.load(Ordering::Relaxed);
                match r {
                    Ok(v) => {
                        if after {
                            t.ok_after += 1;
                        } else {
                            t.ok_before += 1;
                        }
                        t.acked.insert(name, v);
                    }
                    Err(s) if s.code() == Code::NotFound && release => {
                        t.acked.insert(name, None);
                    }
                    Err(s) => {
                        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                        t.unavailable += 1;
                        // A call cut by the outage may or may not have committed.
                        t.acked.remove(&name);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            t
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.ctl("stop");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.ctl("start");
    back.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        total.ok_before += t.ok_before;
        total.ok_after += t.ok_after;
        total.unavailable += t.unavailable;
        total.acked.extend(t.acked);
    }
    assert!(total.ok_before > 50, "{total:?}");
    assert!(
        total.unavailable > 0,
        "calls during the outage must fail with UNAVAILABLE: {total:?}"
    );
    assert!(
        total.ok_after > 50,
        "the allocator must recover by itself: {total:?}"
    );

    let mut c = a.client("cluster/c1").await;
    for (name, want) in &total.acked {
        let got = c
            .get_lease(pb::GetLeaseRequest {
                owner: Some(service("c1", "d", name)),
            })
            .await;
        match (want, got) {
            (Some(ips), Ok(l)) => assert_eq!(&l.into_inner().ips, ips, "{name}"),
            (None, Err(s)) => assert_eq!(s.code(), Code::NotFound, "{name}"),
            (want, got) => panic!("{name}: acknowledged {want:?}, stored {got:?}"),
        }
    }
}
