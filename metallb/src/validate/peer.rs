//! BGPPeer: MetalLB's `peerFromCR`, `parseTimers` and `passwordFromSecretForPeer`, the BFD echo
//! rule of `validateConfig`, and the fields only MetalLB's FRR mode runs (ferrolb's speaker does
//! not).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;

use super::{bgp_advertisement::covers, known, placed, selectors};
use crate::crd::v1beta2::BGPPeerSpec;
use crate::object::{Config, Object, Rejection, kind::PEER};
use crate::parse::{self, Family};

pub(super) fn check(cfg: &Config, namespace: &str, out: &mut Vec<Rejection>) {
    for (i, p) in cfg.peers.iter().enumerate() {
        placed(PEER, p, namespace, out);
        known(PEER, &p.name, "spec", &p.spec.other, out);
        numbers(p, out);
        addresses(p, out);
        text_fields(p, out);
        timers(p, out);
        selectors(
            PEER,
            &p.name,
            "spec.nodeSelectors",
            &p.spec.node_selectors,
            out,
        );
        if let Err(r) = password(p, namespace, &cfg.secrets) {
            out.push(r);
        }
        bfd_profile(cfg, p, out);
        frr_only(p, out);
        unique(&cfg.peers[..i], p, out);
    }
}

fn numbers(p: &Object<BGPPeerSpec>, out: &mut Vec<Rejection>) {
    let s = &p.spec;
    let r = |field: &str, m: &str| Rejection::new(PEER, &p.name, field, m);
    if s.common.my_asn == 0 {
        out.push(r("spec.myASN", "missing local ASN"));
    }
    match (s.peer_asn.filter(|a| *a != 0), s.dynamic_asn) {
        (None, None) => out.push(r("spec.peerASN", "missing peer ASN and dynamicASN")),
        (Some(_), Some(_)) => out.push(r(
            "spec.dynamicASN",
            "both peer ASN and dynamicASN specified",
        )),
        _ => {}
    }
    if s.peer_asn == Some(s.common.my_asn) && s.common.ebgp_multi_hop == Some(true) {
        out.push(r(
            "spec.ebgpMultiHop",
            "invalid ebgp-multihop parameter set for an ibgp peer",
        ));
    }
    if let Some(port) = s.common.peer_port.filter(|p| !(1..=16384).contains(p)) {
        out.push(Rejection::new(
            PEER,
            &p.name,
            "spec.peerPort",
            format!("{port} is not between 1 and 16384"),
        ));
    }
}

/// A text field set to something (MetalLB reads an empty text as unset).
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|v| !v.is_empty())
}

fn addresses(p: &Object<BGPPeerSpec>, out: &mut Vec<Rejection>) {
    let s = &p.spec;
    let r = |field: &str, m: String| Rejection::new(PEER, &p.name, field, m);
    match (set(&s.peer_address), set(&s.interface)) {
        (None, None) => out.push(r(
            "spec.peerAddress",
            "peer has no Address or Interface specified".into(),
        )),
        (Some(_), Some(_)) => out.push(r(
            "spec.interface",
            "peer has both Address and Interface specified".into(),
        )),
        _ => {}
    }
    for (field, v, what) in [
        (
            "spec.peerAddress",
            &s.peer_address,
            "invalid BGPPeer address",
        ),
        (
            "spec.sourceAddress",
            &s.common.source_address,
            "invalid source IP",
        ),
        ("spec.routerID", &s.common.router_id, "invalid router ID"),
    ] {
        if let Some(v) = set(v)
            && v.parse::<IpAddr>().is_err()
        {
            out.push(r(field, format!("{what} {v:?}")));
        }
    }
}

