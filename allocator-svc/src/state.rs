//! The allocation core: every lease and address in use, in memory, and MetalLB's allocation rules
//! as plain functions over it. No I/O: the store loads it, keeps it in step with the database
//! through the lease events, and persists what each decision changed.
//!
//! Decisions either succeed and change the state, or fail and leave it as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::addr::{self, Family};
use crate::error::{Error, Result};
use crate::lease::{AllocRequest, EventKind, FamilyPolicy, Lease, LeaseAddr, Owner, Port};
use crate::pool::{self, Caller, Pool};

/// Who uses an address in use.
#[derive(Debug, Clone)]
struct Use {
    family: Family,
    group: String,
    /// Owner keys with their ports on this address; usually one, so a vector beats a map.
    holders: Vec<(String, Vec<Port>)>,
}

/// A change a decision made, for the store to persist and announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: EventKind,
    /// The lease after the change (for releases: as it was), with its new revision.
    pub lease: Lease,
    /// The lease before the change, if there was one.
    pub old: Option<Lease>,
    /// The request the lease now answers, for its rows; `None` keeps the stored one.
    pub request: Option<AllocRequest>,
}

/// The sharing group of an owner's addresses: services share an address only with equal
/// non-empty sharing keys and equal backend keys, and only within one tenant (one cluster, or
/// one external client), so that nobody takes another tenant's address by copying its
/// sharing key; otherwise the owner holds it alone.
pub fn share_group(owner_key: &str, sharing_key: &str, backend_key: &str) -> String {
    if sharing_key.is_empty() {
        return format!("owner:{owner_key}");
    }
    // Owner keys are `service/<cluster>/…` or `external/<client>/…`.
    let tenant = match owner_key.split('/').take(2).collect::<Vec<_>>().as_slice() {
        ["service", cluster] => format!("cluster/{cluster}"),
        ["external", client] => format!("client/{client}"),
        _ => format!("owner/{owner_key}"),
    };
    format!("key:{tenant}\u{1f}{sharing_key}\u{1f}{backend_key}")
}

fn group_of(lease: &Lease) -> String {
    share_group(&lease.owner.key(), &lease.sharing_key, &lease.backend_key)
}

/// What one external client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Leases one client may hold at once.
    pub max_leases: usize,
    /// The longest time to live of an external lease; a lease asked for without one gets it.
    pub max_ttl_seconds: u32,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            max_leases: 4096,
            max_ttl_seconds: 30 * 24 * 3600,
        }
    }
}

/// Every lease and address in use, at one revision of the store.
#[derive(Debug, Clone, Default)]
pub struct State {
    revision: u64,
    pools: Vec<Pool>,
    /// The pool configuration version `pools` was read at.
    pools_version: Option<u64>,
    leases: HashMap<String, Lease>,
    addrs: BTreeMap<u128, Use>,
    /// The addresses in use as maximal runs of consecutive keys, start → end: the lowest free
    /// address after any key is one look-up away, whatever the pool's size.
    runs: BTreeMap<u128, u128>,
    /// Shared addresses by sharing group, for co-location.
    by_group: HashMap<String, BTreeSet<u128>>,
    /// (owner key, family) → (address, released at ms).
    recent: HashMap<(String, Family), (u128, i64)>,
    grace_ms: i64,
    limits: ClientLimits,
    /// Leases held per external client.
    per_client: HashMap<String, usize>,
}

impl State {
    pub fn new(revision: u64, grace_ms: i64) -> State {
        State {
            revision,
            grace_ms,
            ..State::default()
        }
    }

