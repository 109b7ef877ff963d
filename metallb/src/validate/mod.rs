//! MetalLB's rules, as its configuration parser (`internal/config/config.go`), its native-mode
//! validation (`validation.go`) and its webhooks apply them, split per kind; each rule is a short
//! function that adds every rejection it finds. A rejected object is left out and the rest of
//! the configuration keeps serving. docs/metallb.md lists where ferrolb's verdict differs.
//!
//! Overlaps between pools, aggregation lengths against pools shared from other clusters, and the
//! allocator's own limits (interface names, pools open to the caller), are checked by the
//! allocator when an object is applied, where every cluster's pools are visible.

mod bfd;
mod bgp_advertisement;
mod community;
mod l2;
mod peer;
mod pool;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub use bgp_advertisement::{Misfit, aggregation_misfit, covers};
pub use peer::{FRR_ONLY, password};
pub use pool::overlaps;

use crate::crd::Unknown;
use crate::object::{Config, Object, Rejection};
use crate::parse;

/// Every rejection of a cluster's configuration; `namespace` is where its objects must live.
pub fn check(cfg: &Config, namespace: &str) -> Vec<Rejection> {
    let mut out = vec![];
    pool::check(cfg, namespace, &mut out);
    l2::check(cfg, namespace, &mut out);
    community::check(cfg, namespace, &mut out);
    bgp_advertisement::check(cfg, namespace, &mut out);
    peer::check(cfg, namespace, &mut out);
    bfd::check(cfg, namespace, &mut out);
    out
}

/// MetalLB's webhooks take configuration objects in its own namespace only.
fn placed<S>(kind: &'static str, o: &Object<S>, namespace: &str, out: &mut Vec<Rejection>) {
    if o.namespace != namespace {
        out.push(Rejection::new(
            kind,
            &o.name,
            "metadata.namespace",
            format!("resource must be created in {namespace} namespace"),
        ));
    }
}

/// A field MetalLB does not have: a typo, or a newer MetalLB's field, refused by name rather than
/// ignored.
fn known(kind: &'static str, name: &str, at: &str, other: &Unknown, out: &mut Vec<Rejection>) {
    for field in other.keys() {
        out.push(Rejection::new(
            kind,
            name,
            &format!("{at}.{field}"),
            "unknown field",
        ));
    }
}

/// A list of names with none twice (`duplicate definition of <what> "x"`).
fn unique(
    kind: &'static str,
    name: &str,
    field: &str,
    what: &str,
    items: &[String],
    out: &mut Vec<Rejection>,
) {
    if let Some(d) = parse::first_duplicate(items) {
        out.push(Rejection::new(
            kind,
            name,
            field,
            format!("duplicate definition of {what} {d:?}"),
        ));
    }
}

/// Label selectors that are each valid and not given twice.
fn selectors(
    kind: &'static str,
    name: &str,
    field: &str,
    list: &[LabelSelector],
    out: &mut Vec<Rejection>,
) {
    for (i, s) in list.iter().enumerate() {
        for problem in parse::selector_problems(s) {
            out.push(Rejection::new(
                kind,
                name,
                &format!("{field}[{i}]"),
                problem,
            ));
        }
    }
    let what = field.rsplit('.').next().unwrap_or(field);
    if parse::first_duplicate(list.iter().map(parse::selector_key)).is_some() {
        out.push(Rejection::new(
            kind,
            name,
            field,
            format!("duplicate definition of {what}"),
        ));
    }
}

/// Objects of one kind with one name twice (possible in a file, not in Kubernetes).
fn unique_names<S>(
    kind: &'static str,
    objects: &[Object<S>],
    what: &str,
    out: &mut Vec<Rejection>,
) {
    if let Some(d) = parse::first_duplicate(objects.iter().map(|o| &o.name)) {
        out.push(Rejection::new(
            kind,
            d,
            "metadata.name",
            format!("duplicate definition of {what} {d:?}"),
        ));
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Objects for the rule tests, valid unless the test changes them.
    use super::*;
    use crate::crd::*;
    pub const NS: &str = "metallb-system";

    pub fn pool(name: &str, addresses: &[&str]) -> Object<IPAddressPoolSpec> {
        Object::new(
            name,
            NS,
            IPAddressPoolSpec {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
    }

    pub fn ad(
        name: &str,
        f: impl FnOnce(&mut BGPAdvertisementSpec),
    ) -> Object<BGPAdvertisementSpec> {
        let mut spec = BGPAdvertisementSpec::default();
        f(&mut spec);
        Object::new(name, NS, spec)
    }

    pub fn peer(
        name: &str,
        f: impl FnOnce(&mut v1beta2::BGPPeerSpec),
    ) -> Object<v1beta2::BGPPeerSpec> {
        let mut spec = v1beta2::BGPPeerSpec {
            common: PeerCommon {
                my_asn: 64512,
                ..PeerCommon::default()
            },
            peer_asn: Some(64513),
            peer_address: Some("10.0.0.1".into()),
            ..Default::default()
        };
        f(&mut spec);
        Object::new(name, NS, spec)
    }

    /// `Kind/name field` of each rejection, in order.
    pub fn rejected(cfg: &Config) -> Vec<String> {
        check(cfg, NS)
            .iter()
            .map(|r| format!("{}/{} {}", r.kind, r.name, r.field))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::crd::*;

    #[test]
    fn a_valid_configuration_has_no_rejection() {
        let cfg = Config {
            pools: vec![pool("p", &["10.0.0.0/24", "fd00::/120"])],
            l2: vec![Object::new(
                "l2",
                NS,
                L2AdvertisementSpec {
                    ip_address_pools: vec!["p".into()],
                    ..Default::default()
                },
            )],
            bgp: vec![ad("bgp", |s| {
                s.communities = vec!["65000:100".into(), "no-export".into(), "large:1:2:3".into()]
            })],
            peers: vec![peer("router", |s| s.common.hold_time = Some("90s".into()))],
            communities: vec![Object::new(
                "c",
                NS,
                CommunitySpec {
                    communities: vec![CommunityAlias {
                        name: "no-export".into(),
                        value: "65535:65281".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )],
            ..Config::default()
        };
        assert_eq!(check(&cfg, NS), vec![]);
    }

    #[test]
    fn objects_live_in_metallbs_namespace_and_have_known_fields() {
        let mut p = pool("elsewhere", &["10.0.0.0/24"]);
        p.namespace = "default".into();
        p.spec
            .other
            .insert("adresses".into(), serde_json::json!([]));
        let cfg = Config {
            pools: vec![p],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "IPAddressPool/elsewhere metadata.namespace",
                "IPAddressPool/elsewhere spec.adresses"
            ]
        );
        assert_eq!(
            check(&cfg, NS)[0].to_string(),
            "IPAddressPool \"elsewhere\": metadata.namespace: resource must be created in metallb-system namespace"
        );
    }
}