/// Values FRR would read as configuration lines.
fn text_fields(p: &Object<BGPPeerSpec>, out: &mut Vec<Rejection>) {
    let s = &p.spec;
    for (field, v, what) in [
        ("spec.interface", &s.interface, "interface"),
        ("spec.password", &s.common.password, "password"),
        ("spec.vrf", &s.vrf, "VRF name"),
    ] {
        if v.as_deref().is_some_and(|v| v.contains(['\n', '\r'])) {
            out.push(Rejection::new(
                PEER,
                &p.name,
                field,
                format!(
                    "{what} for peer {:?}/{:?} contains invalid characters",
                    p.namespace, p.name
                ),
            ));
        }
    }
}

/// The hold and keepalive times, each derived from the other when only one is given, as
/// MetalLB's `parseTimers` derives them.
pub fn timers(p: &Object<BGPPeerSpec>, out: &mut Vec<Rejection>) {
    let c = &p.spec.common;
    let r = |field: &str, m: String| Rejection::new(PEER, &p.name, field, m);
    let hold = c.hold_time.as_deref().map(parse::go_duration);
    let keepalive = c.keepalive_time.as_deref().map(parse::go_duration);
    if let Some(Err(e)) = &hold {
        out.push(r("spec.holdTime", e.clone()));
    }
    if let Some(Err(e)) = &keepalive {
        out.push(r("spec.keepaliveTime", e.clone()));
    }
    let (hold, keepalive) = match (hold, keepalive) {
        (Some(Ok(h)), Some(Ok(k))) => (h, k),
        (Some(Ok(h)), None) => (h, h / 3),
        (None, Some(Ok(k))) => (k.saturating_mul(3), k),
        _ => return,
    };
    let rounded = Duration::from_secs(hold.as_secs());
    if !rounded.is_zero() && rounded < Duration::from_secs(3) {
        out.push(r(
            "spec.holdTime",
            format!(
                "invalid hold time {:?}: must be 0 or >=3s",
                c.hold_time.as_deref().unwrap_or_default()
            ),
        ));
    }
    if keepalive > hold {
        out.push(r(
            "spec.keepaliveTime",
            format!(
                "invalid keepaliveTime {:?}, must be lower than holdTime {:?}",
                c.keepalive_time.as_deref().unwrap_or_default(),
                c.hold_time.as_deref().unwrap_or_default()
            ),
        ));
    }
}

/// The TCP MD5 password of a peer: its `password`, or the `password` key of its
/// `passwordSecret`, which must be of type `kubernetes.io/basic-auth` and live in `namespace`.
/// A Secret that does not exist (yet) is transient. Empty: no password.
pub fn password(
    p: &Object<BGPPeerSpec>,
    namespace: &str,
    secrets: &std::collections::BTreeMap<String, Secret>,
) -> Result<String, Rejection> {
    let field = "spec.passwordSecret";
    let r = |m: String| Rejection::new(PEER, &p.name, field, m);
    let inline = p.spec.common.password.as_deref().filter(|p| !p.is_empty());
    let Some(reference) = &p.spec.password_secret else {
        return Ok(inline.unwrap_or_default().to_string());
    };
    let secret_name = reference.name.as_deref().unwrap_or_default();
    if inline.is_some() {
        return Err(r(format!(
            "can not have both password and secret ref set in peer config {:?}/{:?}",
            p.namespace, p.name
        )));
    }
    if secret_name.is_empty() {
        return Err(r("the Secret's name is missing".into()));
    }
    if let Some(ns) = reference.namespace.as_deref().filter(|ns| !ns.is_empty())
        && ns != namespace
    {
        return Err(r(format!(
            "Secret {secret_name:?} must be in namespace {namespace:?}, not {ns:?}"
        )));
    }
    let Some(s) = secrets.get(secret_name) else {
        return Err(r(format!(
            "secret ref not found for peer config {:?}/{:?}: Secret {secret_name:?} does not exist",
            p.namespace, p.name
        ))
        .transient());
    };
    let kind = s.type_.as_deref().unwrap_or("Opaque");
    if kind != "kubernetes.io/basic-auth" {
        return Err(r(format!(
            "secret type mismatch on {namespace:?}/{secret_name:?}, type \"kubernetes.io/basic-auth\" is expected, not {kind:?}"
        )));
    }
    let Some(value) = s.data.as_ref().and_then(|d| d.get("password")) else {
        return Err(r(format!(
            "password not specified in the secret {namespace:?}/{secret_name:?}"
        )));
    };
    let value = String::from_utf8(value.0.clone()).map_err(|_| {
        r(format!(
            "the password in Secret {secret_name:?} is not UTF-8"
        ))
    })?;
    if value.contains(['\n', '\r']) {
        return Err(r(format!(
            "password secret for peer {:?}/{:?} contains invalid characters",
            p.namespace, p.name
        )));
    }
    Ok(value)
}

