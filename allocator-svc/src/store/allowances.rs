//! Allowances: the ranges inside which a cluster may declare pools of its own, as stored, and
//! the check of a pool against them.

use sqlx::AnyConnection;

use super::db::TxError;
use crate::addr;
use crate::error::{Error, Result};
use crate::pool::Pool;

/// The allowance of `cluster`, parsed, if it has one.
pub(super) async fn allowance_of(
    conn: &mut AnyConnection,
    cluster: &str,
) -> Result<Option<Vec<addr::Range>>, TxError> {
    let row: Option<String> =
        sqlx::query_scalar("SELECT ranges FROM allowances WHERE cluster = $1")
            .bind(cluster)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(text) = row else { return Ok(None) };
    let entries: Vec<String> = serde_json::from_str(&text)
        .map_err(|e| Error::Internal(format!("stored allowance: {e}")))?;
    let ranges = entries
        .iter()
        .map(|e| addr::Range::parse_entry(e))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("stored allowance: {e}")))?;
    Ok(Some(ranges))
}

/// A cluster with an allowance declares pools only inside it.
pub(super) fn check_allowance(pool: &Pool, cluster: &str, allowed: &[addr::Range]) -> Result<()> {
    for r in &pool.ranges {
        let inside = allowed
            .iter()
            .any(|a| a.family == r.family && a.start <= r.start && r.end <= a.end);
        if !inside {
            return Err(Error::PermissionDenied(format!(
                "pool {:?}: {} is outside cluster {cluster:?}'s allowance; an operator sets it (SetAllowance)",
                pool.name(),
                r
            )));
        }
    }
    Ok(())
}
