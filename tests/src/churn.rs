//! Allocation load that keeps books: clients allocating and releasing against allocator
//! replicas, each remembering what was acknowledged, so that a test can check the database
//! afterwards and a benchmark can time an outage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolb_proto::v1 as pb;
use tonic::Code;

use crate::{client, service};

/// What the clients saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub ok: usize,
    pub unavailable: usize,
    /// Successful calls per replica (by index) that started after the mark.
    pub ok_after_mark: Vec<usize>,
    /// owner name → addresses acknowledged (`None`: released). A call that failed may or may
    /// not have committed, so its owner is left out until a later call settles it.
    pub acked: HashMap<String, Option<Vec<String>>>,
}

/// Clients running until [`Churn::stop`].
pub struct Churn {
    stop: Arc<AtomicBool>,
    mark: Arc<Mutex<Option<Instant>>>,
    first_after_mark: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    replicas: usize,
}

impl Churn {
    /// `clients` clients, spread over the replicas at `urls`, each over its own 20 owners in
    /// cluster `c1`: two allocations for every release.
    pub async fn start(urls: &[String], clients: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let mark: Arc<Mutex<Option<Instant>>> = Arc::default();
        let first_after_mark: Arc<Mutex<Option<Instant>>> = Arc::default();
        let mut tasks = Vec::new();
        for w in 0..clients {
            let replica = w % urls.len();
            let mut c = client(&urls[replica], "cluster/c1").await;
            let (stop, mark, first) = (
                Arc::clone(&stop),
                Arc::clone(&mark),
                Arc::clone(&first_after_mark),
            );
            let replicas = urls.len();
            tasks.push(tokio::spawn(async move {
                let mut t = Tally {
                    ok_after_mark: vec![0; replicas],
                    ..Tally::default()
                };
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let name = format!("w{w}-s{}", i % 20);
                    let owner = service("c1", "d", &name);
                    let release = i.is_multiple_of(3);
                    let marked = mark.lock().unwrap().is_some();
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
                    match r {
                        Ok(v) => {
                            t.ok += 1;
                            if marked {
                                t.ok_after_mark[replica] += 1;
                                if !release {
                                    let mut f = first.lock().unwrap();
                                    f.get_or_insert_with(Instant::now);
                                }
                            }
                            t.acked.insert(name, v);
                        }
                        Err(s) if s.code() == Code::NotFound && release => {
                            t.acked.insert(name, None);
                        }
                        Err(s) => {
                            assert_eq!(s.code(), Code::Unavailable, "{name}: {s:?}");
                            t.unavailable += 1;
                            t.acked.remove(&name);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                t
            }));
        }
        Churn {
            stop,
            mark,
            first_after_mark,
            tasks,
            replicas: urls.len(),
        }
    }

    /// From now on, successes are counted as after the fault.
    pub fn mark(&self) -> Instant {
        let now = Instant::now();
        *self.mark.lock().unwrap() = Some(now);
        now
    }

    /// When the first allocation that started after the mark succeeded.
    pub fn first_allocation_after_mark(&self) -> Option<Instant> {
        *self.first_after_mark.lock().unwrap()
    }

    /// Waits until an allocation that started after the mark has succeeded.
    pub async fn until_recovered(&self, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(at) = self.first_allocation_after_mark() {
                return Some(at);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Stops the clients and adds up what they saw.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally {
            ok_after_mark: vec![0; self.replicas],
            ..Tally::default()
        };
        for t in self.tasks {
            let t = t.await.expect("a client task");
            total.ok += t.ok;
            total.unavailable += t.unavailable;
            for (r, n) in t.ok_after_mark.into_iter().enumerate() {
                total.ok_after_mark[r] += n;
            }
            total.acked.extend(t.acked);
        }
        total
    }
}

/// What one failover under load did.
pub struct Failover {
    /// How long `pg_ctl promote` took.
    pub promote: Duration,
    /// From the kill to the first allocation that succeeded on the new primary.
    pub outage: Duration,
    pub tally: Tally,
    /// Acknowledged leases checked on the new primary.
    pub kept: usize,
    /// Acknowledged changes the new primary does not have, and addresses with two owners.
    pub lost: Vec<String>,
    /// Whether each replica answers its health check with SERVING, at the end.
    pub serving: Vec<bool>,
    /// Whether the first replica said NOT_SERVING while no server took writes (looked for
    /// only when asked: it holds the promotion back until it is seen or a second has passed).
    pub not_serving_seen: Option<bool>,
}

/// A primary with a synchronous standby, `replicas` allocators given both hosts, `clients`
/// clients; after two seconds of load the primary is killed and the standby promoted, the load
/// goes on for two more seconds, then the new primary is checked against what was acknowledged.
pub async fn fail_over_under_load(replicas: usize, clients: usize, watch_health: bool) -> Failover {
    let pair = crate::pg::SyncPair::start();
    let url = pair.url();
    let allocators: Vec<crate::Allocator> = (0..replicas)
        .map(|_| crate::Allocator::start(Some(&url), &["--db-acquire-timeout-ms", "500"]))
        .collect();
    let urls: Vec<String> = allocators.iter().map(crate::Allocator::url).collect();
    let mut admin = allocators[0].client("admin").await;
    crate::apply(&mut admin, crate::pool("p", &["10.40.0.0/20"])).await;

    let churn = Churn::start(&urls, clients).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = churn.mark();
    pair.primary.kill();
    let not_serving_seen = if watch_health {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut seen = false;
        while !seen && std::time::Instant::now() < deadline {
            seen = !crate::serving(&urls[0]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(seen)
    } else {
        None
    };
    let promote = pair.standby.promote();
    let recovered = churn
        .until_recovered(Duration::from_secs(30))
        .await
        .expect("no allocation succeeded after the failover");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tally = churn.stop().await;
    let mut c = allocators[replicas - 1].client("cluster/c1").await;
    let (kept, lost) = compare(&mut c, &tally.acked).await;
    let mut serving = Vec::new();
    for u in &urls {
        serving.push(crate::serving(u).await);
    }
    Failover {
        promote,
        outage: recovered - killed,
        tally,
        kept,
        lost,
        serving,
        not_serving_seen,
    }
}

/// Checks the leases against what was acknowledged: returns how many acknowledged leases were
/// found, and every difference (a lease missing or changed, a release undone, an address with
/// two owners).
pub async fn compare(
    c: &mut crate::Client,
    acked: &HashMap<String, Option<Vec<String>>>,
) -> (usize, Vec<String>) {
    let mut lost = Vec::new();
    let page = c
        .list_leases(pb::ListLeasesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list the leases")
        .into_inner();
    assert!(page.next_page_token.is_empty(), "the leases fit one page");
    let mut holders: HashMap<String, String> = HashMap::new();
    for l in &page.leases {
        let owner = format!("{:?}", l.owner);
        for ip in &l.ips {
            if let Some(other) = holders.insert(ip.clone(), owner.clone()) {
                lost.push(format!("{ip} is held by {other} and {owner}"));
            }
        }
    }
    let mut kept = 0;
    for (name, want) in acked {
        let got = c
            .get_lease(pb::GetLeaseRequest {
                owner: Some(service("c1", "d", name)),
            })
            .await;
        match (want, got) {
            (Some(ips), Ok(l)) if &l.get_ref().ips == ips => kept += 1,
            (None, Err(s)) if s.code() == Code::NotFound => {}
            (want, got) => lost.push(format!("{name}: acknowledged {want:?}, stored {got:?}")),
        }
    }
    (kept, lost)
}
