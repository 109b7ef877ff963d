//! The announcer defends itself: even an authenticated allocator cannot make it answer for an
//! address no service may have. Loopback, multicast, broadcast, link-local and unspecified
//! addresses, the node's own addresses, and (with `--allowed-cidrs`) anything outside the
//! operator's ranges are refused, counted and logged with the address.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use crate::bgp::wire::Prefix;
use crate::l2::{Counters, RefusalLabels};
use crate::links::Pattern;

/// Why an assignment is refused; the text is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Unspecified,
    Loopback,
    Multicast,
    Broadcast,
    LinkLocal,
    NodeAddress,
    NotAllowed,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unspecified => "unspecified",
            Refusal::Loopback => "loopback",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "broadcast",
            Refusal::LinkLocal => "link_local",
            Refusal::NodeAddress => "node_address",
            Refusal::NotAllowed => "outside_allowed_cidrs",
        }
    }
}

/// What the announcer accepts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Empty: every address that is not refused for what it is.
    pub allowed: Vec<Prefix>,
}

fn contains(p: &Prefix, ip: IpAddr) -> bool {
    Prefix::new(ip, p.len).is_some_and(|q| q.addr == p.addr)
}

/// Addresses nothing may announce, whatever the allocator says.
fn special(ip: IpAddr) -> Option<Refusal> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        _ if ip.is_unspecified() => Some(Refusal::Unspecified),
        _ if ip.is_loopback() => Some(Refusal::Loopback),
        _ if ip.is_multicast() => Some(Refusal::Multicast),
        IpAddr::V4(v4) if v4.is_broadcast() => Some(Refusal::Broadcast),
        IpAddr::V4(v4) if v4.is_link_local() => Some(Refusal::LinkLocal),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(Refusal::LinkLocal),
        _ => None,
    }
}

impl Policy {
    /// Parses `--allowed-cidrs` (comma separated; empty allows all).
    pub fn parse(cidrs: &str) -> Result<Policy, String> {
        let allowed = cidrs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let p: Prefix = s.parse()?;
                if p.to_string() != s && !s.contains(':') {
                    return Err(format!("{s:?} has host bits set (did you mean {p}?)"));
                }
                Ok(p)
            })
            .collect::<Result<_, String>>()?;
        Ok(Policy { allowed })
    }

    /// May this node advertise `prefix` over BGP? As for an address, and with
    /// `--allowed-cidrs` the whole prefix must lie inside one of them (an aggregate may not
    /// reach past the operator's ranges).
    pub fn check_prefix(&self, prefix: &Prefix, own: &BTreeSet<IpAddr>) -> Result<(), Refusal> {
        self.check(prefix.addr, own)?;
        let inside = |p: &Prefix| p.len <= prefix.len && contains(p, prefix.addr);
        if !self.allowed.is_empty() && !self.allowed.iter().any(inside) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    /// May this node announce `ip`? `own` are the node's own addresses (those it did not bind
    /// for a service).
    pub fn check(&self, ip: IpAddr, own: &BTreeSet<IpAddr>) -> Result<(), Refusal> {
        if let Some(r) = special(ip) {
            return Err(r);
        }
        if own.contains(&ip) {
            return Err(Refusal::NodeAddress);
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|p| contains(p, ip)) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }
}

/// The policy at work: what the node refuses, counted and logged, against its own addresses
/// as they are now.
#[derive(Clone)]
pub struct Guard {
    pub policy: Policy,
    /// Interfaces whose addresses are not the node's (kube-proxy puts service addresses there).
    pub exclude: Vec<Pattern>,
    pub counters: Arc<Counters>,
}

impl Guard {
    /// The node's own addresses: those on its interfaces (but the excluded ones) that are not
    /// in `ours`, what ferrolb bound. Read afresh at every call.
    pub fn own_addresses(&self, ours: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
        pnet_datalink::interfaces()
            .into_iter()
            .filter(|i| !self.exclude.iter().any(|p| p.matches(&i.name)))
            .flat_map(|i| i.ips.into_iter().map(|n| n.ip()))
            .filter(|ip| !ours.contains(ip))
            .collect()
    }

    /// Whether `verdict` refuses `what` (an address or a prefix, shown as `shown`); a refusal
    /// is counted by reason and logged.
    pub fn refused(
        &self,
        what: &str,
        verdict: Result<(), Refusal>,
        shown: &dyn std::fmt::Display,
    ) -> bool {
        let Err(r) = verdict else {
            return false;
        };
        tracing::warn!(%shown, reason = r.label(), what, "allocator assigned what this node never announces; refused");
        let labels = RefusalLabels {
            reason: r.label().into(),
        };
        self.counters.refused.get_or_create(&labels).inc();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn refusals() {
        let p = Policy::default();
        let own: BTreeSet<IpAddr> = [ip("10.250.0.11")].into();
        for (addr, want) in [
            ("0.0.0.0", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            ("127.0.0.5", Refusal::Loopback),
            ("::1", Refusal::Loopback),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("224.0.0.1", Refusal::Multicast),
            ("ff02::1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Broadcast),
            ("169.254.1.1", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("10.250.0.11", Refusal::NodeAddress),
        ] {
            assert_eq!(p.check(ip(addr), &own), Err(want), "{addr}");
        }
        assert_eq!(p.check(ip("192.168.1.240"), &own), Ok(()));
        assert_eq!(p.check(ip("fd00::240"), &own), Ok(()));
    }

    #[test]
    fn allowed_cidrs() {
        let p = Policy::parse("192.168.1.240/28, fd00:250::/64").expect("parses");
        let none = BTreeSet::new();
        assert_eq!(p.check(ip("192.168.1.241"), &none), Ok(()));
        assert_eq!(p.check(ip("fd00:250::240"), &none), Ok(()));
        assert_eq!(p.check(ip("192.168.1.1"), &none), Err(Refusal::NotAllowed));
        assert_eq!(p.check(ip("fd00:251::1"), &none), Err(Refusal::NotAllowed));
        let prefix = |s: &str| s.parse::<Prefix>().expect("prefix");
        assert_eq!(p.check_prefix(&prefix("192.168.1.240/29"), &none), Ok(()));
        assert_eq!(
            p.check_prefix(&prefix("192.168.1.0/24"), &none),
            Err(Refusal::NotAllowed),
            "an aggregate wider than the allowed range"
        );
        assert_eq!(
            Policy::default().check_prefix(&prefix("0.0.0.0/0"), &none),
            Err(Refusal::Unspecified)
        );
        assert!(Policy::parse("192.168.1.1/24").is_err());
        assert!(Policy::parse("banana").is_err());
        assert!(Policy::parse("").expect("empty").allowed.is_empty());
    }
}
