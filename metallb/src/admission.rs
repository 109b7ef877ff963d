//! MetalLB's validating webhooks as a rule: the object being written is put into the
//! configuration as it stands, and the write is refused when that object is rejected or when it
//! makes another object rejected that was not before. The verdict's text is the one the
//! object's `Valid` condition would show.
//!
//! Like MetalLB's webhooks, admission leaves out what may still come (a Community alias, a
//! BFDProfile or a Secret not created yet: MetalLB's transient errors), so that the order in
//! which objects are created does not matter; those stay reported in the objects' conditions.
//! An existing bad object never blocks writes to others. Deleting is allowed, except a
//! BFDProfile that a BGPPeer names.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::crd::{
    BFDProfileSpec, BGPAdvertisementSpec, CommunitySpec, IPAddressPoolSpec, L2AdvertisementSpec,
    v1beta2::BGPPeerSpec,
};
use crate::object::{Config, Object, Rejection, kind};
use crate::validate;

/// A configuration object of one of MetalLB's kinds, as written.
#[derive(Debug, Clone)]
pub enum Item {
    Pool(Object<IPAddressPoolSpec>),
    L2(Object<L2AdvertisementSpec>),
    Bgp(Object<BGPAdvertisementSpec>),
    Peer(Object<BGPPeerSpec>),
    Community(Object<CommunitySpec>),
    Bfd(Object<BFDProfileSpec>),
}

impl Item {
    /// Reads an object from its JSON (its `kind`, `metadata` and `spec`).
    pub fn from_json(v: &Value) -> Result<Item, String> {
        fn object<S: DeserializeOwned>(v: &Value) -> Result<Object<S>, String> {
            let meta = &v["metadata"];
            let text = |field: &str| meta[field].as_str().unwrap_or_default().to_string();
            let map = |field: &str| serde_json::from_value(meta[field].clone()).unwrap_or_default();
            let spec = match &v["spec"] {
                Value::Null => Value::Object(Default::default()),
                s => s.clone(),
            };
            Ok(Object {
                name: text("name"),
                namespace: text("namespace"),
                labels: map("labels"),
                annotations: map("annotations"),
                spec: serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))?,
            })
        }
        Ok(match v["kind"].as_str().unwrap_or_default() {
            kind::POOL => Item::Pool(object(v)?),
            kind::L2 => Item::L2(object(v)?),
            kind::BGP_ADVERTISEMENT => Item::Bgp(object(v)?),
            kind::PEER => Item::Peer(object(v)?),
            kind::COMMUNITY => Item::Community(object(v)?),
            kind::BFD_PROFILE => Item::Bfd(object(v)?),
            other => return Err(format!("{other:?} is not one of MetalLB's kinds")),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Item::Pool(_) => kind::POOL,
            Item::L2(_) => kind::L2,
            Item::Bgp(_) => kind::BGP_ADVERTISEMENT,
            Item::Peer(_) => kind::PEER,
            Item::Community(_) => kind::COMMUNITY,
            Item::Bfd(_) => kind::BFD_PROFILE,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Item::Pool(o) => &o.name,
            Item::L2(o) => &o.name,
            Item::Bgp(o) => &o.name,
            Item::Peer(o) => &o.name,
            Item::Community(o) => &o.name,
            Item::Bfd(o) => &o.name,
        }
    }

    /// `cfg` with this object in place of the one of its kind and name (or beside the others).
    fn put_into(&self, cfg: &mut Config) {
        fn put<S: Clone>(list: &mut Vec<Object<S>>, o: &Object<S>) {
            list.retain(|x| x.name != o.name);
            list.push(o.clone());
        }
        match self {
            Item::Pool(o) => put(&mut cfg.pools, o),
            Item::L2(o) => put(&mut cfg.l2, o),
            Item::Bgp(o) => put(&mut cfg.bgp, o),
            Item::Peer(o) => put(&mut cfg.peers, o),
            Item::Community(o) => put(&mut cfg.communities, o),
            Item::Bfd(o) => put(&mut cfg.bfd_profiles, o),
        }
    }
}

