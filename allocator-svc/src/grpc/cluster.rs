//! `ferrolb.v1.ClusterStateService` and `ferrolb.v1.AnnouncerService`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::allocator_message::Kind as Down;
use ferrolb_proto::v1::announcer_message::Kind as Up;
use ferrolb_proto::v1::announcer_service_server::AnnouncerService;
use ferrolb_proto::v1::cluster_state_service_server::ClusterStateService;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::bgp;
use super::convert::{self, caller};
use crate::assignments::{NodeView, View};
use crate::bgp::CommunitySet;
use crate::cluster::{Endpoints, L2Ad, NodeInfo, Preferred};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pool::{Caller, validate_name};
use crate::store::{BgpKind, SqlStore};
use ferrolb_common::Principal;

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

/// The cluster state API.
pub struct ClusterState {
    store: Arc<SqlStore>,
    view: watch::Receiver<Arc<View>>,
}

impl ClusterState {
    pub fn new(store: Arc<SqlStore>, view: watch::Receiver<Arc<View>>) -> ClusterState {
        ClusterState { store, view }
    }

    /// The cluster's Community objects, which advertisements and other Communities are checked
    /// against.
    /// Stores a validated BGP object; the answer says whether it is new.
    async fn store_bgp<T: serde::Serialize>(
        &self,
        kind: BgpKind,
        cluster: &str,
        name: &str,
        object: &T,
    ) -> Result<Response<pb::ApplyBgpResponse>, Status> {
        let created = self.store.apply_bgp(kind, cluster, name, object).await?;
        tracing::info!(cluster, name, created, ?kind, "BGP object applied");
        Ok(Response::new(pb::ApplyBgpResponse { created }))
    }

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
    };
    ad.validate(a.service_selectors.len())?;
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
        service_selectors: vec![],
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

#[tonic::async_trait]
impl ClusterStateService for ClusterState {
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
        let announcements = view
            .clusters
            .get(&cluster)
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
            .unwrap_or_default();
        Ok(Response::new(pb::ListAnnouncementsResponse {
            announcements,
            version: view.version,
        }))
    }

    async fn apply_bgp_peer(
        &self,
        req: Request<pb::BgpPeer>,
    ) -> Result<Response<pb::ApplyBgpResponse>, Status> {
        let caller = caller(&req)?;
        let p = req.into_inner();
        for_cluster(&caller, &p.cluster)?;
        let peer = bgp::peer(p)?;
        let stored = self.store.seal_peer(&peer)?;
        self.store_bgp(BgpKind::Peer, &peer.cluster, &peer.name, &stored)
            .await
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
        self.store_bgp(BgpKind::Advertisement, &ad.cluster, &ad.name, &ad)
            .await
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
        self.store_bgp(BgpKind::Community, &set.cluster, &set.name, &set)
            .await
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
        let announcements = view
            .clusters
            .get(&cluster)
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
            .unwrap_or_default();
        Ok(Response::new(pb::ListBgpAnnouncementsResponse {
            announcements,
            version: view.version,
        }))
    }
}

/// Liveness settings of the announcer streams.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// An announcer not heard from for this long is taken for dead.
    pub heartbeat_timeout: Duration,
    /// How long a session outlives its replica's last refresh.
    pub session_ttl: Duration,
}

/// The announcer stream API.
pub struct Announcers {
    store: Arc<SqlStore>,
    view: watch::Receiver<Arc<View>>,
    metrics: Arc<Metrics>,
    replica: Arc<str>,
    liveness: Liveness,
    /// The stream this replica serves for each node: a newer one ends it.
    streams: std::sync::Mutex<BTreeMap<(String, String), Serving>>,
}

/// A node's stream on this replica: its session id, and what ends it.
type Serving = (i64, tokio::sync::oneshot::Sender<()>);

impl Announcers {
    pub fn new(
        store: Arc<SqlStore>,
        view: watch::Receiver<Arc<View>>,
        metrics: Arc<Metrics>,
        replica: Arc<str>,
        liveness: Liveness,
    ) -> Announcers {
        Announcers {
            store,
            view,
            metrics,
            replica,
            liveness,
            streams: std::sync::Mutex::default(),
        }
    }

