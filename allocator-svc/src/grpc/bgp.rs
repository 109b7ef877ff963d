//! BGP objects between their protobuf and validated forms, and the BGP part of an announcer's
//! assignments.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_proto::v1 as pb;

use super::convert;
use crate::bgp::{
    Bfd, BgpAd, BgpPeer, Community, CommunitySet, DEFAULT_HOLD_TIME, NodeBgp, PeerRoute, Prefix,
};
use crate::error::Error;

fn ip(field: &str, s: &str) -> Result<IpAddr, Error> {
    s.parse()
        .map_err(|_| Error::invalid(field, format!("{s:?} is not an IP address")))
}

fn optional_ip(field: &str, s: &str) -> Result<Option<IpAddr>, Error> {
    if s.is_empty() {
        Ok(None)
    } else {
        ip(field, s).map(Some)
    }
}

fn seconds(field: &str, v: u32) -> Result<u16, Error> {
    u16::try_from(v).map_err(|_| Error::invalid(field, format!("{v} s is too long")))
}

pub fn peer(p: pb::BgpPeer) -> Result<BgpPeer, Error> {
    let router_id = match optional_ip("router_id", &p.router_id)? {
        None => None,
        Some(IpAddr::V4(a)) => Some(a),
        Some(IpAddr::V6(_)) => {
            return Err(Error::invalid(
                "router_id",
                format!("{:?} is not an IPv4 address", p.router_id),
            ));
        }
    };
    let peer = BgpPeer {
        my_asn: p.my_asn,
        peer_asn: p.peer_asn,
        address: ip("peer_address", &p.peer_address)?,
        port: if p.peer_port == 0 {
            179
        } else {
            u16::try_from(p.peer_port).unwrap_or(0)
        },
        source: optional_ip("source_address", &p.source_address)?,
        hold_time: p
            .hold_time
            .map(|h| seconds("hold_time", h))
            .transpose()?
            .unwrap_or(DEFAULT_HOLD_TIME),
        keepalive: p
            .keepalive_time
            .map(|k| seconds("keepalive_time", k))
            .transpose()?,
        router_id,
        node_selectors: convert::selectors("node_selectors", p.node_selectors)?,
        password: ferrolb_common::Secret::new(p.password),
        ebgp_multihop: p.ebgp_multihop,
        graceful_restart: p.enable_graceful_restart,
        bfd: p.bfd_profile.map(bfd).transpose()?,
        cluster: p.cluster,
        name: p.name,
    };
    peer.validate()?;
    Ok(peer)
}

fn bfd(b: pb::BfdProfile) -> Result<Bfd, Error> {
    let byte = |field: &str, v: u32| {
        u8::try_from(v).map_err(|_| Error::invalid(field, format!("{v} is not within 1-255")))
    };
    let bfd = Bfd {
        profile: b.name,
        receive_interval_ms: b.receive_interval_ms,
        transmit_interval_ms: b.transmit_interval_ms,
        detect_multiplier: byte("bfd_profile.detect_multiplier", b.detect_multiplier)?,
        passive: b.passive_mode,
        minimum_ttl: byte("bfd_profile.minimum_ttl", b.minimum_ttl)?,
    };
    bfd.validate()?;
    Ok(bfd)
}

fn bfd_to_pb(b: &Bfd) -> pb::BfdProfile {
    pb::BfdProfile {
        name: b.profile.clone(),
        receive_interval_ms: b.receive_interval_ms,
        transmit_interval_ms: b.transmit_interval_ms,
        detect_multiplier: u32::from(b.detect_multiplier),
        passive_mode: b.passive,
        minimum_ttl: u32::from(b.minimum_ttl),
    }
}

pub fn peer_to_pb(p: &BgpPeer) -> pb::BgpPeer {
    pb::BgpPeer {
        cluster: p.cluster.clone(),
        name: p.name.clone(),
        my_asn: p.my_asn,
        peer_asn: p.peer_asn,
        peer_address: p.address.to_string(),
        source_address: p.source.map(|s| s.to_string()).unwrap_or_default(),
        peer_port: u32::from(p.port),
        hold_time: Some(u32::from(p.hold_time)),
        keepalive_time: p.keepalive.map(u32::from),
        router_id: p.router_id.map(|r| r.to_string()).unwrap_or_default(),
        node_selectors: p
            .node_selectors
            .iter()
            .map(convert::selector_to_pb)
            .collect(),
        // Passwords are not read back.
        password: String::new(),
        ebgp_multihop: p.ebgp_multihop,
        enable_graceful_restart: p.graceful_restart,
        bfd_profile: p.bfd.as_ref().map(bfd_to_pb),
    }
}