/// The webhook's verdict on creating or updating `item` in the configuration `existing` (the
/// objects as stored, the cluster's node labels; its Secrets are not needed): the refusal's
/// message, if refused.
pub fn review_write(existing: &Config, namespace: &str, item: &Item) -> Result<(), String> {
    let before = validate::check(existing, namespace);
    let mut after = existing.clone();
    item.put_into(&mut after);
    let mut refused: Vec<Rejection> = validate::check(&after, namespace)
        .into_iter()
        .filter(|r| !r.transient)
        .filter(|r| (r.kind == item.kind() && r.name == item.name()) || !before.contains(r))
        .collect();
    if let Item::Pool(p) = item {
        refused.extend(validate::overlaps(p, &existing.pools));
    }
    match refused.is_empty() {
        true => Ok(()),
        false => Err(refused
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// The webhook's verdict on deleting the object `kind`/`name`.
pub fn review_delete(existing: &Config, kind: &str, name: &str) -> Result<(), String> {
    if kind != kind::BFD_PROFILE {
        return Ok(());
    }
    match existing
        .peers
        .iter()
        .find(|p| p.spec.common.bfd_profile.as_deref() == Some(name))
    {
        Some(peer) => Err(format!(
            "failed to delete BFDProfile {name}, used by BGPPeer {}",
            peer.name
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::fixtures::{NS, peer, pool};
    use serde_json::json;

    fn item(v: Value) -> Item {
        Item::from_json(&v).expect("an item")
    }

    fn pool_json(name: &str, addresses: &[&str]) -> Value {
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
               "metadata": {"name": name, "namespace": NS}, "spec": {"addresses": addresses}})
    }

    fn existing() -> Config {
        Config {
            pools: vec![pool("lan", &["192.168.1.240-192.168.1.250"])],
            ..Config::default()
        }
    }

    #[test]
    fn a_bad_object_is_refused_with_its_conditions_message() {
        let err = review_write(&existing(), NS, &item(pool_json("bad", &["10.0.0.300/32"])))
            .expect_err("refused");
        assert_eq!(
            err,
            "IPAddressPool \"bad\": spec.addresses[0]: invalid CIDR \"10.0.0.300/32\""
        );
        let elsewhere = json!({"kind": "L2Advertisement",
                               "metadata": {"name": "l2", "namespace": "default"}});
        assert_eq!(
            review_write(&existing(), NS, &item(elsewhere)).expect_err("refused"),
            "L2Advertisement \"l2\": metadata.namespace: resource must be created in metallb-system namespace"
        );
    }

    #[test]
    fn rules_across_objects_refuse_the_newcomer() {
        let err = review_write(
            &existing(),
            NS,
            &item(pool_json("other", &["192.168.1.248/29"])),
        )
        .expect_err("refused");
        assert!(
            err.contains("CIDR \"192.168.1.248/29\" in pool \"other\" overlaps with already defined CIDR \"192.168.1.240-192.168.1.250\""),
            "{err}"
        );
        // A second peer like the first: the rejection may name either, the newcomer is refused.
        let cfg = Config {
            peers: vec![peer("a", |_| {})],
            ..Config::default()
        };
        let twin = json!({"kind": "BGPPeer", "metadata": {"name": "b", "namespace": NS},
                          "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.1"}});
        let err = review_write(&cfg, NS, &item(twin)).expect_err("refused");
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn updates_of_a_good_object_pass_and_an_old_bad_object_blocks_nobody() {
        let mut cfg = existing();
        cfg.pools.push(pool("broken", &["10.0.0.0/33"]));
        // The pool itself, changed: its earlier version is not another pool.
        let lan = item(pool_json("lan", &["192.168.1.240-192.168.1.251"]));
        assert_eq!(review_write(&cfg, NS, &lan), Ok(()));
        assert_eq!(
            review_write(&cfg, NS, &item(pool_json("new", &["10.9.0.0/24"]))),
            Ok(())
        );
        // The bad one stays refused when it is written again, even unchanged.
        let broken = item(pool_json("broken", &["10.0.0.0/33"]));
        assert!(review_write(&cfg, NS, &broken).is_err());
    }

    #[test]
    fn what_may_come_later_is_left_to_the_conditions() {
        let ad = json!({"kind": "BGPAdvertisement", "metadata": {"name": "ad", "namespace": NS},
                        "spec": {"communities": ["an-alias-not-defined-yet"]}});
        assert_eq!(review_write(&Config::default(), NS, &item(ad)), Ok(()));
        let secret = json!({"kind": "BGPPeer", "metadata": {"name": "p", "namespace": NS},
                            "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.2",
                                     "passwordSecret": {"name": "later"}}});
        assert_eq!(review_write(&Config::default(), NS, &item(secret)), Ok(()));
        let bad = json!({"kind": "BGPAdvertisement", "metadata": {"name": "ad", "namespace": NS},
                         "spec": {"communities": ["99999999:1"]}});
        assert!(review_write(&Config::default(), NS, &item(bad)).is_err());
    }

    #[test]
    fn a_bfd_profile_in_use_is_not_deleted() {
        let cfg = Config {
            peers: vec![peer("router", |s| {
                s.common.bfd_profile = Some("fast".into())
            })],
            ..Config::default()
        };
        assert_eq!(
            review_delete(&cfg, kind::BFD_PROFILE, "fast"),
            Err("failed to delete BFDProfile fast, used by BGPPeer router".into())
        );
        assert_eq!(review_delete(&cfg, kind::BFD_PROFILE, "slow"), Ok(()));
        assert_eq!(review_delete(&cfg, kind::POOL, "fast"), Ok(()));
    }

    #[test]
    fn text_that_is_not_an_object_is_refused_not_trusted() {
        for v in [
            json!({"kind": "Service"}),
            json!({"kind": "IPAddressPool", "spec": {"addresses": 7}}),
            json!(null),
        ] {
            assert!(Item::from_json(&v).is_err(), "{v}");
        }
    }
}
