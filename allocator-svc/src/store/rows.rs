//! Reading lease rows and pools back into domain types.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::db::TxError;
use crate::addr::{self, Family};
use crate::lease::{Lease, LeaseAddr, Owner};
use crate::pool::{Pool, PoolSpec};

/// Reads the rows of one owner's lease, primary family first.
pub(super) async fn owner_rows(
    conn: &mut AnyConnection,
    owner_key: &str,
) -> Result<Vec<LeaseRow>, TxError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        lease_columns!(),
        " FROM leases WHERE owner_key = $1 ORDER BY primary_rank"
    ))
    .bind(owner_key)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(LeaseRow::from_row).collect()
}

/// One row of `leases`.
#[derive(Debug, Clone)]
pub(super) struct LeaseRow {
    pub owner_key: String,
    pub family: Family,
    pub owner: Owner,
    pub addr: u128,
    pub pool: String,
    pub sharing_key: String,
    pub backend_key: String,
    pub ports: Vec<crate::lease::Port>,
    pub stranded: bool,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revision: i64,
}

pub(super) use super::db::corrupt;

impl LeaseRow {
    pub(super) fn from_row(row: &AnyRow) -> Result<LeaseRow, TxError> {
        let family = Family::from_code(row.try_get("family")?).ok_or_else(|| corrupt("family"))?;
        let owner: String = row.try_get("owner")?;
        let addr: Vec<u8> = row.try_get("addr")?;
        let ports: String = row.try_get("ports")?;
        Ok(LeaseRow {
            owner_key: row.try_get("owner_key")?,
            family,
            owner: serde_json::from_str(&owner).map_err(|_| corrupt("owner"))?,
            addr: addr::key_from_bytes(&addr).ok_or_else(|| corrupt("address"))?,
            pool: row.try_get("pool")?,
            sharing_key: row.try_get("sharing_key")?,
            backend_key: row.try_get("backend_key")?,
            ports: serde_json::from_str(&ports).map_err(|_| corrupt("ports"))?,
            stranded: row.try_get::<i64, _>("stranded")? != 0,
            created_ms: row.try_get("created_ms")?,
            expires_ms: row.try_get("expires_ms")?,
            revision: row.try_get("revision")?,
        })
    }
}

/// Assembles a lease from its rows (primary first).
pub(super) fn lease_of(rows: &[LeaseRow]) -> Option<Lease> {
    let first = rows.first()?;
    Some(Lease {
        owner: first.owner.clone(),
        addrs: rows
            .iter()
            .map(|r| LeaseAddr {
                family: r.family,
                ip: addr::ip(r.family, r.addr),
                pool: r.pool.clone(),
                stranded: r.stranded,
            })
            .collect(),
        sharing_key: first.sharing_key.clone(),
        backend_key: first.backend_key.clone(),
        ports: first.ports.clone(),
        created_ms: first.created_ms,
        expires_ms: first.expires_ms,
        revision: rows.iter().map(|r| r.revision).max().unwrap_or(0) as u64,
    })
}

/// Loads and parses every pool.
pub(super) async fn load_pools(conn: &mut AnyConnection) -> Result<Vec<Pool>, TxError> {
    let specs: Vec<String> = sqlx::query_scalar("SELECT spec FROM pools ORDER BY name")
        .fetch_all(&mut *conn)
        .await?;
    specs
        .iter()
        .map(|s| {
            let spec: PoolSpec = serde_json::from_str(s).map_err(|_| corrupt("pool"))?;
            Pool::new(spec).map_err(TxError::Fail)
        })
        .collect()
}