/// A named BFD profile must exist (it may still come: transient), and one with echo mode cannot
/// serve a peer that receives an IPv6 pool's prefixes.
fn bfd_profile(cfg: &Config, p: &Object<BGPPeerSpec>, out: &mut Vec<Rejection>) {
    let Some(name) = p
        .spec
        .common
        .bfd_profile
        .as_deref()
        .filter(|n| !n.is_empty())
    else {
        return;
    };
    let field = "spec.bfdProfile";
    let Some(profile) = cfg.bfd_profiles.iter().find(|b| b.name == name) else {
        out.push(
            Rejection::new(
                PEER,
                &p.name,
                field,
                format!(
                    "peer {} referencing non existing bfd profile {name}",
                    p.name
                ),
            )
            .transient(),
        );
        return;
    };
    if profile.spec.echo_mode != Some(true) {
        return;
    }
    out.push(Rejection::new(
        PEER,
        &p.name,
        field,
        format!("bfd profile {name}: {}", super::bfd::ECHO_REFUSED),
    ));
    let v6_pool = |pool: &&crate::object::Object<crate::crd::IPAddressPoolSpec>| {
        pool.spec
            .addresses
            .iter()
            .any(|e| parse::address_entry(e).is_ok_and(|e| e.family == Family::V6))
    };
    for pool in cfg.pools.iter().filter(v6_pool) {
        let to_me = cfg.bgp.iter().find(|a| {
            covers(&a.spec, pool) && (a.spec.peers.is_empty() || a.spec.peers.contains(&p.name))
        });
        if let Some(a) = to_me {
            out.push(Rejection::new(
                PEER,
                &p.name,
                field,
                format!(
                    "pool {} has bgpadvertisement {} which references peer {} which has bfd echo enabled, which is not possible",
                    pool.name, a.name, p.name
                ),
            ));
            return;
        }
    }
}

/// Whether a peer sets a field.
pub type IsSet = fn(&BGPPeerSpec) -> bool;

/// The BGPPeer fields only MetalLB's FRR mode runs, each with whether a peer sets it (an empty
/// text or a false flag is not set, as MetalLB's native mode reads them).
pub const FRR_ONLY: &[(&str, IsSet)] = &[
    ("spec.dynamicASN", |s| s.dynamic_asn.is_some()),
    ("spec.localASN", |s| s.local_asn.is_some_and(|a| a != 0)),
    ("spec.interface", |s| {
        s.interface.as_deref().is_some_and(|v| !v.is_empty())
    }),
    ("spec.vrf", |s| {
        s.vrf.as_deref().is_some_and(|v| !v.is_empty())
    }),
    ("spec.connectTime", |s| s.connect_time.is_some()),
    ("spec.dualStackAddressFamily", |s| {
        s.dual_stack_address_family == Some(true)
    }),
];

fn frr_only(p: &Object<BGPPeerSpec>, out: &mut Vec<Rejection>) {
    for (field, set) in FRR_ONLY {
        if set(&p.spec) {
            out.push(Rejection::new(
                PEER,
                &p.name,
                field,
                "needs MetalLB's FRR mode; ferrolb's BGP speaker does not run it",
            ));
        }
    }
}

