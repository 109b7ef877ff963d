//! `ferrolb.v1.ClusterStateService`: what a cluster reports (nodes, endpoints, advertisements,
//! BGP objects) and what the decisions made of it (announcements).

use std::pin::Pin;
use std::sync::Arc;

use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::cluster_state_service_server::ClusterStateService;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::announce::FailoverLog;
use super::auth::PerIdentity;
use super::bgp;
use super::convert::{self, caller};
use crate::assignments::View;
use crate::bgp::CommunitySet;
use crate::cluster::{Endpoints, L2Ad, NodeInfo, Preferred, pool_applies};
use crate::error::Error;
use crate::pool::{Caller, validate_name};
use crate::store::{BgpKind, ClusterStore, SqlStore};

/// The shortest time between two updates of one WatchAnnouncements stream.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The answer to an applied BGP object, logged.
fn bgp_applied(
    kind: BgpKind,
    cluster: &str,
    name: &str,
    created: bool,
) -> Response<pb::ApplyBgpResponse> {
    tracing::info!(cluster, name, created, ?kind, "BGP object applied");
    Response::new(pb::ApplyBgpResponse { created })
}

/// May `caller` act for `cluster`?
fn for_cluster(caller: &Caller, cluster: &str) -> Result<(), Error> {
    validate_name("cluster", cluster)?;
    match caller {
        Caller::Admin => Ok(()),
        Caller::Cluster(c) if c == cluster => Ok(()),
        other => Err(Error::PermissionDenied(format!(
            "{} may not act for cluster {cluster:?}",
            other.name()
        ))),
    }
}

/// The cluster state API, over any [`ClusterStore`].
pub struct ClusterState<S = SqlStore> {
    store: Arc<S>,
    view: watch::Receiver<Arc<View>>,
    /// Open WatchAnnouncements streams per identity.
    watchers: Arc<PerIdentity>,
    /// The failovers the announcer streams of this replica timed.
    failovers: Arc<FailoverLog>,
}

impl<S: ClusterStore> ClusterState<S> {
    pub fn new(
        store: Arc<S>,
        view: watch::Receiver<Arc<View>>,
        max_watches_per_identity: usize,
    ) -> ClusterState<S> {
        ClusterState {
            store,
            view,
            watchers: Arc::new(PerIdentity::new(max_watches_per_identity)),
            failovers: Arc::default(),
        }
    }

    /// Answers ListFailovers from this log (the announcer streams' of this replica).
    pub fn with_failovers(self, failovers: Arc<FailoverLog>) -> ClusterState<S> {
        ClusterState { failovers, ..self }
    }

    /// The cluster's Community objects, which advertisements and other Communities are checked
    /// against.
    async fn communities(&self, cluster: &str) -> Result<Vec<CommunitySet>, Status> {
        let rows = self.store.cluster_rows().await?;
        Ok(rows
            .communities
            .into_iter()
            .filter(|c| c.cluster == cluster)
            .collect())
    }
}

fn l2_ad(a: pb::L2Advertisement) -> Result<L2Ad, Error> {
    let ad = L2Ad {
        cluster: a.cluster,
        name: a.name,
        pools: a.ip_address_pools,
        pool_selectors: convert::selectors(
            "ip_address_pool_selectors",
            a.ip_address_pool_selectors,
        )?,
        node_selectors: convert::selectors("node_selectors", a.node_selectors)?,
        interfaces: a.interfaces,
        preferences: a
            .preferred_node_selectors
            .into_iter()
            .map(|p| {
                Ok(Preferred {
                    weight: p.weight,
                    selector: convert::selector(
                        "preferred_node_selectors.preference",
                        p.preference.unwrap_or_default(),
                    )?,
                })
            })
            .collect::<Result<_, Error>>()?,
        service_selectors: convert::selectors("service_selectors", a.service_selectors)?,
    };
    ad.validate()?;
    Ok(ad)
}

fn l2_ad_to_pb(a: &L2Ad) -> pb::L2Advertisement {
    pb::L2Advertisement {
        cluster: a.cluster.clone(),
        name: a.name.clone(),
        ip_address_pools: a.pools.clone(),
        ip_address_pool_selectors: a
            .pool_selectors
            .iter()
            .map(convert::selector_to_pb)
            .collect(),
        node_selectors: a
            .node_selectors
            .iter()
            .map(convert::selector_to_pb)
            .collect(),
        interfaces: a.interfaces.clone(),
        service_selectors: a
            .service_selectors
            .iter()
            .map(convert::selector_to_pb)
            .collect(),
        preferred_node_selectors: a
            .preferences
            .iter()
            .map(|p| pb::PreferredNode {
                weight: p.weight,
                preference: Some(convert::selector_to_pb(&p.selector)),
            })
            .collect(),
    }
}

