//! Announcer sessions: which replica holds each node's stream, whether its announcer can
//! announce, and which sessions are alive (a replica refreshes its own; a session it stopped
//! refreshing dies with its time to live).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{AnyConnection, Row};

use super::SqlStore;
use super::cluster::Sessions;
use super::db::{bump, map_sqlx, now_ms};
use crate::error::Result;

impl SqlStore {
    /// Records that this replica holds `node`'s stream, replacing any older session of the node.
    pub async fn open_session(
        &self,
        cluster: &str,
        node: &str,
        session: i64,
        replica: &str,
        ttl_ms: i64,
    ) -> Result<()> {
        cluster_tx!(self, |conn| async {
            sqlx::query(
                "INSERT INTO announcer_sessions (cluster, node, session, replica, ready, expires_ms) \
                 VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (cluster, node) DO UPDATE \
                 SET session = excluded.session, replica = excluded.replica, ready = 1, \
                 expires_ms = excluded.expires_ms",
            )
            .bind(cluster)
            .bind(node)
            .bind(session)
            .bind(replica)
            .bind(now_ms() + ttl_ms)
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })
    }

    /// The announcer says whether it can announce.
    pub async fn set_session_ready(
        &self,
        cluster: &str,
        node: &str,
        session: i64,
        ready: bool,
    ) -> Result<()> {
        cluster_tx!(self, |conn| async {
            sqlx::query(
                "UPDATE announcer_sessions SET ready = $4 \
                 WHERE cluster = $1 AND node = $2 AND session = $3",
            )
            .bind(cluster)
            .bind(node)
            .bind(session)
            .bind(i64::from(ready))
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })
    }

    /// Ends a session, unless a newer one of the node has replaced it.
    pub async fn close_session(&self, cluster: &str, node: &str, session: i64) -> Result<()> {
        cluster_tx!(self, |conn| async {
            sqlx::query(
                "DELETE FROM announcer_sessions WHERE cluster = $1 AND node = $2 AND session = $3",
            )
            .bind(cluster)
            .bind(node)
            .bind(session)
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })
    }

    /// Keeps this replica's sessions alive and forgets expired ones (of replicas that died).
    pub async fn refresh_sessions(&self, replica: &str, ttl_ms: i64) -> Result<u64> {
        let now = now_ms();
        sqlx::query("UPDATE announcer_sessions SET expires_ms = $1 WHERE replica = $2")
            .bind(now + ttl_ms)
            .bind(replica)
            .execute(&self.db)
            .await
            .map_err(map_sqlx)?;
        let expired = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM announcer_sessions WHERE expires_ms < $1",
        )
        .bind(now)
        .fetch_one(&self.db)
        .await
        .map_err(map_sqlx)?;
        if expired == 0 {
            return Ok(0);
        }
        cluster_tx!(self, |conn| async {
            sqlx::query("DELETE FROM announcer_sessions WHERE expires_ms < $1")
                .bind(now)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected())
        })
    }

    /// Nodes with a live, ready announcer, by cluster, and their sessions.
    pub async fn live_announcers(&self) -> Result<(BTreeMap<String, BTreeSet<String>>, Sessions)> {
        let mut conn = self.db.acquire().await.map_err(map_sqlx)?;
        live_sessions(&mut conn).await
    }
}

pub(super) async fn live_sessions(
    conn: &mut AnyConnection,
) -> Result<(BTreeMap<String, BTreeSet<String>>, Sessions)> {
    let mut live: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sessions = Sessions::new();
    for r in sqlx::query(
        "SELECT cluster, node, session FROM announcer_sessions WHERE ready <> 0 AND expires_ms >= $1",
    )
    .bind(now_ms())
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?
    {
        let cluster: String = r.try_get("cluster").map_err(map_sqlx)?;
        let node: String = r.try_get("node").map_err(map_sqlx)?;
        sessions.insert(
            (cluster.clone(), node.clone()),
            r.try_get("session").map_err(map_sqlx)?,
        );
        live.entry(cluster).or_default().insert(node);
    }
    Ok((live, sessions))
}
