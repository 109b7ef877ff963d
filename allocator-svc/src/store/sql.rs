//! [`SqlStore`]: every lease-store operation (allocation goes through the batch worker), on the
//! plumbing of `db`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, oneshot, watch};

use super::allowances::{allowance_of, check_allowance};
use super::batch;
use super::db::{
    Core, MAX_ATTEMPTS, StoreOptions, TxError, fail, map_sqlx, next_revisions, now_ms,
    pools_changed, record_event, stamp, write_lock,
};
use super::rows::{LeaseRow, corrupt, lease_of, load_pools, owner_rows};
use super::{Applied, LeasePage, LeaseStore};
use crate::addr::{self, Family};
use crate::error::{Error, Result};
use crate::lease::{AllocRequest, EventKind, Lease, LeaseEvent, LeaseFilter, Owner, PoolStats};
use crate::pool::{self, Caller, Pool, PoolSpec};

/// The SQL lease store.
pub struct SqlStore {
    core: Arc<Core>,
    batches: mpsc::Sender<batch::Queued>,
}

impl std::ops::Deref for SqlStore {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

impl SqlStore {
    /// Connects, creates or upgrades the schema, and starts following other replicas' changes.
    pub async fn connect(opts: StoreOptions) -> Result<SqlStore> {
        let core = Core::connect(&opts).await?;
        let store = SqlStore {
            batches: batch::spawn(Arc::clone(&core)),
            core,
        };
        store.follow_notifications();
        Ok(store)
    }
}

impl SqlStore {
    /// Hands a job to the batch worker and waits for its outcome after the batch commits.
    async fn batch<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T>>) -> batch::Job,
    ) -> Result<T> {
        let (reply, outcome) = oneshot::channel();
        self.batches
            .send((job(reply), tracing::Span::current()))
            .await
            .map_err(|_| Error::Internal("the batch worker stopped".into()))?;
        outcome
            .await
            .map_err(|_| Error::Internal("the batch worker dropped a call".into()))?
    }

    /// Recomputes the stranded flag of every lease of `pool` (or of a deleted pool when `None`);
    /// returns the number stranded now and the last revision it wrote (0 if none). Leases whose
    /// flag changed get an event.
    async fn restrand(
        &self,
        conn: &mut AnyConnection,
        name: &str,
        pool: Option<&Pool>,
    ) -> Result<(u64, u64), TxError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases WHERE pool = $1 ORDER BY owner_key, primary_rank"
        ))
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
        let rows: Vec<LeaseRow> = rows
            .iter()
            .map(LeaseRow::from_row)
            .collect::<Result<_, _>>()?;
        let mut stranded = 0u64;
        let mut changed: Vec<String> = Vec::new();
        for r in &rows {
            let now = !pool.is_some_and(|p| p.covers(r.family, r.addr));
            stranded += u64::from(now);
            if now != r.stranded {
                sqlx::query("UPDATE leases SET stranded = $1 WHERE owner_key = $2 AND family = $3")
                    .bind(i64::from(now))
                    .bind(&r.owner_key)
                    .bind(r.family.code())
                    .execute(&mut *conn)
                    .await?;
                if changed.last() != Some(&r.owner_key) {
                    changed.push(r.owner_key.clone());
                }
            }
        }
        if changed.is_empty() {
            return Ok((stranded, 0));
        }
        let first = next_revisions(conn, changed.len() as i64).await?;
        let mut last = 0;
        for (i, owner_key) in changed.iter().enumerate() {
            let revision = first + i as u64;
            stamp(conn, owner_key, revision).await?;
            let lease =
                lease_of(&owner_rows(conn, owner_key).await?).ok_or_else(|| corrupt("lease"))?;
            let kind = if lease.stranded() {
                EventKind::Stranded
            } else {
                EventKind::Updated
            };
            record_event(conn, revision, kind, &lease).await?;
            last = revision;
        }
        Ok((stranded, last))
    }
}

