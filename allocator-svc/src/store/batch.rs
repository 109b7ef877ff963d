//! The writer: every lease change goes through one worker per replica, which decides in memory
//! (see [`crate::state`]) and persists a whole batch of calls in one database transaction.
//!
//! A batch takes the store's write lock first (see `db::write_lock`), so writers on all
//! replicas take turns; it brings its in-memory state up to the store's revision by replaying the
//! events other writers recorded (or reloads it, after a gap), decides every call, writes what
//! changed and commits once. Calls are answered only after the commit: many calls share one WAL
//! flush and every acknowledged change is durable. If anything fails in the database, nothing of
//! the batch is kept, every call in it gets the error, and the in-memory state is rebuilt from the
//! database before the next batch.
//!
//! A batch commits in the background while the next one starts; the next one, once it holds the
//! write lock, waits for that commit's outcome and keeps the state in memory only if it
//! committed. The revision alone cannot tell: another replica may have moved it by exactly as
//! much as the failed batch would have, and the state would then answer from leases that were
//! never written.

use std::sync::Arc;

use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, oneshot};

use super::db::{Core, TxError, corrupt, now_ms, write_lock};
use super::persist;
use super::rows::{LeaseRow, lease_of, load_pools};
use crate::addr;
use crate::error::{Error, Result};
use crate::lease::{AllocRequest, EventKind, Lease, Owner};
use crate::pool::Caller;
use crate::state::{Change, State};

/// Calls in one transaction at most: enough to amortize a flush, few enough that one batch
/// stays in the low milliseconds.
const MAX_BATCH: usize = 128;
/// Queue length before callers wait to hand in work.
const QUEUE: usize = 4096;

pub(crate) enum Job {
    Allocate {
        caller: Caller,
        req: AllocRequest,
        reply: oneshot::Sender<Result<(Lease, bool)>>,
    },
    Release {
        caller: Caller,
        owner: Owner,
        reply: oneshot::Sender<Result<Lease>>,
    },
    Renew {
        caller: Caller,
        owner: Owner,
        ttl_seconds: u32,
        reply: oneshot::Sender<Result<Lease>>,
    },
    Move {
        owner: Owner,
        reply: oneshot::Sender<Result<Lease>>,
    },
    /// Releases the lease if its time to live has passed; `None` if it has not (any more).
    Expire {
        owner: Owner,
        reply: oneshot::Sender<Result<Option<Lease>>>,
    },
}

/// A job and the span of the call that handed it in.
pub(crate) type Queued = (Job, tracing::Span);

/// A call's answer, held until the batch commits.
enum Answer {
    Allocated(Result<(Lease, bool)>),
    Lease(Result<Lease>),
    Expired(Result<Option<Lease>>),
}

/// Starts the worker; it stops when the returned sender (the store) is dropped.
pub(super) fn spawn(core: Arc<Core>) -> mpsc::Sender<Queued> {
    let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE);
    let critical = core.critical.clone();
    critical.spawn("the batch worker", async move {
        let mut state: Option<State> = None;
        let mut committing: Option<Committed> = None;
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            ferrolb_common::process::fault("batch-worker");
            let (jobs, callers): (Vec<Job>, Vec<tracing::Span>) = jobs.into_iter().unzip();
            // The batch is a span of the first call's trace, linked from the others.
            let calls = jobs.len();
            let span =
                ferrolb_common::telemetry::fan_in(&callers, || tracing::info_span!("batch", calls));
            drop(callers);
            committing = run(&core, &mut state, committing, jobs, span).await;
        }
    });
    tx
}

/// Whether the batch before this one committed; it says so once its commit has ended.
type Committed = oneshot::Receiver<bool>;

