//! The store's plumbing: connections, transactions that run again when they lose a race, the
//! writer lock and revisions, notifications between replicas, and what database errors mean to
//! a caller. The lease store (`sql`), the batch worker (`batch`) and the cluster state
//! (`cluster`) are built on it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolb_common::Secret;
use ferrolb_common::process::Critical;
use sqlx::AnyConnection;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use tokio::sync::watch;

use super::primary::{Hosts, Primary};
use crate::error::{Error, Result};
use crate::lease::{EventKind, Lease};
use crate::secrets::Sealer;
use crate::state::ClientLimits;

/// Which database a [`SqlStore`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// How a store connects and behaves.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `postgres://…` (one host, or several to find the primary among) or `sqlite://…`; a
    /// password in it never reaches a log or an error.
    pub url: Secret,
    pub max_connections: u32,
    /// How long a call waits for a database connection before it fails with UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// What PostgreSQL lets one of this replica's sessions take.
    pub timeouts: DbTimeouts,
    /// How long a released address is offered back to its last owner first.
    pub release_grace: Duration,
    /// What one external client may hold.
    pub client_limits: ClientLimits,
    /// Seals BGP passwords at rest; replicas of one database share its key.
    pub sealer: Arc<Sealer>,
    /// Watches the store's background tasks (the batch worker, the primary's supervisor, the
    /// notification listener).
    pub critical: Critical,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> StoreOptions {
        StoreOptions {
            url: Secret::new(url),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(2),
            timeouts: DbTimeouts::default(),
            release_grace: Duration::from_secs(3600),
            client_limits: ClientLimits::default(),
            sealer: Arc::new(Sealer::ephemeral()),
            critical: Critical::new(),
        }
    }
}

/// Bounds PostgreSQL puts on each of the allocator's sessions, so that a replica that stalls or
/// is cut off while it holds the writer lock cannot hold up the others for long.
#[derive(Debug, Clone, Copy)]
pub struct DbTimeouts {
    /// `lock_timeout`: the longest wait for a lock (the writer lock above all).
    pub lock: Duration,
    /// `statement_timeout`: the longest statement; the batch worker also gives up on its
    /// connection after this, should the server not answer at all.
    pub statement: Duration,
    /// `idle_in_transaction_session_timeout`: a session that holds a transaction open without
    /// a statement (its replica stopped or cut off) is ended after this, its locks released.
    pub idle_in_transaction: Duration,
    /// `tcp_keepalives_idle`: the server probes a silent connection after this; it gives up
    /// after three more probes, a third of it apart (`tcp_user_timeout` likewise).
    pub keepalive: Duration,
}

impl Default for DbTimeouts {
    fn default() -> DbTimeouts {
        DbTimeouts {
            lock: Duration::from_secs(8),
            statement: Duration::from_secs(10),
            idle_in_transaction: Duration::from_secs(5),
            keepalive: Duration::from_secs(10),
        }
    }
}

impl DbTimeouts {
    /// One statement that sets the bounds (and a name the sessions can be told by) on a new
    /// session.
    fn session_sql(&self) -> String {
        let ms = |d: Duration| d.as_millis().max(1);
        let idle = self.keepalive.as_secs().max(1);
        format!(
            "SELECT set_config('lock_timeout', '{}ms', false), \
             set_config('statement_timeout', '{}ms', false), \
             set_config('idle_in_transaction_session_timeout', '{}ms', false), \
             set_config('tcp_keepalives_idle', '{idle}', false), \
             set_config('tcp_keepalives_interval', '{}', false), \
             set_config('tcp_keepalives_count', '3', false), \
             set_config('tcp_user_timeout', '{}', false), \
             set_config('application_name', 'ferrolb-allocator/{}', false)",
            ms(self.lock),
            ms(self.statement),
            ms(self.idle_in_transaction),
            (idle / 3).max(1),
            idle * 2 * 1000,
            std::process::id(),
        )
    }
}

/// A transaction that hit a race it should simply run again, or a real error.
pub(crate) enum TxError {
    Retry(Race),
    Fail(Error),
}

