//! What the agent does to bring the node in line with its assignments, decided before any of it
//! is done: which bindings go and come, which addresses the userspace responder answers, what is
//! announced gratuitously and what falls silent. Pure, so every case is a table test; the agent
//! carries the plan out (netlink, the responders).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What the plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The addresses the allocator assigned, each with the interfaces it names (none: every
    /// eligible one).
    pub assigned: &'a BTreeMap<IpAddr, Vec<String>>,
    /// The eligible interfaces, index → name.
    pub interfaces: &'a BTreeMap<u32, String>,
    /// Bindings in place.
    pub bound: &'a BTreeSet<(u32, IpAddr)>,
    /// Where each address was served before.
    pub serving: &'a BTreeMap<IpAddr, BTreeSet<u32>>,
    /// The kernel answers (addresses are bound); otherwise the userspace responder does.
    pub kernel_binds: bool,
    /// The allocator's word has arrived: bindings it does not name may go.
    pub synced: bool,
    /// Announce everything again (the stream opened again).
    pub reannounce: bool,
}

/// What to do, in this order: unbind, bind, answer, announce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Where each address is served from now on.
    pub desired: BTreeMap<IpAddr, BTreeSet<u32>>,
    /// Bindings to remove: silence first, before anything is gained.
    pub unbind: Vec<(u32, IpAddr)>,
    /// Bindings to add.
    pub bind: Vec<(u32, IpAddr)>,
    /// Per interface, what the userspace responder answers (a binding that fails joins it).
    pub answer: BTreeMap<u32, BTreeSet<IpAddr>>,
    /// Addresses to announce gratuitously, on these interfaces.
    pub announce: Vec<(IpAddr, Vec<u32>)>,
    /// Addresses no longer served.
    pub silenced: Vec<IpAddr>,
    /// Addresses assigned with no eligible interface among those they name.
    pub homeless: Vec<(IpAddr, Vec<String>)>,
}