pub fn advertisement(
    a: pb::BgpAdvertisement,
    aliases: &BTreeMap<String, Community>,
) -> Result<BgpAd, Error> {
    let len = |field: &str, v: Option<u32>, default: u8| match v {
        None => Ok(default),
        Some(v) => u8::try_from(v)
            .map_err(|_| Error::invalid(field, format!("{v} is not a prefix length"))),
    };
    let ad = BgpAd {
        aggregation_length: len("aggregation_length", a.aggregation_length, 32)?,
        aggregation_length_v6: len("aggregation_length_v6", a.aggregation_length_v6, 128)?,
        local_pref: a.local_pref,
        communities: a.communities,
        pools: a.ip_address_pools,
        pool_selectors: convert::selectors(
            "ip_address_pool_selectors",
            a.ip_address_pool_selectors,
        )?,
        node_selectors: convert::selectors("node_selectors", a.node_selectors)?,
        peers: a.peers,
        service_selectors: convert::selectors("service_selectors", a.service_selectors)?,
        cluster: a.cluster,
        name: a.name,
    };
    ad.validate(aliases)?;
    Ok(ad)
}

pub fn advertisement_to_pb(a: &BgpAd) -> pb::BgpAdvertisement {
    pb::BgpAdvertisement {
        cluster: a.cluster.clone(),
        name: a.name.clone(),
        aggregation_length: Some(u32::from(a.aggregation_length)),
        aggregation_length_v6: Some(u32::from(a.aggregation_length_v6)),
        local_pref: a.local_pref,
        communities: a.communities.clone(),
        ip_address_pools: a.pools.clone(),
        ip_address_pool_selectors: a
            .pool_selectors
            .iter()
            .map(convert::selector_to_pb)
            .collect(),
        node_selectors: a
            .node_selectors
            .iter()
            .map(convert::selector_to_pb)
            .collect(),
        peers: a.peers.clone(),
        service_selectors: a
            .service_selectors
            .iter()
            .map(convert::selector_to_pb)
            .collect(),
    }
}

pub fn community(c: pb::Community, others: &[CommunitySet]) -> Result<CommunitySet, Error> {
    let set = CommunitySet {
        cluster: c.cluster,
        name: c.name,
        aliases: c
            .communities
            .into_iter()
            .map(|a| (a.name, a.value))
            .collect(),
    };
    set.validate(others)?;
    Ok(set)
}

pub fn community_to_pb(c: &CommunitySet) -> pb::Community {
    pb::Community {
        cluster: c.cluster.clone(),
        name: c.name.clone(),
        communities: c
            .aliases
            .iter()
            .map(|(name, value)| pb::CommunityAlias {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
    }
}

fn session(p: &BgpPeer) -> pb::BgpSession {
    pb::BgpSession {
        name: p.name.clone(),
        peer_address: p.address.to_string(),
        peer_port: u32::from(p.port),
        source_address: p.source.map(|s| s.to_string()).unwrap_or_default(),
        my_asn: p.my_asn,
        peer_asn: p.peer_asn,
        router_id: p.router_id.map(|r| r.to_string()).unwrap_or_default(),
        hold_time: u32::from(p.hold_time),
        keepalive_time: p.keepalive.map(u32::from),
        // Only the nodes the peer selects get its session, and so its password.
        password: p.password.expose().to_string(),
        ebgp_multihop: p.ebgp_multihop,
        graceful_restart: p.graceful_restart,
        bfd: p.bfd.as_ref().map(bfd_to_pb),
    }
}

/// `address/length`.
pub fn prefix_text((addr, len): &Prefix) -> String {
    format!("{addr}/{len}")
}

fn route(prefix: &Prefix, peers: &BTreeMap<String, PeerRoute>) -> pb::BgpRoute {
    pb::BgpRoute {
        prefix: prefix_text(prefix),
        peers: peers
            .iter()
            .map(|(name, r)| {
                let mut out = pb::BgpPeerRoute {
                    peer: name.clone(),
                    local_pref: r.local_pref,
                    ..pb::BgpPeerRoute::default()
                };
                for c in &r.communities {
                    match *c {
                        Community::Standard(v) => out.communities.push(v),
                        Community::Large(g, l1, l2) => {
                            out.large_communities.push(pb::LargeCommunity {
                                global_admin: g,
                                local_data1: l1,
                                local_data2: l2,
                            })
                        }
                    }
                }
                out
            })
            .collect(),
    }
}

/// Fills the BGP part of the message that brings a node from `had` to `want`.
pub fn changes(had: &NodeBgp, want: &NodeBgp, out: &mut pb::Assignments) {
    out.sessions_set = want
        .sessions
        .iter()
        .filter(|(name, p)| had.sessions.get(*name) != Some(p))
        .map(|(_, p)| session(p))
        .collect();
    out.sessions_unset = had
        .sessions
        .keys()
        .filter(|name| !want.sessions.contains_key(*name))
        .cloned()
        .collect();
    out.routes_set = want
        .routes
        .iter()
        .filter(|(prefix, peers)| had.routes.get(*prefix) != Some(peers))
        .map(|(prefix, peers)| route(prefix, peers))
        .collect();
    out.routes_unset = had
        .routes
        .keys()
        .filter(|prefix| !want.routes.contains_key(*prefix))
        .map(prefix_text)
        .collect();
}
