//! Address pools: validation, the order they are tried in, and the walk over their free addresses.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::addr::{self, Family, Range};
use crate::error::{Error, Result};
use crate::selector::{LabelSelector, Labels};

/// MetalLB's `spec.serviceAllocation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAllocation {
    pub priority: i32,
    pub namespaces: Vec<String>,
    pub namespace_selectors: Vec<LabelSelector>,
    pub service_selectors: Vec<LabelSelector>,
}

/// A pool as declared, stored as JSON in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    pub addresses: Vec<String>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub service_allocation: Option<ServiceAllocation>,
    pub excluded: Vec<String>,
    pub clusters: Vec<String>,
    pub clients: Vec<String>,
    /// `admin` or `cluster/<name>`.
    pub declared_by: String,
    /// metadata.labels, matched by L2Advertisements' ipAddressPoolSelectors.
    #[serde(default)]
    pub labels: Labels,
}

impl PoolSpec {
    /// A pool with MetalLB's defaults: auto-assigned, no serviceAllocation, open to every caller.
    pub fn new(name: &str, addresses: &[&str]) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
            excluded: vec![],
            clusters: vec![],
            clients: vec![],
            declared_by: String::new(),
            labels: Labels::new(),
        }
    }
}

/// In a pool's clusters or clients: every one of them.
pub const EVERYONE: &str = "*";

/// Who is calling, as the verified identity says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    Admin,
    Cluster(String),
    Client(String),
}

impl Caller {
    pub fn name(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Cluster(c) => format!("cluster/{c}"),
            Caller::Client(c) => format!("client/{c}"),
        }
    }
}

/// A validated pool with its parsed ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub spec: PoolSpec,
    /// Ascending within each family; IPv4 first.
    pub ranges: Vec<Range>,
    /// Sorted and disjoint.
    pub excluded: Vec<Range>,
}

