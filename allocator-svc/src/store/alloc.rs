//! Allocation inside one transaction: MetalLB's pick order and sharing rules, on the database.
//!
//! Every writing transaction first locks the store's revision row (see [`super::sql::lock_writes`]),
//! so writers run one at a time across replicas and two allocations never pick the same free
//! address; the `addresses` primary key and the `lease_ports` key back this up in the database
//! itself. The lowest free address is found without walking the pool: one look-up in
//! `used_runs` per run of used addresses skipped (see `runs`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use sqlx::AnyConnection;

use super::runs;
use super::sql::{
    Core, LeaseRow, TxError, caller_of, delete_owner, lease_of, load_pools, next_revisions, now_ms,
    owner_rows, record_event, stamp,
};
use crate::addr::{self, Family};
use crate::error::Error;
use crate::lease::{AllocRequest, EventKind, FamilyPolicy, Lease, LeaseAddr, Owner, Port};
use crate::pool::{self, Caller, Pool};

/// The NOTIFY channel on which every commit announces its revision.
pub(super) const NOTIFY_CHANNEL: &str = "ferrolb_revision";

/// One address chosen for a request.
#[derive(Debug, Clone)]
struct Pick {
    family: Family,
    key: u128,
    pool: String,
}

/// Allocates for `req`; returns the lease, whether it is new, and whether anything changed.
pub(super) async fn allocate(
    store: &Core,
    conn: &mut AnyConnection,
    caller: &Caller,
    req: &AllocRequest,
) -> Result<(Lease, bool, bool), TxError> {
    let pools = load_pools(conn).await?;
    let owner_key = req.owner.key();
    let existing = owner_rows(conn, &owner_key).await?;
    let created = existing.is_empty();
    if !existing.is_empty() {
        match reuse(store, conn, &pools, req, &existing).await? {
            Reuse::Keep => {
                let lease =
                    lease_of(&existing).ok_or_else(|| Error::Internal("empty lease".into()))?;
                return Ok((lease, false, false));
            }
            Reuse::Changed => {
                let revision = next_revisions(conn, 1).await?;
                stamp(conn, &owner_key, revision).await?;
                let lease = lease_of(&owner_rows(conn, &owner_key).await?)
                    .ok_or_else(|| Error::Internal("empty lease".into()))?;
                record_event(conn, store.dialect, revision, EventKind::Updated, &lease).await?;
                return Ok((lease, false, true));
            }
            Reuse::Reallocate => delete_owner(conn, &existing).await?,
        }
    }
    let picks = choose(store, conn, &pools, caller, req).await?;
    let lease = insert(conn, req, &picks, now_ms()).await?;
    let kind = if created {
        EventKind::Allocated
    } else {
        EventKind::Updated
    };
    record_event(conn, store.dialect, lease.revision, kind, &lease).await?;
    Ok((lease, created, true))
}

/// Moves a stranded lease: its addresses are given up and the original request is served again
/// from the pools as they are now, in the same transaction, so a failed move changes nothing.
pub(super) async fn move_stranded(
    store: &Core,
    conn: &mut AnyConnection,
    owner: &Owner,
) -> Result<Lease, TxError> {
    let owner_key = owner.key();
    let existing = owner_rows(conn, &owner_key).await?;
    let first = existing
        .first()
        .ok_or_else(|| Error::NotFound(format!("no lease for {owner_key}")))?;
    if !existing.iter().any(|r| r.stranded) {
        return Err(Error::Conflict(format!(
            "the lease of {owner_key} is not stranded; nothing to move"
        ))
        .into());
    }
    let mut req: AllocRequest = serde_json::from_str(&first.request)
        .map_err(|_| Error::Internal("stored request cannot be read".into()))?;
    // The move goes wherever the pools allow now, not back to the addresses first asked for.
    req.requested_ips.clear();
    let pools = load_pools(conn).await?;
    delete_owner(conn, &existing).await?;
    let picks = choose(store, conn, &pools, &caller_of(owner), &req).await?;
    let lease = insert(conn, &req, &picks, first.created_ms).await?;
    record_event(
        conn,
        store.dialect,
        lease.revision,
        EventKind::Updated,
        &lease,
    )
    .await?;
    Ok(lease)
}

enum Reuse {
    /// The owner's lease already answers the request.
    Keep,
    /// Updated in place (sharing key, ports, a family added, time to live).
    Changed,
    /// The request asks for something else: give up the old addresses and allocate anew.
    Reallocate,
}

