//! What one session should advertise and what it has sent (an Adj-RIB-Out), and the UPDATEs that
//! bring the peer from one to the other: prefixes with equal attributes share a message, and
//! only prefixes that changed since the last flush are looked at.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::{self, AFI_IPV4, Attributes, MAX_LEN, Prefix, Update};

/// The attributes the allocator chose for a prefix towards one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
    /// Sent to iBGP peers only.
    pub local_pref: Option<u32>,
}

/// How the session speaks: from the negotiation and the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub my_as: u32,
    pub ibgp: bool,
    pub four_octet: bool,
    /// Next hop for IPv4 prefixes; None: IPv4 prefixes are not sent on this session.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
}

#[derive(Debug, Default)]
pub struct Rib {
    desired: BTreeMap<Prefix, Route>,
    sent: BTreeMap<Prefix, Route>,
    dirty: BTreeSet<Prefix>,
}

impl Rib {
    pub fn set(&mut self, p: Prefix, r: Route) {
        if self.desired.get(&p) != Some(&r) {
            self.desired.insert(p, r);
            self.dirty.insert(p);
        }
    }

    pub fn unset(&mut self, p: Prefix) {
        if self.desired.remove(&p).is_some() {
            self.dirty.insert(p);
        }
    }

    /// Prefixes the peer holds from this session.
    pub fn advertised(&self) -> usize {
        self.sent.len()
    }

    /// Prefixes the session should advertise (sent or not yet).
    pub fn wanted(&self) -> usize {
        self.desired.len()
    }

    /// The session is new: nothing has been sent on it.
    pub fn reset(&mut self) {
        self.sent.clear();
        self.dirty = self.desired.keys().copied().collect();
    }

    /// Send a family again (ROUTE-REFRESH).
    pub fn resend(&mut self, afi: u16) {
        self.sent.retain(|p, _| p.afi() != afi);
        self.dirty
            .extend(self.desired.keys().filter(|p| p.afi() == afi));
    }

    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The UPDATEs for every change since the last call, withdrawals first.
    pub fn flush(&mut self, ctx: &Context) -> Vec<Update> {
        let mut withdraw_v4 = Vec::new();
        let mut withdraw_v6 = Vec::new();
        let mut announce: BTreeMap<(bool, Route), Vec<Prefix>> = BTreeMap::new();
        for p in std::mem::take(&mut self.dirty) {
            let v6 = p.afi() != AFI_IPV4;
            let sendable = if v6 {
                ctx.next_hop_v6.is_some()
            } else {
                ctx.next_hop_v4.is_some()
            };
            match self.desired.get(&p).filter(|_| sendable) {
                Some(r) => {
                    if self.sent.get(&p) != Some(r) {
                        self.sent.insert(p, r.clone());
                        announce.entry((v6, r.clone())).or_default().push(p);
                    }
                }
                None => {
                    if self.sent.remove(&p).is_some() {
                        if v6 {
                            withdraw_v6.push(p);
                        } else {
                            withdraw_v4.push(p);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        // Withdrawn-routes field: the message minus header, two length fields.
        for part in wire::chunks(&withdraw_v4, MAX_LEN - wire::HEADER_LEN - 4) {
            out.push(Update {
                withdrawn: part,
                ..Update::default()
            });
        }
        // MP_UNREACH_NLRI: extended attribute header and AFI/SAFI.
        for part in wire::chunks(&withdraw_v6, MAX_LEN - wire::HEADER_LEN - 4 - 4 - 3) {
            out.push(Update {
                withdrawn_v6: part,
                mp_unreach: true,
                ..Update::default()
            });
        }
        for ((v6, route), prefixes) in announce {
            let attrs = Attributes {
                as_path: if ctx.ibgp { vec![] } else { vec![ctx.my_as] },
                next_hop: if v6 {
                    ctx.next_hop_v6.map(IpAddr::V6)
                } else {
                    ctx.next_hop_v4.map(IpAddr::V4)
                },
                local_pref: if ctx.ibgp { route.local_pref } else { None },
                communities: route.communities,
                large_communities: route.large_communities,
            };
            let room = wire::nlri_room(&attrs, ctx.four_octet, v6);
            for part in wire::chunks(&prefixes, room) {
                out.push(if v6 {
                    Update {
                        attributes: Some(attrs.clone()),
                        announced_v6: part,
                        ..Update::default()
                    }
                } else {
                    Update {
                        attributes: Some(attrs.clone()),
                        announced: part,
                        ..Update::default()
                    }
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().expect("test prefix")
    }

    fn ctx(ibgp: bool) -> Context {
        Context {
            my_as: 64513,
            ibgp,
            four_octet: true,
            next_hop_v4: Some(Ipv4Addr::new(10, 0, 0, 11)),
            next_hop_v6: None,
        }
    }

    #[test]
    fn groups_by_attributes_and_sends_only_changes() {
        let mut rib = Rib::default();
        let gold = Route {
            communities: vec![1],
            local_pref: Some(200),
            ..Route::default()
        };
        rib.set(p("10.1.0.1/32"), Route::default());
        rib.set(p("10.1.0.2/32"), Route::default());
        rib.set(p("10.1.0.3/32"), gold.clone());
        rib.set(p("fd00::1/128"), Route::default());
        let ups = rib.flush(&ctx(false));
        assert_eq!(ups.len(), 2);
        // eBGP: own AS in the path, no LOCAL_PREF; IPv6 not sent without an IPv6 next hop.
        let a = ups[1].attributes.as_ref().expect("attributes");
        assert_eq!((a.as_path.clone(), a.local_pref), (vec![64513], None));
        assert_eq!(rib.advertised(), 3);
        assert!(rib.flush(&ctx(false)).is_empty());
        rib.set(p("10.1.0.3/32"), gold);
        assert!(rib.flush(&ctx(false)).is_empty(), "no change, no update");
        rib.unset(p("10.1.0.1/32"));
        rib.unset(p("fd00::1/128"));
        let ups = rib.flush(&ctx(false));
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].withdrawn, [p("10.1.0.1/32")]);
    }

    #[test]
    fn ibgp_carries_local_pref_and_a_new_session_gets_everything() {
        let mut rib = Rib::default();
        rib.set(
            p("10.1.0.1/32"),
            Route {
                local_pref: Some(50),
                ..Route::default()
            },
        );
        rib.flush(&ctx(true));
        rib.reset();
        let ups = rib.flush(&ctx(true));
        let a = ups[0].attributes.as_ref().expect("attributes");
        assert_eq!((a.as_path.len(), a.local_pref), (0, Some(50)));
    }

    #[test]
    fn ipv6_goes_in_mp_reach_and_many_prefixes_split() {
        let mut rib = Rib::default();
        for i in 0..3000u128 {
            rib.set(
                Prefix::new(IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | i)), 128).expect("p"),
                Route::default(),
            );
        }
        let c = Context {
            next_hop_v6: Some("fd00::11".parse().expect("ip")),
            ..ctx(false)
        };
        let ups = rib.flush(&c);
        assert!(ups.len() > 1);
        assert_eq!(
            ups.iter().map(|u| u.announced_v6.len()).sum::<usize>(),
            3000
        );
        for u in &ups {
            assert!(wire::encode(&wire::Message::Update(u.clone()), true).len() <= MAX_LEN);
        }
        rib.resend(wire::AFI_IPV6);
        assert_eq!(rib.flush(&c).len(), ups.len());
    }
}