/// Who announces each layer-2 address of a cluster, or why nobody does.
fn l2_announcements(view: &View, cluster: &str) -> Vec<pb::Announcement> {
    view.clusters
        .get(cluster)
        .map(|c| {
            c.announcements
                .iter()
                .map(|a| pb::Announcement {
                    ip: a.ip.to_string(),
                    node: a.owner.clone().unwrap_or_default(),
                    interfaces: a.interfaces.clone(),
                    services: a.services.clone(),
                    reason: a
                        .owner
                        .as_ref()
                        .err()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Per address of a cluster: the nodes that advertise it and the peers each sends it to.
fn bgp_announcements(view: &View, cluster: &str) -> Vec<pb::BgpAnnouncement> {
    view.clusters
        .get(cluster)
        .map(|c| {
            c.bgp
                .announcements
                .iter()
                .map(|a| pb::BgpAnnouncement {
                    ip: a.ip.to_string(),
                    services: a.services.iter().cloned().collect(),
                    nodes: a
                        .nodes
                        .iter()
                        .map(|(node, (prefix, peers))| pb::BgpNodeAnnouncement {
                            node: node.clone(),
                            prefix: bgp::prefix_text(prefix),
                            peers: peers.iter().cloned().collect(),
                        })
                        .collect(),
                    reason: a
                        .silence
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl<S: ClusterStore> ClusterStateService for ClusterState<S> {
    async fn apply_node(
        &self,
        req: Request<pb::Node>,
    ) -> Result<Response<pb::ApplyNodeResponse>, Status> {
        let caller = caller(&req)?;
        let n = req.into_inner();
        for_cluster(&caller, &n.cluster)?;
        validate_name("name", &n.name)?;
        let created = self
            .store
            .apply_node(&NodeInfo {
                cluster: n.cluster,
                name: n.name,
                labels: n.labels.into_iter().collect(),
                network_unavailable: n.network_unavailable,
            })
            .await?;
        Ok(Response::new(pb::ApplyNodeResponse { created }))
    }

    async fn delete_node(
        &self,
        req: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        for_cluster(&caller, &r.cluster)?;
        self.store.delete_node(&r.cluster, &r.name).await?;
        Ok(Response::new(pb::DeleteNodeResponse {}))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let caller = caller(&req)?;
        let cluster = req.into_inner().cluster;
        for_cluster(&caller, &cluster)?;
        let rows = self.store.cluster_rows().await?;
        let live = rows.live.get(&cluster).cloned().unwrap_or_default();
        let mut nodes: Vec<pb::NodeStatus> = rows
            .nodes
            .into_iter()
            .filter(|n| n.cluster == cluster)
            .map(|n| pb::NodeStatus {
                announcer_live: live.contains(&n.name),
                node: Some(pb::Node {
                    cluster: n.cluster,
                    name: n.name,
                    labels: n.labels.into_iter().collect(),
                    network_unavailable: n.network_unavailable,
                }),
            })
            .collect();
        // Nodes known only by their announcer.
        for name in &live {
            if !nodes
                .iter()
                .any(|n| n.node.as_ref().is_some_and(|n| &n.name == name))
            {
                nodes.push(pb::NodeStatus {
                    announcer_live: true,
                    node: Some(pb::Node {
                        cluster: cluster.clone(),
                        name: name.clone(),
                        ..pb::Node::default()
                    }),
                });
            }
        }
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn set_endpoints(
        &self,
        req: Request<pb::ServiceEndpoints>,
    ) -> Result<Response<pb::SetEndpointsResponse>, Status> {
        let caller = caller(&req)?;
        let e = req.into_inner();
        for_cluster(&caller, &e.cluster)?;
        validate_name("namespace", &e.namespace)?;
        validate_name("name", &e.name)?;
        for n in &e.serving_nodes {
            validate_name("serving_nodes", n)?;
        }
        let ends = Endpoints {
            any_serving: e.any_serving || !e.serving_nodes.is_empty(),
            nodes: e.serving_nodes.into_iter().collect(),
            local: e.traffic_policy_local,
            labels: e.labels.into_iter().collect(),
        };
        self.store
            .set_endpoints(&e.cluster, &e.namespace, &e.name, &ends)
            .await?;
        Ok(Response::new(pb::SetEndpointsResponse {}))
    }

    async fn delete_endpoints(
        &self,
        req: Request<pb::DeleteEndpointsRequest>,
    ) -> Result<Response<pb::DeleteEndpointsResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        for_cluster(&caller, &r.cluster)?;
        self.store
            .delete_endpoints(&r.cluster, &r.namespace, &r.name)
            .await?;
        Ok(Response::new(pb::DeleteEndpointsResponse {}))
    }

    async fn apply_l2_advertisement(
        &self,
        req: Request<pb::L2Advertisement>,
    ) -> Result<Response<pb::ApplyL2AdvertisementResponse>, Status> {
        let caller = caller(&req)?;
        let a = req.into_inner();
        for_cluster(&caller, &a.cluster)?;
        let ad = l2_ad(a)?;
        let created = self.store.apply_l2(&ad).await?;
        tracing::info!(
            cluster = ad.cluster,
            name = ad.name,
            created,
            "L2Advertisement applied"
        );
        Ok(Response::new(pb::ApplyL2AdvertisementResponse { created }))
    }

    async fn delete_l2_advertisement(
        &self,
        req: Request<pb::DeleteL2AdvertisementRequest>,
    ) -> Result<Response<pb::DeleteL2AdvertisementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        for_cluster(&caller, &r.cluster)?;
        self.store.delete_l2(&r.cluster, &r.name).await?;
        Ok(Response::new(pb::DeleteL2AdvertisementResponse {}))
    }

    async fn list_l2_advertisements(
        &self,
        req: Request<pb::ListL2AdvertisementsRequest>,
    ) -> Result<Response<pb::ListL2AdvertisementsResponse>, Status> {
        let caller = caller(&req)?;
        let cluster = req.into_inner().cluster;
        for_cluster(&caller, &cluster)?;
        let rows = self.store.cluster_rows().await?;
        let advertisements = rows
            .ads
            .iter()
            .filter(|a| a.cluster == cluster)
            .map(l2_ad_to_pb)
            .collect();
        Ok(Response::new(pb::ListL2AdvertisementsResponse {
            advertisements,
        }))
    }

    async fn list_announcements(
        &self,
        req: Request<pb::ListAnnouncementsRequest>,
    ) -> Result<Response<pb::ListAnnouncementsResponse>, Status> {
        let caller = caller(&req)?;
        let cluster = req.into_inner().cluster;
        for_cluster(&caller, &cluster)?;
        let view = self.view.borrow().clone();
        let announcements = l2_announcements(&view, &cluster);
        Ok(Response::new(pb::ListAnnouncementsResponse {
            announcements,
            version: view.version,
        }))
    }

    async fn list_failovers(
        &self,
        req: Request<pb::ListAnnouncementsRequest>,
    ) -> Result<Response<pb::ListFailoversResponse>, Status> {
        let caller = caller(&req)?;
        let cluster = req.into_inner().cluster;
        for_cluster(&caller, &cluster)?;
        let failovers = self
            .failovers
            .of(&cluster)
            .into_iter()
            .map(|f| pb::Failover {
                ip: f.ip,
                from_node: f.from,
                to_node: f.to,
                reason: f.reason.to_string(),
                at: Some(prost_types::Timestamp::from(f.at)),
                took_ms: u32::try_from(f.took.as_millis()).unwrap_or(u32::MAX),
            })
            .collect();
        Ok(Response::new(pb::ListFailoversResponse { failovers }))
    }

    async fn apply_bgp_peer(
        &self,
        req: Request<pb::BgpPeer>,
    ) -> Result<Response<pb::ApplyBgpResponse>, Status> {
        let caller = caller(&req)?;
        let p = req.into_inner();
        for_cluster(&caller, &p.cluster)?;
        let peer = bgp::peer(p)?;
        let created = self.store.apply_bgp_peer(&peer).await?;
        Ok(bgp_applied(
            BgpKind::Peer,
            &peer.cluster,
            &peer.name,
            created,
        ))
    }

    async fn apply_bgp_advertisement(
        &self,
        req: Request<pb::BgpAdvertisement>,
    ) -> Result<Response<pb::ApplyBgpResponse>, Status> {
        let caller = caller(&req)?;
        let a = req.into_inner();
        for_cluster(&caller, &a.cluster)?;
        let sets = self.communities(&a.cluster).await?;
        let ad = bgp::advertisement(a, &crate::bgp::aliases(&sets))?;
        // Every pool it covers, the cluster's own and those shared with it.
        let cluster = Caller::Cluster(ad.cluster.clone());
        for pool in self.store.pools().await? {
            let labels = Some(&pool.spec.labels);
            if pool.open_to(&cluster)
                && pool_applies(&ad.pools, &ad.pool_selectors, pool.name(), labels)
            {
                ad.fits(&pool)?;
            }
        }
        let created = self.store.apply_bgp_advertisement(&ad).await?;
        Ok(bgp_applied(
            BgpKind::Advertisement,
            &ad.cluster,
            &ad.name,
            created,
        ))
    }

    async fn apply_community(
        &self,
        req: Request<pb::Community>,
    ) -> Result<Response<pb::ApplyBgpResponse>, Status> {
        let caller = caller(&req)?;
        let c = req.into_inner();
        for_cluster(&caller, &c.cluster)?;
        let others = self.communities(&c.cluster).await?;
        let set = bgp::community(c, &others)?;
        let created = self.store.apply_community(&set).await?;
        Ok(bgp_applied(
            BgpKind::Community,
            &set.cluster,
            &set.name,
            created,
        ))
    }

    async fn delete_bgp_object(
        &self,
        req: Request<pb::DeleteBgpObjectRequest>,
    ) -> Result<Response<pb::DeleteBgpObjectResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        for_cluster(&caller, &r.cluster)?;
        let kind = match pb::BgpKind::try_from(r.kind) {
            Ok(pb::BgpKind::Peer) => BgpKind::Peer,
            Ok(pb::BgpKind::Advertisement) => BgpKind::Advertisement,
            Ok(pb::BgpKind::Community) => BgpKind::Community,
            _ => {
                return Err(Error::invalid("kind", "peer, advertisement or community").into());
            }
        };
        self.store.delete_bgp(kind, &r.cluster, &r.name).await?;
        Ok(Response::new(pb::DeleteBgpObjectResponse {}))
    }

    async fn list_bgp_config(
        &self,
        req: Request<pb::ListBgpConfigRequest>,
    ) -> Result<Response<pb::ListBgpConfigResponse>, Status> {
        let caller = caller(&req)?;
        let cluster = req.into_inner().cluster;
        for_cluster(&caller, &cluster)?;
        let rows = self.store.cluster_rows().await?;
        Ok(Response::new(pb::ListBgpConfigResponse {
            peers: rows
                .bgp_peers
                .iter()
                .filter(|p| p.cluster == cluster)
                .map(bgp::peer_to_pb)
                .collect(),
            advertisements: rows
                .bgp_ads
                .iter()
                .filter(|a| a.cluster == cluster)
                .map(bgp::advertisement_to_pb)
                .collect(),
            communities: rows
                .communities
                .iter()
                .filter(|c| c.cluster == cluster)
                .map(bgp::community_to_pb)
                .collect(),
        }))
    }

    async fn list_bgp_announcements(
        &self,
        req: Request<pb::ListAnnouncementsRequest>,
    ) -> Result<Response<pb::ListBgpAnnouncementsResponse>, Status> {
        let caller = caller(&req)?;
        let cluster = req.into_inner().cluster;
        for_cluster(&caller, &cluster)?;
        let view = self.view.borrow().clone();
        let announcements = bgp_announcements(&view, &cluster);
        Ok(Response::new(pb::ListBgpAnnouncementsResponse {
            announcements,
            version: view.version,
        }))
    }

    type WatchAnnouncementsStream =
        Pin<Box<dyn Stream<Item = Result<pb::AnnouncementsUpdate, Status>> + Send>>;

    async fn watch_announcements(
        &self,
        req: Request<pb::ListAnnouncementsRequest>,
    ) -> Result<Response<Self::WatchAnnouncementsStream>, Status> {
        let caller = caller(&req)?;
        let who = convert::principal(&req)?;
        let permit = self.watchers.watch_permit(who)?;
        let cluster = req.into_inner().cluster;
        for_cluster(&caller, &cluster)?;
        let mut view = self.view.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _permit = permit;
            let mut last: Option<(Vec<pb::Announcement>, Vec<pb::BgpAnnouncement>)> = None;
            loop {
                let now = view.borrow_and_update().clone();
                let current = (
                    l2_announcements(&now, &cluster),
                    bgp_announcements(&now, &cluster),
                );
                if last.as_ref() != Some(&current) {
                    let update = pb::AnnouncementsUpdate {
                        version: now.version,
                        announcements: current.0.clone(),
                        bgp_announcements: current.1.clone(),
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                    last = Some(current);
                    // A burst of changes (thousands of Services at once) becomes one update per
                    // interval, each with the latest view.
                    tokio::time::sleep(WATCH_INTERVAL).await;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = view.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
