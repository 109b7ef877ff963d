//! Cluster state in the database (nodes, endpoints, advertisements, BGP objects; the sessions are
//! in `sessions`). Every change bumps `cluster_revision` in the same transaction; on PostgreSQL a
//! trigger turns that into a NOTIFY that every replica follows, and the writer wakes its own at once.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{AnyConnection, Row};
use tokio::sync::watch;

use super::SqlStore;
use super::db::{bump, fail, map_sqlx};
use super::rows::{LeaseRow, lease_of};
use super::sessions::live_sessions;
use crate::bgp::{BgpAd, BgpPeer, CommunitySet};
use crate::cluster::{Endpoints, L2Ad, NodeInfo};
use crate::error::{Error, Result};
use crate::lease::Lease;
use crate::pool::Pool;

/// Everything the announcement decision reads, for every cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterRows {
    pub revision: u64,
    pub nodes: Vec<NodeInfo>,
    pub ads: Vec<L2Ad>,
    /// Not read while no L2Advertisement or BGPPeer exists.
    pub endpoints: EndpointsByCluster,
    /// Nodes with a live, ready announcer, by cluster.
    pub live: BTreeMap<String, BTreeSet<String>>,
    /// The session each of those holds, by (cluster, node).
    pub sessions: Sessions,
    pub bgp_peers: Vec<BgpPeer>,
    pub bgp_ads: Vec<BgpAd>,
    pub communities: Vec<CommunitySet>,
}

/// The session id of each live announcer, by (cluster, node).
pub type Sessions = BTreeMap<(String, String), i64>;

/// By cluster, then (namespace, name).
pub type EndpointsByCluster = BTreeMap<String, BTreeMap<(String, String), Endpoints>>;

impl ClusterRows {
    /// Whether any L2Advertisement or BGPPeer exists: only then do endpoints matter.
    pub fn advertised(&self) -> bool {
        !self.ads.is_empty() || !self.bgp_peers.is_empty()
    }
}

/// The kinds of BGP objects, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BgpKind {
    Peer,
    Advertisement,
    Community,
}

impl BgpKind {
    fn as_str(self) -> &'static str {
        match self {
            BgpKind::Peer => "peer",
            BgpKind::Advertisement => "advertisement",
            BgpKind::Community => "community",
        }
    }

    /// MetalLB's kind name, for messages.
    pub fn kind_name(self) -> &'static str {
        match self {
            BgpKind::Peer => "BGPPeer",
            BgpKind::Advertisement => "BGPAdvertisement",
            BgpKind::Community => "Community",
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A BGPPeer as stored: its password sealed under the secrets key, bound to the peer. No
/// `Debug`: a row of an earlier version holds the password in the clear.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredPeer {
    #[serde(flatten)]
    peer: BgpPeer,
    #[serde(default)]
    password_sealed: String,
    /// A password stored in the clear by an earlier version; sealed when the peer is applied
    /// again.
    #[serde(default, rename = "password", skip_serializing)]
    legacy_password: Option<String>,
}

fn peer_context(cluster: &str, name: &str) -> String {
    format!("BGPPeer {cluster}/{name}")
}

impl SqlStore {
    /// A peer ready to store: its password sealed.
    pub fn seal_peer(&self, peer: &BgpPeer) -> Result<StoredPeer> {
        Ok(StoredPeer {
            password_sealed: self
                .sealer()
                .seal(&peer.password, &peer_context(&peer.cluster, &peer.name))?,
            peer: peer.clone(),
            legacy_password: None,
        })
    }

    /// The calls whose writes the next announcement decision follows from.
    pub fn causes(&self) -> &ferrolb_common::telemetry::Causes {
        &self.causes
    }

    /// A receiver that changes whenever cluster state or announcer sessions may have changed.
    pub fn subscribe_cluster(&self) -> watch::Receiver<u64> {
        self.cluster_changes.subscribe()
    }

