//! MetalLB's allocation rules as table tests on the pure state, without a database: each case is
//! a set of pools and a sequence of steps (allocations with what they must give, releases). The
//! store tests keep persistence, replicas and events.

use std::net::IpAddr;

use super::State;
use crate::addr::Family;
use crate::lease::{AllocRequest, EventKind, FamilyPolicy, Port, Protocol};
use crate::pool::{Caller, Pool, PoolSpec, ServiceAllocation};
use crate::selector::{LabelSelector, Labels};

/// What a step must give.
enum Want {
    Ips(&'static [&'static str]),
    /// The error's kind, as its gRPC code.
    Refused(&'static str),
}

enum Step {
    Alloc(&'static str, Box<AllocRequest>, Want),
    Release(&'static str),
}

fn svc(name: &str) -> AllocRequest {
    AllocRequest::service("c", "default", name)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn tcp(port: u16) -> Port {
    Port {
        protocol: Protocol::Tcp,
        port,
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn shared(name: &str, key: &str, backend: &str, ports: Vec<Port>) -> AllocRequest {
    AllocRequest {
        sharing_key: key.into(),
        backend_key: backend.into(),
        ports,
        ..svc(name)
    }
}

fn dual(name: &str, policy: FamilyPolicy, primary: Family) -> AllocRequest {
    AllocRequest {
        policy,
        primary,
        ..svc(name)
    }
}

fn pinned(spec: PoolSpec, priority: i32, namespaces: &[&str]) -> PoolSpec {
    PoolSpec {
        service_allocation: Some(ServiceAllocation {
            priority,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..spec
    }
}

/// Runs the steps on a state with `pools`; a failure names the case and the step.
fn run(case: &str, pools: Vec<PoolSpec>, steps: Vec<Step>) {
    let mut s = State::new(0, 3_600_000);
    s.set_pools(
        pools
            .into_iter()
            .map(|p| Pool::new(p).expect("valid pool"))
            .collect(),
        1,
    );
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Alloc(what, req, want) => {
                let req = *req;
                let got = s.allocate(&Caller::Admin, &req, 0);
                match (got, want) {
                    (Ok(a), Want::Ips(ips)) => {
                        let have: Vec<String> =
                            a.lease.ips().iter().map(|i| i.to_string()).collect();
                        assert_eq!(have, ips, "{case}, step {i} ({what})");
                    }
                    (Err(e), Want::Refused(code)) => {
                        assert_eq!(e.code_name(), code, "{case}, step {i} ({what}): {e}");
                    }
                    (Ok(a), Want::Refused(code)) => {
                        panic!(
                            "{case}, step {i} ({what}): want {code}, got {:?}",
                            a.lease.ips()
                        )
                    }
                    (Err(e), Want::Ips(ips)) => {
                        panic!("{case}, step {i} ({what}): want {ips:?}, got {e}")
                    }
                }
            }
            Step::Release(name) => {
                s.release(&Caller::Admin, &svc(name).owner, EventKind::Released, 0)
                    .unwrap_or_else(|e| panic!("{case}, step {i}: release {name}: {e}"));
            }
        }
    }
}

use Step::Release;

/// An allocation step.
fn alloc(what: &'static str, req: AllocRequest, want: Want) -> Step {
    Step::Alloc(what, Box::new(req), want)
}
use Want::{Ips, Refused};

#[test]
fn sharing() {
    let udp53 = Port {
        protocol: Protocol::Udp,
        port: 53,
    };
    run(
        "sharing",
        vec![PoolSpec::new("p", &["10.0.0.10-10.0.0.20"])],
        vec![
            alloc(
                "first with a key",
                shared("dns-tcp", "dns", "", vec![tcp(53)]),
                Ips(&["10.0.0.10"]),
            ),
            alloc(
                "same key, other protocol",
                shared("dns-udp", "dns", "", vec![udp53]),
                Ips(&["10.0.0.10"]),
            ),
            alloc(
                "same key, same port",
                shared("dns-tcp2", "dns", "", vec![tcp(53)]),
                Ips(&["10.0.0.11"]),
            ),
            alloc(
                "other key",
                shared("web", "web", "", vec![tcp(80)]),
                Ips(&["10.0.0.12"]),
            ),
            alloc(
                "other backend key",
                shared("dns-local", "dns", "app=dns", vec![tcp(853)]),
                Ips(&["10.0.0.13"]),
            ),
            alloc("no key is exclusive", svc("solo"), Ips(&["10.0.0.14"])),
            alloc(
                "joining an exclusive address",
                AllocRequest {
                    requested_ips: vec![ip("10.0.0.14")],
                    ..shared("intruder", "dns", "", vec![tcp(54)])
                },
                Refused("FAILED_PRECONDITION"),
            ),
            alloc(
                "asking for a shared address with a port in use",
                AllocRequest {
                    requested_ips: vec![ip("10.0.0.10")],
                    ..shared("dns-tcp3", "dns", "", vec![tcp(53)])
                },
                Refused("FAILED_PRECONDITION"),
            ),
            alloc(
                "asking for a shared address with a free port",
                AllocRequest {
                    requested_ips: vec![ip("10.0.0.10")],
                    ..shared("dns-dot", "dns", "", vec![tcp(853)])
                },
                Ips(&["10.0.0.10"]),
            ),
            Release("dns-tcp"),
            Release("dns-udp"),
            alloc(
                "the address stays while a sharer remains",
                svc("late"),
                Ips(&["10.0.0.15"]),
            ),
            Release("dns-dot"),
            alloc(
                "and frees with the last one",
                svc("later"),
                Ips(&["10.0.0.10"]),
            ),
        ],
    );
}

#[test]
fn dual_stack() {
    let pools = || {
        vec![
            PoolSpec::new("v4only", &["10.0.0.0/30"]),
            PoolSpec::new("v6only", &["2001:db8:1::/126"]),
            PoolSpec::new("zdual", &["10.1.0.0/30", "2001:db8:2::/126"]),
        ]
    };
    use FamilyPolicy::{
        PreferDualStack as Prefer, RequireDualStack as Require, SingleStack as Single,
    };
    run(
        "dual stack",
        pools(),
        vec![
            alloc(
                "require: both from one pool",
                dual("req", Require, Family::V4),
                Ips(&["10.1.0.0", "2001:db8:2::"]),
            ),
            alloc(
                "IPv6 primary first",
                dual("req6", Require, Family::V6),
                Ips(&["2001:db8:2::1", "10.1.0.1"]),
            ),
            alloc(
                "prefer takes a dual pool",
                dual("pref", Prefer, Family::V4),
                Ips(&["10.1.0.2", "2001:db8:2::2"]),
            ),
            alloc(
                "single IPv6",
                dual("single6", Single, Family::V6),
                Ips(&["2001:db8:1::"]),
            ),
            alloc(
                "fill v6only",
                dual("fill", Single, Family::V6),
                Ips(&["2001:db8:1::1"]),
            ),
            alloc(
                "fill zdual's IPv6",
                AllocRequest {
                    pool: Some("zdual".into()),
                    ..dual("fill2", Single, Family::V6)
                },
                Ips(&["2001:db8:2::3"]),
            ),
            alloc(
                "prefer falls back to the primary family",
                dual("pref2", Prefer, Family::V4),
                Ips(&["10.0.0.0"]),
            ),
            alloc(
                "require cannot use two pools",
                dual("req-none", Require, Family::V4),
                Refused("RESOURCE_EXHAUSTED"),
            ),
        ],
    );
    run(
        "prefer gains its missing family from its pool",
        vec![PoolSpec::new("d", &["10.1.0.0/31", "2001:db8:2::/127"])],
        vec![
            alloc(
                "v6 x",
                AllocRequest {
                    pool: Some("d".into()),
                    ..dual("x", Single, Family::V6)
                },
                Ips(&["2001:db8:2::"]),
            ),
            alloc(
                "v6 y",
                AllocRequest {
                    pool: Some("d".into()),
                    ..dual("y", Single, Family::V6)
                },
                Ips(&["2001:db8:2::1"]),
            ),
            alloc(
                "no IPv6 left",
                dual("p", Prefer, Family::V4),
                Ips(&["10.1.0.0"]),
            ),
            Release("y"),
            alloc(
                "again",
                dual("p", Prefer, Family::V4),
                Ips(&["10.1.0.0", "2001:db8:2::1"]),
            ),
        ],
    );
}

#[test]
fn priorities_and_selectors() {
    let gold = PoolSpec {
        service_allocation: Some(ServiceAllocation {
            priority: 5,
            service_selectors: vec![LabelSelector {
                match_labels: labels(&[("tier", "gold")]),
                match_expressions: vec![],
            }],
            ..Default::default()
        }),
        ..PoolSpec::new("gold", &["10.4.0.0/30"])
    };
    let team_b = PoolSpec {
        service_allocation: Some(ServiceAllocation {
            priority: 1,
            namespace_selectors: vec![LabelSelector {
                match_labels: labels(&[("team", "b")]),
                match_expressions: vec![],
            }],
            ..Default::default()
        }),
        ..PoolSpec::new("team-b", &["10.5.0.0/30"])
    };
    let in_ns = |ns: &str, name: &str| AllocRequest::service("c", ns, name);
    run(
        "priorities",
        vec![
            PoolSpec::new("a-generic", &["10.0.0.0/30"]),
            pinned(PoolSpec::new("web-low", &["10.1.0.0/30"]), 20, &["web"]),
            pinned(PoolSpec::new("web-high", &["10.2.0.0/30"]), 10, &["web"]),
            pinned(PoolSpec::new("web-unset", &["10.3.0.0/30"]), 0, &["web"]),
            gold,
            team_b,
        ],
        vec![
            alloc(
                "priority 10 before 20 and unset",
                in_ns("web", "x"),
                Ips(&["10.2.0.0"]),
            ),
            alloc(
                "pinned pools are not generic",
                in_ns("other", "x"),
                Ips(&["10.0.0.0"]),
            ),
            alloc(
                "a service selector, priority 5",
                AllocRequest {
                    service_labels: labels(&[("tier", "gold")]),
                    ..in_ns("web", "g")
                },
                Ips(&["10.4.0.0"]),
            ),
            alloc(
                "a namespace selector",
                AllocRequest {
                    namespace_labels: labels(&[("team", "b")]),
                    ..in_ns("ns-b", "t")
                },
                Ips(&["10.5.0.0"]),
            ),
            alloc(
                "a named pool must still be compatible",
                AllocRequest {
                    pool: Some("web-high".into()),
                    ..in_ns("other", "y")
                },
                Refused("FAILED_PRECONDITION"),
            ),
        ],
    );
}

#[test]
fn avoid_buggy_ips_and_exclusions() {
    run(
        "avoidBuggyIPs",
        vec![
            PoolSpec {
                avoid_buggy_ips: true,
                excluded: vec!["10.0.1.1".into()],
                ..PoolSpec::new("p", &["10.0.0.254-10.0.1.3"])
            },
            PoolSpec::new("plain", &["10.9.0.255-10.9.1.0"]),
        ],
        vec![
            alloc("first", svc("a"), Ips(&["10.0.0.254"])),
            alloc(
                ".255, .0 and the excluded .1 are skipped",
                svc("b"),
                Ips(&["10.0.1.2"]),
            ),
            alloc(
                "a buggy address is not handed out by request either",
                AllocRequest {
                    requested_ips: vec![ip("10.0.1.0")],
                    ..svc("c")
                },
                Refused("INVALID_ARGUMENT"),
            ),
            alloc(
                "without the flag .255 is handed out",
                AllocRequest {
                    pool: Some("plain".into()),
                    ..svc("x")
                },
                Ips(&["10.9.0.255"]),
            ),
            alloc(
                "and .0",
                AllocRequest {
                    pool: Some("plain".into()),
                    ..svc("y")
                },
                Ips(&["10.9.1.0"]),
            ),
        ],
    );
}

#[test]
fn explicit_addresses_and_named_pools() {
    run(
        "explicit addresses",
        vec![
            PoolSpec::new("auto", &["10.0.0.0/29"]),
            PoolSpec {
                auto_assign: false,
                ..PoolSpec::new("manual", &["10.0.1.0/29", "2001:db8::/125"])
            },
            PoolSpec::new("v6", &["2001:db8:1::/125"]),
        ],
        vec![
            alloc("manual is never automatic", svc("a"), Ips(&["10.0.0.0"])),
            alloc(
                "but usable by name",
                AllocRequest {
                    pool: Some("manual".into()),
                    ..svc("n")
                },
                Ips(&["10.0.1.0"]),
            ),
            alloc(
                "both families by address",
                AllocRequest {
                    requested_ips: vec![ip("10.0.1.5"), ip("2001:db8::5")],
                    policy: FamilyPolicy::RequireDualStack,
                    ..svc("e")
                },
                Ips(&["10.0.1.5", "2001:db8::5"]),
            ),
            alloc(
                "both families by address, from two pools (MetalLB: one pool)",
                AllocRequest {
                    requested_ips: vec![ip("10.0.1.4"), ip("2001:db8:1::4")],
                    policy: FamilyPolicy::RequireDualStack,
                    ..svc("split")
                },
                Refused("INVALID_ARGUMENT"),
            ),
            alloc(
                "an address in no pool",
                AllocRequest {
                    requested_ips: vec![ip("192.0.2.1")],
                    ..svc("x")
                },
                Refused("INVALID_ARGUMENT"),
            ),
            alloc(
                "an address outside the named pool",
                AllocRequest {
                    requested_ips: vec![ip("10.0.1.6")],
                    pool: Some("auto".into()),
                    ..svc("x")
                },
                Refused("INVALID_ARGUMENT"),
            ),
            alloc(
                "an address someone holds",
                AllocRequest {
                    requested_ips: vec![ip("10.0.1.5")],
                    ..svc("x")
                },
                Refused("FAILED_PRECONDITION"),
            ),
            alloc(
                "a pool that does not exist",
                AllocRequest {
                    pool: Some("nope".into()),
                    ..svc("x")
                },
                Refused("NOT_FOUND"),
            ),
            alloc(
                "asking for another address moves the lease",
                AllocRequest {
                    requested_ips: vec![ip("10.0.0.6")],
                    ..svc("a")
                },
                Ips(&["10.0.0.6"]),
            ),
            alloc(
                "the old address is free again",
                svc("b"),
                Ips(&["10.0.0.0"]),
            ),
        ],
    );
}