/// Two peers with the same spec would be two sessions to one router from one node, of which the
/// router keeps one: the second is refused (MetalLB compares names too, so it never refuses).
fn unique(before: &[Object<BGPPeerSpec>], p: &Object<BGPPeerSpec>, out: &mut Vec<Rejection>) {
    if let Some(first) = before.iter().find(|q| q.spec == p.spec) {
        out.push(Rejection::new(
            PEER,
            &p.name,
            "spec",
            format!("peer {} already exists (same as {:?})", p.name, first.name),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use crate::crd::v1beta2::{DynamicAsn, SecretReference};
    use crate::crd::{BFDProfileSpec, IPAddressPoolSpec};
    use crate::object::{Config, Object};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    #[test]
    fn peers() {
        let cfg = Config {
            peers: vec![
                peer("no-asn", |s| s.common.my_asn = 0),
                peer("no-peer-asn", |s| s.peer_asn = None),
                peer("both-asn", |s| {
                    s.peer_asn = Some(7);
                    s.dynamic_asn = Some(DynamicAsn::External)
                }),
                peer("ibgp-multihop", |s| {
                    s.peer_asn = Some(64512);
                    s.common.ebgp_multi_hop = Some(true);
                }),
                peer("no-address", |s| s.peer_address = None),
                peer("bad-address", |s| s.peer_address = Some("10.100.1".into())),
                peer("bad-router-id", |s| {
                    s.common.router_id = Some("router".into())
                }),
                peer("newline", |s| s.common.password = Some("a\nb".into())),
                peer("port", |s| s.common.peer_port = Some(0)),
                peer("vrf-empty", |s| s.vrf = Some(String::new())),
            ],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "BGPPeer/no-asn spec.myASN",
                "BGPPeer/no-peer-asn spec.peerASN",
                "BGPPeer/both-asn spec.dynamicASN",
                "BGPPeer/both-asn spec.dynamicASN",
                "BGPPeer/ibgp-multihop spec.ebgpMultiHop",
                "BGPPeer/no-address spec.peerAddress",
                "BGPPeer/bad-address spec.peerAddress",
                "BGPPeer/bad-router-id spec.routerID",
                "BGPPeer/newline spec.password",
                "BGPPeer/port spec.peerPort",
            ]
        );
        let twins = Config {
            peers: vec![peer("a", |_| {}), peer("b", |_| {})],
            ..Config::default()
        };
        assert_eq!(rejected(&twins), ["BGPPeer/b spec"]);
    }

    #[test]
    fn timers_as_metallb_derives_them() {
        let with = |h: Option<&str>, k: Option<&str>| Config {
            peers: vec![peer("p", |s| {
                s.common.hold_time = h.map(String::from);
                s.common.keepalive_time = k.map(String::from);
            })],
            ..Config::default()
        };
        let fields = |h, k| rejected(&with(h, k));
        assert!(fields(Some("90s"), Some("30s")).is_empty());
        assert!(fields(Some("1.5m"), None).is_empty());
        assert!(fields(Some("0"), None).is_empty());
        assert!(
            fields(None, Some("1s")).is_empty(),
            "hold is three keepalives"
        );
        assert_eq!(fields(Some("2s"), None), ["BGPPeer/p spec.holdTime"]);
        assert_eq!(fields(Some("2.9s"), None), ["BGPPeer/p spec.holdTime"]);
        assert_eq!(
            fields(Some("30s"), Some("1m")),
            ["BGPPeer/p spec.keepaliveTime"]
        );
        assert_eq!(fields(Some("90"), None), ["BGPPeer/p spec.holdTime"]);
        assert_eq!(
            fields(Some("99999999999999999999h"), None),
            ["BGPPeer/p spec.holdTime"]
        );
    }

    #[test]
    fn passwords_from_secrets() {
        let secret = |kind: &str, key: &str| Secret {
            type_: Some(kind.into()),
            data: Some([(key.to_string(), ByteString(b"s3cret".to_vec()))].into()),
            ..Secret::default()
        };
        let by_ref = |name: &str| {
            let name = name.to_string();
            peer("p", move |s| {
                s.password_secret = Some(SecretReference {
                    name: Some(name),
                    namespace: None,
                })
            })
        };
        let secrets = [
            (
                "good".to_string(),
                secret("kubernetes.io/basic-auth", "password"),
            ),
            ("opaque".to_string(), secret("Opaque", "password")),
            (
                "nokey".to_string(),
                secret("kubernetes.io/basic-auth", "pw"),
            ),
        ]
        .into();
        assert_eq!(
            super::password(&by_ref("good"), NS, &secrets).expect("good"),
            "s3cret"
        );
        let missing = super::password(&by_ref("later"), NS, &secrets).expect_err("missing");
        assert!(missing.transient && missing.message.contains("does not exist"));
        for (name, why) in [
            ("opaque", "type mismatch"),
            ("nokey", "password not specified"),
        ] {
            let e = super::password(&by_ref(name), NS, &secrets).expect_err(name);
            assert!(!e.transient && e.message.contains(why), "{e}");
        }
        let mut both = by_ref("good");
        both.spec.common.password = Some("x".into());
        let e = super::password(&both, NS, &secrets).expect_err("both");
        assert!(e.message.contains("can not have both"), "{e}");
    }

    #[test]
    fn bfd_profiles_must_exist_and_echo_is_refused() {
        let profile = |name: &str, echo: bool| {
            Object::new(
                name,
                NS,
                BFDProfileSpec {
                    echo_mode: Some(echo),
                    ..BFDProfileSpec::default()
                },
            )
        };
        let with = |name: &str, address: &str, profile: &str| {
            let (address, profile) = (address.to_string(), profile.to_string());
            peer(name, move |s| {
                s.peer_address = Some(address);
                s.common.bfd_profile = Some(profile);
            })
        };
        let pool = |name: &str, a: &str| {
            Object::new(
                name,
                NS,
                IPAddressPoolSpec {
                    addresses: vec![a.into()],
                    ..Default::default()
                },
            )
        };
        let mut cfg = Config {
            pools: vec![pool("v4", "10.0.0.0/24"), pool("v6", "fd00::/120")],
            bgp: vec![
                ad("v4-to-all", |s| s.ip_address_pools = vec!["v4".into()]),
                ad("v6-to-r2", |s| {
                    s.ip_address_pools = vec!["v6".into()];
                    s.peers = vec!["r2".into()];
                }),
            ],
            peers: vec![
                with("r1", "10.0.0.1", "echo"),
                with("r2", "10.0.0.2", "echo"),
                with("r3", "10.0.0.3", "plain"),
            ],
            bfd_profiles: vec![profile("echo", true), profile("plain", false)],
            ..Config::default()
        };
        let bfd_rules = |cfg: &Config| {
            super::super::check(cfg, NS)
                .into_iter()
                .filter(|r| r.field == "spec.bfdProfile" && !r.message.contains("FRR"))
                .collect::<Vec<_>>()
        };
        // The echo profile's peers are refused (ferrolb runs no echo function); r2, which
        // gets the IPv6 pool's prefixes, by MetalLB's rule too.
        let got = bfd_rules(&cfg);
        let names: Vec<&str> = got.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["r1", "r2", "r2"], "{got:?}");
        let echo = got.iter().filter(|r| r.message.contains("echo function"));
        assert_eq!(echo.count(), 2, "{got:?}");
        assert!(
            got.iter()
                .any(|r| r.name == "r2" && r.message.contains("bfd echo enabled")),
            "{got:?}"
        );
        // The profiles deleted: the peers wait for them (transient).
        cfg.bfd_profiles.clear();
        let got = bfd_rules(&cfg);
        assert_eq!(got.len(), 3);
        assert!(
            got.iter()
                .all(|r| r.transient && r.message.contains("non existing"))
        );
    }
}