/// A race between writers (on other replicas, or a commit that overlapped): the transaction runs
/// again. Named by the constraint that caught it, so that a race that keeps being lost ends in
/// an error that says what was contended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Race {
    /// `addresses_pkey`: another writer took the address first.
    AddressTaken,
    /// `addresses_addr_share_group_key` or the leases' foreign key: a shared address was freed
    /// or regrouped under this writer.
    SharingChanged,
    /// `lease_ports_pkey`: another writer took the address and port first.
    PortTaken,
    /// Serialization failure, deadlock, or SQLite's busy lock.
    Serialization(String),
}

impl Race {
    /// Which race a constraint violation is, by the constraint's name (PostgreSQL) or the
    /// columns SQLite names.
    fn of(constraint: Option<&str>, message: &str) -> Race {
        match constraint {
            Some("addresses_pkey") => Race::AddressTaken,
            Some("lease_ports_pkey") => Race::PortTaken,
            Some(c) if c.starts_with("addresses_") || c.starts_with("leases_") => {
                Race::SharingChanged
            }
            _ if message.contains("lease_ports.") => Race::PortTaken,
            _ if message.contains("addresses.addr, addresses.share_group")
                || message.contains("FOREIGN KEY") =>
            {
                Race::SharingChanged
            }
            _ if message.contains("addresses.addr") => Race::AddressTaken,
            _ => Race::Serialization(message.to_string()),
        }
    }

    /// What the caller gets when the race is lost every time.
    pub(super) fn lost(&self) -> Error {
        match self {
            Race::AddressTaken => {
                Error::Conflict("other writers keep taking the addresses first; try again".into())
            }
            Race::SharingChanged => Error::Conflict(
                "the shared address keeps changing under this call; try again".into(),
            ),
            Race::PortTaken => Error::Conflict(
                "other writers keep taking the address and port first; try again".into(),
            ),
            Race::Serialization(why) => Error::Unavailable(format!("too much contention: {why}")),
        }
    }
}

impl std::fmt::Display for Race {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Race::AddressTaken => f.write_str("address taken by another writer"),
            Race::SharingChanged => f.write_str("shared address changed by another writer"),
            Race::PortTaken => f.write_str("address and port taken by another writer"),
            Race::Serialization(why) => f.write_str(why),
        }
    }
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
            if db.is_unique_violation()
                || db.is_foreign_key_violation()
                || matches!(&*code, "23505" | "23503")
            {
                return TxError::Retry(Race::of(db.constraint(), db.message()));
            }
            if matches!(&*code, "40001" | "40P01") || db.message().contains("database is locked") {
                return TxError::Retry(Race::Serialization(db.message().to_string()));
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
        sqlx::Error::Database(db) if unavailable(&db.code().unwrap_or_default()) => {
            Error::Unavailable(db.message().to_string())
        }
        sqlx::Error::Database(db) => Error::Internal(db.message().to_string()),
        _ => Error::Internal(e.to_string()),
    }
}

/// Whether a SQLSTATE says the database cannot serve writes now, though it may soon: 08,
/// connection exceptions; 57P0x, the server shutting down or starting; 25006, a read-only
/// transaction (a standby, or a primary being demoted, answered); 55P03 and 57014, a lock or
/// statement that ran past its timeout; 25P03, a session ended for idling in its transaction.
fn unavailable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P")
        || matches!(code, "25006" | "55P03" | "57014" | "25P03")
}

/// How often a transaction that lost a race runs again before the call fails.
pub(super) const MAX_ATTEMPTS: usize = 12;

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
    /// The PostgreSQL host the pool uses and whether it takes writes.
    pub(super) primary: Option<Arc<Primary>>,
    pub(super) timeouts: DbTimeouts,
    pub(super) critical: Critical,
    pub(super) grace_ms: i64,
    pub(super) client_limits: ClientLimits,
    sealer: Arc<Sealer>,
    pub(super) changes: watch::Sender<u64>,
    /// Cluster state and announcer sessions: moves on every change, from any replica.
    pub(super) cluster_changes: watch::Sender<u64>,
    /// The calls whose writes the next announcement decision follows from (traces).
    pub(super) causes: ferrolb_common::telemetry::Causes,
    /// Always true: the embedded store takes writes while it is open (PostgreSQL's flag is the
    /// primary's). Kept here so that its receivers wait instead of seeing a closed channel.
    embedded_writable: watch::Sender<bool>,
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
                Err(TxError::Retry(race)) => break Err(race.lost()),
            }
        }
    }};
}