    pub fn with_limits(self, limits: ClientLimits) -> State {
        State { limits, ..self }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn set_pools(&mut self, pools: Vec<Pool>, version: u64) {
        self.pools = pools;
        self.pools_version = Some(version);
    }

    pub fn pools_version(&self) -> Option<u64> {
        self.pools_version
    }

    pub fn lease(&self, owner_key: &str) -> Option<&Lease> {
        self.leases.get(owner_key)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Remembers a release, so its owner gets the address back within the grace period.
    pub fn remember_release(&mut self, owner_key: &str, family: Family, key: u128, at_ms: i64) {
        // Forget releases past the grace period now and then, so the map stays small.
        if self.recent.len() >= 1024 && self.recent.len().is_power_of_two() {
            let horizon = at_ms - self.grace_ms;
            self.recent.retain(|_, (_, at)| *at >= horizon);
        }
        self.recent
            .insert((owner_key.to_string(), family), (key, at_ms));
    }

    /// Applies a change made elsewhere (another replica, a pool edit), read from the events.
    pub fn apply_event(&mut self, revision: u64, kind: EventKind, lease: Lease, at_ms: i64) {
        let key = lease.owner.key();
        match kind {
            EventKind::Released | EventKind::Expired => {
                self.take(&key);
                for a in &lease.addrs {
                    self.remember_release(&key, a.family, addr::key(a.ip), at_ms);
                }
            }
            _ => self.put(lease),
        }
        self.revision = revision;
    }

    /// Adds or replaces an owner's lease.
    pub fn put(&mut self, lease: Lease) {
        let key = lease.owner.key();
        self.take(&key);
        if let Owner::External { client, .. } = &lease.owner {
            *self.per_client.entry(client.clone()).or_default() += 1;
        }
        let group = group_of(&lease);
        for a in &lease.addrs {
            let k = addr::key(a.ip);
            let fresh = !self.addrs.contains_key(&k);
            let u = self.addrs.entry(k).or_insert_with(|| Use {
                family: a.family,
                group: group.clone(),
                holders: Vec::with_capacity(1),
            });
            u.holders.retain(|(h, _)| h != &key);
            u.holders.push((key.clone(), lease.ports.clone()));
            if fresh {
                self.runs_add(k);
                if group.starts_with("key:") {
                    self.by_group.entry(group.clone()).or_default().insert(k);
                }
            }
        }
        self.leases.insert(key, lease);
    }

    /// Removes an owner's lease and frees the addresses nobody else holds.
    fn take(&mut self, owner_key: &str) -> Option<Lease> {
        let lease = self.leases.remove(owner_key)?;
        if let Owner::External { client, .. } = &lease.owner
            && let Some(n) = self.per_client.get_mut(client)
        {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(client);
            }
        }
        for a in &lease.addrs {
            let k = addr::key(a.ip);
            let Some(u) = self.addrs.get_mut(&k) else {
                continue;
            };
            u.holders.retain(|(h, _)| h != owner_key);
            if u.holders.is_empty() {
                let group = u.group.clone();
                self.addrs.remove(&k);
                self.runs_remove(k);
                if let Some(set) = self.by_group.get_mut(&group) {
                    set.remove(&k);
                    if set.is_empty() {
                        self.by_group.remove(&group);
                    }
                }
            }
        }
        Some(lease)
    }

    /// The run that contains `k`, if `k` is in use.
    fn run_containing(&self, k: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=k)
            .next_back()
            .filter(|(_, end)| **end >= k)
            .map(|(s, e)| (*s, *e))
    }

    fn runs_add(&mut self, k: u128) {
        let left = k
            .checked_sub(1)
            .and_then(|p| self.run_containing(p))
            .map(|(s, _)| s);
        let right_end = k.checked_add(1).and_then(|n| self.runs.remove(&n));
        let end = right_end.unwrap_or(k);
        match left {
            Some(start) => {
                self.runs.insert(start, end);
            }
            None => {
                self.runs.insert(k, end);
            }
        }
    }