    /// Registers a node's new stream; the previous one, if this replica serves it, is told to
    /// end. Returns what ends this one.
    fn take_over(&self, s: &Session) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = streams.insert((s.cluster.clone(), s.node.clone()), (s.id, tx)) {
            let _ = old.send(());
        }
        rx
    }

    /// Forgets a stream that ended, unless a newer one of its node has taken its place.
    fn release(&self, s: &Session) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let key = (s.cluster.clone(), s.node.clone());
        if streams.get(&key).is_some_and(|(id, _)| *id == s.id) {
            streams.remove(&key);
        }
    }
}

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The message that brings an announcer from `had` to `want`.
fn changes(version: u64, had: &NodeView, want: &NodeView) -> pb::Assignments {
    let (had_l2, want_l2) = (&had.l2, &want.l2);
    let mut out = pb::Assignments {
        version,
        snapshot: false,
        set: want_l2
            .iter()
            .filter(|(ip, ifs)| had_l2.get(ip) != Some(ifs))
            .map(|(ip, ifs)| pb::L2Assignment {
                ip: ip.to_string(),
                interfaces: ifs.clone(),
            })
            .collect(),
        unset: had_l2
            .keys()
            .filter(|ip| !want_l2.contains_key(ip))
            .map(IpAddr::to_string)
            .collect(),
        ..pb::Assignments::default()
    };
    bgp::changes(&had.bgp, &want.bgp, &mut out);
    out
}

type Outbound = mpsc::Sender<Result<pb::AllocatorMessage, Status>>;

fn down(a: pb::Assignments) -> Result<pb::AllocatorMessage, Status> {
    Ok(pb::AllocatorMessage {
        kind: Some(Down::Assignments(a)),
    })
}

struct Session {
    cluster: String,
    node: String,
    id: i64,
    /// The cluster revision read after the session was stored: views read at it or later
    /// know of the session (or of a newer one).
    opened_at: u64,
}

impl Announcers {
    /// Serves one announcer until its stream ends or its heartbeats stop.
    async fn serve(
        self: Arc<Self>,
        hello: pb::Hello,
        mut inbound: Streaming<pb::AnnouncerMessage>,
        out: Outbound,
    ) {
        let mut s = Session {
            cluster: hello.cluster.clone(),
            node: hello.node.clone(),
            // Tells this stream's session from a newer one of the same node.
            id: (crate::cluster::random_u64() >> 1) as i64,
            opened_at: u64::MAX,
        };
        let ttl = self.liveness.session_ttl.as_millis() as i64;
        let opened = self
            .store
            .open_session(&s.cluster, &s.node, s.id, &self.replica, ttl)
            .await;
        if let Err(e) = opened {
            let _ = out.send(Err(Status::from(e))).await;
            return;
        }
        // Without the revision no view is trusted to say the session was replaced.
        s.opened_at = self.store.cluster_revision().await.unwrap_or(u64::MAX);
        let interfaces: Vec<&str> = hello
            .interfaces
            .iter()
            .filter(|i| i.eligible)
            .map(|i| i.name.as_str())
            .collect();
        tracing::info!(
            cluster = s.cluster,
            node = s.node,
            ?interfaces,
            "announcer connected"
        );
        self.metrics.announcer_streams.inc();
        let replaced = self.take_over(&s);
        let why = tokio::select! {
            why = self.run(&s, &hello, &mut inbound, &out) => why,
            _ = replaced => {
                let _ = out.send(Err(Error::Aborted("a newer stream of this node took over".into()).into())).await;
                "replaced by a newer stream of the node"
            }
        };
        self.release(&s);
        self.metrics.announcer_streams.dec();
        tracing::info!(
            cluster = s.cluster,
            node = s.node,
            reason = why,
            "announcer gone"
        );
        if let Err(e) = self.store.close_session(&s.cluster, &s.node, s.id).await {
            tracing::warn!(error = %e, node = s.node, "cannot end the session; it will expire");
        }
    }

