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
mod primary;
mod rows;
mod sessions;
mod sql;

use std::future::Future;

pub use cluster::{BgpKind, ClusterRows, Sessions};
pub use db::{DbTimeouts, Dialect, StoreOptions};
pub use sql::SqlStore;

use crate::bgp::{BgpAd, BgpPeer, CommunitySet};
use crate::cluster::{Endpoints, L2Ad, NodeInfo};
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

/// Cluster state as ClusterStateService keeps it: what each cluster reports (nodes, endpoints)
/// and declares (advertisements, BGP objects), and the pools advertisements are checked
/// against. [`SqlStore`] keeps it for every replica; the service's tests use one in memory.
pub trait ClusterStore: Send + Sync + 'static {
    /// Creates or replaces a node; says whether it is new.
    fn apply_node(&self, n: &NodeInfo) -> impl Future<Output = Result<bool>> + Send;
    fn delete_node(&self, cluster: &str, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn set_endpoints(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        e: &Endpoints,
    ) -> impl Future<Output = Result<()>> + Send;
    fn delete_endpoints(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    fn apply_l2(&self, ad: &L2Ad) -> impl Future<Output = Result<bool>> + Send;
    fn delete_l2(&self, cluster: &str, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Stores a peer, its password sealed.
    fn apply_bgp_peer(&self, p: &BgpPeer) -> impl Future<Output = Result<bool>> + Send;
    fn apply_bgp_advertisement(&self, a: &BgpAd) -> impl Future<Output = Result<bool>> + Send;
    fn apply_community(&self, c: &CommunitySet) -> impl Future<Output = Result<bool>> + Send;
    fn delete_bgp(
        &self,
        kind: BgpKind,
        cluster: &str,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Everything, for every cluster.
    fn cluster_rows(&self) -> impl Future<Output = Result<ClusterRows>> + Send;
    fn pools(&self) -> impl Future<Output = Result<Vec<Pool>>> + Send;
}

impl ClusterStore for SqlStore {
    async fn apply_node(&self, n: &NodeInfo) -> Result<bool> {
        SqlStore::apply_node(self, n).await
    }
    async fn delete_node(&self, cluster: &str, name: &str) -> Result<()> {
        SqlStore::delete_node(self, cluster, name).await
    }
    async fn set_endpoints(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        e: &Endpoints,
    ) -> Result<()> {
        SqlStore::set_endpoints(self, cluster, namespace, name, e).await
    }
    async fn delete_endpoints(&self, cluster: &str, namespace: &str, name: &str) -> Result<()> {
        SqlStore::delete_endpoints(self, cluster, namespace, name).await
    }
    async fn apply_l2(&self, ad: &L2Ad) -> Result<bool> {
        SqlStore::apply_l2(self, ad).await
    }
    async fn delete_l2(&self, cluster: &str, name: &str) -> Result<()> {
        SqlStore::delete_l2(self, cluster, name).await
    }
    async fn apply_bgp_peer(&self, p: &BgpPeer) -> Result<bool> {
        let sealed = self.seal_peer(p)?;
        self.apply_bgp(BgpKind::Peer, &p.cluster, &p.name, &sealed)
            .await
    }
    async fn apply_bgp_advertisement(&self, a: &BgpAd) -> Result<bool> {
        self.apply_bgp(BgpKind::Advertisement, &a.cluster, &a.name, a)
            .await
    }
    async fn apply_community(&self, c: &CommunitySet) -> Result<bool> {
        self.apply_bgp(BgpKind::Community, &c.cluster, &c.name, c)
            .await
    }
    async fn delete_bgp(&self, kind: BgpKind, cluster: &str, name: &str) -> Result<()> {
        SqlStore::delete_bgp(self, kind, cluster, name).await
    }
    async fn cluster_rows(&self) -> Result<ClusterRows> {
        SqlStore::cluster_rows(self).await
    }
    async fn pools(&self) -> Result<Vec<Pool>> {
        self.list_pools().await
    }
}