    fn runs_remove(&mut self, k: u128) {
        let Some((start, end)) = self.run_containing(k) else {
            return;
        };
        self.runs.remove(&start);
        if start < k {
            self.runs.insert(start, k - 1);
        }
        if end > k {
            self.runs.insert(k + 1, end);
        }
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn change(
        &mut self,
        kind: EventKind,
        mut lease: Lease,
        old: Option<Lease>,
        request: Option<AllocRequest>,
    ) -> Change {
        lease.revision = self.next_revision();
        if !matches!(kind, EventKind::Released | EventKind::Expired) {
            self.put(lease.clone());
        }
        Change {
            kind,
            lease,
            old,
            request,
        }
    }

    /// Allocates for `req`, or returns what the owner holds. `None` as change: nothing changed.
    pub fn allocate(
        &mut self,
        caller: &Caller,
        req: &AllocRequest,
        now_ms: i64,
    ) -> Result<(Lease, bool, Option<Change>)> {
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
            return Ok((c.lease.clone(), true, Some(c)));
        };
        match self.reuse(&existing, req, now_ms) {
            Reuse::Keep => Ok((existing, false, None)),
            Reuse::Changed(lease) => {
                let c = self.change(EventKind::Updated, lease, Some(existing), Some(req.clone()));
                Ok((c.lease.clone(), false, Some(c)))
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
                        Ok((c.lease.clone(), false, Some(c)))
                    }
                    Err(e) => {
                        self.put(existing);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Releases an owner's lease (`kind`: Released or Expired).
    pub fn release(
        &mut self,
        caller: &Caller,
        owner: &Owner,
        kind: EventKind,
        now_ms: i64,
    ) -> Result<Change> {
        let key = owner.key();
        let old = self.owned(caller, owner, "release")?;
        self.take(&key);
        for a in &old.addrs {
            self.remember_release(&key, a.family, addr::key(a.ip), now_ms);
        }
        Ok(self.change(kind, old.clone(), Some(old), None))
    }

    /// The owner's lease, or NOT_FOUND.
    fn held(&self, key: &str) -> Result<Lease> {
        self.leases
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no lease for {key}")))
    }

    /// The owner's lease, if the caller may act on it (`verb` names the act in the error).
    /// Another owner's lease is refused whether or not it exists, so that nobody learns what
    /// others hold by asking.
    fn owned(&self, caller: &Caller, owner: &Owner, verb: &str) -> Result<Lease> {
        let key = owner.key();
        if !owner.belongs_to(caller) {
            return Err(Error::PermissionDenied(format!(
                "{} may not {verb} {key}",
                caller.name()
            )));
        }
        self.held(&key)
    }

    /// Extends an external lease.
    pub fn renew(
        &mut self,
        caller: &Caller,
        owner: &Owner,
        ttl_seconds: u32,
        now_ms: i64,
    ) -> Result<Change> {
        let old = self.owned(caller, owner, "renew")?;
        self.check_ttl(ttl_seconds)?;
        let lease = Lease {
            expires_ms: Some(now_ms + i64::from(ttl_seconds) * 1000),
            ..old.clone()
        };
        Ok(self.change(EventKind::Updated, lease, Some(old), None))
    }

    fn check_ttl(&self, ttl_seconds: u32) -> Result<()> {
        let max = self.limits.max_ttl_seconds;
        if ttl_seconds > max {
            return Err(Error::invalid(
                "ttl_seconds",
                format!(
                    "{ttl_seconds} is more than the maximum of {max} (--max-lease-ttl-seconds)"
                ),
            ));
        }
        Ok(())
    }

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
        let mut picks = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolSpec;

    fn state(pools: &[(&str, &[&str])]) -> State {
        let mut s = State::new(0, 3_600_000);
        s.set_pools(
            pools
                .iter()
                .map(|(name, addrs)| Pool::new(PoolSpec::new(name, addrs)).expect("valid pool"))
                .collect(),
            1,
        );
        s
    }

    fn req(name: &str) -> AllocRequest {
        AllocRequest::service("c", "d", name)
    }

    fn ip_of(s: &mut State, name: &str) -> String {
        s.allocate(&Caller::Admin, &req(name), 0)
            .expect("allocates")
            .0
            .ips()[0]
            .to_string()
    }

    #[test]
    fn runs_merge_and_split() {
        let mut s = state(&[("p", &["10.0.0.0/29"])]);
        for n in ["a", "b", "c", "d"] {
            ip_of(&mut s, n);
        }
        assert_eq!(s.runs.len(), 1);
        s.release(&Caller::Admin, &req("b").owner, EventKind::Released, 0)
            .expect("release");
        assert_eq!(s.runs.len(), 2, "{:?}", s.runs);
        assert_eq!(ip_of(&mut s, "e"), "10.0.0.1", "the hole is filled first");
        assert_eq!(s.runs.len(), 1);
        assert_eq!(s.revision(), 6);
    }

    #[test]
    fn old_releases_are_forgotten() {
        let mut s = state(&[("p", &["10.0.0.0/16"])]);
        for i in 0..5000u128 {
            s.remember_release(&format!("o{i}"), Family::V4, i, i as i64);
        }
        // Releases at 0..5000 ms with a one-hour grace period: all still count.
        assert_eq!(s.recent.len(), 5000);
        s.remember_release("late", Family::V4, 1, 10_000_000);
        // The map is swept when it grows past a power of two (8192 here).
        for i in 0..4000u128 {
            s.remember_release(&format!("p{i}"), Family::V4, i, 10_000_000);
        }
        assert!(
            s.recent.len() < 5000,
            "expired releases are dropped: {}",
            s.recent.len()
        );
    }

    #[test]
    fn failed_reallocation_changes_nothing() {
        let mut s = state(&[("p", &["10.0.0.0/31"]), ("q", &["10.1.0.0/32"])]);
        ip_of(&mut s, "a");
        ip_of(&mut s, "b");
        let rev = s.revision();
        let mut r = req("a");
        r.pool = Some("nope".into());
        assert!(s.allocate(&Caller::Admin, &r, 0).is_err());
        assert_eq!(s.revision(), rev);
        assert_eq!(
            s.lease(&r.owner.key()).map(|l| l.ips()[0].to_string()),
            Some("10.0.0.0".into())
        );
        assert_eq!(s.runs.len(), 1);
    }

    #[test]
    fn events_rebuild_the_same_state() {
        let mut a = state(&[("p", &["10.0.0.0/28"])]);
        let mut b = state(&[("p", &["10.0.0.0/28"])]);
        let mut changes = Vec::new();
        for n in ["a", "b", "c"] {
            changes.push(
                a.allocate(&Caller::Admin, &req(n), 0)
                    .expect("alloc")
                    .2
                    .expect("change"),
            );
        }
        changes.push(
            a.release(&Caller::Admin, &req("b").owner, EventKind::Released, 5)
                .expect("release"),
        );
        for c in changes {
            b.apply_event(c.lease.revision, c.kind, c.lease, 5);
        }
        assert_eq!(b.revision(), a.revision());
        assert_eq!(b.runs, a.runs);
        assert_eq!(
            ip_of(&mut b, "b"),
            "10.0.0.1",
            "the grace period came along with the event"
        );
    }

    #[test]
    fn client_quota_and_ttl_cap() {
        let mut s = State::new(0, 3_600_000).with_limits(ClientLimits {
            max_leases: 2,
            max_ttl_seconds: 60,
        });
        let mut open = PoolSpec::new("p", &["10.0.0.0/28"]);
        open.clients = vec![crate::pool::EVERYONE.into()];
        s.set_pools(vec![Pool::new(open).expect("valid pool")], 1);
        let ext = |key: &str, ttl: Option<u32>| AllocRequest {
            owner: Owner::External {
                client: "x".into(),
                key: key.into(),
            },
            ttl_seconds: ttl,
            ..req("unused")
        };
        let x = Caller::Client("x".into());
        // No TTL asked for: the maximum.
        let (lease, _, _) = s.allocate(&x, &ext("a", None), 1000).expect("first");
        assert_eq!(lease.expires_ms, Some(1000 + 60_000));
        let e = s
            .allocate(&x, &ext("b", Some(61)), 0)
            .expect_err("over the cap");
        assert!(e.to_string().contains("more than the maximum of 60"), "{e}");
        s.allocate(&x, &ext("b", Some(30)), 0).expect("second");
        // Asking again for a lease it holds is no new lease.
        s.allocate(&x, &ext("b", Some(30)), 0).expect("idempotent");
        let e = s
            .allocate(&x, &ext("c", None), 0)
            .expect_err("over the quota");
        assert!(matches!(e, Error::Exhausted(_)), "{e}");
        assert!(e.to_string().contains("quota"), "{e}");
        // Another client has a quota of its own; a release frees one.
        let y = Caller::Client("y".into());
        let other = AllocRequest {
            owner: Owner::External {
                client: "y".into(),
                key: "a".into(),
            },
            ..ext("a", None)
        };
        s.allocate(&y, &other, 0).expect("y's own quota");
        s.release(&x, &ext("a", None).owner, EventKind::Released, 0)
            .expect("release");
        s.allocate(&x, &ext("c", None), 0).expect("room again");
        assert!(s.renew(&x, &ext("c", None).owner, 61, 0).is_err());
        assert!(s.renew(&x, &ext("c", None).owner, 60, 0).is_ok());
    }
}