/// Decides a batch, then commits it in the background: the next batch starts on another
/// connection at once, and its write lock waits for this commit. Returns how to learn whether
/// this batch committed; should it not, the next batch reloads the state.
async fn run(
    core: &Arc<Core>,
    cached: &mut Option<State>,
    previous: Option<Committed>,
    jobs: Vec<Job>,
    span: tracing::Span,
) -> Option<Committed> {
    let started = std::time::Instant::now();
    // A server that stops answering must not hold every call of this replica.
    let bound = core.timeouts.statement;
    let decided =
        match tokio::time::timeout(bound, batch(core, cached.take(), previous, &jobs)).await {
            Ok(decided) => decided,
            Err(_) => Err(TxError::Fail(no_answer(bound))),
        };
    match decided {
        Ok((state, answers, tx)) => {
            let revision = state.revision();
            *cached = Some(state);
            let core = Arc::clone(core);
            let (committed, outcome) = oneshot::channel();
            tokio::spawn(async move {
                let commit = if span.is_none() {
                    tracing::Span::none()
                } else {
                    tracing::info_span!(parent: &span, "commit")
                };
                let done = match tokio::time::timeout(bound, tx.commit()).await {
                    Ok(done) => done.map_err(TxError::from),
                    Err(_) => Err(TxError::Fail(no_answer(bound))),
                };
                if done.is_ok() {
                    core.causes.record(&commit);
                }
                drop(commit);
                // The next batch may be waiting on this to trust its state.
                let _ = committed.send(done.is_ok());
                match done {
                    Ok(()) => {
                        tracing::debug!(calls = jobs.len(), took = ?started.elapsed(), "batch committed");
                        core.announce(revision);
                        deliver(jobs, answers);
                    }
                    Err(e) => fail_all(jobs, e),
                }
            });
            Some(outcome)
        }
        Err(e) => {
            fail_all(jobs, e);
            None
        }
    }
}

fn no_answer(bound: std::time::Duration) -> Error {
    Error::Unavailable(format!("the database did not answer within {bound:?}"))
}

/// Nothing of the batch was committed, whatever each call decided inside it.
fn fail_all(jobs: Vec<Job>, e: TxError) {
    let e = match e {
        TxError::Fail(e) => e,
        TxError::Retry(race) => Error::Unavailable(format!("the batch lost a race: {race}")),
    };
    tracing::warn!(error = %e, calls = jobs.len(), "batch failed; state is reloaded");
    let answers = jobs.iter().map(|j| failed(j, e.clone())).collect();
    deliver(jobs, answers);
}

fn deliver(jobs: Vec<Job>, answers: Vec<Answer>) {
    for (job, answer) in jobs.into_iter().zip(answers) {
        // A caller that went away no longer needs its answer.
        match (job, answer) {
            (Job::Allocate { reply, .. }, Answer::Allocated(r)) => drop(reply.send(r)),
            (
                Job::Release { reply, .. } | Job::Renew { reply, .. } | Job::Move { reply, .. },
                Answer::Lease(r),
            ) => drop(reply.send(r)),
            (Job::Expire { reply, .. }, Answer::Expired(r)) => drop(reply.send(r)),
            _ => unreachable!("answers are made in job order and kind"),
        }
    }
}

fn failed(job: &Job, e: Error) -> Answer {
    match job {
        Job::Allocate { .. } => Answer::Allocated(Err(e)),
        Job::Release { .. } | Job::Renew { .. } | Job::Move { .. } => Answer::Lease(Err(e)),
        Job::Expire { .. } => Answer::Expired(Err(e)),
    }
}

/// Decides every job and writes what changed; the caller commits.
async fn batch(
    core: &Core,
    mut cached: Option<State>,
    previous: Option<Committed>,
    jobs: &[Job],
) -> Result<(State, Vec<Answer>, sqlx::Transaction<'static, sqlx::Any>), TxError> {
    let mut tx = core.db.begin().await?;
    let (revision, pools_version) = write_lock(&mut tx, core.dialect).await?;
    // The lock is ours, so the previous batch's transaction has ended; how, its commit says.
    if let Some(previous) = previous
        && !previous.await.unwrap_or(false)
    {
        cached = None;
    }
    let mut state = sync(core, &mut tx, cached, revision).await?;
    if state.pools_version() != Some(pools_version) {
        state.set_pools(load_pools(&mut tx).await?, pools_version);
    }
    let now = now_ms();
    let mut changes = Vec::new();
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        let answer = match job {
            Job::Allocate { caller, req, .. } => {
                Answer::Allocated(state.allocate(caller, req, now).map(|a| {
                    changes.extend(a.change);
                    (a.lease, a.new)
                }))
            }
            Job::Release { caller, owner, .. } => Answer::Lease(
                state
                    .release(caller, owner, EventKind::Released, now)
                    .map(|c| keep(&mut changes, c)),
            ),
            Job::Renew {
                caller,
                owner,
                ttl_seconds,
                ..
            } => Answer::Lease(
                state
                    .renew(caller, owner, *ttl_seconds, now)
                    .map(|c| keep(&mut changes, c)),
            ),
            Job::Move { owner, .. } => {
                let req = stored_request(&mut tx, owner).await?;
                Answer::Lease(
                    req.and_then(|req| state.move_stranded(owner, &req, now))
                        .map(|c| keep(&mut changes, c)),
                )
            }
            Job::Expire { owner, .. } => {
                let due = state
                    .lease(&owner.key())
                    .is_some_and(|l| l.expires_ms.is_some_and(|e| e <= now));
                Answer::Expired(if due {
                    state
                        .release(&Caller::Admin, owner, EventKind::Expired, now)
                        .map(|c| Some(keep(&mut changes, c)))
                } else {
                    Ok(None)
                })
            }
        };
        answers.push(answer);
    }
    if !changes.is_empty() {
        persist::changes(&mut tx, &changes, now).await?;
        sqlx::query("UPDATE revision SET value = $1 WHERE id = 1")
            .bind(state.revision() as i64)
            .execute(&mut *tx)
            .await?;
    }
    Ok((state, answers, tx))
}

