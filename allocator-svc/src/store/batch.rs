//! Group commit for the hot path: allocations and releases that arrive together run in one
//! database transaction, each inside its own savepoint, and are answered only after that
//! transaction commits.
//!
//! Writers hold the store's write lock until they commit, so they cannot overlap; one transaction
//! per call would pay a WAL flush per call while holding that lock. Batching pays one flush for
//! every call that queued meanwhile. A call that fails (pool full, a
//! sharing conflict) is rolled back to its savepoint and leaves the others untouched; a call that
//! loses a race with another replica runs again inside the batch.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Acquire, AnyConnection};
use tokio::sync::{mpsc, oneshot};

use super::alloc;
use super::sql::{Core, TxError, lock_writes, map_sqlx};
use crate::error::{Error, Result};
use crate::lease::{AllocRequest, EventKind, Lease, Owner};
use crate::pool::Caller;

/// Calls in one transaction at most: enough to amortize a flush, few enough that one batch
/// stays in the low milliseconds.
const MAX_BATCH: usize = 64;
/// Queue length before callers wait to hand in work.
const QUEUE: usize = 1024;
/// How often a call that lost a race runs again before it fails with UNAVAILABLE.
const MAX_ATTEMPTS: usize = 12;

pub(crate) enum Job {
    Allocate {
        caller: Caller,
        req: AllocRequest,
        reply: oneshot::Sender<Result<(Lease, bool, bool)>>,
    },
    Release {
        caller: Caller,
        owner: Owner,
        reply: oneshot::Sender<Result<(Lease, u64)>>,
    },
}

/// What a job produced, held until the batch commits.
enum Done {
    Allocated(Result<(Lease, bool, bool)>),
    Released(Result<(Lease, u64)>),
}

impl Done {
    fn revision(&self) -> u64 {
        match self {
            Done::Allocated(Ok((l, _, true))) => l.revision,
            Done::Released(Ok((_, r))) => *r,
            _ => 0,
        }
    }
}

/// Starts the worker; it stops when the returned sender (the store) is dropped.
pub(super) fn spawn(core: Arc<Core>) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            run(&core, jobs).await;
        }
    });
    tx
}

async fn run(core: &Core, jobs: Vec<Job>) {
    let outcome = async {
        let mut tx = core.db.begin().await.map_err(map_sqlx)?;
        lock_writes(&mut tx, core.dialect)
            .await
            .map_err(|e| match e {
                TxError::Fail(e) => e,
                TxError::Retry(why) => Error::Unavailable(why),
            })?;
        let mut done = Vec::with_capacity(jobs.len());
        for job in &jobs {
            done.push(run_one(core, &mut tx, job).await);
        }
        tx.commit().await.map_err(map_sqlx)?;
        Ok::<_, Error>(done)
    }
    .await;
    let done: Vec<Done> = match outcome {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, calls = jobs.len(), "batch failed");
            // Nothing of the batch was committed, whatever each call did inside it.
            jobs.iter().map(|j| failed(j, e.clone())).collect()
        }
    };
    if let Some(rev) = done.iter().map(Done::revision).max().filter(|r| *r > 0) {
        core.announce(rev);
    }
    for (job, d) in jobs.into_iter().zip(done) {
        // A caller that went away no longer needs its answer.
        match (job, d) {
            (Job::Allocate { reply, .. }, Done::Allocated(r)) => {
                let _ = reply.send(r);
            }
            (Job::Release { reply, .. }, Done::Released(r)) => {
                let _ = reply.send(r);
            }
            _ => unreachable!("outcomes are produced in job order and kind"),
        }
    }
}

/// Runs one job in a savepoint, again if it lost a race.
async fn run_one(core: &Core, conn: &mut AnyConnection, job: &Job) -> Done {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = attempt_once(core, conn, job).await;
        match outcome {
            Ok(done) => return done,
            Err(TxError::Retry(why)) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, %why, "call lost a race, running it again");
                tokio::time::sleep(Duration::from_millis(attempt as u64)).await;
            }
            Err(TxError::Retry(why)) => {
                return failed(
                    job,
                    Error::Unavailable(format!("too much contention: {why}")),
                );
            }
            Err(TxError::Fail(e)) => return failed(job, e),
        }
    }
}

fn failed(job: &Job, e: Error) -> Done {
    match job {
        Job::Allocate { .. } => Done::Allocated(Err(e)),
        Job::Release { .. } => Done::Released(Err(e)),
    }
}

async fn attempt_once(core: &Core, conn: &mut AnyConnection, job: &Job) -> Result<Done, TxError> {
    let mut sp = conn.begin().await?;
    let result = match job {
        Job::Allocate { caller, req, .. } => alloc::allocate(core, &mut sp, caller, req)
            .await
            .map(|r| Done::Allocated(Ok(r))),
        Job::Release { caller, owner, .. } => core
            .release_in(&mut sp, caller, owner, EventKind::Released)
            .await
            .map(|r| Done::Released(Ok(r))),
    };
    match result {
        Ok(done) => {
            sp.commit().await?;
            Ok(done)
        }
        Err(e) => {
            sp.rollback().await?;
            Err(e)
        }
    }
}
