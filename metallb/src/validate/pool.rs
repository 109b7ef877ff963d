//! IPAddressPool: MetalLB's `addressPoolFromCR` and `addressPoolServiceAllocationsFromCR`, and
//! ferrolb's excluded-addresses annotation.

use super::{known, placed, selectors, unique, unique_names};
use crate::annotations;
use crate::crd::IPAddressPoolSpec;
use crate::object::{Config, Object, Rejection, kind::POOL};
use crate::parse;

pub(super) fn check(cfg: &Config, namespace: &str, out: &mut Vec<Rejection>) {
    for p in &cfg.pools {
        placed(POOL, p, namespace, out);
        known(POOL, &p.name, "spec", &p.spec.other, out);
        addresses(p, out);
        service_allocation(p, out);
        excluded_addresses(p, out);
    }
    unique_names(POOL, &cfg.pools, "pool", out);
}

fn addresses(p: &Object<IPAddressPoolSpec>, out: &mut Vec<Rejection>) {
    if p.spec.addresses.is_empty() {
        out.push(Rejection::new(
            POOL,
            &p.name,
            "spec.addresses",
            "pool has no prefixes defined",
        ));
    }
    for (i, a) in p.spec.addresses.iter().enumerate() {
        if let Err(e) = parse::address_entry(a) {
            out.push(Rejection::new(
                POOL,
                &p.name,
                &format!("spec.addresses[{i}]"),
                e,
            ));
        }
    }
}

fn service_allocation(p: &Object<IPAddressPoolSpec>, out: &mut Vec<Rejection>) {
    let Some(sa) = &p.spec.service_allocation else {
        return;
    };
    let at = "spec.serviceAllocation";
    known(POOL, &p.name, at, &sa.other, out);
    unique(
        POOL,
        &p.name,
        &format!("{at}.namespaces"),
        "namespace",
        &sa.namespaces,
        out,
    );
    selectors(
        POOL,
        &p.name,
        &format!("{at}.namespaceSelectors"),
        &sa.namespace_selectors,
        out,
    );
    selectors(
        POOL,
        &p.name,
        &format!("{at}.serviceSelectors"),
        &sa.service_selectors,
        out,
    );
}

fn excluded_addresses(p: &Object<IPAddressPoolSpec>, out: &mut Vec<Rejection>) {
    let field = format!("metadata.annotations[{}]", annotations::EXCLUDED_ADDRESSES);
    for entry in annotations::list(&p.annotations, annotations::EXCLUDED_ADDRESSES) {
        let single = entry.parse::<std::net::IpAddr>().is_ok();
        if let (false, Err(e)) = (single, parse::address_entry(&entry)) {
            out.push(Rejection::new(POOL, &p.name, &field, e));
        }
    }
}

/// MetalLB's overlap rule, for a pool being admitted: no entry of `new` may share an address
/// with another of its entries or with any entry of `others` (the pools already there; `new`'s
/// own earlier version among them is skipped). The allocator applies the same rule across every
/// cluster's pools when the pool is applied.
pub fn overlaps(
    new: &Object<IPAddressPoolSpec>,
    others: &[Object<IPAddressPoolSpec>],
) -> Vec<Rejection> {
    let entries = |p: &Object<IPAddressPoolSpec>| -> Vec<(String, parse::Entry)> {
        p.spec
            .addresses
            .iter()
            .filter_map(|a| Some((a.clone(), parse::address_entry(a).ok()?)))
            .collect()
    };
    let mine = entries(new);
    let mut out = vec![];
    let mut reject = |i: usize, a: &str, b: &str| {
        out.push(Rejection::new(
            POOL,
            &new.name,
            &format!("spec.addresses[{i}]"),
            format!(
                "CIDR {a:?} in pool {:?} overlaps with already defined CIDR {b:?}",
                new.name
            ),
        ));
    };
    for (i, (a, ea)) in mine.iter().enumerate() {
        if let Some((b, _)) = mine[..i].iter().find(|(_, eb)| ea.overlaps(eb)) {
            reject(i, a, b);
            continue;
        }
        let theirs = others
            .iter()
            .filter(|o| o.name != new.name)
            .flat_map(entries);
        if let Some((b, _)) = theirs.into_iter().find(|(_, eb)| ea.overlaps(eb)) {
            reject(i, a, &b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use crate::crd::ServiceAllocation;
    use crate::object::Config;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    #[test]
    fn pools() {
        let mut dup = pool("dup", &["10.0.1.0/24"]);
        dup.spec.service_allocation = Some(ServiceAllocation {
            namespaces: vec!["a".into(), "a".into()],
            service_selectors: vec![LabelSelector::default(), LabelSelector::default()],
            ..Default::default()
        });
        let mut excluded = pool("excluded", &["10.0.2.0/24"]);
        excluded.annotations.insert(
            crate::annotations::EXCLUDED_ADDRESSES.into(),
            "10.0.2.1, 10.0.2.9-10.0.2.3".into(),
        );
        let cfg = Config {
            pools: vec![
                pool("empty", &[]),
                pool("bad", &["10.0.0.0/33", "10.0.3.0/24"]),
                dup,
                excluded,
                pool("bad", &["10.0.4.0/24"]),
            ],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "IPAddressPool/empty spec.addresses",
                "IPAddressPool/bad spec.addresses[0]",
                "IPAddressPool/dup spec.serviceAllocation.namespaces",
                "IPAddressPool/dup spec.serviceAllocation.serviceSelectors",
                "IPAddressPool/excluded metadata.annotations[ferrolb.io/excluded-addresses]",
                "IPAddressPool/bad metadata.name",
            ]
        );
        let all = super::super::check(&cfg, NS);
        assert_eq!(all[0].message, "pool has no prefixes defined");
        assert_eq!(all[1].message, "invalid CIDR \"10.0.0.0/33\"");
        assert_eq!(all[2].message, "duplicate definition of namespace \"a\"");
    }

    #[test]
    fn an_admitted_pool_overlaps_neither_itself_nor_another() {
        let others = [
            pool("lan", &["192.168.1.240-192.168.1.250"]),
            pool("v6", &["fd00::/120"]),
        ];
        let new = pool(
            "new",
            &[
                "10.0.0.0/24",
                "10.0.0.128/25",
                "192.168.1.250/32",
                "fd00:1::/120",
            ],
        );
        let found: Vec<String> = super::overlaps(&new, &others)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "IPAddressPool \"new\": spec.addresses[1]: CIDR \"10.0.0.128/25\" in pool \"new\" overlaps with already defined CIDR \"10.0.0.0/24\"",
                "IPAddressPool \"new\": spec.addresses[2]: CIDR \"192.168.1.250/32\" in pool \"new\" overlaps with already defined CIDR \"192.168.1.240-192.168.1.250\"",
            ]
        );
        // Its own earlier version is not another pool.
        assert_eq!(super::overlaps(&others[0], &others), vec![]);
    }
}
