//! The state's own bookkeeping: runs, remembered releases, events, quotas.

use super::*;
use crate::pool::PoolSpec;

fn state(pools: &[(&str, &[&str])]) -> State {
    let mut s = State::new(0, 3_600_000);
    s.set_pools(
        pools
            .iter()
            .map(|(name, addrs)| Pool::new(PoolSpec::new(name, addrs)).expect("valid pool"))
            .collect(),
        1,
    );
    s
}

fn req(name: &str) -> AllocRequest {
    AllocRequest::service("c", "d", name)
}

fn ip_of(s: &mut State, name: &str) -> String {
    s.allocate(&Caller::Admin, &req(name), 0)
        .expect("allocates")
        .lease
        .ips()[0]
        .to_string()
}

#[test]
fn runs_merge_and_split() {
    let mut s = state(&[("p", &["10.0.0.0/29"])]);
    for n in ["a", "b", "c", "d"] {
        ip_of(&mut s, n);
    }
    assert_eq!(s.runs.len(), 1);
    s.release(&Caller::Admin, &req("b").owner, EventKind::Released, 0)
        .expect("release");
    assert_eq!(s.runs.len(), 2, "{:?}", s.runs);
    assert_eq!(ip_of(&mut s, "e"), "10.0.0.1", "the hole is filled first");
    assert_eq!(s.runs.len(), 1);
    assert_eq!(s.revision(), 6);
}

#[test]
fn old_releases_are_forgotten() {
    let mut s = state(&[("p", &["10.0.0.0/16"])]);
    for i in 0..5000u128 {
        s.remember_release(&format!("o{i}"), Family::V4, i, i as i64);
    }
    // Releases at 0..5000 ms with a one-hour grace period: all still count.
    assert_eq!(s.recent.len(), 5000);
    s.remember_release("late", Family::V4, 1, 10_000_000);
    // The map is swept when it grows past a power of two (8192 here).
    for i in 0..4000u128 {
        s.remember_release(&format!("p{i}"), Family::V4, i, 10_000_000);
    }
    assert!(
        s.recent.len() < 5000,
        "expired releases are dropped: {}",
        s.recent.len()
    );
}

#[test]
fn failed_reallocation_changes_nothing() {
    let mut s = state(&[("p", &["10.0.0.0/31"]), ("q", &["10.1.0.0/32"])]);
    ip_of(&mut s, "a");
    ip_of(&mut s, "b");
    let rev = s.revision();
    let mut r = req("a");
    r.pool = Some("nope".into());
    assert!(s.allocate(&Caller::Admin, &r, 0).is_err());
    assert_eq!(s.revision(), rev);
    assert_eq!(
        s.lease(&r.owner.key()).map(|l| l.ips()[0].to_string()),
        Some("10.0.0.0".into())
    );
    assert_eq!(s.runs.len(), 1);
}

#[test]
fn events_rebuild_the_same_state() {
    let mut a = state(&[("p", &["10.0.0.0/28"])]);
    let mut b = state(&[("p", &["10.0.0.0/28"])]);
    let mut changes = Vec::new();
    for n in ["a", "b", "c"] {
        changes.push(
            a.allocate(&Caller::Admin, &req(n), 0)
                .expect("alloc")
                .change
                .expect("change"),
        );
    }
    changes.push(
        a.release(&Caller::Admin, &req("b").owner, EventKind::Released, 5)
            .expect("release"),
    );
    for c in changes {
        b.apply_event(c.lease.revision, c.kind, c.lease, 5);
    }
    assert_eq!(b.revision(), a.revision());
    assert_eq!(b.runs, a.runs);
    assert_eq!(
        ip_of(&mut b, "b"),
        "10.0.0.1",
        "the grace period came along with the event"
    );
}

#[test]
fn client_quota_and_ttl_cap() {
    let mut s = State::new(0, 3_600_000).with_limits(ClientLimits {
        max_leases: 2,
        max_ttl_seconds: 60,
    });
    let mut open = PoolSpec::new("p", &["10.0.0.0/28"]);
    open.clients = vec![crate::pool::EVERYONE.into()];
    s.set_pools(vec![Pool::new(open).expect("valid pool")], 1);
    let ext = |key: &str, ttl: Option<u32>| AllocRequest {
        owner: Owner::External {
            client: "x".into(),
            key: key.into(),
        },
        ttl_seconds: ttl,
        ..req("unused")
    };
    let x = Caller::Client("x".into());
    // No TTL asked for: the maximum.
    let lease = s.allocate(&x, &ext("a", None), 1000).expect("first").lease;
    assert_eq!(lease.expires_ms, Some(1000 + 60_000));
    let e = s
        .allocate(&x, &ext("b", Some(61)), 0)
        .expect_err("over the cap");
    assert!(e.to_string().contains("more than the maximum of 60"), "{e}");
    s.allocate(&x, &ext("b", Some(30)), 0).expect("second");
    // Asking again for a lease it holds is no new lease.
    s.allocate(&x, &ext("b", Some(30)), 0).expect("idempotent");
    let e = s
        .allocate(&x, &ext("c", None), 0)
        .expect_err("over the quota");
    assert!(matches!(e, Error::Exhausted(_)), "{e}");
    assert!(e.to_string().contains("quota"), "{e}");
    // Another client has a quota of its own; a release frees one.
    let y = Caller::Client("y".into());
    let other = AllocRequest {
        owner: Owner::External {
            client: "y".into(),
            key: "a".into(),
        },
        ..ext("a", None)
    };
    s.allocate(&y, &other, 0).expect("y's own quota");
    s.release(&x, &ext("a", None).owner, EventKind::Released, 0)
        .expect("release");
    s.allocate(&x, &ext("c", None), 0).expect("room again");
    assert!(s.renew(&x, &ext("c", None).owner, 61, 0).is_err());
    assert!(s.renew(&x, &ext("c", None).owner, 60, 0).is_ok());
}
