//! L2Advertisement: MetalLB's `l2AdvertisementFromCR`, and the weights its schema bounds.

use super::{known, placed, selectors, unique};
use crate::crd::L2AdvertisementSpec;
use crate::object::{Config, Object, Rejection, kind::L2};

pub(super) fn check(cfg: &Config, namespace: &str, out: &mut Vec<Rejection>) {
    for a in &cfg.l2 {
        placed(L2, a, namespace, out);
        known(L2, &a.name, "spec", &a.spec.other, out);
        lists(a, out);
        preferred_nodes(a, out);
    }
}

fn lists(a: &Object<L2AdvertisementSpec>, out: &mut Vec<Rejection>) {
    let s = &a.spec;
    unique(
        L2,
        &a.name,
        "spec.ipAddressPools",
        "ipAddressPools",
        &s.ip_address_pools,
        out,
    );
    for (field, list) in [
        ("spec.ipAddressPoolSelectors", &s.ip_address_pool_selectors),
        ("spec.nodeSelectors", &s.node_selectors),
        ("spec.serviceSelectors", &s.service_selectors),
    ] {
        selectors(L2, &a.name, field, list, out);
    }
}

fn preferred_nodes(a: &Object<L2AdvertisementSpec>, out: &mut Vec<Rejection>) {
    for (i, p) in a.spec.preferred_node_selectors.iter().enumerate() {
        let at = format!("spec.preferredNodeSelectors[{i}]");
        known(L2, &a.name, &at, &p.other, out);
        if !(1..=100).contains(&p.weight) {
            out.push(Rejection::new(
                L2,
                &a.name,
                &format!("{at}.weight"),
                format!("{} is not between 1 and 100", p.weight),
            ));
        }
        selectors(
            L2,
            &a.name,
            &format!("{at}.preference"),
            std::slice::from_ref(&p.preference),
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use crate::crd::{L2AdvertisementSpec, PreferredNodeSelector};
    use crate::object::{Config, Object};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    #[test]
    fn advertisements() {
        let bad_op = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        let spec = L2AdvertisementSpec {
            ip_address_pools: vec!["p".into(), "p".into()],
            node_selectors: vec![LabelSelector::default(), LabelSelector::default()],
            service_selectors: vec![bad_op],
            preferred_node_selectors: vec![PreferredNodeSelector {
                weight: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        let cfg = Config {
            l2: vec![Object::new("l2", NS, spec)],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "L2Advertisement/l2 spec.ipAddressPools",
                "L2Advertisement/l2 spec.nodeSelectors",
                "L2Advertisement/l2 spec.serviceSelectors[0]",
                "L2Advertisement/l2 spec.preferredNodeSelectors[0].weight",
            ]
        );
        let all = super::super::check(&cfg, NS);
        assert_eq!(
            all[0].message,
            "duplicate definition of ipAddressPools \"p\""
        );
        assert_eq!(
            all[2].message,
            "\"Near\" is not a valid label selector operator"
        );
    }
}