/// MetalLB's convergence of an existing service: keep what still fits, reallocate when the owner
/// asked for other addresses, another pool or other families. A pool edit alone never moves a
/// lease (it is stranded instead).
async fn reuse(
    store: &Core,
    conn: &mut AnyConnection,
    pools: &[Pool],
    req: &AllocRequest,
    existing: &[LeaseRow],
) -> Result<Reuse, TxError> {
    let wanted = req.families();
    let have: BTreeSet<(Family, u128)> = existing.iter().map(|r| (r.family, r.addr)).collect();
    if !req.requested_ips.is_empty() {
        let asked: BTreeSet<(Family, u128)> = req
            .requested_ips
            .iter()
            .map(|ip| (Family::of(*ip), addr::key(*ip)))
            .collect();
        if asked != have {
            return Ok(Reuse::Reallocate);
        }
    }
    if let Some(p) = &req.pool
        && existing.iter().any(|r| &r.pool != p)
    {
        return Ok(Reuse::Reallocate);
    }
    if existing.iter().any(|r| !wanted.contains(&r.family))
        || (req.policy == FamilyPolicy::SingleStack && existing[0].family != req.primary)
    {
        return Ok(Reuse::Reallocate);
    }
    let mut changed = false;
    let group = req.share_group();
    let first = &existing[0];
    if first.share_group != group || first.ports != req.ports {
        if !regroup(conn, req, existing, &group).await? {
            return Ok(Reuse::Reallocate);
        }
        changed = true;
    }
    let expires = req.ttl_seconds.map(|t| now_ms() + i64::from(t) * 1000);
    if expires.is_some() && expires != first.expires_ms {
        sqlx::query("UPDATE leases SET expires_ms = $1 WHERE owner_key = $2")
            .bind(expires)
            .bind(&first.owner_key)
            .execute(&mut *conn)
            .await?;
        changed = true;
    }
    let missing: Vec<Family> = wanted
        .iter()
        .copied()
        .filter(|f| !existing.iter().any(|r| r.family == *f))
        .collect();
    if !missing.is_empty() && req.requested_ips.is_empty() {
        // Dual-stack from one pool: the missing family comes from the pool the lease is in.
        let pool = pools.iter().find(|p| p.name() == first.pool);
        let mut added = false;
        if let Some(pool) = pool {
            for family in &missing {
                if let Some(key) = find(store, conn, pool, *family, req).await? {
                    let pick = Pick {
                        family: *family,
                        key,
                        pool: pool.name().to_string(),
                    };
                    let rank = wanted.iter().position(|f| f == family).unwrap_or(1);
                    // The new row's revision is stamped with the others' below.
                    let times = (first.created_ms, expires.or(first.expires_ms));
                    insert_row(conn, req, &pick, rank, times, 0).await?;
                    added = true;
                }
            }
        }
        if req.policy == FamilyPolicy::RequireDualStack && !added {
            return Ok(Reuse::Reallocate);
        }
        changed |= added;
    }
    Ok(if changed { Reuse::Changed } else { Reuse::Keep })
}

