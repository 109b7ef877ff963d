//! The allocation engine: MetalLB's pick order (explicit addresses, the named pool, then the
//! automatic candidates by priority), the sharing rule, dual stack from one pool, and whether an
//! owner's lease can stay as it is.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Allocation, Change, State, group_of};
use crate::addr::{self, Family};
use crate::error::{Error, Result};
use crate::lease::{AllocRequest, EventKind, FamilyPolicy, Lease, LeaseAddr, Owner, Port};
use crate::pool::{self, Caller, Pool};

impl State {
    /// Moves a stranded lease into its pools' current addresses, serving `req` (the request
    /// that made it) again; a failed move changes nothing.
    pub fn move_stranded(
        &mut self,
        owner: &Owner,
        req: &AllocRequest,
        now_ms: i64,
    ) -> Result<Change> {
        let key = owner.key();
        let old = self.held(&key)?;
        if !old.stranded() {
            return Err(Error::Conflict(format!(
                "the lease of {key} is not stranded; nothing to move"
            )));
        }
        let mut req = req.clone();
        // Wherever the pools allow now, not back to the addresses first asked for.
        req.requested_ips.clear();
        let caller = match owner {
            Owner::Service { cluster, .. } => Caller::Cluster(cluster.clone()),
            Owner::External { client, .. } => Caller::Client(client.clone()),
        };
        self.take(&key);
        match self.choose(&caller, &req, now_ms) {
            Ok(picks) => {
                let lease = Lease {
                    expires_ms: old.expires_ms,
                    ..build(&req, &picks, old.created_ms, now_ms)
                };
                Ok(self.change(EventKind::Updated, lease, Some(old), Some(req)))
            }
            Err(e) => {
                self.put(old);
                Err(e)
            }
        }
    }

    /// Allocates for `req`, or returns what the owner holds. `None` as change: nothing changed.
    pub fn allocate(
        &mut self,
        caller: &Caller,
        req: &AllocRequest,
        now_ms: i64,
    ) -> Result<Allocation> {
        let key = req.owner.key();
        let capped;
        let req = match (&req.owner, req.ttl_seconds) {
            (Owner::External { .. }, None) => {
                capped = AllocRequest {
                    ttl_seconds: Some(self.limits.max_ttl_seconds),
                    ..req.clone()
                };
                &capped
            }
            (Owner::External { .. }, Some(t)) => {
                self.check_ttl(t)?;
                req
            }
            _ => req,
        };
        let Some(existing) = self.leases.get(&key).cloned() else {
            if let Owner::External { client, .. } = &req.owner {
                let held = self.per_client.get(client).copied().unwrap_or(0);
                if held >= self.limits.max_leases {
                    return Err(Error::Exhausted(format!(
                        "client/{client} holds {held} leases, its quota (--max-leases-per-client {}); release some first",
                        self.limits.max_leases
                    )));
                }
            }
            let picks = self.choose(caller, req, now_ms)?;
            let lease = build(req, &picks, now_ms, now_ms);
            let c = self.change(EventKind::Allocated, lease, None, Some(req.clone()));
            return Ok(Allocation::new(c, true));
        };
        match self.reuse(&existing, req, now_ms) {
            Reuse::Keep => Ok(Allocation {
                lease: existing,
                new: false,
                change: None,
            }),
            Reuse::Changed(lease) => {
                let c = self.change(EventKind::Updated, lease, Some(existing), Some(req.clone()));
                Ok(Allocation::new(c, false))
            }
            Reuse::Reallocate => {
                self.take(&key);
                match self.choose(caller, req, now_ms) {
                    Ok(picks) => {
                        let lease = build(req, &picks, existing.created_ms, now_ms);
                        let c = self.change(
                            EventKind::Updated,
                            lease,
                            Some(existing),
                            Some(req.clone()),
                        );
                        Ok(Allocation::new(c, false))
                    }
                    Err(e) => {
                        self.put(existing);
                        Err(e)
                    }
                }
            }
        }
    }

