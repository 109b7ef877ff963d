//! Writes what a batch of decisions changed, in a handful of statements whatever the batch size:
//! each owner's rows go from what they were before the batch to what they are after it, and
//! every change is recorded as an event.

use std::collections::{BTreeMap, HashMap};

use sqlx::AnyConnection;

use super::db::TxError;
use crate::addr;
use crate::error::Error;
use crate::lease::{AllocRequest, EventKind, Lease, Owner};
use crate::state::{Change, share_group};

/// Rows per multi-row statement: far below PostgreSQL's and SQLite's limits on parameters.
const ROWS_PER_STATEMENT: usize = 200;

/// A value bound into a statement.
enum V {
    I(i64),
    OptI(Option<i64>),
    S(String),
    B(Vec<u8>),
}

/// One owner's net change over the batch.
struct Net<'a> {
    before: Option<&'a Lease>,
    after: Option<&'a Lease>,
    request: Option<&'a AllocRequest>,
    /// Only the time to live changed: an UPDATE keeps the stored request.
    renew_only: bool,
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, TxError> {
    serde_json::to_string(v).map_err(|e| TxError::Fail(Error::Internal(e.to_string())))
}

/// Persists `changes` (in decision order) and their events.
pub(super) async fn changes(
    conn: &mut AnyConnection,
    changes: &[Change],
    now: i64,
) -> Result<(), TxError> {
    let (nets, released) = net_changes(changes);
    for (key, n) in nets.iter().filter(|(_, n)| n.renew_only) {
        renew(conn, key, n).await?;
    }
    let rewritten: Vec<&(String, Net)> = nets.iter().filter(|(_, n)| !n.renew_only).collect();
    // Old rows go first, then the addresses nobody holds any more (an address whose group
    // changes goes too), then the new rows.
    remove_old(conn, &rewritten).await?;
    let rows = new_rows(&rewritten)?;
    // An address another sharer holds under this group is joined; one held under another group
    // makes the lease's foreign key fail, and the batch with it.
    insert_rows(
        conn,
        "INSERT INTO addresses (addr, family, pool, share_group) VALUES ",
        " ON CONFLICT (addr) DO NOTHING",
        rows.addresses.into_values().collect(),
    )
    .await?;
    insert_rows(
        conn,
        "INSERT INTO leases (owner_key, family, owner, cluster, namespace, client, addr, share_group, pool, \
         primary_rank, sharing_key, backend_key, ports, request, stranded, created_ms, expires_ms, revision) VALUES ",
        "",
        rows.leases,
    )
    .await?;
    insert_rows(
        conn,
        "INSERT INTO lease_ports (addr, protocol, port, owner_key) VALUES ",
        "",
        rows.ports,
    )
    .await?;
    let recent = released
        .into_iter()
        .map(|((owner, family), a)| vec![V::S(owner), V::I(family), V::B(a), V::I(now)])
        .collect();
    insert_rows(
        conn,
        "INSERT INTO recent_releases (owner_key, family, addr, released_ms) VALUES ",
        " ON CONFLICT (owner_key, family) DO UPDATE SET addr = excluded.addr, released_ms = excluded.released_ms",
        recent,
    )
    .await?;
    events(conn, changes, now).await
}

/// Addresses released in the batch, by (owner, family), for the grace period.
type Released = BTreeMap<(String, i64), Vec<u8>>;

/// Each owner's net change over the batch, in the order owners first appear, and the released
/// addresses.
fn net_changes(changes: &[Change]) -> (Vec<(String, Net<'_>)>, Released) {
    let mut order: Vec<String> = Vec::new();
    let mut nets: HashMap<String, Net> = HashMap::new();
    let mut released = Released::new();
    for c in changes {
        let key = c.lease.owner.key();
        let gone = matches!(c.kind, EventKind::Released | EventKind::Expired);
        let net = nets.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Net {
                before: c.old.as_ref(),
                after: None,
                request: None,
                renew_only: true,
            }
        });
        net.after = (!gone).then_some(&c.lease);
        if c.request.is_some() {
            net.request = c.request.as_ref();
        }
        net.renew_only &= c.request.is_none() && !gone;
        if gone {
            for a in &c.lease.addrs {
                released.insert(
                    (key.clone(), a.family.code()),
                    addr::key_bytes(addr::key(a.ip)),
                );
            }
        }
    }
    let nets = order
        .into_iter()
        .filter_map(|k| nets.remove(&k).map(|n| (k, n)))
        .collect();
    (nets, released)
}