/// Runs one statement-building closure in a transaction with the revision bump, and wakes the
/// local followers.
macro_rules! cluster_tx {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let mut tx = $store.db.begin().await.map_err(map_sqlx)?;
        let value = {
            let $conn: &mut AnyConnection = &mut tx;
            $body.await.map_err(map_sqlx)?
        };
        let rev = bump(&mut tx).await.map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        $store.cluster_changed(rev);
        Ok(value)
    }};
}

/// Bumps the cluster revision; the caller commits.
pub(super) async fn bump(conn: &mut AnyConnection) -> std::result::Result<u64, sqlx::Error> {
    let v: i64 = sqlx::query_scalar(
        "UPDATE cluster_revision SET value = value + 1 WHERE id = 1 RETURNING value",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(v as u64)
}

impl Core {
    /// Connects, creates or upgrades the schema.
    pub(super) async fn connect(opts: &StoreOptions) -> Result<Arc<Core>> {
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
        let primary = match dialect {
            Dialect::Postgres => {
                let hosts = Hosts::parse(url)?;
                let i = hosts.find_writable().await.map_err(|why| {
                    Error::Unavailable(format!("no database server takes writes: {why}"))
                })?;
                Some(Arc::new(Primary::new(hosts, i)))
            }
            Dialect::Sqlite => None,
        };
        let db = pool_options(dialect, max, opts, primary.clone())
            .connect(primary.as_ref().map_or(url, |p| p.current_url().expose()))
            .await
            .map_err(map_sqlx)?;
        let migrated = match dialect {
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&db).await,
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&db).await,
        };
        migrated.map_err(|e| Error::Unavailable(format!("migrating the schema: {e}")))?;
        if dialect == Dialect::Postgres {
            super::primary::warn_if_acknowledged_writes_can_be_lost(&db).await;
        }
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
        if let Some(p) = &primary {
            opts.critical.spawn(
                "the database primary's supervisor",
                super::primary::supervise(Arc::clone(p), db.clone()),
            );
        }
        Ok(Arc::new(Core {
            db,
            dialect,
            primary,
            timeouts: opts.timeouts,
            critical: opts.critical.clone(),
            grace_ms: opts.release_grace.as_millis() as i64,
            client_limits: opts.client_limits,
            sealer: Arc::clone(&opts.sealer),
            changes,
            cluster_changes,
            causes: Default::default(),
            embedded_writable: watch::channel(true).0,
        }))
    }

    /// Other replicas announce each commit with NOTIFY; this wakes local watchers. The
    /// listener follows the primary: it listens again on the new one after a switch.
    pub(super) fn follow_notifications(&self) {
        let Some(primary) = self.primary.clone() else {
            return;
        };
        let changes = self.changes.clone();
        let cluster_changes = self.cluster_changes.clone();
        self.critical
            .spawn("the notification listener", async move {
                let mut switched = primary.generation();
                loop {
                    switched.mark_unchanged();
                    let url = primary.current_url().clone();
                    tokio::select! {
                        why = listen(url.expose(), &changes, &cluster_changes) => {
                            tracing::warn!(error = %why, "lost the notification connection");
                        }
                        _ = switched.changed() => {}
                    }
                    if changes.is_closed() {
                        return;
                    }
                    // Notifications may have been missed: wake watchers so they re-read.
                    changes.send_modify(|_| {});
                    cluster_changes.send_modify(|_| {});
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
    }

    /// Whether the store can take writes now, as its supervisor last saw; SQLite always can.
    pub fn writable(&self) -> watch::Receiver<bool> {
        match &self.primary {
            Some(p) => p.writable(),
            None => self.embedded_writable.subscribe(),
        }
    }
}

/// How the pool makes and hands out connections: each PostgreSQL session gets the timeouts,
/// and connections made before the primary moved are dropped instead of used.
fn pool_options(
    dialect: Dialect,
    max: u32,
    opts: &StoreOptions,
    primary: Option<Arc<Primary>>,
) -> AnyPoolOptions {
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(opts.acquire_timeout);
    if dialect == Dialect::Sqlite {
        return pool;
    }
    let setup: Arc<str> = opts.timeouts.session_sql().into();
    pool.after_connect(move |conn, _| {
        let setup = Arc::clone(&setup);
        Box::pin(async move {
            // Made of numbers from the configuration and the process id only.
            let sql = sqlx::AssertSqlSafe(setup.to_string());
            sqlx::raw_sql(sql).execute(&mut *conn).await?;
            Ok(())
        })
    })
    .before_acquire(move |_, meta| {
        let stale = primary.as_ref().is_some_and(|p| p.stale(meta.age));
        Box::pin(async move { Ok(!stale) })
    })
}

/// Listens on both channels until the connection fails; returns why.
async fn listen(
    url: &str,
    changes: &watch::Sender<u64>,
    cluster_changes: &watch::Sender<u64>,
) -> sqlx::Error {
    let mut listener = match sqlx::postgres::PgListener::connect(url).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    if let Err(e) = listener.listen_all([NOTIFY_CHANNEL, CLUSTER_CHANNEL]).await {
        return e;
    }
    loop {
        match listener.recv().await {
            Ok(n) => {
                let to = if n.channel() == CLUSTER_CHANNEL {
                    cluster_changes
                } else {
                    changes
                };
                if let Ok(rev) = n.payload().parse::<u64>() {
                    advance(to, rev);
                }
            }
            Err(e) => return e,
        }
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

    /// Wakes followers of the cluster state: it has reached `revision`, by the current call.
    pub(super) fn cluster_changed(&self, revision: u64) {
        self.causes.record(&tracing::Span::current());
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
pub(super) async fn pools_changed(conn: &mut AnyConnection) -> Result<(), TxError> {
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

pub(super) fn fail(e: TxError) -> Error {
    match e {
        TxError::Fail(e) => e,
        TxError::Retry(race) => race.lost(),
    }
}

/// A stored row that does not read: the database holds something this version did not write.
pub(super) fn corrupt(what: &str) -> TxError {
    TxError::Fail(Error::Internal(format!("stored {what} cannot be read")))
}

#[cfg(test)]
mod race_tests {
    use super::{Race, unavailable};

    #[test]
    fn a_standby_or_a_server_going_away_is_unavailable_not_internal() {
        for code in ["25006", "08006", "08001", "57P01", "57P03"] {
            assert!(unavailable(code), "{code}");
        }
        for code in ["23505", "40001", "42P01", "25P02", ""] {
            assert!(!unavailable(code), "{code}");
        }
    }

    #[test]
    fn constraints_name_the_race() {
        assert_eq!(Race::of(Some("addresses_pkey"), ""), Race::AddressTaken);
        assert_eq!(Race::of(Some("lease_ports_pkey"), ""), Race::PortTaken);
        assert_eq!(
            Race::of(Some("leases_addr_share_group_fkey"), ""),
            Race::SharingChanged
        );
        let sqlite = |m: &str| Race::of(None, m);
        assert_eq!(
            sqlite("UNIQUE constraint failed: addresses.addr"),
            Race::AddressTaken
        );
        assert_eq!(
            sqlite(
                "UNIQUE constraint failed: lease_ports.addr, lease_ports.protocol, lease_ports.port"
            ),
            Race::PortTaken
        );
        assert_eq!(
            sqlite("FOREIGN KEY constraint failed"),
            Race::SharingChanged
        );
        assert!(matches!(
            Race::AddressTaken.lost(),
            crate::error::Error::Conflict(_)
        ));
        assert!(matches!(
            Race::Serialization("x".into()).lost(),
            crate::error::Error::Unavailable(_)
        ));
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
