//! The replica's current answer to "who announces what": recomputed whenever leases, cluster
//! state or announcer sessions change (on any replica), and published to the announcer streams
//! this replica holds.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use crate::bgp::{self, NodeBgp};
use crate::cluster::{self, Announcement, Input};
use crate::error::Result;
use crate::lease::{EventKind, Lease, LeaseEvent, Owner};
use crate::selector::Labels;
use crate::store::{ClusterRows, LeaseStore, Sessions, SqlStore};

/// What one node announces: address → its interfaces and Services.
pub type NodeAssignments = BTreeMap<IpAddr, cluster::Duty>;

/// Who announces what, in every cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Grows with every change of leases or cluster state; the same database state gives the
    /// same version on every replica.
    pub version: u64,
    pub clusters: BTreeMap<String, ClusterView>,
    /// The session each live announcer holds, read at cluster revision `sessions_revision` or
    /// later: a stream whose node's session is another's was replaced.
    pub sessions: crate::store::Sessions,
    pub sessions_revision: u64,
    /// The decision that made this view (traces; ignored when views are compared).
    pub origin: ferrolb_common::telemetry::Origin,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub announcements: Vec<Announcement>,
    pub by_node: BTreeMap<String, NodeAssignments>,
    pub bgp: bgp::Decision,
}

/// Everything one node does: layer-2 addresses and BGP sessions with their routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub l2: NodeAssignments,
    pub bgp: NodeBgp,
}

impl View {
    pub fn node(&self, cluster: &str, node: &str) -> NodeView {
        let Some(c) = self.clusters.get(cluster) else {
            return NodeView::default();
        };
        NodeView {
            l2: c.by_node.get(node).cloned().unwrap_or_default(),
            bgp: c.bgp.nodes.get(node).cloned().unwrap_or_default(),
        }
    }
}

/// What the announcement view is decided from. The database store is one source; the tests of
/// the view's caching use one in memory.
pub trait ViewSource: Send + Sync + 'static {
    /// The revision of cluster state (nodes, endpoints, advertisements, BGP objects, sessions).
    fn cluster_revision(&self) -> impl Future<Output = Result<u64>> + Send;
    /// The live announcers by cluster, and the session each holds.
    fn live_announcers(
        &self,
    ) -> impl Future<Output = Result<(BTreeMap<String, BTreeSet<String>>, Sessions)>> + Send;
    /// Cluster state, reading again only what changed since `previous`.
    fn cluster_rows_after(
        &self,
        previous: Option<ClusterRows>,
    ) -> impl Future<Output = Result<ClusterRows>> + Send;
    /// Pool labels by pool, for advertisements' pool selectors.
    fn pool_labels(&self) -> impl Future<Output = Result<BTreeMap<String, Labels>>> + Send;
    /// Every Service lease, with the lease revision it was read at.
    fn service_leases(&self) -> impl Future<Output = Result<(u64, Vec<Lease>)>> + Send;
    /// Lease changes after `revision`, oldest first.
    fn lease_events(
        &self,
        revision: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LeaseEvent>>> + Send;
}

impl ViewSource for SqlStore {
    async fn cluster_revision(&self) -> Result<u64> {
        SqlStore::cluster_revision(self).await
    }
    async fn live_announcers(&self) -> Result<(BTreeMap<String, BTreeSet<String>>, Sessions)> {
        SqlStore::live_announcers(self).await
    }
    async fn cluster_rows_after(&self, previous: Option<ClusterRows>) -> Result<ClusterRows> {
        SqlStore::cluster_rows_after(self, previous).await
    }
    async fn pool_labels(&self) -> Result<BTreeMap<String, Labels>> {
        SqlStore::pool_labels(self).await
    }
    async fn service_leases(&self) -> Result<(u64, Vec<Lease>)> {
        SqlStore::service_leases(self).await
    }
    async fn lease_events(&self, revision: u64, limit: u32) -> Result<Vec<LeaseEvent>> {
        self.events_since(revision, None, limit).await
    }
}

/// After a change, wait this long for more changes to pile up: bursts of allocations then cost
/// one recompute, and failover waits at most this much longer.
const SETTLE: Duration = Duration::from_millis(5);
/// Recompute at least this often: sessions of a replica that died expire by the clock.
const RECHECK: Duration = Duration::from_secs(1);

