//! [`SqlStore`]: connections, transactions with retry, and every operation but allocation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::AnyConnection;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::batch;
use super::rows::{LeaseRow, corrupt, lease_of, load_pools, owner_rows};
use super::{Applied, LeasePage, LeaseStore};
use crate::addr::{self, Family};
use crate::error::{Error, Result};
use crate::lease::{AllocRequest, EventKind, Lease, LeaseEvent, LeaseFilter, Owner, PoolStats};
use crate::pool::{self, Caller, Pool, PoolSpec};
use crate::secrets::Sealer;
use crate::state::ClientLimits;
use ferrolb_common::Secret;

/// Which database a [`SqlStore`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// How a store connects and behaves.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `postgres://…` or `sqlite://…`; a password in it never reaches a log or an error.
    pub url: Secret,
    pub max_connections: u32,
    /// How long a call waits for a database connection before it fails with UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// How long a released address is offered back to its last owner first.
    pub release_grace: Duration,
    /// What one external client may hold.
    pub client_limits: ClientLimits,
    /// Seals BGP passwords at rest; replicas of one database share its key.
    pub sealer: Arc<Sealer>,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> StoreOptions {
        StoreOptions {
            url: Secret::new(url),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(2),
            release_grace: Duration::from_secs(3600),
            client_limits: ClientLimits::default(),
            sealer: Arc::new(Sealer::ephemeral()),
        }
    }
}

/// A transaction that hit a race it should simply run again, or a real error.
pub(crate) enum TxError {
    Retry(String),
    Fail(Error),
}

impl From<Error> for TxError {
    fn from(e: Error) -> TxError {
        TxError::Fail(e)
    }
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> TxError {
        if let sqlx::Error::Database(db) = &e {
            let code = db.code().unwrap_or_default();
            // Serialization failure, deadlock, and constraint races between replicas (another
            // transaction took the address or port first, or freed a shared address under us).
            if matches!(&*code, "40001" | "40P01" | "23505" | "23503")
                || db.is_unique_violation()
                || db.is_foreign_key_violation()
                || db.message().contains("database is locked")
            {
                return TxError::Retry(db.message().to_string());
            }
        }
        TxError::Fail(map_sqlx(e))
    }
}

/// Maps a database error to what the caller can act on: UNAVAILABLE when the database cannot be
/// reached (the call may be retried), INTERNAL otherwise.
pub(super) fn map_sqlx(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Error::Unavailable(e.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exceptions; 57P0x: the server is shutting down or starting.
            if code.starts_with("08") || code.starts_with("57P") {
                Error::Unavailable(db.message().to_string())
            } else {
                Error::Internal(db.message().to_string())
            }
        }
        _ => Error::Internal(e.to_string()),
    }
}

/// How often a transaction that lost a race runs again before the call fails.
const MAX_ATTEMPTS: usize = 12;

/// A database URL fit to show: its password replaced.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the store's calls and its batch worker share.
pub struct Core {
    pub(super) db: AnyPool,
    pub(super) dialect: Dialect,
    pub(super) grace_ms: i64,
    pub(super) client_limits: ClientLimits,
    sealer: Arc<Sealer>,
    changes: watch::Sender<u64>,
    /// Cluster state and announcer sessions: moves on every change, from any replica.
    pub(super) cluster_changes: watch::Sender<u64>,
}

/// The SQL lease store.
pub struct SqlStore {
    core: Arc<Core>,
    batches: mpsc::Sender<batch::Job>,
}

impl std::ops::Deref for SqlStore {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Runs `$body` (an async block using `$conn`) in a transaction, again on races, and commits.
macro_rules! in_tx {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = $store.db.begin().await.map_err(map_sqlx)?;
            let outcome: std::result::Result<_, TxError> = async {
                let $conn: &mut AnyConnection = &mut tx;
                write_lock($conn, $store.dialect).await?;
                $body.await
            }
            .await;
            let outcome = match outcome {
                Ok(v) => tx.commit().await.map(|_| v).map_err(TxError::from),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(v) => break Ok(v),
                Err(TxError::Fail(e)) => break Err(e),
                Err(TxError::Retry(why)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, %why, "transaction lost a race, running it again");
                    tokio::time::sleep(Duration::from_millis(attempt as u64 * 2)).await;
                }
                Err(TxError::Retry(why)) => {
                    break Err(Error::Unavailable(format!("too much contention: {why}")))
                }
            }
        }
    }};
}

