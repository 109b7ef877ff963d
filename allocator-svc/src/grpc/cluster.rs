//! `ferrolb.v1.ClusterStateService` and `ferrolb.v1.AnnouncerService`.

use std::collections::BTreeSet;
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

use super::convert::{self, caller};
use crate::assignments::{NodeAssignments, View};
use crate::cluster::{Endpoints, L2Ad, NodeInfo, Preferred};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pool::{Caller, validate_name};
use crate::store::SqlStore;

/// May `caller` act for `cluster`?
fn for_cluster(caller: &Caller, cluster: &str) -> Result<(), Status> {
    validate_name("cluster", cluster).map_err(Status::from)?;
    match caller {
        Caller::Admin => Ok(()),
        Caller::Cluster(c) if c == cluster => Ok(()),
        other => Err(Status::permission_denied(format!(
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
}

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
        }
    }
}

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The message that brings an announcer from `had` to `want`.
fn changes(version: u64, had: &NodeAssignments, want: &NodeAssignments) -> pb::Assignments {
    pb::Assignments {
        version,
        snapshot: false,
        set: want
            .iter()
            .filter(|(ip, ifs)| had.get(ip) != Some(ifs))
            .map(|(ip, ifs)| pb::L2Assignment {
                ip: ip.to_string(),
                interfaces: ifs.clone(),
            })
            .collect(),
        unset: had
            .keys()
            .filter(|ip| !want.contains_key(ip))
            .map(IpAddr::to_string)
            .collect(),
        heartbeat_interval_ms: 0,
        allocator_timeout_ms: 0,
    }
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
}

impl Announcers {
    /// Serves one announcer until its stream ends or its heartbeats stop.
    async fn serve(
        self: Arc<Self>,
        hello: pb::Hello,
        mut inbound: Streaming<pb::AnnouncerMessage>,
        out: Outbound,
    ) {
        let s = Session {
            cluster: hello.cluster.clone(),
            node: hello.node.clone(),
            // Tells this stream's session from a newer one of the same node.
            id: (crate::cluster::random_u64() >> 1) as i64,
        };
        let ttl = self.liveness.session_ttl.as_millis() as i64;
        if let Err(e) = self
            .store
            .open_session(&s.cluster, &s.node, s.id, &self.replica, ttl)
            .await
        {
            let _ = out.send(Err(Status::from(e))).await;
            return;
        }
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
        let why = self.run(&s, &hello, &mut inbound, &out).await;
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
        let mut sent = current.node(&s.cluster, &s.node);
        let announcing: BTreeSet<IpAddr> = hello
            .announcing
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        // An announcer that has been in touch before (any replica) and announces exactly what it
        // should resumes where it is; versions move with every change anywhere, so they are not
        // compared.
        let in_step = hello.version != 0 && announcing.iter().eq(sent.keys());
        let first = if in_step {
            changes(current.version, &sent, &sent)
        } else {
            pb::Assignments {
                snapshot: true,
                ..changes(current.version, &NodeAssignments::new(), &sent)
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
                        let _ = out.send(Err(Status::invalid_argument("only status messages may follow the hello"))).await;
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
                    let want = v.node(&s.cluster, &s.node);
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
        let caller = caller(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(pb::AnnouncerMessage {
            kind: Some(Up::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        for_cluster(&caller, &hello.cluster)?;
        validate_name("hello.node", &hello.node)?;
        if !hello.capabilities.iter().any(|c| c == "l2") {
            return Err(Status::invalid_argument(
                "hello.capabilities: this allocator serves layer-2 announcers (\"l2\")",
            ));
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(Arc::clone(&self.0).serve(hello, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