    /// Creates or replaces a node; says whether it is new.
    pub async fn apply_node(&self, n: &NodeInfo) -> Result<bool> {
        cluster_tx!(self, |conn| async {
            let existed: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM cluster_nodes WHERE cluster = $1 AND name = $2")
                    .bind(&n.cluster)
                    .bind(&n.name)
                    .fetch_optional(&mut *conn)
                    .await?;
            sqlx::query(
                "INSERT INTO cluster_nodes (cluster, name, labels, network_unavailable) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (cluster, name) DO UPDATE \
                 SET labels = excluded.labels, network_unavailable = excluded.network_unavailable",
            )
            .bind(&n.cluster)
            .bind(&n.name)
            .bind(json(&n.labels))
            .bind(i64::from(n.network_unavailable))
            .execute(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>(existed.is_none())
        })
    }

    /// Deletes a node; NOT_FOUND if there is none.
    pub async fn delete_node(&self, cluster: &str, name: &str) -> Result<()> {
        let n: u64 = cluster_tx!(self, |conn| async {
            sqlx::query("DELETE FROM cluster_nodes WHERE cluster = $1 AND name = $2")
                .bind(cluster)
                .bind(name)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected())
        })?;
        if n == 0 {
            return Err(Error::NotFound(format!(
                "no node {name:?} in cluster {cluster:?}"
            )));
        }
        Ok(())
    }

    pub async fn set_endpoints(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        e: &Endpoints,
    ) -> Result<()> {
        // The row carries the revision this transaction takes (taken first: it also orders the
        // commits), so that `endpoints_since` finds it.
        let mut tx = self.db.begin().await.map_err(map_sqlx)?;
        let rev = bump(&mut tx).await.map_err(map_sqlx)?;
        sqlx::query(
            "INSERT INTO service_endpoints (cluster, namespace, name, nodes, any_serving, local_policy, revision, labels) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (cluster, namespace, name) DO UPDATE \
             SET nodes = excluded.nodes, any_serving = excluded.any_serving, \
             local_policy = excluded.local_policy, revision = excluded.revision, labels = excluded.labels",
        )
        .bind(cluster)
        .bind(namespace)
        .bind(name)
        .bind(json(&e.nodes))
        .bind(i64::from(e.any_serving))
        .bind(i64::from(e.local))
        .bind(rev as i64)
        .bind(json(&e.labels))
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        self.cluster_changed(rev);
        Ok(())
    }

    pub async fn delete_endpoints(&self, cluster: &str, namespace: &str, name: &str) -> Result<()> {
        cluster_tx!(self, |conn| async {
            sqlx::query(
                "DELETE FROM service_endpoints WHERE cluster = $1 AND namespace = $2 AND name = $3",
            )
            .bind(cluster)
            .bind(namespace)
            .bind(name)
            .execute(&mut *conn)
            .await
            .map(|_| ())
        })
    }

    /// Creates or replaces an advertisement; says whether it is new.
    pub async fn apply_l2(&self, ad: &L2Ad) -> Result<bool> {
        cluster_tx!(self, |conn| async {
            let existed: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM l2_advertisements WHERE cluster = $1 AND name = $2",
            )
            .bind(&ad.cluster)
            .bind(&ad.name)
            .fetch_optional(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO l2_advertisements (cluster, name, spec) VALUES ($1, $2, $3) \
                 ON CONFLICT (cluster, name) DO UPDATE SET spec = excluded.spec",
            )
            .bind(&ad.cluster)
            .bind(&ad.name)
            .bind(json(ad))
            .execute(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>(existed.is_none())
        })
    }