/// Changes the sharing key or ports of an owner's addresses in place, if its addresses still
/// satisfy the sharing rules; MetalLB lets a sole user change its sharing key this way.
async fn regroup(
    conn: &mut AnyConnection,
    req: &AllocRequest,
    existing: &[LeaseRow],
    group: &str,
) -> Result<bool, TxError> {
    let owner_key = req.owner.key();
    for r in existing {
        let others: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM leases WHERE addr = $1 AND owner_key <> $2")
                .bind(addr::key_bytes(r.addr))
                .bind(&owner_key)
                .fetch_one(&mut *conn)
                .await?;
        if others > 0
            && (r.share_group != group
                || port_conflict(conn, r.addr, &owner_key, &req.ports).await?)
        {
            return Ok(false);
        }
    }
    for r in existing {
        if r.share_group != group {
            // The foreign key cascades the new group to the lease row.
            sqlx::query("UPDATE addresses SET share_group = $1 WHERE addr = $2")
                .bind(group)
                .bind(addr::key_bytes(r.addr))
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query(
        "UPDATE leases SET sharing_key = $1, backend_key = $2, ports = $3 WHERE owner_key = $4",
    )
    .bind(&req.sharing_key)
    .bind(&req.backend_key)
    .bind(to_json(&req.ports)?)
    .bind(&owner_key)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM lease_ports WHERE owner_key = $1")
        .bind(&owner_key)
        .execute(&mut *conn)
        .await?;
    for r in existing {
        insert_ports(conn, req, r.addr).await?;
    }
    Ok(true)
}

/// MetalLB's pick order: explicit addresses, the named pool, then the automatic candidates.
async fn choose(
    store: &Core,
    conn: &mut AnyConnection,
    pools: &[Pool],
    caller: &Caller,
    req: &AllocRequest,
) -> Result<Vec<Pick>, TxError> {
    if !req.requested_ips.is_empty() {
        return choose_explicit(conn, pools, caller, req).await;
    }
    let candidates: Vec<&Pool> = match &req.pool {
        Some(name) => {
            let pool = pools
                .iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| Error::NotFound(format!("pool {name:?} does not exist")))?;
            check_usable(pool, caller, req)?;
            vec![pool]
        }
        None => pool::candidates(
            pools,
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
        if !families.iter().any(|f| pool.has_family(*f)) {
            continue;
        }
        let mut picks = Vec::new();
        for family in &families {
            if pool.has_family(*family)
                && let Some(key) = find(store, conn, pool, *family, req).await?
            {
                picks.push(Pick {
                    family: *family,
                    key,
                    pool: pool.name().to_string(),
                });
            }
        }
        let complete = picks.len() == families.len();
        match req.policy {
            _ if complete && !picks.is_empty() => return Ok(picks),
            FamilyPolicy::PreferDualStack if !picks.is_empty() => {
                let rank = usize::from(picks[0].family != req.primary);
                if fallback.as_ref().is_none_or(|(r, _)| rank < *r) {
                    fallback = Some((rank, picks));
                }
            }
            _ => {}
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
    }
    .into())
}

/// Explicit addresses (MetalLB's loadBalancerIPs and spec.loadBalancerIP).
async fn choose_explicit(
    conn: &mut AnyConnection,
    pools: &[Pool],
    caller: &Caller,
    req: &AllocRequest,
) -> Result<Vec<Pick>, TxError> {
    let group = req.share_group();
    let mut picks = Vec::new();
    for ip in ordered(&req.requested_ips, req.primary) {
        let (family, key) = (Family::of(ip), addr::key(ip));
        let pool = match pools.iter().find(|p| p.covers(family, key)) {
            Some(p) if p.allows(family, key) => p,
            Some(p) => {
                return Err(Error::invalid(
                    "requested_ips",
                    format!("{ip} is excluded from pool {:?}", p.name()),
                )
                .into());
            }
            None => {
                return Err(
                    Error::invalid("requested_ips", format!("{ip} is not in any pool")).into(),
                );
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
            )
            .into());
        }
        check_usable(pool, caller, req)?;
        if let Some(g) = address_group(conn, key).await? {
            if g != group {
                return Err(Error::Conflict(format!(
                    "{ip} is already in use and cannot be shared: sharing needs the same sharing key and backend key on both sides"
                ))
                .into());
            }
            if port_conflict(conn, key, &req.owner.key(), &req.ports).await? {
                return Err(Error::Conflict(format!(
                    "{ip} is shared under key {:?} and one of the requested ports is already in use on it",
                    req.sharing_key
                ))
                .into());
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

/// Primary family first.
fn ordered(ips: &[IpAddr], primary: Family) -> Vec<IpAddr> {
    let mut v = ips.to_vec();
    v.sort_by_key(|ip| Family::of(*ip) != primary);
    v
}

fn check_usable(pool: &Pool, caller: &Caller, req: &AllocRequest) -> Result<(), Error> {
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

/// The address of `family` this request should take in `pool`: the owner's own address from
/// within the grace period if it is still free, else the lowest of the first free address and
/// the first address it may share.
async fn find(
    store: &Core,
    conn: &mut AnyConnection,
    pool: &Pool,
    family: Family,
    req: &AllocRequest,
) -> Result<Option<u128>, TxError> {
    let owner_key = req.owner.key();
    let recent: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT addr FROM recent_releases WHERE owner_key = $1 AND family = $2 AND released_ms >= $3",
    )
    .bind(&owner_key)
    .bind(family.code())
    .bind(now_ms() - store.grace_ms)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(key) = recent.as_deref().and_then(addr::key_from_bytes)
        && pool.allows(family, key)
        && address_group(conn, key).await?.is_none()
    {
        return Ok(Some(key));
    }
    let free = first_free(conn, pool, family).await?;
    if req.sharing_key.is_empty() {
        return Ok(free);
    }
    let shared: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT addr FROM addresses WHERE pool = $1 AND share_group = $2 AND family = $3 ORDER BY addr",
    )
    .bind(pool.name())
    .bind(req.share_group())
    .bind(family.code())
    .fetch_all(&mut *conn)
    .await?;
    for key in shared.iter().filter_map(|b| addr::key_from_bytes(b)) {
        if free.is_some_and(|f| f < key) {
            break;
        }
        if pool.allows(family, key) && !port_conflict(conn, key, &owner_key, &req.ports).await? {
            return Ok(Some(key));
        }
    }
    Ok(free)
}

/// The lowest address of `family` that the pool may hand out and nobody holds.
async fn first_free(
    conn: &mut AnyConnection,
    pool: &Pool,
    family: Family,
) -> Result<Option<u128>, TxError> {
    for range in pool.ranges.iter().filter(|r| r.family == family) {
        let mut cursor = range.start;
        while let Some(candidate) = pool.next_allowed(range, cursor) {
            match runs::containing(conn, candidate).await? {
                None => return Ok(Some(candidate)),
                // Everything up to the run's end is taken; the address after it is free.
                Some((_, end)) => match end.checked_add(1) {
                    Some(next) if next <= range.end => cursor = next,
                    _ => break,
                },
            }
        }
    }
    Ok(None)
}

async fn address_group(conn: &mut AnyConnection, key: u128) -> Result<Option<String>, TxError> {
    Ok(
        sqlx::query_scalar("SELECT share_group FROM addresses WHERE addr = $1")
            .bind(addr::key_bytes(key))
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Whether another owner already uses one of `ports` on the address.
async fn port_conflict(
    conn: &mut AnyConnection,
    key: u128,
    owner_key: &str,
    ports: &[Port],
) -> Result<bool, TxError> {
    if ports.is_empty() {
        return Ok(false);
    }
    let used: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT protocol, port FROM lease_ports WHERE addr = $1 AND owner_key <> $2",
    )
    .bind(addr::key_bytes(key))
    .bind(owner_key)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ports
        .iter()
        .any(|p| used.contains(&(p.protocol.code(), i64::from(p.port)))))
}

/// A stored JSON column.
fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| Error::Internal(e.to_string()))
}

async fn insert_ports(
    conn: &mut AnyConnection,
    req: &AllocRequest,
    key: u128,
) -> Result<(), TxError> {
    if req.sharing_key.is_empty() {
        return Ok(());
    }
    for p in &req.ports {
        sqlx::query(
            "INSERT INTO lease_ports (addr, protocol, port, owner_key) VALUES ($1, $2, $3, $4)",
        )
        .bind(addr::key_bytes(key))
        .bind(p.protocol.code())
        .bind(i64::from(p.port))
        .bind(req.owner.key())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Writes one lease row, its address row if the address was free, and its ports.
async fn insert_row(
    conn: &mut AnyConnection,
    req: &AllocRequest,
    pick: &Pick,
    rank: usize,
    (created_ms, expires_ms): (i64, Option<i64>),
    revision: u64,
) -> Result<(), TxError> {
    let group = req.share_group();
    let key = addr::key_bytes(pick.key);
    // ON CONFLICT DO NOTHING joins an address already shared under this group; if another group
    // holds it, the lease's foreign key fails and the transaction runs again.
    let inserted = sqlx::query(
        "INSERT INTO addresses (addr, family, pool, share_group) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (addr) DO NOTHING",
    )
    .bind(key.clone())
    .bind(pick.family.code())
    .bind(&pick.pool)
    .bind(&group)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted > 0 {
        runs::add(conn, pick.key).await?;
    }
    let (cluster, namespace, client) = match &req.owner {
        Owner::Service {
            cluster, namespace, ..
        } => (cluster.as_str(), namespace.as_str(), ""),
        Owner::External { client, .. } => ("", "", client.as_str()),
    };
    sqlx::query(
        "INSERT INTO leases (owner_key, family, owner, cluster, namespace, client, addr, share_group, pool, \
         primary_rank, sharing_key, backend_key, ports, request, stranded, created_ms, expires_ms, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15, $16, $17)",
    )
    .bind(req.owner.key())
    .bind(pick.family.code())
    .bind(to_json(&req.owner)?)
    .bind(cluster)
    .bind(namespace)
    .bind(client)
    .bind(key)
    .bind(&group)
    .bind(&pick.pool)
    .bind(rank as i64)
    .bind(&req.sharing_key)
    .bind(&req.backend_key)
    .bind(to_json(&req.ports)?)
    .bind(to_json(req)?)
    .bind(created_ms)
    .bind(expires_ms)
    .bind(revision as i64)
    .execute(&mut *conn)
    .await?;
    insert_ports(conn, req, pick.key).await
}

/// Writes a new lease under the next revision.
async fn insert(
    conn: &mut AnyConnection,
    req: &AllocRequest,
    picks: &[Pick],
    created_ms: i64,
) -> Result<Lease, TxError> {
    let revision = next_revisions(conn, 1).await?;
    let expires_ms = req.ttl_seconds.map(|t| now_ms() + i64::from(t) * 1000);
    for (rank, pick) in picks.iter().enumerate() {
        insert_row(conn, req, pick, rank, (created_ms, expires_ms), revision).await?;
    }
    Ok(Lease {
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
        expires_ms,
        revision,
    })
}