/// Starts the recompute loop; the receiver always holds the latest view.
pub fn spawn(
    store: Arc<SqlStore>,
    ignore_exclude_label: bool,
    critical: &ferrolb_common::process::Critical,
) -> watch::Receiver<Arc<View>> {
    let (tx, rx) = watch::channel(Arc::new(View::default()));
    critical.spawn("the announcement loop", async move {
        let mut lease_changes = store.subscribe();
        let mut cluster_changes = store.subscribe_cluster();
        let mut cache = Cache::default();
        let mut leases_stale = true;
        loop {
            let mut advertised = true;
            let started = std::time::Instant::now();
            // The calls whose writes this decision answers: its trace continues theirs.
            let span = store
                .causes()
                .follow(|| tracing::info_span!("decide announcements"));
            let computed = compute(&*store, &mut cache, leases_stale, ignore_exclude_label)
                .instrument(span.clone())
                .await;
            match computed {
                Ok(None) => leases_stale = false,
                Ok(Some((mut view, any_ads))) => {
                    view.origin = ferrolb_common::telemetry::Origin::of(&span);
                    tracing::debug!(
                        took_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "announcements decided"
                    );
                    leases_stale = false;
                    advertised = any_ads;
                    tx.send_if_modified(|cur| {
                        let changed = **cur != view;
                        if changed {
                            *cur = Arc::new(view);
                        }
                        changed
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot decide announcements");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if tx.is_closed() {
                return;
            }
            // Changes that came while deciding mean a burst: let the next decision wait three
            // times as long as this one took, so that deciding takes at most a quarter of a core
            // however long the burst lasts, and leaves the rest to the calls that make the
            // burst. A change that finds the loop idle waits only SETTLE.
            let took = started.elapsed();
            let busy = (advertised && lease_changes.has_changed().unwrap_or(false))
                || cluster_changes.has_changed().unwrap_or(false);
            // Without any L2Advertisement, lease changes decide nothing: only a change of
            // cluster state can (an allocator used for IPAM alone pays nothing here).
            loop {
                tokio::select! {
                    r = lease_changes.changed() => {
                        if r.is_err() { return; }
                        leases_stale = true;
                        if advertised { break; }
                    }
                    r = cluster_changes.changed() => {
                        if r.is_err() { return; }
                        break;
                    }
                    _ = tokio::time::sleep(RECHECK) => if advertised { break; },
                }
            }
            tokio::time::sleep(if busy { (took * 3).max(SETTLE) } else { SETTLE }).await;
            if lease_changes.has_changed().unwrap_or(false) {
                lease_changes.borrow_and_update();
                leases_stale = true;
            }
            cluster_changes.borrow_and_update();
        }
    });
    rx
}

/// What the decisions read, kept between recomputes: cluster state is read again only when its
/// revision moved (Services' endpoints only where they were written since), and Service leases
/// follow the store's change log.
#[derive(Default)]
struct Cache {
    rows: Option<ClusterRows>,
    leases: Option<LeaseCache>,
    /// What the last decision was made from: when nothing moved, there is nothing to decide.
    decided: Option<Inputs>,
}

#[derive(PartialEq)]
struct Inputs {
    cluster_revision: u64,
    live: BTreeMap<String, BTreeSet<String>>,
    lease_revision: u64,
    pools: BTreeMap<String, crate::selector::Labels>,
}

/// Every Service lease by owner key, as of `revision`.
struct LeaseCache {
    revision: u64,
    leases: BTreeMap<String, Lease>,
}

/// Events read per round trip when catching up.
const EVENT_PAGE: u32 = 1000;

impl LeaseCache {
    async fn load(store: &impl ViewSource) -> Result<LeaseCache> {
        let (revision, all) = store.service_leases().await?;
        Ok(LeaseCache {
            revision,
            leases: all.into_iter().map(|l| (l.owner.key(), l)).collect(),
        })
    }

    /// Applies the changes since `revision` from the change log, in order (changes commit in
    /// revision order: they take their revisions from one row). A gap — the history no longer
    /// reaches back — reads everything again instead.
    async fn catch_up(&mut self, store: &impl ViewSource) -> Result<()> {
        loop {
            let events = store.lease_events(self.revision, EVENT_PAGE).await?;
            for e in &events {
                if e.revision != self.revision + 1 {
                    *self = LeaseCache::load(store).await?;
                    return Ok(());
                }
                self.revision = e.revision;
                if !matches!(e.lease.owner, Owner::Service { .. }) {
                    continue;
                }
                let key = e.lease.owner.key();
                match e.kind {
                    EventKind::Released | EventKind::Expired => {
                        self.leases.remove(&key);
                    }
                    EventKind::Allocated | EventKind::Updated | EventKind::Stranded => {
                        self.leases.insert(key, e.lease.clone());
                    }
                }
            }
            if events.len() < EVENT_PAGE as usize {
                return Ok(());
            }
        }
    }
}

async fn compute(
    store: &impl ViewSource,
    cache: &mut Cache,
    leases_stale: bool,
    ignore_exclude_label: bool,
) -> Result<Option<(View, bool)>> {
    let revision = store.cluster_revision().await?;
    let rows = match cache.rows.take() {
        Some(mut r) if r.revision == revision => {
            // Sessions also expire by the clock, without a new revision.
            (r.live, r.sessions) = store.live_announcers().await?;
            r
        }
        previous => store.cluster_rows_after(previous).await?,
    };
    let rows = &*cache.rows.insert(rows);
    if !rows.advertised() {
        // No layer-2 advertisement or BGP peer anywhere: nothing to announce, and no lease to
        // read.
        let view = View {
            version: rows.revision,
            clusters: BTreeMap::new(),
            sessions: rows.sessions.clone(),
            sessions_revision: rows.revision,
            origin: Default::default(),
        };
        cache.decided = None;
        return Ok(Some((view, false)));
    }
    match cache.leases.as_mut() {
        Some(l) if leases_stale => l.catch_up(store).await?,
        Some(_) => {}
        None => cache.leases = Some(LeaseCache::load(store).await?),
    }
    let (lease_revision, all) = match cache.leases.as_ref() {
        Some(c) => (c.revision, Some(&c.leases)),
        None => (0, None),
    };
    let pools = store.pool_labels().await?;
    let inputs = Inputs {
        cluster_revision: rows.revision,
        live: rows.live.clone(),
        lease_revision,
        pools,
    };
    if cache.decided.as_ref() == Some(&inputs) {
        return Ok(None);
    }
    let pools = &inputs.pools;
    let mut by_cluster: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    for l in all.into_iter().flat_map(BTreeMap::values) {
        if let Owner::Service { cluster, .. } = &l.owner {
            by_cluster.entry(cluster.as_str()).or_default().push(l);
        }
    }
    // A cluster with BGP peers but no lease still runs its sessions.
    for p in &rows.bgp_peers {
        by_cluster.entry(p.cluster.as_str()).or_default();
    }
    let clusters = by_cluster
        .into_iter()
        .map(|(name, leases)| {
            let view = decide_cluster(rows, name, &leases, pools, ignore_exclude_label);
            (name.to_string(), view)
        })
        .collect();
    let view = View {
        version: rows.revision + lease_revision,
        clusters,
        sessions: rows.sessions.clone(),
        sessions_revision: rows.revision,
        origin: Default::default(),
    };
    cache.decided = Some(inputs);
    Ok(Some((view, true)))
}

/// One cluster's layer-2 and BGP decisions over its leases.
fn decide_cluster(
    rows: &ClusterRows,
    name: &str,
    leases: &[&Lease],
    pools: &BTreeMap<String, Labels>,
    ignore_exclude_label: bool,
) -> ClusterView {
    let empty_live = Default::default();
    let empty_endpoints = Default::default();
    let live = rows.live.get(name).unwrap_or(&empty_live);
    let endpoints = rows.endpoints.get(name).unwrap_or(&empty_endpoints);
    let nodes = cluster::participants(name, &rows.nodes, live);
    fn of<T: Clone>(all: &[T], name: &str, cluster: impl Fn(&T) -> &str) -> Vec<T> {
        all.iter().filter(|x| cluster(x) == name).cloned().collect()
    }
    let ads = of(&rows.ads, name, |a| &a.cluster);
    let announcements = cluster::decide(Input {
        nodes: &nodes,
        live,
        ads: &ads,
        endpoints,
        leases,
        pools,
        ignore_exclude_label,
    });
    let by_node = cluster::by_node(&announcements);
    let bgp_peers = of(&rows.bgp_peers, name, |p| &p.cluster);
    let bgp = if bgp_peers.is_empty() {
        bgp::Decision::default()
    } else {
        bgp::decide(bgp::Input {
            nodes: &nodes,
            peers: &bgp_peers,
            ads: &of(&rows.bgp_ads, name, |a| &a.cluster),
            communities: &of(&rows.communities, name, |c| &c.cluster),
            endpoints,
            leases,
            pools,
            ignore_exclude_label,
        })
    };
    ClusterView {
        announcements,
        by_node,
        bgp,
    }
}

#[cfg(test)]
mod tests;
