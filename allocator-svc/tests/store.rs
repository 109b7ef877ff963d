//! The store on both databases (SQLite and PostgreSQL): persistence of leases, sharing and dual
//! stack rows, stranding, callers and owners, expiry, pages, events, replicas. The allocation
//! rules themselves are table tests on the pure state (`src/state/rules_tests.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use ferrolb_allocator::addr::Family;
use ferrolb_allocator::error::Error;
use ferrolb_allocator::lease::{
    AllocRequest, EventKind, FamilyPolicy, Lease, LeaseFilter, Owner, Port, Protocol,
};
use ferrolb_allocator::pool::{Caller, PoolSpec};
use ferrolb_allocator::store::{LeaseStore, SqlStore};

/// A pool every cluster and client may draw from.
fn spec(name: &str, addresses: &[&str]) -> PoolSpec {
    let mut s = PoolSpec::new(name, addresses);
    s.clusters = vec![ferrolb_allocator::pool::EVERYONE.into()];
    s.clients = vec![ferrolb_allocator::pool::EVERYONE.into()];
    s
}

fn svc(ns: &str, name: &str) -> AllocRequest {
    AllocRequest::service("c1", ns, name)
}

fn tcp(port: u16) -> Port {
    Port {
        protocol: Protocol::Tcp,
        port,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

const ADMIN: Caller = Caller::Admin;

fn c1() -> Caller {
    Caller::Cluster("c1".into())
}

async fn apply(store: &SqlStore, s: PoolSpec) {
    store
        .apply_pool(&ADMIN, s.clone(), false)
        .await
        .unwrap_or_else(|e| panic!("apply {}: {e}", s.name));
}

async fn alloc(store: &SqlStore, req: AllocRequest) -> Lease {
    let name = req.owner.key();
    store
        .allocate(&c1(), req)
        .await
        .unwrap_or_else(|e| panic!("allocate for {name}: {e}"))
        .0
}

async fn ips(store: &SqlStore, req: AllocRequest) -> Vec<String> {
    alloc(store, req)
        .await
        .ips()
        .iter()
        .map(|i| i.to_string())
        .collect()
}

async fn first_ip(store: &SqlStore, req: AllocRequest) -> String {
    ips(store, req).await.remove(0)
}

async fn scenario_pools(store: SqlStore) {
    // ../shared/scenarios/ip-pool.yaml: example-pool, 192.168.1.240-192.168.1.250.
    apply(
        &store,
        spec("example-pool", &["192.168.1.240-192.168.1.250"]),
    )
    .await;
    assert_eq!(
        first_ip(&store, svc("default", "nginx")).await,
        "192.168.1.240"
    );
}

async fn home_pool_runs_out_after_six(store: SqlStore) {
    apply(&store, spec("home-pool", &["192.168.1.240-192.168.1.245"])).await;
    for i in 0..6 {
        assert_eq!(
            first_ip(&store, svc("default", &format!("s{i}"))).await,
            format!("192.168.1.{}", 240 + i)
        );
    }
    let err = store
        .allocate(&c1(), svc("default", "seventh"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Exhausted(_)), "{err:?}");
}

async fn idempotent_and_grace(store: SqlStore) {
    apply(&store, spec("p", &["10.0.0.0/29"])).await;
    let a = first_ip(&store, svc("default", "a")).await;
    let (again, created) = store
        .allocate(&c1(), svc("default", "a"))
        .await
        .expect("again");
    assert!(!created);
    assert_eq!(again.ips()[0].to_string(), a);
    let b = first_ip(&store, svc("default", "b")).await;
    assert_eq!((a.as_str(), b.as_str()), ("10.0.0.0", "10.0.0.1"));
    // b comes back after releasing and gets its old address, although a lower one is free.
    store
        .release(&c1(), &svc("default", "a").owner)
        .await
        .expect("release a");
    store
        .release(&c1(), &svc("default", "b").owner)
        .await
        .expect("release b");
    assert_eq!(first_ip(&store, svc("default", "b")).await, "10.0.0.1");
    assert_eq!(first_ip(&store, svc("default", "c")).await, "10.0.0.0");
}

async fn sharing_rules(store: SqlStore) {
    apply(&store, spec("p", &["10.0.0.10-10.0.0.20"])).await;
    let share = |name: &str, key: &str, backend: &str, ports: Vec<Port>| AllocRequest {
        sharing_key: key.into(),
        backend_key: backend.into(),
        ports,
        ..svc("default", name)
    };
    assert_eq!(
        first_ip(&store, share("dns-tcp", "dns", "", vec![tcp(53)])).await,
        "10.0.0.10"
    );
    // Same key, other protocol on the same port: shares.
    let udp = Port {
        protocol: Protocol::Udp,
        port: 53,
    };
    assert_eq!(
        first_ip(&store, share("dns-udp", "dns", "", vec![udp])).await,
        "10.0.0.10"
    );
    // Same key, same port: cannot share that address, takes the next.
    assert_eq!(
        first_ip(&store, share("dns-tcp2", "dns", "", vec![tcp(53)])).await,
        "10.0.0.11"
    );
    // Other key: never shares.
    assert_eq!(
        first_ip(&store, share("web", "web", "", vec![tcp(80)])).await,
        "10.0.0.12"
    );
    // Same key, other backend key (externalTrafficPolicy Local with another selector): no.
    assert_eq!(
        first_ip(&store, share("dns-local", "dns", "app=dns", vec![tcp(853)])).await,
        "10.0.0.13"
    );
    // No key: exclusive, and nobody can join it.
    assert_eq!(first_ip(&store, svc("default", "solo")).await, "10.0.0.14");
    let err = store
        .allocate(
            &c1(),
            AllocRequest {
                requested_ips: vec![ip("10.0.0.14")],
                ..share("intruder", "dns", "", vec![tcp(54)])
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    // Explicit request for a shared address with a conflicting port.
    let err = store
        .allocate(
            &c1(),
            AllocRequest {
                requested_ips: vec![ip("10.0.0.10")],
                ..share("dns-tcp3", "dns", "", vec![tcp(53)])
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    // Explicit request joining the shared address with a free port.
    let l = alloc(
        &store,
        AllocRequest {
            requested_ips: vec![ip("10.0.0.10")],
            ..share("dns-dot", "dns", "", vec![tcp(853)])
        },
    )
    .await;
    assert_eq!(l.ips(), vec![ip("10.0.0.10")]);
    // The address stays while one sharer remains, and frees with the last one.
    for name in ["dns-tcp", "dns-udp"] {
        store
            .release(&c1(), &svc("default", name).owner)
            .await
            .expect("release");
    }
    assert_eq!(first_ip(&store, svc("default", "late")).await, "10.0.0.15");
    store
        .release(&c1(), &svc("default", "dns-dot").owner)
        .await
        .expect("release");
    assert_eq!(first_ip(&store, svc("default", "later")).await, "10.0.0.10");
}

async fn sole_user_changes_its_sharing_key(store: SqlStore) {
    apply(&store, spec("p", &["10.0.0.10-10.0.0.20"])).await;
    let mut r = svc("default", "a");
    r.sharing_key = "one".into();
    let before = first_ip(&store, r.clone()).await;
    r.sharing_key = "two".into();
    assert_eq!(first_ip(&store, r.clone()).await, before, "kept in place");
    let mut b = svc("default", "b");
    b.sharing_key = "two".into();
    assert_eq!(
        first_ip(&store, b).await,
        before,
        "the new key is what sharers now match"
    );
}

async fn dual_stack(store: SqlStore) {
    apply(&store, spec("v4only", &["10.0.0.0/30"])).await;
    apply(&store, spec("v6only", &["2001:db8:1::/126"])).await;
    apply(&store, spec("zdual", &["10.1.0.0/30", "2001:db8:2::/126"])).await;
    let dual = |name: &str, policy, primary| AllocRequest {
        policy,
        primary,
        ..svc("default", name)
    };
    // RequireDualStack: both families from one pool.
    assert_eq!(
        ips(
            &store,
            dual("req", FamilyPolicy::RequireDualStack, Family::V4)
        )
        .await,
        ["10.1.0.0", "2001:db8:2::"]
    );
    // IPv6 primary comes first.
    assert_eq!(
        ips(
            &store,
            dual("req6", FamilyPolicy::RequireDualStack, Family::V6)
        )
        .await,
        ["2001:db8:2::1", "10.1.0.1"]
    );
    // PreferDualStack takes a dual pool when one has room.
    assert_eq!(
        ips(
            &store,
            dual("pref", FamilyPolicy::PreferDualStack, Family::V4)
        )
        .await,
        ["10.1.0.2", "2001:db8:2::2"]
    );
    // Single stack IPv6 from the first pool by name that has IPv6.
    assert_eq!(
        ips(
            &store,
            dual("single6", FamilyPolicy::SingleStack, Family::V6)
        )
        .await,
        ["2001:db8:1::"]
    );
    // Fill zdual's IPv6 side; PreferDualStack then falls back to a primary-only pool.
    alloc(&store, dual("fill", FamilyPolicy::SingleStack, Family::V6)).await;
    alloc(
        &store,
        AllocRequest {
            pool: Some("zdual".into()),
            ..dual("fill2", FamilyPolicy::SingleStack, Family::V6)
        },
    )
    .await;
    let l = alloc(
        &store,
        dual("pref2", FamilyPolicy::PreferDualStack, Family::V4),
    )
    .await;
    assert_eq!(l.ips().len(), 1);
    assert_eq!(l.pool(), "v4only");
    // RequireDualStack cannot be met by separate pools.
    let err = store
        .allocate(
            &c1(),
            dual("req-none", FamilyPolicy::RequireDualStack, Family::V4),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Exhausted(_)), "{err:?}");
}

async fn prefer_dual_stack_gains_its_missing_family(store: SqlStore) {
    apply(&store, spec("d", &["10.1.0.0/31", "2001:db8:2::/127"])).await;
    let v6 = |name: &str| AllocRequest {
        primary: Family::V6,
        pool: Some("d".into()),
        ..svc("default", name)
    };
    alloc(&store, v6("x")).await;
    alloc(&store, v6("y")).await;
    let pref = AllocRequest {
        policy: FamilyPolicy::PreferDualStack,
        ..svc("default", "p")
    };
    assert_eq!(
        ips(&store, pref.clone()).await,
        ["10.1.0.0"],
        "no IPv6 left"
    );
    store.release(&c1(), &v6("y").owner).await.expect("release");
    let (lease, created) = store.allocate(&c1(), pref).await.expect("again");
    assert!(!created);
    assert_eq!(lease.ips(), [ip("10.1.0.0"), ip("2001:db8:2::1")]);
}

async fn pool_edits_strand_never_move(store: SqlStore) {
    apply(&store, spec("p", &["10.0.0.0/29"])).await;
    for n in ["a", "b", "c"] {
        alloc(&store, svc("d", n)).await;
    }
    let shrunk = store
        .apply_pool(&ADMIN, spec("p", &["10.0.0.0/31"]), false)
        .await
        .expect("shrink");
    assert_eq!(shrunk.stranded, 1);
    let c = store
        .get_lease(&c1(), &svc("d", "c").owner)
        .await
        .expect("c");
    assert!(c.stranded());
    assert_eq!(c.ips(), [ip("10.0.0.2")], "kept its address");
    let stranded = store
        .list_leases(LeaseFilter {
            stranded_only: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(stranded.leases.len(), 1);
    let st = store.stats(Some("p")).await.expect("stats");
    assert_eq!(
        (st[0].capacity, st[0].in_use, st[0].stranded, st[0].services),
        (2, 2, 1, 3)
    );
    // The owner asking again keeps it.
    assert_eq!(first_ip(&store, svc("d", "c")).await, "10.0.0.2");
    // Only an operator moves it, and only where there is room.
    let err = store
        .move_lease(&c1(), &svc("d", "c").owner)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    let err = store
        .move_lease(&ADMIN, &svc("d", "c").owner)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Exhausted(_)), "{err:?}");
    assert!(
        store
            .get_lease(&c1(), &svc("d", "c").owner)
            .await
            .expect("kept")
            .stranded()
    );
    apply(&store, spec("p", &["10.0.0.0/31", "10.0.0.8/31"])).await;
    let moved = store
        .move_lease(&ADMIN, &svc("d", "c").owner)
        .await
        .expect("move");
    assert_eq!(moved.ips(), [ip("10.0.0.8")]);
    assert!(!moved.stranded());
    // Deleting a pool strands its leases too.
    assert_eq!(store.delete_pool(&ADMIN, "p").await.expect("delete"), 3);
    assert!(
        store
            .get_lease(&c1(), &svc("d", "a").owner)
            .await
            .expect("a")
            .stranded()
    );
}

async fn callers_and_owners(store: SqlStore) {
    apply(
        &store,
        PoolSpec {
            clusters: vec!["east".into()],
            ..spec("east-only", &["10.0.0.0/30"])
        },
    )
    .await;
    let east = Caller::Cluster("east".into());
    let west = Caller::Cluster("west".into());
    let req = |cluster: &str| AllocRequest {
        owner: Owner::Service {
            cluster: cluster.into(),
            namespace: "d".into(),
            name: "s".into(),
        },
        ..svc("d", "s")
    };
    assert!(store.allocate(&east, req("east")).await.is_ok());
    let err = store.allocate(&west, req("west")).await.unwrap_err();
    assert!(
        matches!(err, Error::Exhausted(_)),
        "no pool open to west: {err:?}"
    );
    let err = store
        .allocate(
            &west,
            AllocRequest {
                pool: Some("east-only".into()),
                ..req("west")
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    let err = store.allocate(&west, req("east")).await.unwrap_err();
    assert!(
        matches!(err, Error::PermissionDenied(_)),
        "acting for another cluster: {err:?}"
    );
    let err = store.release(&west, &req("east").owner).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    // A cluster's own pool is open to it alone, and others cannot touch it.
    // Only an operator opens a pool wider than the cluster that declares it.
    let err = store
        .apply_pool(&west, spec("west-pool", &["10.0.1.0/30"]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PermissionDenied(m) if m.contains("an operator does")),
        "{err:?}"
    );
    store
        .apply_pool(&west, PoolSpec::new("west-pool", &["10.0.1.0/30"]), false)
        .await
        .expect("west declares a pool");
    let err = store
        .apply_pool(&east, spec("west-pool", &["10.0.1.0/29"]), false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    assert!(store.allocate(&west, req("west")).await.is_ok());
    let err = store
        .apply_pool(
            &Caller::Client("ipam".into()),
            spec("x", &["10.0.2.0/30"]),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    // Overlaps across pools, whoever declared them.
    let err = store
        .apply_pool(&ADMIN, spec("over", &["10.0.1.2-10.0.1.9"]), false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
}

async fn external_leases_expire_and_renew(store: SqlStore) {
    apply(&store, spec("p", &["10.0.0.0/30"])).await;
    let ipam = Caller::Client("ipam".into());
    let ext = |key: &str, ttl| AllocRequest {
        owner: Owner::External {
            client: "ipam".into(),
            key: key.into(),
        },
        ttl_seconds: ttl,
        ..svc("", "")
    };
    let (short, _) = store
        .allocate(&ipam, ext("vm/short", Some(1)))
        .await
        .expect("short");
    let (kept, _) = store
        .allocate(&ipam, ext("vm/kept", Some(1)))
        .await
        .expect("kept");
    assert!(short.expires_ms.is_some());
    store.renew(&ipam, &kept.owner, 600).await.expect("renew");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(store.expire().await.expect("expire"), 1);
    let err = store.get_lease(&ipam, &short.owner).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(store.get_lease(&ipam, &kept.owner).await.is_ok());
    let err = store
        .renew(&Caller::Client("other".into()), &kept.owner, 5)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    let events = store.events_since(0, None, 100).await.expect("events");
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Allocated,
            EventKind::Allocated,
            EventKind::Updated,
            EventKind::Expired
        ]
    );
    assert!(events.windows(2).all(|w| w[0].revision < w[1].revision));
}

async fn ipv6_48_pool_and_exact_stats(store: SqlStore) {
    apply(&store, spec("big", &["2001:db8:ab::/48", "10.0.0.0/24"])).await;
    let v6 = |n: &str| AllocRequest {
        primary: Family::V6,
        ..svc("d", n)
    };
    assert_eq!(first_ip(&store, v6("a")).await, "2001:db8:ab::");
    assert_eq!(first_ip(&store, v6("b")).await, "2001:db8:ab::1");
    let stats = store.stats(None).await.expect("stats");
    let s6 = stats
        .iter()
        .find(|s| s.family == Family::V6)
        .expect("v6 stats");
    assert_eq!(s6.capacity, 1u128 << 80);
    assert_eq!((s6.in_use, s6.services), (2, 2));
    let s4 = stats
        .iter()
        .find(|s| s.family == Family::V4)
        .expect("v4 stats");
    assert_eq!((s4.capacity, s4.in_use, s4.services), (256, 0, 0));
}

async fn pagination(store: SqlStore) {
    apply(&store, spec("p", &["10.0.0.0/24"])).await;
    for i in 0..7 {
        alloc(&store, svc("d", &format!("s{i}"))).await;
    }
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = store
            .list_leases(LeaseFilter {
                after: after.clone(),
                limit: 3,
                ..Default::default()
            })
            .await
            .expect("page");
        seen.extend(page.leases.iter().map(|l| l.owner.key()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let filtered = store
        .list_leases(LeaseFilter {
            namespace: Some("nope".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("filtered");
    assert!(filtered.leases.is_empty());
}

async fn event_history_is_pruned(store: SqlStore) {
    apply(&store, spec("p", &["10.0.0.0/30"])).await;
    alloc(&store, svc("d", "a")).await;
    alloc(&store, svc("d", "b")).await;
    assert_eq!(store.history_start().await.expect("start"), 1);
    assert_eq!(
        store
            .prune_events(std::time::Duration::from_secs(60))
            .await
            .expect("prune"),
        0
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        store
            .prune_events(std::time::Duration::ZERO)
            .await
            .expect("prune"),
        2
    );
    // Nothing kept: a watch must start from the current revision (2).
    assert_eq!(store.history_start().await.expect("start"), 3);
    alloc(&store, svc("d", "c")).await;
    assert_eq!(store.history_start().await.expect("start"), 3);
    assert_eq!(
        store.events_since(2, None, 10).await.expect("events").len(),
        1
    );
}

/// The announcement view a long-running decider keeps up from the change log (allocations,
/// releases, a pool edit that strands a lease) is the one a fresh decider reads from scratch.
async fn announcements_follow_the_change_log(store: SqlStore) {
    use ferrolb_allocator::assignments;
    use ferrolb_allocator::cluster::{Endpoints, L2Ad};
    use std::sync::Arc;
    use std::time::Duration;

    let store = Arc::new(store);
    apply(&store, spec("p", &["10.0.0.0/28"])).await;
    let front = ferrolb_allocator::selector::LabelSelector {
        match_labels: [("tier".to_string(), "front".to_string())].into(),
        ..Default::default()
    };
    store
        .apply_l2(&L2Ad {
            cluster: "c1".into(),
            name: "front".into(),
            service_selectors: vec![front],
            ..L2Ad::default()
        })
        .await
        .expect("L2Advertisement");
    let running = assignments::spawn(Arc::clone(&store), false, &Default::default());
    for n in 0..8 {
        alloc(&store, svc("d", &format!("s{n}"))).await;
    }
    for n in [1, 6] {
        store
            .release(&c1(), &svc("d", &format!("s{n}")).owner)
            .await
            .expect("release");
    }
    // s7 holds 10.0.0.7, which the smaller pool strands.
    apply(&store, spec("p", &["10.0.0.0/30"])).await;
    alloc(&store, svc("d", "s8")).await;
    // Endpoints written, rewritten and deleted while the decider runs.
    // Only s0 is labelled for the advertisement's service selector.
    let serving = |nodes: &[&str]| Endpoints {
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        any_serving: !nodes.is_empty(),
        local: false,
        labels: [(
            "tier".to_string(),
            if nodes == ["n1"] { "front" } else { "back" }.to_string(),
        )]
        .into(),
    };
    for (name, nodes) in [("s0", &["n1"][..]), ("s2", &["n2"]), ("s3", &["n1", "n2"])] {
        store
            .set_endpoints("c1", "d", name, &serving(nodes))
            .await
            .expect("endpoints");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    store
        .set_endpoints("c1", "d", "s2", &serving(&[]))
        .await
        .expect("endpoints");
    tokio::time::sleep(Duration::from_millis(30)).await;
    store
        .delete_endpoints("c1", "d", "s3")
        .await
        .expect("delete endpoints");
    let settled = |rx: &tokio::sync::watch::Receiver<Arc<assignments::View>>| {
        let v = rx.borrow();
        v.clusters
            .get("c1")
            .map(|c| c.announcements.len())
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while settled(&running) != 7 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the view did not follow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = assignments::spawn(Arc::clone(&store), false, &Default::default());
    let start = std::time::Instant::now();
    while fresh.borrow().version != running.borrow().version {
        assert!(start.elapsed() < Duration::from_secs(10), "no fresh view");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(**fresh.borrow(), **running.borrow());
    let silence = |service: &str| {
        let v = fresh.borrow();
        let a = v.clusters["c1"].announcements.iter();
        let a = a.clone().find(|a| a.services == [service]).cloned();
        a.expect("announced").owner.map_err(|s| s.as_str())
    };
    // The advertisement selects s0 by the labels stored with its endpoints (no announcer is
    // connected, so nobody announces it); the others are not selected.
    assert_eq!(silence("d/s0"), Err("noEligibleNode"));
    assert_eq!(silence("d/s2"), Err("noMatchingAdvertisement"));
    assert_eq!(silence("d/s4"), Err("noMatchingAdvertisement"));
}

both_stores! {
    scenario_first_allocation_is_240 => scenario_pools;
    home_pool_exhausted_after_six => home_pool_runs_out_after_six;
    idempotent_and_grace_period => idempotent_and_grace;
    sharing => sharing_rules;
    sharing_key_changes_in_place => sole_user_changes_its_sharing_key;
    dual_stack_policies => dual_stack;
    prefer_dual_stack_later => prefer_dual_stack_gains_its_missing_family;
    stranded_leases => pool_edits_strand_never_move;
    identity => callers_and_owners;
    ttl => external_leases_expire_and_renew;
    ipv6_48 => ipv6_48_pool_and_exact_stats;
    list_pages => pagination;
    history => event_history_is_pruned;
    announcement_view => announcements_follow_the_change_log;
}

/// Two stores on one database (two replicas) take turns at random: each brings its in-memory
/// state up to date from the other's events before it decides, so nothing fails and the final
/// leases are exactly what the calls returned.
async fn replicas_stay_in_step(db: &common::TestDb) {
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    let stores = [common::open(db).await, common::open(db).await];
    apply(
        &stores[0],
        PoolSpec {
            avoid_buggy_ips: true,
            excluded: vec!["10.0.0.7".into()],
            ..spec("p", &["10.0.0.0/26", "2001:db8::/122"])
        },
    )
    .await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut model: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for _ in 0..400 {
        let store = &stores[rng.random_range(0..2)];
        let n = rng.random_range(0..40);
        let mut r = svc("d", &format!("s{n}"));
        let key = r.owner.key();
        if rng.random_bool(0.4) {
            match store.release(&c1(), &r.owner).await {
                Ok(l) => assert_eq!(model.remove(&key), Some(l.ips()), "{key}"),
                Err(Error::NotFound(_)) => assert!(!model.contains_key(&key), "{key} vanished"),
                Err(e) => panic!("release {key}: {e}"),
            }
            continue;
        }
        r.primary = if rng.random_bool(0.3) {
            Family::V6
        } else {
            Family::V4
        };
        if rng.random_bool(0.3) {
            r.sharing_key = "k".into();
            r.ports = vec![tcp(rng.random_range(1..4))];
        }
        match store.allocate(&c1(), r).await {
            Ok((l, _)) => {
                model.insert(key, l.ips());
            }
            Err(Error::Exhausted(_)) => {}
            Err(e) => panic!("allocate {key}: {e}"),
        }
    }
    let page = stores[1]
        .list_leases(LeaseFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list");
    let stored: HashMap<String, Vec<IpAddr>> = page
        .leases
        .iter()
        .map(|l| (l.owner.key(), l.ips()))
        .collect();
    assert!(model.len() > 10, "the churn should leave leases: {model:?}");
    assert_eq!(stored, model);
}

#[tokio::test]
async fn replicas_stay_in_step_sqlite() {
    replicas_stay_in_step(&common::sqlite_db()).await;
}

#[tokio::test]
async fn replicas_stay_in_step_postgres() {
    replicas_stay_in_step(&common::pg_db()).await;
}

/// Many concurrent calls, several on the same owners, land in shared batches. What was written
/// must be exactly what the writer holds in memory: a second store loaded from a copy of the
/// database makes the same decisions as the first from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_writes_match_the_writers_memory() {
    use rand::{Rng, SeedableRng};
    let db = common::sqlite_db();
    let store = std::sync::Arc::new(common::open(&db).await);
    apply(&store, spec("p", &["10.0.0.0/25", "2001:db8::/121"])).await;
    let mut tasks = Vec::new();
    for t in 0..48u64 {
        let store = std::sync::Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(t);
            for _ in 0..25 {
                let mut r = svc("d", &format!("s{}", rng.random_range(0..30)));
                if rng.random_bool(0.35) {
                    let _ = store.release(&c1(), &r.owner).await;
                    continue;
                }
                r.policy = [FamilyPolicy::SingleStack, FamilyPolicy::PreferDualStack]
                    [rng.random_range(0..2)];
                if rng.random_bool(0.4) {
                    r.sharing_key = ["k", "j"][rng.random_range(0..2)].into();
                    r.ports = vec![tcp(rng.random_range(1..4))];
                }
                match store.allocate(&c1(), r).await {
                    Ok(_) | Err(Error::Exhausted(_)) => {}
                    Err(e) => panic!("allocate: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    // Copy the database file and open a second store on the copy.
    let path = db
        .url
        .trim_start_matches("sqlite://")
        .trim_end_matches("?mode=rwc")
        .to_string();
    let copy = format!("{path}.copy");
    std::fs::copy(&path, &copy).expect("copy the database");
    // SQLite's write-ahead log holds the latest commits until a checkpoint.
    if std::path::Path::new(&format!("{path}-wal")).exists() {
        std::fs::copy(format!("{path}-wal"), format!("{copy}-wal")).expect("copy the log");
    }
    let twin = SqlStore::connect(ferrolb_allocator::store::StoreOptions::new(format!(
        "sqlite://{copy}?mode=rwc"
    )))
    .await
    .expect("open the copy");
    for i in 0..40 {
        let mut r = svc("late", &format!("n{i}"));
        if i % 3 == 0 {
            r.sharing_key = "k".into();
            r.ports = vec![tcp(100 + i)];
        }
        if i % 5 == 0 {
            let victim = svc("d", &format!("s{i}"));
            let a = store.release(&c1(), &victim.owner).await.map(|l| l.ips());
            let b = twin.release(&c1(), &victim.owner).await.map(|l| l.ips());
            assert_eq!(a, b, "release {i}");
        }
        let a = store.allocate(&c1(), r.clone()).await.map(|(l, _)| l.ips());
        let b = twin.allocate(&c1(), r).await.map(|(l, _)| l.ips());
        assert_eq!(a, b, "allocation {i}");
    }
}

/// A database that takes no writes, as a hot standby (or a primary being demoted) does: calls
/// are UNAVAILABLE, to be tried again elsewhere or later, not INTERNAL.
#[tokio::test]
async fn a_read_only_database_is_unavailable_not_internal() {
    let db = common::pg_db();
    let store = common::open(&db).await;
    apply(&store, spec("p", &["10.0.0.0/29"])).await;
    let name = db.name();
    db.psql(
        "postgres",
        &format!(
            "ALTER DATABASE {name} SET default_transaction_read_only = on; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ),
    );
    // The first calls may meet the connections just cut; then every session is read-only.
    let mut answers = Vec::new();
    for _ in 0..20 {
        match store.allocate(&c1(), svc("d", "web")).await {
            Err(Error::Unavailable(m)) if m.contains("read-only") => break,
            other => answers.push(format!("{other:?}")),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        answers.len() < 20,
        "a read-only database never answered UNAVAILABLE: {answers:?}"
    );
    // The store says it cannot take writes (health turns NOT_SERVING on this), and says it can
    // again by itself once the database takes writes.
    let mut writable = store.writable();
    until(&mut writable, false).await;
    db.psql(
        "postgres",
        &format!("ALTER DATABASE {name} RESET default_transaction_read_only"),
    );
    until(&mut writable, true).await;
    alloc(&store, svc("d", "web")).await;
}

/// Waits at most 3 s for the store's writable flag to read `want`.
async fn until(writable: &mut tokio::sync::watch::Receiver<bool>, want: bool) {
    tokio::time::timeout(
        std::time::Duration::from_secs(3),
        writable.wait_for(|w| *w == want),
    )
    .await
    .unwrap_or_else(|_| panic!("the store never said writable={want}"))
    .expect("the store is gone");
}

/// A URL that names several hosts finds the one that takes writes, whatever the order.
#[tokio::test]
async fn the_writable_host_is_found_among_several() {
    let db = common::pg_db();
    let (head, tail) = db.url.split_once('@').expect("a user in the test URL");
    let (_, path) = tail.split_once('/').expect("a database in the test URL");
    let host = &tail[..tail.len() - path.len() - 1];
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let url = format!("{head}@127.0.0.1:{dead},{host}/{path}?target_session_attrs=read-write");
    let store = SqlStore::connect(ferrolb_allocator::store::StoreOptions::new(url))
        .await
        .expect("the second host takes writes");
    apply(&store, spec("p", &["10.0.0.0/29"])).await;
    assert_eq!(first_ip(&store, svc("d", "web")).await, "10.0.0.0");
    assert!(*store.writable().borrow());
}

/// A batch whose commit fails leaves nothing behind in the writer's memory, even when another
/// replica meanwhile moves the store's revision by exactly as much as the failed batch would
/// have: the owner's next Allocate writes its lease, and no address is given twice.
#[tokio::test]
async fn a_failed_commit_leaves_no_ghost_lease() {
    let db = common::pg_db();
    let a = common::open(&db).await;
    let b = common::open(&db).await;
    apply(&a, spec("p", &["10.0.0.0/29"])).await;
    alloc(&a, svc("d", "first")).await;
    // A check that PostgreSQL runs only at COMMIT refuses the ghost's lease row.
    db.psql(
        db.name(),
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'commit refused by the test'; END $$; \
         CREATE CONSTRAINT TRIGGER refuse_ghost AFTER INSERT ON leases \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
         WHEN (NEW.owner_key LIKE '%ghost%') EXECUTE FUNCTION refuse()",
    );
    let failed = a.allocate(&c1(), svc("d", "ghost")).await;
    assert!(
        failed.is_err(),
        "the refused commit was acknowledged: {failed:?}"
    );
    // The other replica moves the revision by one allocation, as the failed batch would have.
    let other = first_ip(&b, svc("d", "other")).await;
    db.psql(db.name(), "DROP TRIGGER refuse_ghost ON leases");
    let ghost = first_ip(&a, svc("d", "ghost")).await;
    assert_ne!(ghost, other, "one address was given to two owners");
    let stored = b
        .get_lease(&c1(), &svc("d", "ghost").owner)
        .await
        .expect("the acknowledged lease is in the database");
    assert_eq!(stored.ips(), vec![ip(&ghost)]);
}

/// The embedded store's writable flag stays open and true: a health loop that waits on it waits,
/// rather than waking at once forever on a closed channel.
#[tokio::test]
async fn the_embedded_store_is_writable_and_its_flag_waits() {
    let db = common::sqlite_db();
    let store = common::open(&db).await;
    let mut writable = store.writable();
    assert!(*writable.borrow());
    let woke =
        tokio::time::timeout(std::time::Duration::from_millis(200), writable.changed()).await;
    assert!(woke.is_err(), "the flag changed or closed: {woke:?}");
}
