//! The lease store: the port the gRPC layer talks to, and its SQL implementation.
//!
//! [`SqlStore`] runs on PostgreSQL (any number of allocator replicas) or on an embedded SQLite
//! file (one replica). Both take the same statements; the few places where the dialects differ
//! are in [`Dialect`].

/// The columns `LeaseRow::from_row` reads.
macro_rules! lease_columns {
    () => {
        "owner_key, family, owner, addr, pool, sharing_key, backend_key, ports, stranded, \
         created_ms, expires_ms, revision"
    };
}

#[macro_use]
mod db;
mod allowances;
mod batch;
mod cluster;
mod persist;
mod rows;
mod sessions;
mod sql;

use std::future::Future;

pub use cluster::{BgpKind, ClusterRows, Sessions};
pub use db::{Dialect, StoreOptions};
pub use sql::SqlStore;

use crate::error::Result;
use crate::lease::{AllocRequest, Lease, LeaseEvent, LeaseFilter, Owner, PoolStats};
use crate::pool::{Caller, Pool, PoolSpec};

/// What applying a pool did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub pool: Pool,
    pub created: bool,
    /// Leases whose addresses the pool no longer covers.
    pub stranded: u64,
}

/// One page of leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePage {
    pub leases: Vec<Lease>,
    /// The owner key to continue after, if there is more.
    pub next: Option<String>,
    /// The store's revision before the page was read.
    pub revision: u64,
}

/// Pools and leases, kept where every allocator replica sees them.
pub trait LeaseStore: Send + Sync + 'static {
    /// Creates or replaces a pool; with `create_only`, an existing pool is an error.
    fn apply_pool(
        &self,
        caller: &Caller,
        spec: PoolSpec,
        create_only: bool,
    ) -> impl Future<Output = Result<Applied>> + Send;
    fn get_pool(&self, name: &str) -> impl Future<Output = Result<Pool>> + Send;
    /// Sets (or with no ranges, removes) a cluster's allowance; operators only.
    fn set_allowance(
        &self,
        caller: &Caller,
        cluster: &str,
        ranges: Vec<String>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// A cluster's allowance; `None`: it may declare any pool.
    fn get_allowance(
        &self,
        cluster: &str,
    ) -> impl Future<Output = Result<Option<Vec<String>>>> + Send;
    fn list_pools(&self) -> impl Future<Output = Result<Vec<Pool>>> + Send;
    /// Deletes a pool; returns how many leases it leaves stranded.
    fn delete_pool(&self, caller: &Caller, name: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Allocates, or returns what the owner already holds. The flag says whether anything new
    /// was handed out.
    fn allocate(
        &self,
        caller: &Caller,
        req: AllocRequest,
    ) -> impl Future<Output = Result<(Lease, bool)>> + Send;
    fn release(&self, caller: &Caller, owner: &Owner)
    -> impl Future<Output = Result<Lease>> + Send;
    fn renew(
        &self,
        caller: &Caller,
        owner: &Owner,
        ttl_seconds: u32,
    ) -> impl Future<Output = Result<Lease>> + Send;
    fn get_lease(
        &self,
        caller: &Caller,
        owner: &Owner,
    ) -> impl Future<Output = Result<Lease>> + Send;
    fn list_leases(&self, filter: LeaseFilter) -> impl Future<Output = Result<LeasePage>> + Send;
    /// Moves a stranded lease into its pools' current addresses.
    fn move_lease(
        &self,
        caller: &Caller,
        owner: &Owner,
    ) -> impl Future<Output = Result<Lease>> + Send;
    /// Releases every lease whose time to live has passed; returns how many.
    fn expire(&self) -> impl Future<Output = Result<usize>> + Send;

    /// Changes after `revision`, oldest first.
    fn events_since(
        &self,
        revision: u64,
        pool: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LeaseEvent>>> + Send;
    /// The oldest revision whose event is still kept: a watch must start at or after the one
    /// before it.
    fn history_start(&self) -> impl Future<Output = Result<u64>> + Send;
    /// Forgets events older than `age` and releases past the grace period; returns how many
    /// events.
    fn prune_events(&self, age: std::time::Duration) -> impl Future<Output = Result<u64>> + Send;
    /// A receiver that changes whenever the store's revision may have moved.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    fn stats(&self, pool: Option<&str>) -> impl Future<Output = Result<Vec<PoolStats>>> + Send;
    /// Whether the database answers.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;
}
