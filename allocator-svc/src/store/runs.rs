//! The `used_runs` table: the addresses in use as maximal runs of consecutive keys.
//!
//! Kept in step with `addresses` inside the same transaction (writers are serialized, see
//! `sql::lock_writes`), it answers "the lowest free address at or after k" with one index
//! look-up: the run that contains k ends at e, and e + 1 is free because runs are maximal.
//! Adding or removing an address touches at most two runs.

use sqlx::AnyConnection;

use super::sql::TxError;
use crate::addr::{key_bytes, key_from_bytes};

fn corrupt() -> TxError {
    TxError::Fail(crate::error::Error::Internal(
        "stored address run cannot be read".into(),
    ))
}

fn key(bytes: Vec<u8>) -> Result<u128, TxError> {
    key_from_bytes(&bytes).ok_or_else(corrupt)
}

/// The run `(start, end)` that contains `k`, if `k` is in use.
pub(super) async fn containing(
    conn: &mut AnyConnection,
    k: u128,
) -> Result<Option<(u128, u128)>, TxError> {
    let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT start_addr, end_addr FROM used_runs WHERE start_addr <= $1 ORDER BY start_addr DESC LIMIT 1",
    )
    .bind(key_bytes(k))
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((s, e)) => {
            let (s, e) = (key(s)?, key(e)?);
            Ok((e >= k).then_some((s, e)))
        }
        None => Ok(None),
    }
}

/// Records that `k` is now in use; it must not have been.
pub(super) async fn add(conn: &mut AnyConnection, k: u128) -> Result<(), TxError> {
    let left: Option<Vec<u8>> = match k.checked_sub(1) {
        Some(prev) => {
            sqlx::query_scalar("SELECT start_addr FROM used_runs WHERE end_addr = $1")
                .bind(key_bytes(prev))
                .fetch_optional(&mut *conn)
                .await?
        }
        None => None,
    };
    let right: Option<Vec<u8>> = match k.checked_add(1) {
        Some(next) => {
            sqlx::query_scalar("SELECT end_addr FROM used_runs WHERE start_addr = $1")
                .bind(key_bytes(next))
                .fetch_optional(&mut *conn)
                .await?
        }
        None => None,
    };
    if right.is_some() {
        sqlx::query("DELETE FROM used_runs WHERE start_addr = $1")
            .bind(key_bytes(k + 1))
            .execute(&mut *conn)
            .await?;
    }
    let end = right.unwrap_or_else(|| key_bytes(k));
    match left {
        Some(start) => {
            sqlx::query("UPDATE used_runs SET end_addr = $1 WHERE start_addr = $2")
                .bind(end)
                .bind(start)
                .execute(&mut *conn)
                .await?;
        }
        None => {
            sqlx::query("INSERT INTO used_runs (start_addr, end_addr) VALUES ($1, $2)")
                .bind(key_bytes(k))
                .bind(end)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Records that `k` is free again; it must have been in use.
pub(super) async fn remove(conn: &mut AnyConnection, k: u128) -> Result<(), TxError> {
    let (start, end) = containing(conn, k).await?.ok_or_else(corrupt)?;
    // Shrink or split the run; `k` is inside it, so k - 1 and k + 1 cannot overflow past it.
    if start == k {
        sqlx::query("DELETE FROM used_runs WHERE start_addr = $1")
            .bind(key_bytes(start))
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query("UPDATE used_runs SET end_addr = $1 WHERE start_addr = $2")
            .bind(key_bytes(k - 1))
            .bind(key_bytes(start))
            .execute(&mut *conn)
            .await?;
    }
    if end > k {
        sqlx::query("INSERT INTO used_runs (start_addr, end_addr) VALUES ($1, $2)")
            .bind(key_bytes(k + 1))
            .bind(key_bytes(end))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
