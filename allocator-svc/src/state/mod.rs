//! The allocation core: every lease and address in use, in memory, and MetalLB's allocation rules
//! as plain functions over it. No I/O: the store loads it, keeps it in step with the database
//! through the lease events, and persists what each decision changed.
//!
//! Decisions either succeed and change the state, or fail and leave it as it was.

mod engine;
#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::addr::{self, Family};
use crate::error::{Error, Result};
use crate::lease::{AllocRequest, EventKind, Lease, Owner, Port};
use crate::pool::{Caller, Pool};

/// What an allocation did: the lease the owner holds now, whether anything new was handed out,
/// and the change to persist (none when the lease stayed as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub lease: Lease,
    pub new: bool,
    pub change: Option<Change>,
}

impl Allocation {
    fn new(change: Change, new: bool) -> Allocation {
        Allocation {
            lease: change.lease.clone(),
            new,
            change: Some(change),
        }
    }
}

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
}