impl LeaseStore for SqlStore {
    async fn set_allowance(
        &self,
        caller: &Caller,
        cluster: &str,
        ranges: Vec<String>,
    ) -> Result<Vec<String>> {
        if *caller != Caller::Admin {
            return Err(Error::PermissionDenied(format!(
                "{} may not set allowances; operators do",
                caller.name()
            )));
        }
        pool::validate_name("cluster", cluster)?;
        for r in &ranges {
            addr::Range::parse_entry(r).map_err(|e| Error::invalid("ranges", e.to_string()))?;
        }
        let json = serde_json::to_string(&ranges).map_err(|e| Error::Internal(e.to_string()))?;
        in_tx!(self, |conn| async {
            if ranges.is_empty() {
                sqlx::query("DELETE FROM allowances WHERE cluster = $1")
                    .bind(cluster)
                    .execute(&mut *conn)
                    .await?;
            } else {
                sqlx::query(
                    "INSERT INTO allowances (cluster, ranges) VALUES ($1, $2) \
                     ON CONFLICT (cluster) DO UPDATE SET ranges = excluded.ranges",
                )
                .bind(cluster)
                .bind(json.clone())
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        })?;
        tracing::info!(cluster, ranges = ?ranges, "allowance set");
        Ok(ranges)
    }

    async fn get_allowance(&self, cluster: &str) -> Result<Option<Vec<String>>> {
        let row: Option<String> =
            sqlx::query_scalar("SELECT ranges FROM allowances WHERE cluster = $1")
                .bind(cluster)
                .fetch_optional(&self.db)
                .await
                .map_err(map_sqlx)?;
        row.map(|t| serde_json::from_str(&t).map_err(|e| Error::Internal(e.to_string())))
            .transpose()
    }

    async fn apply_pool(
        &self,
        caller: &Caller,
        spec: PoolSpec,
        create_only: bool,
    ) -> Result<Applied> {
        if let Caller::Client(c) = caller {
            return Err(Error::PermissionDenied(format!(
                "client/{c} may not declare pools"
            )));
        }
        in_tx!(self, |conn| async {
            let existing = load_pools(conn).await?;
            let previous = existing.iter().find(|p| p.name() == spec.name);
            if create_only && previous.is_some() {
                return Err(Error::AlreadyExists(format!("pool {:?} already exists", spec.name)).into());
            }
            let pool = Pool::new(pool::declare(caller, spec.clone(), previous)?)?;
            if let Caller::Cluster(c) = caller
                && let Some(allowed) = allowance_of(conn, c).await?
            {
                check_allowance(&pool, c, &allowed)?;
            }
            pool::check_overlaps(&pool, &existing)?;
            let except = match caller {
                Caller::Cluster(c) => Some(c.as_str()),
                _ => None,
            };
            let ads = super::cluster::bgp_advertisements(conn).await?;
            crate::bgp::fits_advertisements(&pool, &ads, except)?;
            let now = now_ms();
            let json = serde_json::to_string(&pool.spec).map_err(|e| Error::Internal(e.to_string()))?;
            sqlx::query(
                "INSERT INTO pools (name, spec, declared_by, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $4) \
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, declared_by = excluded.declared_by, \
                 updated_ms = excluded.updated_ms",
            )
            .bind(pool.name().to_string())
            .bind(json)
            .bind(pool.spec.declared_by.clone())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            pools_changed(conn).await?;
            let (stranded, revision) = self.restrand(conn, pool.name(), Some(&pool)).await?;
            let applied = Applied {
                created: previous.is_none(),
                pool: pool.clone(),
                stranded,
            };
            Ok((applied, revision))
        })
        .map(|(applied, revision)| {
            self.announce(revision);
            applied
        })
    }

    async fn get_pool(&self, name: &str) -> Result<Pool> {
        let mut conn = self.db.acquire().await.map_err(map_sqlx)?;
        let pools = load_pools(&mut conn).await.map_err(fail)?;
        pools
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::NotFound(format!("pool {name:?} does not exist")))
    }

    async fn list_pools(&self) -> Result<Vec<Pool>> {
        let mut conn = self.db.acquire().await.map_err(map_sqlx)?;
        load_pools(&mut conn).await.map_err(fail)
    }

