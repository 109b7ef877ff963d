//! Many allocator replicas on one PostgreSQL: 32 clients, 20,000 allocate/release operations with
//! random owners and sharing keys, one replica killed with SIGKILL mid-run. Afterwards the
//! database holds no address under two non-sharing owners and every acknowledged lease that was
//! not released is there, with the addresses that were acknowledged.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrolb_e2e::{Allocator, Client, PgDb, apply, client, pool, service, try_channel};
use ferrolb_proto::v1 as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;
use tonic::Code;

const CLIENTS: usize = 32;
const OPERATIONS: usize = 20_000;
const OWNERS_PER_CLIENT: usize = 12;
const KILL_AT: usize = OPERATIONS / 3;

/// What a client knows of one of its owners.
#[derive(Clone, Debug, PartialEq)]
enum Known {
    Nothing,
    Holds(Vec<String>),
    /// The last call failed without an answer: it may or may not have happened.
    Unsure,
}

struct Worker {
    id: usize,
    urls: Vec<String>,
    replica: usize,
    client: Client,
}

impl Worker {
    /// The next replica after a failure: clients of a dead replica move on.
    async fn failover(&mut self) {
        loop {
            self.replica = (self.replica + 1) % self.urls.len();
            let url = self.urls[self.replica].clone();
            if let Ok(channel) = try_channel(&url, "cluster/c1", Duration::from_millis(300)).await {
                self.client = pb::ipam_service_client::IpamServiceClient::with_interceptor(
                    channel,
                    ferrolb_e2e::Caller::none(),
                );
                return;
            }
        }
    }
}

fn owner(worker: usize, n: usize) -> pb::Owner {
    service("c1", &format!("ns{worker}"), &format!("svc{n}"))
}

async fn run_worker(
    mut w: Worker,
    done: Arc<AtomicUsize>,
    kill: Arc<tokio::sync::Notify>,
) -> HashMap<String, Known> {
    let mut rng = SmallRng::seed_from_u64(w.id as u64);
    let mut known: HashMap<usize, Known> = (0..OWNERS_PER_CLIENT)
        .map(|n| (n, Known::Nothing))
        .collect();
    loop {
        let op = done.fetch_add(1, Ordering::Relaxed);
        if op >= OPERATIONS {
            break;
        }
        if op == KILL_AT {
            kill.notify_one();
        }
        let n = rng.random_range(0..OWNERS_PER_CLIENT);
        let o = owner(w.id, n);
        let release = rng.random_bool(0.4);
        let result = if release {
            w.client
                .release(pb::ReleaseRequest { owner: Some(o) })
                .await
                .map(|_| None)
        } else {
            let key = ["", "", "alpha", "beta"][rng.random_range(0..4)];
            let port = [80u32, 443, 53][rng.random_range(0..3)];
            w.client
                .allocate(pb::AllocateRequest {
                    owner: Some(o),
                    sharing_key: key.into(),
                    ports: vec![pb::Port { protocol: 1, port }],
                    ..Default::default()
                })
                .await
                .map(|r| Some(r.into_inner().lease.unwrap().ips))
        };
        let entry = known.get_mut(&n).unwrap();
        match result {
            Ok(Some(ips)) => *entry = Known::Holds(ips),
            Ok(None) => *entry = Known::Nothing,
            Err(s) if s.code() == Code::NotFound && release => {
                if let Known::Holds(ips) = entry {
                    panic!("release of an acknowledged lease ({ips:?}) found nothing");
                }
                *entry = Known::Nothing;
            }
            Err(s) => {
                assert!(
                    matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                    ),
                    "unexpected {s:?}"
                );
                *entry = Known::Unsure;
                w.failover().await;
            }
        }
    }
    known
        .into_iter()
        .map(|(n, k)| {
            let o = owner(w.id, n);
            (format!("service/c1/{}/{}", o.namespace, o.name), k)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_never_hand_out_an_address_twice() {
    let db = PgDb::new();
    let mut replicas: Vec<Allocator> = (0..3)
        .map(|_| Allocator::start(Some(&db.url), &[]))
        .collect();
    let urls: Vec<String> = replicas.iter().map(Allocator::url).collect();
    let mut admin = client(&urls[0], "admin").await;
    apply(&mut admin, pool("p", &["10.20.0.0/23"])).await;

    let done = Arc::new(AtomicUsize::new(0));
    let kill = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let w = Worker {
            id,
            urls: urls.clone(),
            replica: id % 3,
            client: client(&urls[id % 3], "cluster/c1").await,
        };
        tasks.push(tokio::spawn(run_worker(
            w,
            Arc::clone(&done),
            Arc::clone(&kill),
        )));
    }
    kill.notified().await;
    replicas[2].kill();
    let mut known = HashMap::new();
    for t in tasks {
        known.extend(t.await.unwrap());
    }

    let pg = sqlx::PgPool::connect(&db.url).await.unwrap();
    // No address held by two owners unless both share it under one key.
    let clashes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT addr FROM leases GROUP BY addr \
         HAVING COUNT(DISTINCT share_group) > 1 OR (COUNT(*) > 1 AND MIN(sharing_key) = '')) x",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(
        clashes, 0,
        "an address is held by owners that may not share it"
    );
    // No port used twice on one address by sharers.
    let port_clashes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT addr, protocol, port FROM lease_ports GROUP BY addr, protocol, port HAVING COUNT(*) > 1) x",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(port_clashes, 0);
    // Every acknowledged lease is there with its addresses; every acknowledged release is gone.
    let rows = sqlx::query("SELECT owner_key, addr FROM leases")
        .fetch_all(&pg)
        .await
        .unwrap();
    let mut stored: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for r in rows {
        stored
            .entry(r.get("owner_key"))
            .or_default()
            .push(r.get("addr"));
    }
    let (mut held, mut unsure) = (0, 0);
    for (key, k) in &known {
        match k {
            Known::Holds(ips) => {
                held += 1;
                let addrs = stored
                    .get(key)
                    .unwrap_or_else(|| panic!("acknowledged lease of {key} is gone"));
                let want: Vec<Vec<u8>> = ips
                    .iter()
                    .map(|ip| {
                        let v4: std::net::Ipv4Addr = ip.parse().unwrap();
                        v4.to_ipv6_mapped().octets().to_vec()
                    })
                    .collect();
                assert_eq!(
                    addrs, &want,
                    "{key} holds other addresses than acknowledged"
                );
            }
            Known::Nothing => assert!(
                !stored.contains_key(key),
                "{key} was released but still holds {:?}",
                stored.get(key)
            ),
            Known::Unsure => unsure += 1,
        }
    }
    assert!(
        held > 100,
        "only {held} leases held at the end: the run did too little"
    );
    assert!(
        unsure < 64,
        "{unsure} owners in doubt: too many calls failed"
    );
    let total: i64 = sqlx::query_scalar("SELECT value FROM revision")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert!(total > 5000, "only {total} changes were made");
}