    pub async fn delete_l2(&self, cluster: &str, name: &str) -> Result<()> {
        let n: u64 = cluster_tx!(self, |conn| async {
            sqlx::query("DELETE FROM l2_advertisements WHERE cluster = $1 AND name = $2")
                .bind(cluster)
                .bind(name)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected())
        })?;
        if n == 0 {
            return Err(Error::NotFound(format!(
                "no L2Advertisement {name:?} in cluster {cluster:?}"
            )));
        }
        Ok(())
    }

    /// Creates or replaces a BGP object (already validated); says whether it is new.
    pub async fn apply_bgp<T: serde::Serialize>(
        &self,
        kind: BgpKind,
        cluster: &str,
        name: &str,
        spec: &T,
    ) -> Result<bool> {
        cluster_tx!(self, |conn| async {
            let existed: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM bgp_objects WHERE cluster = $1 AND kind = $2 AND name = $3",
            )
            .bind(cluster)
            .bind(kind.as_str())
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO bgp_objects (cluster, kind, name, spec) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (cluster, kind, name) DO UPDATE SET spec = excluded.spec",
            )
            .bind(cluster)
            .bind(kind.as_str())
            .bind(name)
            .bind(json(spec))
            .execute(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>(existed.is_none())
        })
    }

    pub async fn delete_bgp(&self, kind: BgpKind, cluster: &str, name: &str) -> Result<()> {
        let n: u64 = cluster_tx!(self, |conn| async {
            sqlx::query("DELETE FROM bgp_objects WHERE cluster = $1 AND kind = $2 AND name = $3")
                .bind(cluster)
                .bind(kind.as_str())
                .bind(name)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected())
        })?;
        if n == 0 {
            return Err(Error::NotFound(format!(
                "no {} {name:?} in cluster {cluster:?}",
                kind.kind_name()
            )));
        }
        Ok(())
    }

    /// Reads every cluster's nodes, advertisements, endpoints and live announcers.
    pub async fn cluster_rows(&self) -> Result<ClusterRows> {
        self.cluster_rows_after(None).await
    }

    /// Like `cluster_rows`, bringing the endpoints of `previous` (read at an earlier revision)
    /// up to date: only rows written since are read, unless some were deleted.
    pub async fn cluster_rows_after(&self, previous: Option<ClusterRows>) -> Result<ClusterRows> {
        let mut conn = self.db.acquire().await.map_err(map_sqlx)?;
        let mut out = self.cluster_config(&mut conn).await?;
        // Endpoints matter only to an advertisement or a BGP peer: an allocator used for IPAM
        // alone, or before any advertisement exists, does not read one row per Service.
        if out.advertised() {
            out.endpoints = match previous.filter(ClusterRows::advertised) {
                Some(p) => {
                    let mut endpoints = p.endpoints;
                    let (changed, total) = endpoints_since(&mut conn, Some(p.revision)).await?;
                    for (cluster, rows) in changed {
                        endpoints.entry(cluster).or_default().extend(rows);
                    }
                    let held: usize = endpoints.values().map(BTreeMap::len).sum();
                    if held as u64 == total {
                        endpoints
                    } else {
                        // Some Service's endpoints were deleted: read them all.
                        endpoints_since(&mut conn, None).await?.0
                    }
                }
                None => endpoints_since(&mut conn, None).await?.0,
            };
        }
        (out.live, out.sessions) = live_sessions(&mut conn).await?;
        Ok(out)
    }

    /// Everything of cluster state but endpoints and live sessions, with its revision read
    /// first.
    async fn cluster_config(&self, conn: &mut AnyConnection) -> Result<ClusterRows> {
        let revision: i64 = sqlx::query_scalar("SELECT value FROM cluster_revision WHERE id = 1")
            .fetch_one(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        let mut out = ClusterRows {
            revision: revision as u64,
            nodes: load_nodes(conn).await?,
            ads: load_l2_ads(conn).await?,
            ..ClusterRows::default()
        };
        for r in
            sqlx::query("SELECT cluster, kind, name, spec FROM bgp_objects ORDER BY cluster, name")
                .fetch_all(&mut *conn)
                .await
                .map_err(map_sqlx)?
        {
            let spec: String = r.try_get("spec").map_err(map_sqlx)?;
            let kind: String = r.try_get("kind").map_err(map_sqlx)?;
            let cluster: String = r.try_get("cluster").map_err(map_sqlx)?;
            let name: String = r.try_get("name").map_err(map_sqlx)?;
            match kind.as_str() {
                "peer" => {
                    let s: StoredPeer =
                        serde_json::from_str(&spec).map_err(|e| unreadable("BGPPeer", e))?;
                    if let Some(mut p) = self.open_peer(s, &cluster, &name) {
                        (p.cluster, p.name) = (cluster, name);
                        out.bgp_peers.push(p);
                    }
                }
                "advertisement" => {
                    let mut a: BgpAd = serde_json::from_str(&spec)
                        .map_err(|e| unreadable("BGPAdvertisement", e))?;
                    (a.cluster, a.name) = (cluster, name);
                    out.bgp_ads.push(a);
                }
                "community" => {
                    let mut c: CommunitySet =
                        serde_json::from_str(&spec).map_err(|e| unreadable("Community", e))?;
                    (c.cluster, c.name) = (cluster, name);
                    out.communities.push(c);
                }
                other => {
                    return Err(Error::Internal(format!(
                        "stored BGP object of kind {other:?}"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// A stored peer with its password unsealed; None (and logged) when it cannot be: one
    /// unreadable peer does not stop the others.
    fn open_peer(&self, s: StoredPeer, cluster: &str, name: &str) -> Option<BgpPeer> {
        let mut p = s.peer;
        let context = peer_context(cluster, name);
        p.password = match (
            s.legacy_password,
            self.sealer().open(&s.password_sealed, &context),
        ) {
            (Some(clear), _) if s.password_sealed.is_empty() => {
                tracing::warn!(
                    peer = context,
                    "password stored in the clear by an earlier version: apply the peer again to seal it"
                );
                ferrolb_common::Secret::new(clear)
            }
            (_, Ok(pw)) => pw,
            (_, Err(e)) => {
                tracing::error!(peer = context, error = %e, "BGP peer left out");
                return None;
            }
        };
        Some(p)
    }

    /// The revision of cluster state: it changes with every change `cluster_rows` reads, apart
    /// from announcer sessions expiring by the clock.
    pub async fn cluster_revision(&self) -> Result<u64> {
        let revision: i64 = sqlx::query_scalar("SELECT value FROM cluster_revision WHERE id = 1")
            .fetch_one(&self.db)
            .await
            .map_err(map_sqlx)?;
        Ok(revision as u64)
    }

    /// Every Service lease (of any cluster), with the store's revision read before them.
    pub async fn service_leases(&self) -> Result<(u64, Vec<Lease>)> {
        let mut conn = self.db.acquire().await.map_err(map_sqlx)?;
        let revision: i64 = sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases WHERE cluster <> '' ORDER BY owner_key, primary_rank"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        let rows: Vec<LeaseRow> = rows
            .iter()
            .map(LeaseRow::from_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(fail)?;
        let leases = rows
            .chunk_by(|a, b| a.owner_key == b.owner_key)
            .filter_map(lease_of)
            .collect();
        Ok((revision as u64, leases))
    }

    /// Pools with their labels, for ipAddressPoolSelectors.
    pub async fn pool_labels(&self) -> Result<BTreeMap<String, crate::selector::Labels>> {
        use super::LeaseStore;
        let pools: Vec<Pool> = self.list_pools().await?;
        Ok(pools
            .into_iter()
            .map(|p| (p.spec.name.clone(), p.spec.labels))
            .collect())
    }
}

/// Endpoints by cluster, then (namespace, name): the rows written after `revision` (None: all of
/// them, rows from before revisions were recorded included), and how many rows there are in all.
async fn endpoints_since(
    conn: &mut AnyConnection,
    revision: Option<u64>,
) -> Result<(EndpointsByCluster, u64)> {
    let bad = |e: serde_json::Error| Error::Internal(format!("stored endpoints: {e}"));
    let mut out = EndpointsByCluster::new();
    for r in sqlx::query(
        "SELECT cluster, namespace, name, nodes, any_serving, local_policy, labels FROM service_endpoints \
         WHERE revision > $1",
    )
    .bind(revision.map_or(-1, |r| r as i64))
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?
    {
        let nodes: String = r.try_get("nodes").map_err(map_sqlx)?;
        let labels: String = r.try_get("labels").map_err(map_sqlx)?;
        let cluster: String = r.try_get("cluster").map_err(map_sqlx)?;
        out.entry(cluster).or_default().insert(
            (
                r.try_get("namespace").map_err(map_sqlx)?,
                r.try_get("name").map_err(map_sqlx)?,
            ),
            Endpoints {
                nodes: serde_json::from_str(&nodes).map_err(bad)?,
                any_serving: r.try_get::<i64, _>("any_serving").map_err(map_sqlx)? != 0,
                local: r.try_get::<i64, _>("local_policy").map_err(map_sqlx)? != 0,
                labels: serde_json::from_str(&labels).map_err(bad)?,
            },
        );
    }
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM service_endpoints")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    Ok((out, total as u64))
}

fn unreadable(what: &str, e: serde_json::Error) -> Error {
    Error::Internal(format!("stored {what} cannot be read: {e}"))
}

async fn load_nodes(conn: &mut AnyConnection) -> Result<Vec<NodeInfo>> {
    let rows = sqlx::query(
        "SELECT cluster, name, labels, network_unavailable FROM cluster_nodes ORDER BY cluster, name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let mut nodes = Vec::with_capacity(rows.len());
    for r in rows {
        let labels: String = r.try_get("labels").map_err(map_sqlx)?;
        nodes.push(NodeInfo {
            cluster: r.try_get("cluster").map_err(map_sqlx)?,
            name: r.try_get("name").map_err(map_sqlx)?,
            labels: serde_json::from_str(&labels).map_err(|e| unreadable("node labels", e))?,
            network_unavailable: r
                .try_get::<i64, _>("network_unavailable")
                .map_err(map_sqlx)?
                != 0,
        });
    }
    Ok(nodes)
}

async fn load_l2_ads(conn: &mut AnyConnection) -> Result<Vec<L2Ad>> {
    let rows =
        sqlx::query("SELECT cluster, name, spec FROM l2_advertisements ORDER BY cluster, name")
            .fetch_all(&mut *conn)
            .await
            .map_err(map_sqlx)?;
    let mut ads = Vec::with_capacity(rows.len());
    for r in &rows {
        let (cluster, name, ad) = named::<L2Ad>(r, "L2Advertisement")?;
        ads.push(L2Ad {
            cluster,
            name,
            ..ad
        });
    }
    Ok(ads)
}

/// A row's cluster, name and spec (stored as JSON), for the tables of named objects.
fn named<T: serde::de::DeserializeOwned>(
    r: &sqlx::any::AnyRow,
    what: &str,
) -> Result<(String, String, T)> {
    let spec: String = r.try_get("spec").map_err(map_sqlx)?;
    let value = serde_json::from_str(&spec).map_err(|e| unreadable(what, e))?;
    let cluster = r.try_get("cluster").map_err(map_sqlx)?;
    let name = r.try_get("name").map_err(map_sqlx)?;
    Ok((cluster, name, value))
}

/// Every cluster's BGPAdvertisements, for the pools' side of the aggregation rule.
pub(super) async fn bgp_advertisements(conn: &mut AnyConnection) -> Result<Vec<BgpAd>> {
    let rows = sqlx::query("SELECT cluster, name, spec FROM bgp_objects WHERE kind = $1")
        .bind(BgpKind::Advertisement.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let mut ads = Vec::with_capacity(rows.len());
    for r in &rows {
        let (cluster, name, ad) = named::<BgpAd>(r, "BGPAdvertisement")?;
        ads.push(BgpAd {
            cluster,
            name,
            ..ad
        });
    }
    Ok(ads)
}