/// A lease whose time to live alone changed.
async fn renew(conn: &mut AnyConnection, key: &str, n: &Net<'_>) -> Result<(), TxError> {
    let l = n
        .after
        .ok_or_else(|| TxError::Fail(Error::Internal("renewal without a lease".into())))?;
    sqlx::query("UPDATE leases SET expires_ms = $1, revision = $2 WHERE owner_key = $3")
        .bind(l.expires_ms)
        .bind(l.revision as i64)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes the rewritten owners' rows, their ports, and the addresses nobody holds any more.
async fn remove_old(
    conn: &mut AnyConnection,
    rewritten: &[&(String, Net<'_>)],
) -> Result<(), TxError> {
    let old: Vec<&(String, Net)> = rewritten
        .iter()
        .copied()
        .filter(|(_, n)| n.before.is_some())
        .collect();
    let owners: Vec<V> = old.iter().map(|(k, _)| V::S(k.clone())).collect();
    delete_in(conn, "DELETE FROM leases WHERE owner_key IN ", owners).await?;
    let shared: Vec<V> = old
        .iter()
        .filter(|(_, n)| n.before.is_some_and(|b| !b.sharing_key.is_empty()))
        .map(|(k, _)| V::S(k.clone()))
        .collect();
    delete_in(conn, "DELETE FROM lease_ports WHERE owner_key IN ", shared).await?;
    let freed: Vec<V> = old
        .iter()
        .flat_map(|(_, n)| n.before.into_iter().flat_map(|b| b.addrs.iter()))
        .map(|a| V::B(addr::key_bytes(addr::key(a.ip))))
        .collect();
    for chunk in chunks(freed) {
        let sql = format!(
            "DELETE FROM addresses WHERE addr IN {} AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.addr = addresses.addr)",
            placeholders(chunk.len(), 1, 1)
        );
        run(conn, sql, chunk).await?;
    }
    Ok(())
}

/// The rows of the owners' leases after the batch.
#[derive(Default)]
struct Rows {
    /// By address: one row however many sharers hold it.
    addresses: BTreeMap<Vec<u8>, Vec<V>>,
    leases: Vec<Vec<V>>,
    ports: Vec<Vec<V>>,
}

fn new_rows(rewritten: &[&(String, Net<'_>)]) -> Result<Rows, TxError> {
    let mut rows = Rows::default();
    for (key, n) in rewritten {
        let (Some(l), Some(req)) = (n.after, n.request) else {
            continue;
        };
        lease_rows(&mut rows, key, l, req)?;
    }
    Ok(rows)
}

/// One lease's rows: an address, a lease row and its ports per address.
fn lease_rows(rows: &mut Rows, key: &str, l: &Lease, req: &AllocRequest) -> Result<(), TxError> {
    let group = share_group(key, &l.sharing_key, &l.backend_key);
    let (owner, ports_json, request) = (json(&l.owner)?, json(&l.ports)?, json(req)?);
    let (cluster, namespace, client) = match &l.owner {
        Owner::Service {
            cluster, namespace, ..
        } => (cluster.clone(), namespace.clone(), String::new()),
        Owner::External { client, .. } => (String::new(), String::new(), client.clone()),
    };
    for (rank, a) in l.addrs.iter().enumerate() {
        let k = addr::key_bytes(addr::key(a.ip));
        rows.addresses.entry(k.clone()).or_insert_with(|| {
            vec![
                V::B(k.clone()),
                V::I(a.family.code()),
                V::S(a.pool.clone()),
                V::S(group.clone()),
            ]
        });
        rows.leases.push(vec![
            V::S(key.to_string()),
            V::I(a.family.code()),
            V::S(owner.clone()),
            V::S(cluster.clone()),
            V::S(namespace.clone()),
            V::S(client.clone()),
            V::B(k.clone()),
            V::S(group.clone()),
            V::S(a.pool.clone()),
            V::I(rank as i64),
            V::S(l.sharing_key.clone()),
            V::S(l.backend_key.clone()),
            V::S(ports_json.clone()),
            V::S(request.clone()),
            V::I(i64::from(a.stranded)),
            V::I(l.created_ms),
            V::OptI(l.expires_ms),
            V::I(l.revision as i64),
        ]);
        if !l.sharing_key.is_empty() {
            for p in &l.ports {
                rows.ports.push(vec![
                    V::B(k.clone()),
                    V::I(p.protocol.code()),
                    V::I(i64::from(p.port)),
                    V::S(key.to_string()),
                ]);
            }
        }
    }
    Ok(())
}

/// Every change as a lease event.
async fn events(conn: &mut AnyConnection, changes: &[Change], now: i64) -> Result<(), TxError> {
    let mut events = Vec::with_capacity(changes.len());
    for c in changes {
        events.push(vec![
            V::I(c.lease.revision as i64),
            V::I(c.kind.code()),
            V::S(c.lease.pool().to_string()),
            V::S(json(&c.lease)?),
            V::I(now),
        ]);
    }
    insert_rows(
        conn,
        "INSERT INTO lease_events (revision, kind, pool, lease, at_ms) VALUES ",
        "",
        events,
    )
    .await
}

fn chunks<T>(mut v: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    while v.len() > ROWS_PER_STATEMENT {
        let rest = v.split_off(ROWS_PER_STATEMENT);
        out.push(v);
        v = rest;
    }
    if !v.is_empty() {
        out.push(v);
    }
    out
}

/// `rows` groups of `width` numbered placeholders: `($1, $2), ($3, $4)`; width 1 gives `($1, $2)`.
fn placeholders(rows: usize, width: usize, first: usize) -> String {
    let group = |r: usize| {
        let cells: Vec<String> = (0..width)
            .map(|c| format!("${}", first + r * width + c))
            .collect();
        cells.join(", ")
    };
    if width == 1 {
        format!("({})", (0..rows).map(group).collect::<Vec<_>>().join(", "))
    } else {
        (0..rows)
            .map(|r| format!("({})", group(r)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn delete_in(conn: &mut AnyConnection, head: &str, keys: Vec<V>) -> Result<(), TxError> {
    for chunk in chunks(keys) {
        let sql = format!("{head}{}", placeholders(chunk.len(), 1, 1));
        run(conn, sql, chunk).await?;
    }
    Ok(())
}

async fn insert_rows(
    conn: &mut AnyConnection,
    head: &str,
    tail: &str,
    rows: Vec<Vec<V>>,
) -> Result<(), TxError> {
    let Some(width) = rows.first().map(Vec::len) else {
        return Ok(());
    };
    for chunk in chunks(rows) {
        let sql = format!("{head}{}{tail}", placeholders(chunk.len(), width, 1));
        run(conn, sql, chunk.into_iter().flatten().collect()).await?;
    }
    Ok(())
}

async fn run(conn: &mut AnyConnection, sql: String, values: Vec<V>) -> Result<(), TxError> {
    // Only placeholders are generated; every value is bound.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for v in values {
        q = match v {
            V::I(i) => q.bind(i),
            V::OptI(i) => q.bind(i),
            V::S(s) => q.bind(s),
            V::B(b) => q.bind(b),
        };
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_groups() {
        assert_eq!(placeholders(3, 1, 1), "($1, $2, $3)");
        assert_eq!(placeholders(2, 2, 1), "($1, $2), ($3, $4)");
        assert_eq!(
            chunks((0..450).collect::<Vec<_>>())
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>(),
            [200, 200, 50]
        );
    }
}
