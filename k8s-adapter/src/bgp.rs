//! MetalLB's BGP objects as the allocator takes them: BGPPeer (its password inline or from a
//! Secret), BGPAdvertisement and Community.
//!
//! ferrolb runs its own speaker: MetalLB's native mode plus IPv6, large communities,
//! `keepaliveTime` and graceful restart. A BGPPeer that needs what only MetalLB's FRR mode runs
//! (BFD, VRFs, unnumbered interfaces, dynamic or local ASNs, `connectTime`, dual-stack sessions)
//! is refused with the field named, as `ferrolbctl apply` refuses it, rather than run
//! differently from what the operator wrote.

use ferrolb_proto::v1 as pb;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::controller::selectors;
use crate::crd::{BGPAdvertisement, Community, v1beta2::BGPPeer};
use crate::validate::{self, Rejection};

fn reject(name: &str, field: &str, message: String) -> Rejection {
    Rejection {
        kind: "BGPPeer",
        name: name.to_string(),
        field: field.to_string(),
        message,
        transient: false,
    }
}

/// The first field of the peer that only MetalLB's FRR mode runs.
pub fn unsupported(p: &BGPPeer) -> Option<Rejection> {
    let s = &p.spec;
    let field = [
        ("spec.bfdProfile", s.common.bfd_profile.is_some()),
        ("spec.dynamicASN", s.dynamic_asn.is_some()),
        ("spec.localASN", s.local_asn.is_some()),
        ("spec.interface", s.interface.is_some()),
        ("spec.vrf", s.vrf.as_deref().is_some_and(|v| !v.is_empty())),
        ("spec.connectTime", s.connect_time.is_some()),
        (
            "spec.dualStackAddressFamily",
            s.dual_stack_address_family == Some(true),
        ),
    ]
    .into_iter()
    .find_map(|(f, set)| set.then_some(f))?;
    Some(reject(
        &p.name_any(),
        field,
        "needs MetalLB's FRR mode; ferrolb's BGP speaker does not run it".into(),
    ))
}

/// The TCP MD5 password of a peer: its `password`, or the `password` key of its
/// `passwordSecret`, which must be of type `kubernetes.io/basic-auth` and live in `namespace`.
/// A Secret that does not exist (yet) is a transient error. Empty: no password.
pub fn password(
    p: &BGPPeer,
    namespace: &str,
    secret: impl Fn(&str) -> Option<Secret>,
) -> Result<String, Rejection> {
    let name = p.name_any();
    if let Some(pw) = &p.spec.common.password {
        return Ok(pw.clone());
    }
    let Some(r) = &p.spec.password_secret else {
        return Ok(String::new());
    };
    let field = "spec.passwordSecret";
    let secret_name = r.name.as_deref().unwrap_or_default();
    if secret_name.is_empty() {
        return Err(reject(&name, field, "the Secret's name is missing".into()));
    }
    if let Some(ns) = r.namespace.as_deref()
        && !ns.is_empty()
        && ns != namespace
    {
        return Err(reject(
            &name,
            field,
            format!("Secret {secret_name:?} must be in namespace {namespace:?}, not {ns:?}"),
        ));
    }
    let Some(s) = secret(secret_name) else {
        return Err(Rejection {
            transient: true,
            ..reject(
                &name,
                field,
                format!("Secret {secret_name:?} does not exist"),
            )
        });
    };
    let kind = s.type_.as_deref().unwrap_or("Opaque");
    if kind != "kubernetes.io/basic-auth" {
        return Err(reject(
            &name,
            field,
            format!("Secret {secret_name:?} is of type {kind:?}, not kubernetes.io/basic-auth"),
        ));
    }
    let value = s.data.as_ref().and_then(|d| d.get("password"));
    let Some(value) = value else {
        return Err(reject(
            &name,
            field,
            format!("Secret {secret_name:?} has no key \"password\""),
        ));
    };
    String::from_utf8(value.0.clone()).map_err(|_| {
        reject(
            &name,
            field,
            format!("the password in Secret {secret_name:?} is not UTF-8"),
        )
    })
}