    async fn run(
        &self,
        s: &Session,
        hello: &pb::Hello,
        inbound: &mut Streaming<pb::AnnouncerMessage>,
        out: &Outbound,
    ) -> &'static str {
        let timeout = self.liveness.heartbeat_timeout;
        let interval = (timeout / 3).max(Duration::from_millis(10));
        let mut view = self.view.clone();
        let current = view.borrow_and_update().clone();
        let speaks_bgp = hello.capabilities.iter().any(|c| c == "bgp");
        let node_view = |v: &View| {
            let mut n = v.node(&s.cluster, &s.node);
            if !speaks_bgp {
                n.bgp = Default::default();
            }
            n
        };
        let mut sent = node_view(&current);
        let announcing: BTreeSet<IpAddr> = hello
            .announcing
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        // An announcer that has been in touch before (any replica) and announces exactly what it
        // should resumes where it is; versions move with every change anywhere, so they are not
        // compared. The announcer does not report its BGP state, so a node with any gets a
        // snapshot (sessions and routes that did not change cause no traffic to the peers).
        let in_step = hello.version != 0
            && announcing.iter().eq(sent.l2.keys())
            && sent.bgp == Default::default();
        let first = if in_step {
            changes(current.version, &sent, &sent)
        } else {
            pb::Assignments {
                snapshot: true,
                ..changes(current.version, &NodeView::default(), &sent)
            }
        };
        let first = pb::Assignments {
            heartbeat_interval_ms: interval.as_millis() as u32,
            allocator_timeout_ms: (timeout * 10).as_millis() as u32,
            ..first
        };
        if out.send(down(first)).await.is_err() {
            return "stream closed";
        }
        let mut ready = true;
        let mut heard = Instant::now();
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(pb::AnnouncerMessage { kind: Some(Up::Status(st)) })) => {
                        heard = Instant::now();
                        if st.ready != ready {
                            ready = st.ready;
                            tracing::info!(node = s.node, ready, "announcer readiness changed");
                            if let Err(e) = self.store.set_session_ready(&s.cluster, &s.node, s.id, ready).await {
                                tracing::warn!(error = %e, "cannot record readiness");
                            }
                        }
                    }
                    Ok(Some(_)) => {
                        let _ = out.send(Err(Error::invalid("message", "only status messages may follow the hello").into())).await;
                        return "protocol error";
                    }
                    Ok(None) => return "stream closed",
                    Err(_) => return "stream broken",
                },
                changed = view.changed() => {
                    if changed.is_err() {
                        return "shutting down";
                    }
                    let v = view.borrow_and_update().clone();
                    // A newer stream of the node, on another replica, holds the session now.
                    let key = (s.cluster.clone(), s.node.clone());
                    if v.sessions_revision >= s.opened_at
                        && v.sessions.get(&key).is_some_and(|id| *id != s.id)
                    {
                        let _ = out.send(Err(Error::Aborted("a newer stream of this node took over".into()).into())).await;
                        return "replaced by a newer stream of the node";
                    }
                    let want = node_view(&v);
                    if want != sent {
                        if out.send(down(changes(v.version, &sent, &want))).await.is_err() {
                            return "stream closed";
                        }
                        sent = want;
                    }
                }
                _ = tokio::time::sleep_until((heard + timeout).into()) => {
                    return "heartbeats stopped";
                }
                _ = tick.tick() => {
                    let ping = pb::AllocatorMessage { kind: Some(Down::Ping(pb::Ping {})) };
                    if out.send(Ok(ping)).await.is_err() {
                        return "stream closed";
                    }
                }
            }
        }
    }
}

/// The announcer service; shares its state with the session tasks it spawns.
pub struct AnnouncerApi(pub Arc<Announcers>);

#[tonic::async_trait]
impl AnnouncerService for AnnouncerApi {
    type AnnounceStream = Pin<Box<dyn Stream<Item = Result<pb::AllocatorMessage, Status>> + Send>>;

    async fn announce(
        &self,
        req: Request<Streaming<pb::AnnouncerMessage>>,
    ) -> Result<Response<Self::AnnounceStream>, Status> {
        // A node's certificate opens that node's stream and no other.
        let (cluster, node) = match convert::principal(&req)? {
            Principal::Node { cluster, node } => (cluster.clone(), node.clone()),
            other => {
                return Err(Error::PermissionDenied(format!(
                    "{other} is not a node: only a node's own identity opens its stream"
                ))
                .into());
            }
        };
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::from(Error::DeadlineExceeded("no hello within 10 s".into())))??;
        let Some(pb::AnnouncerMessage {
            kind: Some(Up::Hello(hello)),
        }) = first
        else {
            return Err(Error::invalid("message", "the first message must be a hello").into());
        };
        validate_name("hello.cluster", &hello.cluster)?;
        validate_name("hello.node", &hello.node)?;
        if (hello.cluster.as_str(), hello.node.as_str()) != (cluster.as_str(), node.as_str()) {
            return Err(Error::PermissionDenied(format!(
                "cluster/{cluster}/node/{node} may not announce as node {:?} of cluster {:?}",
                hello.node, hello.cluster
            ))
            .into());
        }
        if !hello.capabilities.iter().any(|c| c == "l2" || c == "bgp") {
            return Err(Error::invalid(
                "hello.capabilities",
                "this allocator serves layer-2 (\"l2\") and BGP (\"bgp\") announcers",
            )
            .into());
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(Arc::clone(&self.0).serve(hello, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