    async fn delete_pool(&self, caller: &Caller, name: &str) -> Result<u64> {
        in_tx!(self, |conn| async {
            let pools = load_pools(conn).await?;
            let pool = pools
                .iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| Error::NotFound(format!("pool {name:?} does not exist")))?;
            let allowed = match caller {
                Caller::Admin => true,
                Caller::Cluster(_) => pool.spec.declared_by == caller.name(),
                Caller::Client(_) => false,
            };
            if !allowed {
                return Err(Error::PermissionDenied(format!(
                    "{} may not delete pool {name:?}, declared by {}",
                    caller.name(),
                    pool.spec.declared_by
                ))
                .into());
            }
            sqlx::query("DELETE FROM pools WHERE name = $1")
                .bind(name)
                .execute(&mut *conn)
                .await?;
            pools_changed(conn).await?;
            self.restrand(conn, name, None).await
        })
        .map(|(stranded, revision)| {
            self.announce(revision);
            stranded
        })
    }

    async fn allocate(&self, caller: &Caller, mut req: AllocRequest) -> Result<(Lease, bool)> {
        req.validate()?;
        if !req.owner.belongs_to(caller) {
            return Err(Error::PermissionDenied(format!(
                "{} may not allocate for {}",
                caller.name(),
                req.owner.key()
            )));
        }
        self.batch(|reply| batch::Job::Allocate {
            caller: caller.clone(),
            req,
            reply,
        })
        .await
    }

    async fn release(&self, caller: &Caller, owner: &Owner) -> Result<Lease> {
        owner.validate()?;
        self.batch(|reply| batch::Job::Release {
            caller: caller.clone(),
            owner: owner.clone(),
            reply,
        })
        .await
    }

    async fn renew(&self, caller: &Caller, owner: &Owner, ttl_seconds: u32) -> Result<Lease> {
        owner.validate()?;
        if !matches!(owner, Owner::External { .. }) {
            return Err(Error::invalid(
                "owner",
                "only external leases have a time to live",
            ));
        }
        if ttl_seconds == 0 {
            return Err(Error::invalid("ttl_seconds", "must be at least 1"));
        }
        self.batch(|reply| batch::Job::Renew {
            caller: caller.clone(),
            owner: owner.clone(),
            ttl_seconds,
            reply,
        })
        .await
    }

    async fn get_lease(&self, caller: &Caller, owner: &Owner) -> Result<Lease> {
        owner.validate()?;
        if !owner.belongs_to(caller) {
            return Err(Error::PermissionDenied(format!(
                "{} may not read {}",
                caller.name(),
                owner.key()
            )));
        }
        let mut conn = self.db.acquire().await.map_err(map_sqlx)?;
        let rows = owner_rows(&mut conn, &owner.key()).await.map_err(fail)?;
        lease_of(&rows).ok_or_else(|| Error::NotFound(format!("no lease for {}", owner.key())))
    }

    async fn list_leases(&self, f: LeaseFilter) -> Result<LeasePage> {
        let mut conn = self.db.acquire().await.map_err(map_sqlx)?;
        let revision: i64 = sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        let limit = f.limit.clamp(1, 1000);
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT owner_key FROM leases WHERE owner_key > $1 \
             AND ($2 = '' OR pool = $2) AND ($3 = '' OR cluster = $3) AND ($4 = '' OR namespace = $4) \
             AND ($5 = '' OR client = $5) AND ($6 = 0 OR stranded <> 0) ORDER BY owner_key LIMIT $7",
        )
        .bind(f.after.unwrap_or_default())
        .bind(f.pool.unwrap_or_default())
        .bind(f.cluster.unwrap_or_default())
        .bind(f.namespace.unwrap_or_default())
        .bind(f.client.unwrap_or_default())
        .bind(i64::from(f.stranded_only))
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        let more = keys.len() > limit as usize;
        let mut leases = Vec::with_capacity(keys.len().min(limit as usize));
        for key in keys.iter().take(limit as usize) {
            let rows = owner_rows(&mut conn, key).await.map_err(fail)?;
            // A lease released between the two reads is simply not listed.
            leases.extend(lease_of(&rows));
        }
        let next = if more {
            leases.last().map(|l| l.owner.key())
        } else {
            None
        };
        Ok(LeasePage {
            leases,
            next,
            revision: revision as u64,
        })
    }

    async fn move_lease(&self, caller: &Caller, owner: &Owner) -> Result<Lease> {
        owner.validate()?;
        if *caller != Caller::Admin {
            return Err(Error::PermissionDenied(format!(
                "{} may not move leases; operators do",
                caller.name()
            )));
        }
        self.batch(|reply| batch::Job::Move {
            owner: owner.clone(),
            reply,
        })
        .await
    }

    async fn expire(&self) -> Result<usize> {
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT owner FROM leases WHERE expires_ms IS NOT NULL AND expires_ms <= $1 LIMIT 500",
        )
        .bind(now_ms())
        .fetch_all(&self.db)
        .await
        .map_err(map_sqlx)?;
        let mut expired = 0;
        for owner in owners {
            let owner: Owner =
                serde_json::from_str(&owner).map_err(|_| Error::Internal("stored owner".into()))?;
            // Another replica may have expired or renewed it meanwhile: the writer checks again.
            let done = self
                .batch(|reply| batch::Job::Expire {
                    owner: owner.clone(),
                    reply,
                })
                .await?;
            if let Some(lease) = done {
                tracing::info!(owner = %lease.owner.key(), ips = ?lease.ips(), "lease expired");
                expired += 1;
            }
        }
        Ok(expired)
    }

    async fn events_since(
        &self,
        revision: u64,
        pool: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LeaseEvent>> {
        let rows = sqlx::query(
            "SELECT revision, kind, lease FROM lease_events WHERE revision > $1 AND ($2 = '' OR pool = $2) \
             ORDER BY revision LIMIT $3",
        )
        .bind(revision as i64)
        .bind(pool.unwrap_or_default().to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.db)
        .await
        .map_err(map_sqlx)?;
        rows.iter()
            .map(|row| {
                let kind = EventKind::from_code(row.try_get("kind").map_err(map_sqlx)?)
                    .ok_or_else(|| Error::Internal("stored event kind".into()))?;
                let lease: String = row.try_get("lease").map_err(map_sqlx)?;
                Ok(LeaseEvent {
                    revision: row.try_get::<i64, _>("revision").map_err(map_sqlx)? as u64,
                    kind,
                    lease: serde_json::from_str(&lease)
                        .map_err(|_| Error::Internal("stored event".into()))?,
                })
            })
            .collect()
    }

    async fn history_start(&self) -> Result<u64> {
        let (oldest, current): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT MIN(revision) FROM lease_events), (SELECT value FROM revision WHERE id = 1)",
        )
        .fetch_one(&self.db)
        .await
        .map_err(map_sqlx)?;
        Ok(oldest.unwrap_or(current + 1) as u64)
    }

    async fn prune_events(&self, age: Duration) -> Result<u64> {
        let done = sqlx::query("DELETE FROM lease_events WHERE at_ms < $1")
            .bind(now_ms() - age.as_millis() as i64)
            .execute(&self.db)
            .await
            .map_err(map_sqlx)?;
        // Releases past the grace period are of no more use either.
        sqlx::query("DELETE FROM recent_releases WHERE released_ms < $1")
            .bind(now_ms() - self.grace_ms)
            .execute(&self.db)
            .await
            .map_err(map_sqlx)?;
        Ok(done.rows_affected())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn stats(&self, only: Option<&str>) -> Result<Vec<PoolStats>> {
        let pools = self.list_pools().await?;
        let mut out = Vec::new();
        for pool in pools.iter().filter(|p| only.is_none_or(|n| n == p.name())) {
            let rows = sqlx::query(
                "SELECT family, COUNT(*) AS leases, \
                 COUNT(DISTINCT CASE WHEN stranded = 0 THEN addr END) AS in_use, \
                 COUNT(CASE WHEN stranded <> 0 THEN 1 END) AS stranded, \
                 COUNT(CASE WHEN primary_rank = 0 AND client = '' THEN 1 END) AS services \
                 FROM leases WHERE pool = $1 GROUP BY family",
            )
            .bind(pool.name().to_string())
            .fetch_all(&self.db)
            .await
            .map_err(map_sqlx)?;
            for family in [Family::V4, Family::V6] {
                let row = rows
                    .iter()
                    .find(|r| r.try_get::<i64, _>("family").ok() == Some(family.code()));
                if !pool.has_family(family) && row.is_none() {
                    continue;
                }
                let get = |col: &str| {
                    row.map_or(Ok(0), |r| r.try_get::<i64, _>(col))
                        .map_err(map_sqlx)
                };
                out.push(PoolStats {
                    pool: pool.name().to_string(),
                    family,
                    capacity: pool.capacity(family),
                    in_use: get("in_use")? as u128,
                    leases: get("leases")? as u64,
                    stranded: get("stranded")? as u64,
                    services: get("services")? as u64,
                });
            }
        }
        if let Some(name) = only
            && out.is_empty()
            && !pools.iter().any(|p| p.name() == name)
        {
            return Err(Error::NotFound(format!("pool {name:?} does not exist")));
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.db)
            .await
            .map_err(map_sqlx)?;
        Ok(())
    }
}