impl Pool {
    /// Checks a pool on its own: names, addresses, exclusions, selectors.
    pub fn new(spec: PoolSpec) -> Result<Pool> {
        validate_name("pool.name", &spec.name)?;
        if spec.addresses.is_empty() {
            return Err(Error::invalid("pool.addresses", "pool has no addresses"));
        }
        let mut ranges = Vec::with_capacity(spec.addresses.len());
        for entry in &spec.addresses {
            let r = Range::parse_entry(entry)
                .map_err(|e| Error::invalid("pool.addresses", e.to_string()))?;
            ranges.push(r);
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            if pair[0].overlaps(&pair[1]) {
                return Err(Error::invalid(
                    "pool.addresses",
                    format!("{} overlaps {} in pool {:?}", pair[1], pair[0], spec.name),
                ));
            }
        }
        let mut excluded = Vec::with_capacity(spec.excluded.len());
        for entry in &spec.excluded {
            let r = Range::parse_exclusion(entry)
                .map_err(|e| Error::invalid("pool.excluded_addresses", e.to_string()))?;
            if !ranges
                .iter()
                .any(|p| p.contains(r.family, r.start) && p.contains(r.family, r.end))
            {
                return Err(Error::invalid(
                    "pool.excluded_addresses",
                    format!("{entry:?} is not inside the pool's addresses"),
                ));
            }
            excluded.push(r);
        }
        excluded.sort();
        for pair in excluded.windows(2) {
            if pair[0].overlaps(&pair[1]) {
                return Err(Error::invalid(
                    "pool.excluded_addresses",
                    format!("{} overlaps {}", pair[1], pair[0]),
                ));
            }
        }
        if let Some(sa) = &spec.service_allocation {
            check_unique("pool.service_allocation.namespaces", &sa.namespaces)?;
            check_unique(
                "pool.service_allocation.namespace_selectors",
                &sa.namespace_selectors,
            )?;
            check_unique(
                "pool.service_allocation.service_selectors",
                &sa.service_selectors,
            )?;
        }
        for c in spec.clusters.iter().filter(|c| *c != EVERYONE) {
            validate_name("pool.clusters", c)?;
        }
        for c in spec.clients.iter().filter(|c| *c != EVERYONE) {
            validate_name("pool.clients", c)?;
        }
        check_unique("pool.clusters", &spec.clusters)?;
        check_unique("pool.clients", &spec.clients)?;
        Ok(Pool {
            spec,
            ranges,
            excluded,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn has_family(&self, family: Family) -> bool {
        self.ranges.iter().any(|r| r.family == family)
    }

    /// Whether the pool may hand out this address (inside, not excluded, not buggy if avoided).
    pub fn allows(&self, family: Family, k: u128) -> bool {
        self.ranges.iter().any(|r| r.contains(family, k))
            && !self.excluded.iter().any(|r| r.contains(family, k))
            && !(self.spec.avoid_buggy_ips && addr::is_buggy(family, k))
    }

    /// Whether the address lies in the pool's ranges at all (excluded and buggy addresses too):
    /// a lease outside them is stranded.
    pub fn covers(&self, family: Family, k: u128) -> bool {
        self.ranges.iter().any(|r| r.contains(family, k))
    }

    /// The lowest address at or after `from`, inside `range`, that the pool may hand out.
    /// Skips exclusions and buggy addresses by jumping, never by walking address by address
    /// through an excluded range.
    pub fn next_allowed(&self, range: &Range, from: u128) -> Option<u128> {
        let mut k = from.max(range.start);
        loop {
            if k > range.end {
                return None;
            }
            if let Some(ex) = self.excluded.iter().find(|ex| ex.contains(range.family, k)) {
                k = ex.end.checked_add(1)?;
                continue;
            }
            if self.spec.avoid_buggy_ips && addr::is_buggy(range.family, k) {
                k += 1;
                continue;
            }
            return Some(k);
        }
    }

    /// The addresses the pool can hand out, per family, with exclusions and buggy ones removed.
    pub fn capacity(&self, family: Family) -> u128 {
        let mut total = 0u128;
        for r in self.ranges.iter().filter(|r| r.family == family) {
            for piece in subtract(r, &self.excluded) {
                total += piece.len();
                if self.spec.avoid_buggy_ips {
                    total -= addr::buggy_count(&piece);
                }
            }
        }
        total
    }

    /// Whether a caller may draw from this pool: the clusters and clients it names (`*`: all
    /// of them); a pool that names none is an operator's alone.
    pub fn open_to(&self, caller: &Caller) -> bool {
        let names = |list: &[String], who: &str| list.iter().any(|x| x == who || x == EVERYONE);
        match caller {
            Caller::Admin => true,
            Caller::Cluster(c) => names(&self.spec.clusters, c),
            Caller::Client(c) => names(&self.spec.clients, c),
        }
    }

    /// MetalLB's `isPoolCompatibleWithService`: the namespace constraint and the service
    /// selectors must both hold when present.
    pub fn compatible(&self, namespace: &str, ns_labels: &Labels, svc_labels: &Labels) -> bool {
        let Some(sa) = &self.spec.service_allocation else {
            return true;
        };
        let ns_constrained = !sa.namespaces.is_empty() || !sa.namespace_selectors.is_empty();
        let ns_ok = !ns_constrained
            || sa.namespaces.iter().any(|n| n == namespace)
            || sa.namespace_selectors.iter().any(|s| s.matches(ns_labels));
        let svc_ok = sa.service_selectors.is_empty()
            || sa.service_selectors.iter().any(|s| s.matches(svc_labels));
        ns_ok && svc_ok
    }

    /// MetalLB's priority: lower first, 0 (unset) after every other.
    fn priority_rank(&self) -> (bool, i32) {
        let p = self
            .spec
            .service_allocation
            .as_ref()
            .map_or(0, |sa| sa.priority);
        (p == 0, p)
    }
}

/// `range` minus the sorted, disjoint `excluded` ranges.
fn subtract(range: &Range, excluded: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut start = range.start;
    for ex in excluded.iter().filter(|ex| ex.overlaps(range)) {
        if ex.start > start {
            out.push(Range {
                family: range.family,
                start,
                end: ex.start - 1,
            });
        }
        match ex.end.checked_add(1) {
            Some(next) => start = start.max(next),
            None => return out,
        }
    }
    if start <= range.end {
        out.push(Range {
            family: range.family,
            start,
            end: range.end,
        });
    }
    out
}

pub(crate) fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.len() > 253 || name.contains(['/', ' ']) {
        return Err(Error::invalid(
            field,
            format!("{name:?} is not a valid name (at most 253 characters, no '/' or spaces)"),
        ));
    }
    Ok(())
}

pub(crate) fn check_unique<T: Ord + std::fmt::Debug>(field: &str, items: &[T]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for item in items {
        if !seen.insert(item) {
            return Err(Error::invalid(field, format!("duplicate entry {item:?}")));
        }
    }
    Ok(())
}

/// Rejects a pool whose addresses overlap any other pool's, as MetalLB does.
pub fn check_overlaps(new: &Pool, others: &[Pool]) -> Result<()> {
    for other in others.iter().filter(|o| o.name() != new.name()) {
        for a in &new.ranges {
            if let Some(b) = other.ranges.iter().find(|b| a.overlaps(b)) {
                return Err(Error::invalid(
                    "pool.addresses",
                    format!(
                        "{a} in pool {:?} overlaps {b} of pool {:?}",
                        new.name(),
                        other.name()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The pools an automatic allocation tries, in order: MetalLB's pinned pools (those with a
/// serviceAllocation that matches the service) by priority, then the auto-assign pools without a
/// serviceAllocation. Where MetalLB's order is random (equal priority, the fallback pools), ours
/// is by pool name.
pub fn candidates<'p>(
    pools: &'p [Pool],
    caller: &Caller,
    namespace: &str,
    ns_labels: &Labels,
    svc_labels: &Labels,
) -> Vec<&'p Pool> {
    let usable = |p: &&Pool| p.spec.auto_assign && p.open_to(caller);
    let mut pinned: Vec<&Pool> = pools
        .iter()
        .filter(usable)
        .filter(|p| p.spec.service_allocation.is_some())
        .filter(|p| p.compatible(namespace, ns_labels, svc_labels))
        .collect();
    pinned.sort_by(|a, b| (a.priority_rank(), a.name()).cmp(&(b.priority_rank(), b.name())));
    let mut fallback: Vec<&Pool> = pools
        .iter()
        .filter(usable)
        .filter(|p| p.spec.service_allocation.is_none())
        .collect();
    fallback.sort_by(|a, b| a.name().cmp(b.name()));
    pinned.extend(fallback);
    pinned
}

/// Who a pool applied by `caller` is declared by and open to. An operator's apply keeps the
/// declarer (it opens the pool as written); a cluster may declare a new pool or change its own,
/// which is open to it and stays open as wide as an operator made it: only an operator opens it
/// wider.
pub fn declare(caller: &Caller, mut spec: PoolSpec, previous: Option<&Pool>) -> Result<PoolSpec> {
    let Caller::Cluster(c) = caller else {
        spec.declared_by = previous.map_or_else(|| caller.name(), |p| p.spec.declared_by.clone());
        return Ok(spec);
    };
    if let Some(prev) = previous
        && prev.spec.declared_by != caller.name()
    {
        return Err(Error::PermissionDenied(format!(
            "pool {:?} was declared by {}, not cluster/{c}",
            spec.name, prev.spec.declared_by
        )));
    }
    let clusters = previous
        .map(|p| p.spec.clusters.as_slice())
        .unwrap_or_default();
    let clients = previous
        .map(|p| p.spec.clients.as_slice())
        .unwrap_or_default();
    let wider = spec
        .clusters
        .iter()
        .filter(|x| *x != c && !clusters.contains(x))
        .map(|x| format!("cluster/{x}"))
        .chain(
            spec.clients
                .iter()
                .filter(|x| !clients.contains(x))
                .map(|x| format!("client/{x}")),
        )
        .next();
    if let Some(other) = wider {
        return Err(Error::PermissionDenied(format!(
            "cluster/{c} may not open pool {:?} to {other}: an operator does (ferrolbctl apply as admin)",
            spec.name
        )));
    }
    spec.declared_by = caller.name();
    spec.clusters = clusters.to_vec();
    spec.clients = clients.to_vec();
    if !spec.clusters.contains(c) {
        spec.clusters.push(c.clone());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, addresses: &[&str]) -> PoolSpec {
        PoolSpec::new(name, addresses)
    }

    fn k(s: &str) -> u128 {
        addr::key(s.parse().expect("test address"))
    }

    #[test]
    fn capacity_counts_exclusions_and_buggy_ips() {
        let mut s = spec("p", &["192.168.0.0/23", "2001:db8::/48"]);
        assert_eq!(
            Pool::new(s.clone()).expect("valid").capacity(Family::V4),
            512
        );
        s.avoid_buggy_ips = true;
        s.excluded = vec!["192.168.0.1".into(), "192.168.1.250-192.168.1.255".into()];
        let p = Pool::new(s).expect("valid");
        // 512 - 4 buggy - 1 excluded - 6 excluded + 1 (.255 counted in both)
        assert_eq!(p.capacity(Family::V4), 502);
        assert_eq!(p.capacity(Family::V6), 1u128 << 80);
    }

    #[test]
    fn next_allowed_jumps_over_exclusions_and_buggy_ips() {
        let mut s = spec("p", &["10.0.0.0/16"]);
        s.avoid_buggy_ips = true;
        s.excluded = vec!["10.0.0.1-10.0.0.254".into(), "10.0.1.1".into()];
        let p = Pool::new(s).expect("valid");
        let r = p.ranges[0];
        let got = p.next_allowed(&r, r.start).expect("free");
        assert_eq!(addr::ip(Family::V4, got).to_string(), "10.0.1.2");
        assert!(!p.allows(Family::V4, k("10.0.0.255")));
        assert!(p.covers(Family::V4, k("10.0.0.255")));
        let top = p.next_allowed(&r, k("10.0.255.254"));
        assert_eq!(
            top.map(|t| addr::ip(Family::V4, t).to_string()),
            Some("10.0.255.254".into())
        );
        assert_eq!(p.next_allowed(&r, k("10.0.255.255")), None);
    }

    #[test]
    fn invalid_pools_name_the_field() {
        let cases = [
            (spec("", &["10.0.0.0/24"]), "pool.name"),
            (spec("p", &[]), "pool.addresses"),
            (
                spec("p", &["10.0.0.0/24", "10.0.0.128/25"]),
                "pool.addresses",
            ),
            (spec("p", &["10.0.0.9-10.0.0.1"]), "pool.addresses"),
            (
                PoolSpec {
                    excluded: vec!["10.1.0.1".into()],
                    ..spec("p", &["10.0.0.0/24"])
                },
                "pool.excluded_addresses",
            ),
            (
                PoolSpec {
                    service_allocation: Some(ServiceAllocation {
                        namespaces: vec!["a".into(), "a".into()],
                        ..Default::default()
                    }),
                    ..spec("p", &["10.0.0.0/24"])
                },
                "pool.service_allocation.namespaces",
            ),
        ];
        for (s, field) in cases {
            match Pool::new(s.clone()) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field, "{s:?}"),
                other => panic!("{s:?}: expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn overlaps_across_pools_are_rejected() {
        let a = Pool::new(spec("a", &["192.168.1.240-192.168.1.250"])).expect("valid");
        let b = Pool::new(spec("b", &["192.168.1.0/24"])).expect("valid");
        let c = Pool::new(spec("c", &["192.168.2.0/24"])).expect("valid");
        assert!(check_overlaps(&b, std::slice::from_ref(&a)).is_err());
        assert!(check_overlaps(&c, &[a.clone(), b]).is_ok());
        assert!(
            check_overlaps(&a, std::slice::from_ref(&a)).is_ok(),
            "a pool may replace itself"
        );
    }

    #[test]
    fn candidate_order_is_priority_then_name() {
        let sa = |priority: i32, namespaces: &[&str]| {
            Some(ServiceAllocation {
                priority,
                namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
        };
        let pools: Vec<Pool> = [
            ("zeta", None, true),
            ("alpha", None, true),
            ("manual", None, false),
            ("prio0", sa(0, &["web"]), true),
            ("prio2", sa(2, &["web"]), true),
            ("prio1", sa(1, &[]), true),
            ("other-ns", sa(1, &["db"]), true),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (name, sa, auto))| {
            Pool::new(PoolSpec {
                service_allocation: sa,
                auto_assign: auto,
                ..spec(name, &[&format!("10.{i}.0.0/24")])
            })
            .expect("valid")
        })
        .collect();
        let names: Vec<&str> = candidates(
            &pools,
            &Caller::Admin,
            "web",
            &Labels::new(),
            &Labels::new(),
        )
        .into_iter()
        .map(Pool::name)
        .collect();
        assert_eq!(names, ["prio1", "prio2", "prio0", "alpha", "zeta"]);
    }

    #[test]
    fn pools_open_only_to_named_callers() {
        let mut s = spec("p", &["10.0.0.0/24"]);
        let closed = Pool::new(s.clone()).expect("valid");
        assert!(!closed.open_to(&Caller::Cluster("x".into())));
        assert!(!closed.open_to(&Caller::Client("x".into())));
        assert!(closed.open_to(&Caller::Admin));
        s.clusters = vec![EVERYONE.into()];
        let every_cluster = Pool::new(s.clone()).expect("valid");
        assert!(every_cluster.open_to(&Caller::Cluster("x".into())));
        assert!(!every_cluster.open_to(&Caller::Client("x".into())));
        s.clusters = vec!["east".into()];
        let p = Pool::new(s).expect("valid");
        assert!(p.open_to(&Caller::Cluster("east".into())));
        assert!(!p.open_to(&Caller::Cluster("west".into())));
        assert!(!p.open_to(&Caller::Client("ipam".into())));
        assert!(p.open_to(&Caller::Admin));
    }

    #[test]
    fn who_declares_a_pool_and_whom_it_is_open_to() {
        let cluster = |c: &str| Caller::Cluster(c.into());
        let open = |clusters: &[&str], clients: &[&str]| PoolSpec {
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            clients: clients.iter().map(|c| c.to_string()).collect(),
            ..spec("p", &["10.0.0.0/29"])
        };
        // A cluster's new pool is its own and open to it alone.
        let mine = declare(&cluster("east"), open(&[], &[]), None).expect("declared");
        assert_eq!(mine.declared_by, "cluster/east");
        assert_eq!(mine.clusters, ["east"]);
        let mine = Pool::new(mine).expect("a pool");
        // Only an operator opens it wider; the operator keeps the declarer.
        let wider = declare(&cluster("east"), open(&["east", "west"], &[]), Some(&mine));
        assert!(
            matches!(&wider, Err(Error::PermissionDenied(m)) if m.contains("may not open pool \"p\" to cluster/west")),
            "{wider:?}"
        );
        let client = declare(&cluster("east"), open(&[], &["ipam"]), Some(&mine));
        assert!(matches!(client, Err(Error::PermissionDenied(_))));
        let opened = declare(&Caller::Admin, open(&["east", "west"], &[]), Some(&mine))
            .expect("an operator opens it");
        assert_eq!(opened.declared_by, "cluster/east");
        let opened = Pool::new(opened).expect("a pool");
        // The cluster's next apply keeps what the operator opened.
        let again = declare(&cluster("east"), open(&[], &[]), Some(&opened)).expect("kept");
        assert_eq!(again.clusters, ["east", "west"]);
        // Another cluster's pool, or an operator's, is not a cluster's to change.
        let theirs = declare(&cluster("west"), open(&[], &[]), Some(&opened));
        assert!(
            matches!(&theirs, Err(Error::PermissionDenied(m)) if m.contains("was declared by cluster/east")),
            "{theirs:?}"
        );
        let admin = declare(&Caller::Admin, open(&["*"], &[]), None).expect("declared");
        assert_eq!(admin.declared_by, "admin");
    }
}