impl SqlStore {
    /// Connects, creates or upgrades the schema, and starts following other replicas' changes.
    pub async fn connect(opts: StoreOptions) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let url = opts.url.expose();
        let dialect = if url.starts_with("postgres") {
            Dialect::Postgres
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            return Err(Error::invalid(
                "database-url",
                format!("{:?} is neither postgres:// nor sqlite:", redacted(url)),
            ));
        };
        let max = match dialect {
            Dialect::Postgres => opts.max_connections,
            // One writer at a time is SQLite's model; one connection avoids busy errors.
            Dialect::Sqlite => 1,
        };
        let db = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(opts.acquire_timeout)
            .connect(url)
            .await
            .map_err(map_sqlx)?;
        let migrated = match dialect {
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&db).await,
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&db).await,
        };
        migrated.map_err(|e| Error::Unavailable(format!("migrating the schema: {e}")))?;
        let rev: i64 = sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&db)
            .await
            .map_err(map_sqlx)?;
        let (changes, _) = watch::channel(rev as u64);
        let cluster_rev: i64 =
            sqlx::query_scalar("SELECT value FROM cluster_revision WHERE id = 1")
                .fetch_one(&db)
                .await
                .map_err(map_sqlx)?;
        let (cluster_changes, _) = watch::channel(cluster_rev as u64);
        let core = Arc::new(Core {
            db,
            dialect,
            grace_ms: opts.release_grace.as_millis() as i64,
            client_limits: opts.client_limits,
            sealer: Arc::clone(&opts.sealer),
            changes,
            cluster_changes,
        });
        let store = SqlStore {
            batches: batch::spawn(Arc::clone(&core)),
            core,
        };
        if dialect == Dialect::Postgres {
            store.follow_notifications(opts.url.clone());
        }
        Ok(store)
    }

    /// Other replicas announce each commit with NOTIFY; this wakes local watchers.
    fn follow_notifications(&self, url: Secret) {
        let changes = self.changes.clone();
        let cluster_changes = self.cluster_changes.clone();
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(url.expose()).await {
                    Ok(mut listener) => {
                        if let Err(e) = listener.listen_all([NOTIFY_CHANNEL, CLUSTER_CHANNEL]).await
                        {
                            tracing::warn!(error = %e, "LISTEN failed");
                        } else {
                            loop {
                                match listener.recv().await {
                                    Ok(n) => {
                                        let to = if n.channel() == CLUSTER_CHANNEL {
                                            &cluster_changes
                                        } else {
                                            &changes
                                        };
                                        if let Ok(rev) = n.payload().parse::<u64>() {
                                            advance(to, rev);
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "lost the notification connection");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "notification connection failed"),
                }
                if changes.is_closed() {
                    return;
                }
                // The connection broke: wake watchers so they re-read, then reconnect.
                changes.send_modify(|_| {});
                cluster_changes.send_modify(|_| {});
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

impl Core {
    pub(super) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Wakes watchers: the store has reached `revision`.
    pub(super) fn announce(&self, revision: u64) {
        advance(&self.changes, revision);
    }

    /// Wakes followers of the cluster state: it has reached `revision`.
    pub(super) fn cluster_changed(&self, revision: u64) {
        advance(&self.cluster_changes, revision);
    }
}

/// Moves the announced revision forward, never back; watchers wake only on a change.
fn advance(changes: &watch::Sender<u64>, revision: u64) {
    changes.send_if_modified(|cur| {
        let newer = revision > *cur;
        *cur = (*cur).max(revision);
        newer
    });
}

/// The NOTIFY channel on which every commit announces its revision.
pub(super) const NOTIFY_CHANNEL: &str = "ferrolb_revision"; // as in the migration's trigger
/// The NOTIFY channel of cluster state and announcer session changes.
const CLUSTER_CHANNEL: &str = "ferrolb_cluster";

/// Makes this transaction the only writer until it commits: it locks the revision row first,
/// before any pool or lease row, so writers on every replica queue in one order and never
/// deadlock. Batching (see `batch`) keeps the single writer busy with many calls per commit.
/// SQLite has one connection and needs no lock.
///
/// Returns the store's revision and the pool configuration's version.
pub(super) async fn write_lock(
    conn: &mut AnyConnection,
    dialect: Dialect,
) -> Result<(u64, u64), TxError> {
    let sql = match dialect {
        Dialect::Postgres => "SELECT value, pools_version FROM revision WHERE id = 1 FOR UPDATE",
        Dialect::Sqlite => "SELECT value, pools_version FROM revision WHERE id = 1",
    };
    let (value, pools): (i64, i64) = sqlx::query_as(sql).fetch_one(&mut *conn).await?;
    Ok((value as u64, pools as u64))
}

/// Tells every writer to re-read the pools.
async fn pools_changed(conn: &mut AnyConnection) -> Result<(), TxError> {
    sqlx::query("UPDATE revision SET pools_version = pools_version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Takes `n` revisions; writers hold the row's lock until commit, so revisions commit in order.
pub(super) async fn next_revisions(conn: &mut AnyConnection, n: i64) -> Result<u64, TxError> {
    let last: i64 =
        sqlx::query_scalar("UPDATE revision SET value = value + $1 WHERE id = 1 RETURNING value")
            .bind(n)
            .fetch_one(&mut *conn)
            .await?;
    Ok((last - n + 1) as u64)
}

/// Records an event at `revision`.
pub(super) async fn record_event(
    conn: &mut AnyConnection,
    revision: u64,
    kind: EventKind,
    lease: &Lease,
) -> Result<(), TxError> {
    let json = serde_json::to_string(lease).map_err(|e| Error::Internal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO lease_events (revision, kind, pool, lease, at_ms) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(revision as i64)
    .bind(kind.code())
    .bind(lease.pool().to_string())
    .bind(json)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets the revision of an owner's rows.
pub(super) async fn stamp(
    conn: &mut AnyConnection,
    owner_key: &str,
    revision: u64,
) -> Result<(), TxError> {
    sqlx::query("UPDATE leases SET revision = $1 WHERE owner_key = $2")
        .bind(revision as i64)
        .bind(owner_key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl SqlStore {
    /// Hands a job to the batch worker and waits for its outcome after the batch commits.
    async fn batch<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T>>) -> batch::Job,
    ) -> Result<T> {
        let (reply, outcome) = oneshot::channel();
        self.batches
            .send(job(reply))
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

/// The allowance of `cluster`, parsed, if it has one.
async fn allowance_of(
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
fn check_allowance(pool: &Pool, cluster: &str, allowed: &[addr::Range]) -> Result<()> {
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
        mut spec: PoolSpec,
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
            match (caller, previous) {
                (Caller::Cluster(c), Some(prev)) if prev.spec.declared_by != caller.name() => {
                    return Err(Error::PermissionDenied(format!(
                        "pool {:?} was declared by {}, not cluster/{c}",
                        spec.name, prev.spec.declared_by
                    ))
                    .into());
                }
                (Caller::Cluster(c), prev) => {
                    // A cluster's own pool is open to it, and stays open as wide as an
                    // operator made it; only an operator opens it wider.
                    let clusters = prev.map(|p| p.spec.clusters.as_slice()).unwrap_or_default();
                    let clients = prev.map(|p| p.spec.clients.as_slice()).unwrap_or_default();
                    let wider = spec
                        .clusters
                        .iter()
                        .filter(|x| *x != c && !clusters.contains(x))
                        .map(|x| format!("cluster/{x}"))
                        .chain(
                            spec.clients
                                .iter()
                                .filter(|x| !clients.contains(x))
                                .map(|x| format!("client/{x}")),
                        )
                        .next();
                    if let Some(other) = wider {
                        return Err(Error::PermissionDenied(format!(
                            "cluster/{c} may not open pool {:?} to {other}: an operator does (ferrolbctl apply as admin)",
                            spec.name
                        ))
                        .into());
                    }
                    spec.declared_by = caller.name();
                    spec.clusters = prev.map(|p| p.spec.clusters.clone()).unwrap_or_default();
                    spec.clients = prev.map(|p| p.spec.clients.clone()).unwrap_or_default();
                    if !spec.clusters.contains(c) {
                        spec.clusters.push(c.clone());
                    }
                }
                (_, prev) => {
                    spec.declared_by = prev.map_or_else(|| caller.name(), |p| p.spec.declared_by.clone());
                }
            }
            let pool = Pool::new(spec.clone())?;
            if let Caller::Cluster(c) = caller
                && let Some(allowed) = allowance_of(conn, c).await?
            {
                check_allowance(&pool, c, &allowed)?;
            }
            pool::check_overlaps(&pool, &existing)?;
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
                 COUNT(CASE WHEN stranded <> 0 THEN 1 END) AS stranded \
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

pub(super) fn fail(e: TxError) -> Error {
    match e {
        TxError::Fail(e) => e,
        TxError::Retry(why) => Error::Unavailable(why),
    }
}

#[cfg(test)]
mod redaction_tests {
    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            super::redacted("postgres://ferrolb:hunter2@db:5432/ferrolb"),
            "postgres://ferrolb:***@db:5432/ferrolb"
        );
        assert_eq!(super::redacted("postgres://db/x"), "postgres://db/x");
        let opts = super::StoreOptions::new("postgres://u:hunter2@db/x");
        assert!(!format!("{opts:?}").contains("hunter2"));
    }
}