    /// MetalLB's convergence of an existing service: keep what still fits, reallocate when the
    /// owner asked for other addresses, another pool or other families. A pool edit alone never
    /// moves a lease (it is stranded instead).
    fn reuse(&self, existing: &Lease, req: &AllocRequest, now_ms: i64) -> Reuse {
        let wanted = req.families();
        let have: BTreeSet<(Family, u128)> = existing
            .addrs
            .iter()
            .map(|a| (a.family, addr::key(a.ip)))
            .collect();
        if !req.requested_ips.is_empty() {
            let asked: BTreeSet<(Family, u128)> = req
                .requested_ips
                .iter()
                .map(|ip| (Family::of(*ip), addr::key(*ip)))
                .collect();
            if asked != have {
                return Reuse::Reallocate;
            }
        }
        if let Some(p) = &req.pool
            && existing.addrs.iter().any(|a| &a.pool != p)
        {
            return Reuse::Reallocate;
        }
        if existing.addrs.iter().any(|a| !wanted.contains(&a.family))
            || (req.policy == FamilyPolicy::SingleStack && existing.addrs[0].family != req.primary)
        {
            return Reuse::Reallocate;
        }
        let key = req.owner.key();
        let mut lease = existing.clone();
        let group = req.share_group();
        if group_of(existing) != group || existing.ports != req.ports {
            for a in &existing.addrs {
                let Some(u) = self.addrs.get(&addr::key(a.ip)) else {
                    continue;
                };
                let others = u.holders.iter().any(|(h, _)| h != &key);
                if others
                    && (u.group != group || self.port_conflict(addr::key(a.ip), &key, &req.ports))
                {
                    return Reuse::Reallocate;
                }
            }
            lease.sharing_key = req.sharing_key.clone();
            lease.backend_key = req.backend_key.clone();
            lease.ports = req.ports.clone();
        }
        if let Some(ttl) = req.ttl_seconds {
            lease.expires_ms = Some(now_ms + i64::from(ttl) * 1000);
        }
        if req.requested_ips.is_empty() {
            // Dual stack from one pool: a missing family comes from the lease's pool.
            let missing: Vec<Family> = wanted
                .iter()
                .copied()
                .filter(|f| !existing.addrs.iter().any(|a| a.family == *f))
                .collect();
            let pool = self.pools.iter().find(|p| p.name() == existing.pool());
            let mut added = false;
            for family in &missing {
                if let Some(k) = pool.and_then(|p| self.find(p, *family, req, now_ms)) {
                    lease.addrs.push(LeaseAddr {
                        family: *family,
                        ip: addr::ip(*family, k),
                        pool: existing.pool().to_string(),
                        stranded: false,
                    });
                    added = true;
                }
            }
            lease.addrs.sort_by_key(|a| a.family != req.primary);
            if !missing.is_empty() && !added && req.policy == FamilyPolicy::RequireDualStack {
                return Reuse::Reallocate;
            }
        }
        if lease == *existing {
            Reuse::Keep
        } else {
            Reuse::Changed(lease)
        }
    }

    /// MetalLB's pick order: explicit addresses, the named pool, then the automatic candidates.
    fn choose(&self, caller: &Caller, req: &AllocRequest, now_ms: i64) -> Result<Vec<Pick>> {
        if !req.requested_ips.is_empty() {
            return self.choose_explicit(caller, req);
        }
        let candidates: Vec<&Pool> = match &req.pool {
            Some(name) => {
                let pool = self
                    .pools
                    .iter()
                    .find(|p| p.name() == name)
                    .ok_or_else(|| Error::NotFound(format!("pool {name:?} does not exist")))?;
                check_usable(pool, caller, req)?;
                vec![pool]
            }
            None => pool::candidates(
                &self.pools,
                caller,
                req.owner.namespace(),
                &req.namespace_labels,
                &req.service_labels,
            ),
        };
        let families = req.families();
        // PreferDualStack: a pool with only the primary family beats one with only the other.
        let mut fallback: Option<(usize, Vec<Pick>)> = None;
        for pool in candidates {
            let picks: Vec<Pick> = families
                .iter()
                .filter(|f| pool.has_family(**f))
                .filter_map(|f| {
                    self.find(pool, *f, req, now_ms).map(|key| Pick {
                        family: *f,
                        key,
                        pool: pool.name().to_string(),
                    })
                })
                .collect();
            if !picks.is_empty() && picks.len() == families.len() {
                return Ok(picks);
            }
            if req.policy == FamilyPolicy::PreferDualStack && !picks.is_empty() {
                let rank = usize::from(picks[0].family != req.primary);
                if fallback.as_ref().is_none_or(|(r, _)| rank < *r) {
                    fallback = Some((rank, picks));
                }
            }
        }
        if let Some((_, picks)) = fallback {
            return Ok(picks);
        }
        Err(match &req.pool {
            Some(name) => Error::Exhausted(format!("no available IPs in pool {name:?}")),
            None => Error::Exhausted(format!(
                "no available IPs for {} in any pool open to it",
                req.owner.key()
            )),
        })
    }