pub fn plan(i: Inputs<'_>) -> Plan {
    let mut p = Plan::default();
    for (ip, names) in i.assigned {
        let on: BTreeSet<u32> = i
            .interfaces
            .iter()
            .filter(|(_, name)| names.is_empty() || names.contains(name))
            .map(|(index, _)| *index)
            .collect();
        if on.is_empty() {
            p.homeless.push((*ip, names.clone()));
        } else {
            p.desired.insert(*ip, on);
        }
    }
    let want: BTreeSet<(u32, IpAddr)> = p
        .desired
        .iter()
        .flat_map(|(ip, on)| on.iter().map(move |i| (*i, *ip)))
        .collect();
    if i.kernel_binds {
        if i.synced {
            p.unbind = i.bound.difference(&want).copied().collect();
        }
        p.bind = want.difference(i.bound).copied().collect();
    } else {
        for (index, ip) in &want {
            p.answer.entry(*index).or_default().insert(*ip);
        }
    }
    for (ip, on) in &p.desired {
        let before = i.serving.get(ip);
        let fresh: Vec<u32> = on
            .iter()
            .filter(|index| i.reannounce || before.is_none_or(|b| !b.contains(index)))
            .copied()
            .collect();
        if !fresh.is_empty() {
            p.announce.push((*ip, fresh));
        }
    }
    p.silenced = i
        .serving
        .keys()
        .filter(|ip| !p.desired.contains_key(ip))
        .copied()
        .collect();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    struct World {
        assigned: BTreeMap<IpAddr, Vec<String>>,
        interfaces: BTreeMap<u32, String>,
        bound: BTreeSet<(u32, IpAddr)>,
        serving: BTreeMap<IpAddr, BTreeSet<u32>>,
    }

    fn world(
        assigned: &[(&str, &[&str])],
        bound: &[(u32, &str)],
        serving: &[(&str, &[u32])],
    ) -> World {
        World {
            assigned: assigned
                .iter()
                .map(|(a, ifs)| (ip(a), ifs.iter().map(|s| s.to_string()).collect()))
                .collect(),
            interfaces: [(2, "eth0".to_string()), (3, "eth1".to_string())].into(),
            bound: bound.iter().map(|(i, a)| (*i, ip(a))).collect(),
            serving: serving
                .iter()
                .map(|(a, on)| (ip(a), on.iter().copied().collect()))
                .collect(),
        }
    }

    fn run(w: &World, kernel_binds: bool, synced: bool, reannounce: bool) -> Plan {
        plan(Inputs {
            assigned: &w.assigned,
            interfaces: &w.interfaces,
            bound: &w.bound,
            serving: &w.serving,
            kernel_binds,
            synced,
            reannounce,
        })
    }

    #[test]
    fn plans() {
        let a = "192.168.1.240";
        let b = "192.168.1.241";
        struct Case {
            what: &'static str,
            world: World,
            kernel: bool,
            synced: bool,
            again: bool,
            unbind: Vec<(u32, IpAddr)>,
            bind: Vec<(u32, IpAddr)>,
            answer: Vec<(u32, IpAddr)>,
            announce: Vec<(IpAddr, Vec<u32>)>,
            silenced: Vec<IpAddr>,
        }
        let cases = [
            Case {
                what: "a new address on every interface, bound",
                world: world(&[(a, &[])], &[], &[]),
                kernel: true,
                synced: true,
                again: false,
                unbind: vec![],
                bind: vec![(2, ip(a)), (3, ip(a))],
                answer: vec![],
                announce: vec![(ip(a), vec![2, 3])],
                silenced: vec![],
            },
            Case {
                what: "an address named on one interface, answered in userspace",
                world: world(&[(a, &["eth1"])], &[], &[]),
                kernel: false,
                synced: true,
                again: false,
                unbind: vec![],
                bind: vec![],
                answer: vec![(3, ip(a))],
                announce: vec![(ip(a), vec![3])],
                silenced: vec![],
            },
            Case {
                what: "a lost address is unbound and silenced, the kept one not announced again",
                world: world(
                    &[(b, &["eth0"])],
                    &[(2, a), (2, b)],
                    &[(a, &[2]), (b, &[2])],
                ),
                kernel: true,
                synced: true,
                again: false,
                unbind: vec![(2, ip(a))],
                bind: vec![],
                answer: vec![],
                announce: vec![],
                silenced: vec![ip(a)],
            },
            Case {
                what: "before the allocator's word nothing is unbound",
                world: world(&[], &[(2, a)], &[]),
                kernel: true,
                synced: false,
                again: false,
                unbind: vec![],
                bind: vec![],
                answer: vec![],
                announce: vec![],
                silenced: vec![],
            },
            Case {
                what: "a stream opened again announces everything again",
                world: world(&[(a, &["eth0"])], &[(2, a)], &[(a, &[2])]),
                kernel: true,
                synced: true,
                again: true,
                unbind: vec![],
                bind: vec![],
                answer: vec![],
                announce: vec![(ip(a), vec![2])],
                silenced: vec![],
            },
            Case {
                what: "an address gains an interface: announced there only",
                world: world(&[(a, &[])], &[(2, a)], &[(a, &[2])]),
                kernel: true,
                synced: true,
                again: false,
                unbind: vec![],
                bind: vec![(3, ip(a))],
                answer: vec![],
                announce: vec![(ip(a), vec![3])],
                silenced: vec![],
            },
        ];
        for c in cases {
            let p = run(&c.world, c.kernel, c.synced, c.again);
            let answer: Vec<(u32, IpAddr)> = p
                .answer
                .iter()
                .flat_map(|(i, ips)| ips.iter().map(move |ip| (*i, *ip)))
                .collect();
            assert_eq!(p.unbind, c.unbind, "{}: unbind", c.what);
            assert_eq!(p.bind, c.bind, "{}: bind", c.what);
            assert_eq!(answer, c.answer, "{}: answer", c.what);
            assert_eq!(p.announce, c.announce, "{}: announce", c.what);
            assert_eq!(p.silenced, c.silenced, "{}: silenced", c.what);
        }
    }

    #[test]
    fn an_address_without_an_eligible_interface_is_named() {
        let w = world(&[("192.168.1.240", &["wlan0"])], &[], &[]);
        let p = run(&w, true, true, false);
        assert_eq!(
            p.homeless,
            [(ip("192.168.1.240"), vec!["wlan0".to_string()])]
        );
        assert!(p.desired.is_empty() && p.bind.is_empty() && p.announce.is_empty());
    }
}