/// Seconds of a Go duration the validation has already accepted.
fn seconds(d: Option<&String>) -> Option<u32> {
    d.and_then(|d| validate::duration(d))
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

pub fn peer_to_pb(p: &BGPPeer, cluster: &str, password: String) -> pb::BgpPeer {
    let s = &p.spec;
    pb::BgpPeer {
        cluster: cluster.to_string(),
        name: p.name_any(),
        my_asn: s.common.my_asn,
        peer_asn: s.peer_asn.unwrap_or(0),
        peer_address: s.peer_address.clone().unwrap_or_default(),
        source_address: s.common.source_address.clone().unwrap_or_default(),
        peer_port: s.common.peer_port.map_or(0, u32::from),
        hold_time: seconds(s.common.hold_time.as_ref()),
        keepalive_time: seconds(s.common.keepalive_time.as_ref()),
        router_id: s.common.router_id.clone().unwrap_or_default(),
        node_selectors: selectors(&s.node_selectors),
        password,
        ebgp_multihop: s.common.ebgp_multi_hop.unwrap_or(false),
        enable_graceful_restart: s.enable_graceful_restart.unwrap_or(false),
    }
}

pub fn advertisement_to_pb(a: &BGPAdvertisement, cluster: &str) -> pb::BgpAdvertisement {
    let s = &a.spec;
    // A negative length goes as 0, which the allocator refuses by name.
    let length = |l: Option<i32>| l.map(|l| u32::try_from(l).unwrap_or(0));
    pb::BgpAdvertisement {
        cluster: cluster.to_string(),
        name: a.name_any(),
        aggregation_length: length(s.aggregation_length),
        aggregation_length_v6: length(s.aggregation_length_v6),
        local_pref: s.local_pref.unwrap_or(0),
        communities: s.communities.clone(),
        ip_address_pools: s.ip_address_pools.clone(),
        ip_address_pool_selectors: selectors(&s.ip_address_pool_selectors),
        node_selectors: selectors(&s.node_selectors),
        peers: s.peers.clone(),
        service_selectors: selectors(&s.service_selectors),
    }
}

pub fn community_to_pb(c: &Community, cluster: &str) -> pb::Community {
    pb::Community {
        cluster: cluster.to_string(),
        name: c.name_any(),
        communities: c
            .spec
            .communities
            .iter()
            .map(|a| pb::CommunityAlias {
                name: a.name.clone(),
                value: a.value.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PeerCommon;
    use crate::crd::v1beta2::{BGPPeerSpec, SecretReference};
    use k8s_openapi::ByteString;

    fn peer(f: impl FnOnce(&mut BGPPeerSpec)) -> BGPPeer {
        let mut spec = BGPPeerSpec {
            common: PeerCommon {
                my_asn: 64512,
                hold_time: Some("1m30s".into()),
                keepalive_time: Some("10s".into()),
                ..PeerCommon::default()
            },
            peer_asn: Some(64513),
            peer_address: Some("10.0.0.1".into()),
            ..BGPPeerSpec::default()
        };
        f(&mut spec);
        BGPPeer::new("router", spec)
    }

    fn secret(kind: &str, key: &str, value: &[u8]) -> Secret {
        Secret {
            type_: Some(kind.into()),
            data: Some([(key.to_string(), ByteString(value.to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[test]
    fn password_from_the_field_or_a_basic_auth_secret() {
        let none = |_: &str| None;
        assert_eq!(
            password(&peer(|_| {}), "metallb-system", none),
            Ok("".into())
        );
        let inline = peer(|s| s.common.password = Some("inline".into()));
        assert_eq!(
            password(&inline, "metallb-system", none),
            Ok("inline".into())
        );

        let from = |name: &str, ns: Option<&str>| {
            peer(|s| {
                s.password_secret = Some(SecretReference {
                    name: Some(name.into()),
                    namespace: ns.map(str::to_string),
                })
            })
        };
        let good = |n: &str| {
            (n == "bgp-pw").then(|| secret("kubernetes.io/basic-auth", "password", b"s3cret"))
        };
        assert_eq!(
            password(
                &from("bgp-pw", Some("metallb-system")),
                "metallb-system",
                good
            ),
            Ok("s3cret".into())
        );
        // Missing: transient, the peer waits for the Secret.
        let e = password(&from("later", None), "metallb-system", good).unwrap_err();
        assert!(e.transient && e.message.contains("does not exist"), "{e}");
        let cases = [
            (from("bgp-pw", Some("default")), "must be in namespace"),
            (from("", None), "name is missing"),
        ];
        for (p, want) in cases {
            let e = password(&p, "metallb-system", good).unwrap_err();
            assert!(!e.transient && e.message.contains(want), "{e}");
            assert_eq!(e.field, "spec.passwordSecret");
        }
        let opaque = |_: &str| Some(secret("Opaque", "password", b"x"));
        let e = password(&from("bgp-pw", None), "metallb-system", opaque).unwrap_err();
        assert!(e.message.contains("not kubernetes.io/basic-auth"), "{e}");
        let wrong_key = |_: &str| Some(secret("kubernetes.io/basic-auth", "username", b"x"));
        let e = password(&from("bgp-pw", None), "metallb-system", wrong_key).unwrap_err();
        assert!(e.message.contains("no key \"password\""), "{e}");
    }

    #[test]
    fn frr_only_fields_are_named() {
        assert_eq!(unsupported(&peer(|_| {})), None);
        type Set = fn(&mut BGPPeerSpec);
        let cases: [(&str, Set); 4] = [
            ("spec.bfdProfile", |s| {
                s.common.bfd_profile = Some("fast".into())
            }),
            ("spec.vrf", |s| s.vrf = Some("red".into())),
            ("spec.connectTime", |s| s.connect_time = Some("5s".into())),
            ("spec.dualStackAddressFamily", |s| {
                s.dual_stack_address_family = Some(true)
            }),
        ];
        for (field, f) in cases {
            let r = unsupported(&peer(f)).expect(field);
            assert_eq!(r.field, field);
            assert!(r.message.contains("FRR mode"), "{r}");
        }
        // An empty VRF is the default VRF.
        assert_eq!(unsupported(&peer(|s| s.vrf = Some(String::new()))), None);
    }

    #[test]
    fn peer_fields_reach_the_allocator() {
        let p = peer(|s| {
            s.common.peer_port = Some(1790);
            s.enable_graceful_restart = Some(true);
        });
        let pb = peer_to_pb(&p, "east", "pw".into());
        assert_eq!(
            (
                pb.cluster.as_str(),
                pb.name.as_str(),
                pb.my_asn,
                pb.peer_asn
            ),
            ("east", "router", 64512, 64513)
        );
        assert_eq!((pb.hold_time, pb.keepalive_time), (Some(90), Some(10)));
        assert_eq!(pb.peer_port, 1790);
        assert!(pb.enable_graceful_restart && !pb.ebgp_multihop);
        assert_eq!(pb.password, "pw");
    }
}