fn keep(changes: &mut Vec<Change>, c: Change) -> Lease {
    let lease = c.lease.clone();
    changes.push(c);
    lease
}

/// The request a lease was made with, for moving it.
async fn stored_request(
    conn: &mut AnyConnection,
    owner: &Owner,
) -> Result<Result<AllocRequest>, TxError> {
    let raw: Option<String> =
        sqlx::query_scalar("SELECT request FROM leases WHERE owner_key = $1 LIMIT 1")
            .bind(owner.key())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match raw {
        None => Err(Error::NotFound(format!("no lease for {}", owner.key()))),
        Some(raw) => serde_json::from_str(&raw)
            .map_err(|_| Error::Internal("stored request cannot be read".into())),
    })
}

/// Brings the cached state to `revision`: replays the events since, or reloads everything.
async fn sync(
    core: &Core,
    conn: &mut AnyConnection,
    cached: Option<State>,
    revision: u64,
) -> Result<State, TxError> {
    if let Some(mut state) = cached {
        if state.revision() == revision {
            return Ok(state);
        }
        if state.revision() < revision {
            let rows = sqlx::query(
                "SELECT revision, kind, lease, at_ms FROM lease_events WHERE revision > $1 AND revision <= $2 ORDER BY revision",
            )
            .bind(state.revision() as i64)
            .bind(revision as i64)
            .fetch_all(&mut *conn)
            .await?;
            // Complete history only: pruned events mean a reload.
            if rows.len() as u64 == revision - state.revision() {
                for row in &rows {
                    let kind = EventKind::from_code(row.try_get("kind")?)
                        .ok_or_else(|| corrupt("event kind"))?;
                    let lease: String = row.try_get("lease")?;
                    let lease: Lease =
                        serde_json::from_str(&lease).map_err(|_| corrupt("event"))?;
                    state.apply_event(
                        row.try_get::<i64, _>("revision")? as u64,
                        kind,
                        lease,
                        row.try_get("at_ms")?,
                    );
                }
                return Ok(state);
            }
        }
    }
    load(core, conn, revision).await
}

/// Builds the state from the leases and recent releases in the database.
async fn load(core: &Core, conn: &mut AnyConnection, revision: u64) -> Result<State, TxError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        lease_columns!(),
        " FROM leases ORDER BY owner_key, primary_rank"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut state = State::new(revision, core.grace_ms).with_limits(core.client_limits);
    let mut current: Vec<LeaseRow> = Vec::new();
    for row in &rows {
        let r = LeaseRow::from_row(row)?;
        if current.first().is_some_and(|c| c.owner_key != r.owner_key) {
            state.put(lease_of(&current).ok_or_else(|| corrupt("lease"))?);
            current.clear();
        }
        current.push(r);
    }
    if let Some(l) = lease_of(&current) {
        state.put(l);
    }
    let recent: Vec<(String, i64, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT owner_key, family, addr, released_ms FROM recent_releases WHERE released_ms >= $1",
    )
    .bind(now_ms() - core.grace_ms)
    .fetch_all(&mut *conn)
    .await?;
    for (owner_key, family, a, at) in recent {
        if let (Some(f), Some(k)) = (addr::Family::from_code(family), addr::key_from_bytes(&a)) {
            state.remember_release(&owner_key, f, k, at);
        }
    }
    tracing::info!(revision, leases = state.len(), "allocation state loaded");
    Ok(state)
}