    /// Explicit addresses (MetalLB's loadBalancerIPs and spec.loadBalancerIP).
    fn choose_explicit(&self, caller: &Caller, req: &AllocRequest) -> Result<Vec<Pick>> {
        let group = req.share_group();
        let mut picks: Vec<Pick> = Vec::new();
        for ip in ordered(&req.requested_ips, req.primary) {
            let (family, key) = (Family::of(ip), addr::key(ip));
            let pool = match self.pools.iter().find(|p| p.covers(family, key)) {
                Some(p) if p.allows(family, key) => p,
                Some(p) => {
                    return Err(Error::invalid(
                        "requested_ips",
                        format!("{ip} is excluded from pool {:?}", p.name()),
                    ));
                }
                None => {
                    return Err(Error::invalid(
                        "requested_ips",
                        format!("{ip} is not in any pool"),
                    ));
                }
            };
            if let Some(name) = &req.pool
                && name != pool.name()
            {
                return Err(Error::invalid(
                    "requested_ips",
                    format!(
                        "{ip} is in pool {:?}, not in the requested pool {name:?}",
                        pool.name()
                    ),
                ));
            }
            check_usable(pool, caller, req)?;
            if let Some(u) = self.addrs.get(&key) {
                if u.group != group {
                    return Err(Error::Conflict(format!(
                        "{ip} is already in use and cannot be shared: sharing needs the same sharing key and backend key on both sides"
                    )));
                }
                if self.port_conflict(key, &req.owner.key(), &req.ports) {
                    return Err(Error::Conflict(format!(
                        "{ip} is shared under key {:?} and one of the requested ports is already in use on it",
                        req.sharing_key
                    )));
                }
            }
            // MetalLB's `Assign`: the addresses of one Service come from one pool.
            if let Some(first) = picks.first()
                && first.pool != pool.name()
            {
                return Err(Error::invalid(
                    "requested_ips",
                    format!(
                        "{} is in pool {:?} and {ip} in pool {:?}: a Service's addresses come from one pool",
                        addr::ip(first.family, first.key),
                        first.pool,
                        pool.name()
                    ),
                ));
            }
            picks.push(Pick {
                family,
                key,
                pool: pool.name().to_string(),
            });
        }
        Ok(picks)
    }

    /// The address of `family` this request should take in `pool`: the owner's own address from
    /// within the grace period if it is still free, else the lowest of the first free address and
    /// the first address it may share.
    fn find(&self, pool: &Pool, family: Family, req: &AllocRequest, now_ms: i64) -> Option<u128> {
        let owner_key = req.owner.key();
        if let Some((k, at)) = self.recent.get(&(owner_key.clone(), family))
            && *at >= now_ms - self.grace_ms
            && pool.allows(family, *k)
            && !self.addrs.contains_key(k)
        {
            return Some(*k);
        }
        let free = self.first_free(pool, family);
        if req.sharing_key.is_empty() {
            return free;
        }
        let shared = self.by_group.get(&req.share_group()).and_then(|set| {
            set.iter()
                .take_while(|k| free.is_none_or(|f| **k < f))
                .find(|k| {
                    pool.allows(family, **k)
                        && self.addrs.get(k).is_some_and(|u| u.family == family)
                        && !self.port_conflict(**k, &owner_key, &req.ports)
                })
                .copied()
        });
        shared.or(free)
    }

    /// The lowest address of `family` that the pool may hand out and nobody holds.
    fn first_free(&self, pool: &Pool, family: Family) -> Option<u128> {
        for range in pool.ranges.iter().filter(|r| r.family == family) {
            let mut cursor = range.start;
            while let Some(candidate) = pool.next_allowed(range, cursor) {
                match self.run_containing(candidate) {
                    None => return Some(candidate),
                    // Everything up to the run's end is taken; the address after it is free.
                    Some((_, end)) => match end.checked_add(1) {
                        Some(next) if next <= range.end => cursor = next,
                        _ => break,
                    },
                }
            }
        }
        None
    }

    /// Whether another owner already uses one of `ports` on the address.
    fn port_conflict(&self, key: u128, owner_key: &str, ports: &[Port]) -> bool {
        self.addrs.get(&key).is_some_and(|u| {
            u.holders
                .iter()
                .filter(|(h, _)| h.as_str() != owner_key)
                .any(|(_, theirs)| theirs.iter().any(|p| ports.contains(p)))
        })
    }
}

enum Reuse {
    Keep,
    Changed(Lease),
    Reallocate,
}

/// One address chosen for a request.
#[derive(Debug, Clone)]
struct Pick {
    family: Family,
    key: u128,
    pool: String,
}

fn build(req: &AllocRequest, picks: &[Pick], created_ms: i64, now_ms: i64) -> Lease {
    Lease {
        owner: req.owner.clone(),
        addrs: picks
            .iter()
            .map(|p| LeaseAddr {
                family: p.family,
                ip: addr::ip(p.family, p.key),
                pool: p.pool.clone(),
                stranded: false,
            })
            .collect(),
        sharing_key: req.sharing_key.clone(),
        backend_key: req.backend_key.clone(),
        ports: req.ports.clone(),
        created_ms,
        expires_ms: req.ttl_seconds.map(|t| now_ms + i64::from(t) * 1000),
        revision: 0,
    }
}

/// Primary family first.
fn ordered(ips: &[IpAddr], primary: Family) -> Vec<IpAddr> {
    let mut v = ips.to_vec();
    v.sort_by_key(|ip| Family::of(*ip) != primary);
    v
}

fn check_usable(pool: &Pool, caller: &Caller, req: &AllocRequest) -> Result<()> {
    if !pool.open_to(caller) {
        return Err(Error::PermissionDenied(format!(
            "pool {:?} is not open to {}",
            pool.name(),
            caller.name()
        )));
    }
    if !pool.compatible(
        req.owner.namespace(),
        &req.namespace_labels,
        &req.service_labels,
    ) {
        return Err(Error::Conflict(format!(
            "pool {:?} is not compatible with {}: its serviceAllocation does not select it",
            pool.name(),
            req.owner.key()
        )));
    }
    Ok(())
}
