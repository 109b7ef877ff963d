//! The adapter's loops: MetalLB's configuration objects and the cluster's nodes go to the
//! allocator as they change; every Service of type LoadBalancer gets its addresses written into
//! its status (kube-runtime's controller, re-run for all Services when the configuration
//! changes); the endpoints of each Service are reported for the layer-2 decision; and leases of
//! Services that are gone are released — only from complete lists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;
use ferrolb_proto::v1::ipam_service_client::IpamServiceClient;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::bgp;
use crate::crd::{self, IPAddressPool, L2Advertisement};
use crate::service::{self, ALLOCATED_FROM_POOL, Decision, Event};
use crate::validate;
use ferrolb_common::transport::{self, ClientSecurity};

/// What the adapter needs to know at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: String,
    /// Where MetalLB's configuration objects live.
    pub namespace: String,
    pub lb_class: Option<String>,
    pub allocator: String,
    pub security: ClientSecurity,
    /// How often every Service and the lease list are looked at again regardless.
    pub resync: Duration,
}

/// Names the caller in the development plaintext mode; with TLS the certificate does.
#[derive(Clone)]
struct CallerHeader(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for CallerHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(h) = &self.0 {
            req.metadata_mut().insert("x-ferrolb-caller", h.clone());
        }
        Ok(req)
    }
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, CallerHeader>;

/// What the reconcilers share.
struct Ctx {
    client: Client,
    settings: Settings,
    ipam: IpamServiceClient<Intercepted>,
    cluster: ClusterStateServiceClient<Intercepted>,
    namespaces: Store<Namespace>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    /// The endpoints last reported per Service (namespace, name).
    reported: std::sync::Mutex<BTreeMap<(String, String), pb::ServiceEndpoints>>,
    recorder: Recorder,
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("allocator: {0}")]
    Allocator(String),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

fn grpc(s: Status) -> Error {
    Error::Allocator(format!("{:?}: {}", s.code(), s.message()))
}

/// Runs the adapter until a loop ends (it should not).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(), String> {
    let caller = CallerHeader(match settings.security {
        ClientSecurity::DevPlaintext => Some(
            format!("cluster/{}", settings.cluster)
                .parse()
                .map_err(|_| {
                    format!("cluster {:?} is not a valid header value", settings.cluster)
                })?,
        ),
        ClientSecurity::Mtls(_) => None,
    });
    let endpoint = transport::endpoint(&settings.allocator, &settings.security)
        .map_err(|e| format!("--allocator {e}"))?
        .connect_timeout(Duration::from_secs(2));
    let channel = transport::connect_lazy(endpoint, &settings.security);
    let ipam = IpamServiceClient::with_interceptor(channel.clone(), caller.clone());
    let cluster = ClusterStateServiceClient::with_interceptor(channel, caller);

    let namespaces = reflect(
        Api::<Namespace>::all(client.clone()),
        Arc::new(Notify::new()),
    );
    let node_changes = Arc::new(Notify::new());
    let nodes = reflect(Api::<Node>::all(client.clone()), Arc::clone(&node_changes));
    let slices = reflect(
        Api::<EndpointSlice>::all(client.clone()),
        Arc::new(Notify::new()),
    );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ferrolb-k8s-adapter".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        settings: settings.clone(),
        ipam,
        cluster,
        namespaces,
        slices,
        nodes,
        reported: std::sync::Mutex::default(),
        recorder,
        metrics,
    });

    // Configuration and nodes: every change is pushed, then every Service is looked at again.
    let (reprocess_tx, reprocess_rx) = mpsc::channel::<()>(16);
    let (configured_tx, mut configured) = tokio::sync::watch::channel(false);
    tokio::spawn(sync_config(
        Arc::clone(&ctx),
        reprocess_tx.clone(),
        configured_tx,
    ));
    tokio::spawn(sync_nodes(Arc::clone(&ctx), node_changes));
    tokio::spawn(sync_announcement_status(Arc::clone(&ctx)));

    // Services that already show addresses claim them — once the pools are in place — before
    // any other Service is served, so that a restart (or the move from MetalLB) never hands one
    // of them to somebody else.
    if configured.wait_for(|done| *done).await.is_err() {
        return Err("the configuration loop ended".into());
    }
    claim_existing(&ctx).await;

    let services: Api<Service> = Api::all(client.clone());
    // A bounded number of Services at a time: a burst of thousands queues here instead of
    // overloading the allocator.
    let controller = Controller::new(services, watcher::Config::default()).with_config(
        kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
    );
    let service_store = controller.store();
    // A deleted Service wakes the collector at once; it also runs periodically.
    let deleted = Arc::new(Notify::new());
    let wake = Arc::clone(&deleted);
    tokio::spawn(
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .for_each(move |ev| {
            if let Ok(watcher::Event::Delete(_)) = ev {
                wake.notify_one();
            }
            async {}
        }),
    );
    tokio::spawn(collect_garbage(Arc::clone(&ctx), service_store, deleted));
    controller
        .watches(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
            |slice| {
                let ns = slice.namespace()?;
                let svc = slice.labels().get("kubernetes.io/service-name")?.clone();
                Some(ObjectRef::new(&svc).within(&ns))
            },
        )
        .reconcile_all_on(tokio_stream::wrappers::ReceiverStream::new(reprocess_rx))
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    Ok(())
}

/// What a Service asks of the allocator, with its namespace's labels.
fn decide(ctx: &Ctx, svc: &Service) -> Decision {
    let ns = svc.namespace().unwrap_or_default();
    let ns_labels = ctx
        .namespaces
        .get(&ObjectRef::new(&ns))
        .map(|n| n.labels().clone())
        .unwrap_or_default();
    service::decide(
        svc,
        &ctx.settings.cluster,
        ctx.settings.lb_class.as_deref(),
        &ns_labels,
    )
}

/// Lists every Service (until a list succeeds) and claims the addresses they show.
async fn claim_existing(ctx: &Ctx) {
    let api: Api<Service> = Api::all(ctx.client.clone());
    let list = loop {
        match api.list(&Default::default()).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list Services; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    ready(&ctx.namespaces).await;
    let mut claimed = 0;
    for svc in list
        .items
        .iter()
        .filter(|s| !service::current_ips(s).is_empty())
    {
        if let Decision::Allocate(req, _) = decide(ctx, svc) {
            match allocate(ctx, svc, *req).await {
                Ok(()) => claimed += 1,
                Err(e) => tracing::warn!(service = svc.name_any(), error = %e, "cannot claim"),
            }
        }
    }
    tracing::info!(services = claimed, "addresses already shown are claimed");
}

/// Services reconciled at once.
const RECONCILE_CONCURRENCY: u16 = 64;

fn error_policy(_: Arc<Service>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "Service not settled; trying again");
    Action::requeue(Duration::from_secs(1))
}

async fn record(ctx: &Ctx, svc: &Service, e: &Event) {
    let ev = KubeEvent {
        type_: if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: e.reason.to_string(),
        note: Some(e.message.clone()),
        action: "Allocate".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&ev, &svc.object_ref(&())).await {
        tracing::debug!(error = %err, "cannot record an event");
    }
}

fn owner(ctx: &Ctx, svc: &Service) -> pb::Owner {
    pb::Owner {
        cluster: ctx.settings.cluster.clone(),
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        ..pb::Owner::default()
    }
}

/// Nodes with a serving endpoint of the Service, and whether any endpoint serves
/// (`ready` unset or true, or `serving` true: terminating but serving counts).
fn endpoints(ctx: &Ctx, svc: &Service) -> (BTreeSet<String>, bool) {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let mut nodes = BTreeSet::new();
    let mut any = false;
    for slice in ctx.slices.state() {
        if slice.namespace().as_deref() != Some(ns.as_str())
            || slice.labels().get("kubernetes.io/service-name") != Some(&name)
        {
            continue;
        }
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            let serving = c.is_none_or(|c| c.ready.unwrap_or(true) || c.serving == Some(true));
            if serving {
                any = true;
                if let Some(n) = &ep.node_name {
                    nodes.insert(n.clone());
                }
            }
        }
    }
    (nodes, any)
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let decision = decide(&ctx, &svc);
    let resync = Action::requeue(ctx.settings.resync);
    match decision {
        Decision::NotOurs => Ok(Action::await_change()),
        Decision::Release => {
            release(&ctx, &svc).await?;
            Ok(resync)
        }
        Decision::Invalid(e) => {
            record(&ctx, &svc, &e).await;
            Ok(resync)
        }
        Decision::Allocate(req, events) => {
            for e in &events {
                record(&ctx, &svc, e).await;
            }
            allocate(&ctx, &svc, *req).await?;
            let (nodes, any) = endpoints(&ctx, &svc);
            let local = svc
                .spec
                .as_ref()
                .and_then(|s| s.external_traffic_policy.as_deref())
                == Some("Local");
            let report = pb::ServiceEndpoints {
                cluster: ctx.settings.cluster.clone(),
                namespace: ns,
                name: svc.name_any(),
                serving_nodes: nodes.into_iter().collect(),
                any_serving: any,
                traffic_policy_local: local,
            };
            // What this process last reported is not reported again (a Service is reconciled
            // again after every status write).
            let key = (report.namespace.clone(), report.name.clone());
            let known = ctx
                .reported
                .lock()
                .is_ok_and(|m| m.get(&key) == Some(&report));
            if !known {
                ctx.cluster
                    .clone()
                    .set_endpoints(report.clone())
                    .await
                    .map_err(grpc)?;
                if let Ok(mut m) = ctx.reported.lock() {
                    m.insert(key, report);
                }
            }
            Ok(resync)
        }
    }
}

async fn allocate(ctx: &Ctx, svc: &Service, req: pb::AllocateRequest) -> Result<(), Error> {
    let current = service::current_ips(svc);
    let mut ipam = ctx.ipam.clone();
    // A Service that already shows addresses (ferrolb's, or MetalLB's before a migration)
    // claims exactly those first.
    let who = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    let mut answer = None;
    if req.requested_ips.is_empty() && !current.is_empty() {
        let claim = pb::AllocateRequest {
            requested_ips: current.clone(),
            ..req.clone()
        };
        answer = match try_allocate(&mut ipam, claim).await? {
            Ok(a) => Some(a),
            Err(why) => {
                let message = format!(
                    "current IP for \"{who}\" not allowed by config, will attempt for new IP assignment: {why}"
                );
                let e = Event {
                    warning: false,
                    reason: "ClearAssignment",
                    message,
                };
                record(ctx, svc, &e).await;
                None
            }
        };
    }
    let answer = match answer {
        Some(a) => a,
        None => match try_allocate(&mut ipam, req).await? {
            Ok(a) => a,
            Err(why) => {
                let message = format!("Failed to allocate IP for \"{who}\": {why}");
                let e = Event {
                    warning: true,
                    reason: "AllocationFailed",
                    message,
                };
                record(ctx, svc, &e).await;
                return Ok(());
            }
        },
    };
    let lease = answer.lease.unwrap_or_default();
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let pp = PatchParams::default();
    if current != lease.ips {
        let status = json!({"status": {"loadBalancer": service::ingress(&lease.ips)}});
        api.patch_status(&svc.name_any(), &pp, &Patch::Merge(&status))
            .await?;
    }
    let annotated = svc.annotations().get(ALLOCATED_FROM_POOL);
    if annotated != Some(&lease.pool) {
        let meta = json!({"metadata": {"annotations": {ALLOCATED_FROM_POOL: lease.pool}}});
        api.patch(&svc.name_any(), &pp, &Patch::Merge(&meta))
            .await?;
    }
    if answer.created || current != lease.ips {
        let e = Event {
            warning: false,
            reason: "IPAllocated",
            message: format!("Assigned IP {:?}", lease.ips),
        };
        record(ctx, svc, &e).await;
    }
    Ok(())
}

/// An allocation: the answer, or why the allocator refused (the outer error: it is unreachable).
async fn try_allocate(
    ipam: &mut IpamServiceClient<Intercepted>,
    req: pb::AllocateRequest,
) -> Result<Result<pb::AllocateResponse, String>, Error> {
    match ipam.allocate(req).await {
        Ok(r) => Ok(Ok(r.into_inner())),
        Err(s) if s.code() == Code::Unavailable => Err(grpc(s)),
        Err(s) => Ok(Err(s.message().to_string())),
    }
}

/// Releases an owner's lease and forgets its endpoints; says whether there was a lease.
async fn release_owner(ctx: &Ctx, o: pb::Owner) -> Result<bool, Error> {
    if let Ok(mut m) = ctx.reported.lock() {
        m.remove(&(o.namespace.clone(), o.name.clone()));
    }
    let released = match ctx
        .ipam
        .clone()
        .release(pb::ReleaseRequest {
            owner: Some(o.clone()),
        })
        .await
    {
        Ok(_) => true,
        Err(s) if s.code() == Code::NotFound => false,
        Err(s) => return Err(grpc(s)),
    };
    let forgotten = ctx
        .cluster
        .clone()
        .delete_endpoints(pb::DeleteEndpointsRequest {
            cluster: o.cluster,
            namespace: o.namespace,
            name: o.name,
        })
        .await;
    if let Err(s) = forgotten {
        tracing::debug!(error = s.message(), "cannot forget endpoints");
    }
    Ok(released)
}

/// Gives the Service's addresses back and clears what ferrolb wrote on it.
async fn release(ctx: &Ctx, svc: &Service) -> Result<(), Error> {
    if release_owner(ctx, owner(ctx, svc)).await? {
        tracing::info!(service = svc.name_any(), "released");
    }
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let pp = PatchParams::default();
    if !service::current_ips(svc).is_empty() {
        let status = json!({"status": {"loadBalancer": {"ingress": null}}});
        api.patch_status(&svc.name_any(), &pp, &Patch::Merge(&status))
            .await?;
    }
    if svc.annotations().contains_key(ALLOCATED_FROM_POOL) {
        let meta = json!({"metadata": {"annotations": {ALLOCATED_FROM_POOL: null}}});
        api.patch(&svc.name_any(), &pp, &Patch::Merge(&meta))
            .await?;
    }
    Ok(())
}

/// A store of every object the API lists, kept current in the background; `changed` wakes on
/// every change.
fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    tokio::spawn(
        reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .touched_objects()
            .for_each(move |_| {
                changed.notify_one();
                async {}
            }),
    );
    store
}

/// Waits until a store holds a complete list; false if its writer is gone. A clone of a store is
/// not always woken when the store becomes ready, so it looks again now and then.
async fn ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
            Ok(r) => return r.is_ok(),
            Err(_) => continue,
        }
    }
}

/// Releases the leases of this cluster's Services that no longer exist, from a complete list
/// only: the Service store is ready only after a full list, and a failed lease listing releases
/// nothing.
async fn collect_garbage(ctx: Arc<Ctx>, services: Store<Service>, deleted: Arc<Notify>) {
    if !ready(&services).await {
        return;
    }
    tracing::debug!("Service list complete: collecting leases of deleted Services");
    loop {
        if let Err(e) = collect_once(&ctx, &services).await {
            tracing::warn!(error = %e, "cannot look for leases of deleted Services");
        }
        tokio::select! {
            _ = deleted.notified() => {
                // The controller's own store sees the deletion a moment later.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = tokio::time::sleep(ctx.settings.resync.min(Duration::from_secs(30))) => {}
        }
    }
}

async fn collect_once(ctx: &Ctx, services: &Store<Service>) -> Result<(), Error> {
    let mut token = String::new();
    let mut leases = vec![];
    loop {
        let page = ctx
            .ipam
            .clone()
            .list_leases(pb::ListLeasesRequest {
                cluster: ctx.settings.cluster.clone(),
                page_size: 1000,
                page_token: token,
                ..pb::ListLeasesRequest::default()
            })
            .await
            .map_err(grpc)?
            .into_inner();
        leases.extend(page.leases);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for lease in leases {
        let Some(o) = lease.owner else { continue };
        let exists = services
            .get(&ObjectRef::new(&o.name).within(&o.namespace))
            .is_some();
        if !exists {
            tracing::info!(
                namespace = o.namespace,
                name = o.name,
                "Service is gone: releasing its lease"
            );
            release_owner(ctx, o).await?;
        }
    }
    Ok(())
}

fn pool_to_pb(p: &IPAddressPool, cluster: &str) -> pb::Pool {
    let excluded = p
        .annotations()
        .get("ferrolb.io/excluded-addresses")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    pb::Pool {
        name: p.name_any(),
        addresses: p.spec.addresses.clone(),
        auto_assign: p.spec.auto_assign,
        avoid_buggy_ips: p.spec.avoid_buggy_ips.unwrap_or(false),
        service_allocation: p
            .spec
            .service_allocation
            .as_ref()
            .map(|sa| pb::ServiceAllocation {
                priority: sa.priority.unwrap_or(0),
                namespaces: sa.namespaces.clone(),
                namespace_selectors: selectors(&sa.namespace_selectors),
                service_selectors: selectors(&sa.service_selectors),
            }),
        excluded_addresses: excluded,
        clusters: vec![cluster.to_string()],
        clients: vec![],
        declared_by: String::new(),
        labels: p.labels().clone().into_iter().collect(),
    }
}

pub(crate) fn selectors(
    list: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector],
) -> Vec<pb::LabelSelector> {
    list.iter().map(selector).collect()
}

fn selector(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> pb::LabelSelector {
    pb::LabelSelector {
        match_labels: s
            .match_labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        match_expressions: s
            .match_expressions
            .iter()
            .flatten()
            .map(|e| pb::LabelSelectorRequirement {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

fn l2_to_pb(a: &L2Advertisement, cluster: &str) -> pb::L2Advertisement {
    pb::L2Advertisement {
        cluster: cluster.to_string(),
        name: a.name_any(),
        ip_address_pools: a.spec.ip_address_pools.clone(),
        ip_address_pool_selectors: selectors(&a.spec.ip_address_pool_selectors),
        node_selectors: selectors(&a.spec.node_selectors),
        interfaces: a.spec.interfaces.clone(),
        service_selectors: selectors(&a.spec.service_selectors),
        preferred_node_selectors: a
            .spec
            .preferred_node_selectors
            .iter()
            .map(|p| pb::PreferredNode {
                weight: u32::try_from(p.weight).unwrap_or(0),
                preference: Some(selector(&p.preference)),
            })
            .collect(),
    }
}

/// Watches MetalLB's configuration objects in the namespace; on every change applies the valid
/// ones, reports the rejected ones, removes what was deleted, and asks for every Service to be
/// looked at again.
async fn sync_config(
    ctx: Arc<Ctx>,
    reprocess: mpsc::Sender<()>,
    configured: tokio::sync::watch::Sender<bool>,
) {
    let ns = ctx.settings.namespace.clone();
    let changed = Arc::new(Notify::new());
    let pools = reflect(
        Api::<IPAddressPool>::namespaced(ctx.client.clone(), &ns),
        Arc::clone(&changed),
    );
    let l2 = reflect(
        Api::<L2Advertisement>::namespaced(ctx.client.clone(), &ns),
        Arc::clone(&changed),
    );
    let bgp = reflect(
        Api::<crd::BGPAdvertisement>::namespaced(ctx.client.clone(), &ns),
        Arc::clone(&changed),
    );
    let peers = reflect(
        Api::<crd::v1beta2::BGPPeer>::namespaced(ctx.client.clone(), &ns),
        Arc::clone(&changed),
    );
    let communities = reflect(
        Api::<crd::Community>::namespaced(ctx.client.clone(), &ns),
        Arc::clone(&changed),
    );
    let bfd = reflect(
        Api::<crd::BFDProfile>::namespaced(ctx.client.clone(), &ns),
        Arc::clone(&changed),
    );
    // BGPPeers' passwordSecrets are read by name, one by one: the namespace's other Secrets
    // never reach the adapter, and its RBAC grants `get` on Secrets, not `list`.
    let secrets_api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let complete = ready(&pools).await
        && ready(&l2).await
        && ready(&bgp).await
        && ready(&peers).await
        && ready(&communities).await
        && ready(&bfd).await;
    if !complete {
        return;
    }
    loop {
        let cfg = validate::Config {
            pools: pools.state().iter().map(|p| (**p).clone()).collect(),
            l2: l2.state().iter().map(|p| (**p).clone()).collect(),
            bgp: bgp.state().iter().map(|p| (**p).clone()).collect(),
            peers: peers.state().iter().map(|p| (**p).clone()).collect(),
            communities: communities.state().iter().map(|p| (**p).clone()).collect(),
            bfd_profiles: bfd.state().iter().map(|p| (**p).clone()).collect(),
            nodes: ctx
                .nodes
                .state()
                .iter()
                .map(|n| n.labels().clone())
                .collect(),
        };
        let secrets = match named_secrets(&secrets_api, &cfg.peers).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the BGPPeers' Secrets; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let secret = |name: &str| secrets.get(name).cloned();
        if let Err(e) = push_config(&ctx, &cfg, secret).await {
            tracing::warn!(error = %e, "cannot push the configuration; trying again");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        configured.send_replace(true);
        let _ = reprocess.try_send(());
        // Until the next change, keep the pools' usage counts current, and look at the named
        // Secrets again (one created late, or a password rotated, is a change).
        loop {
            pool_status(&ctx, &pools).await;
            tokio::select! {
                _ = changed.notified() => break,
                _ = tokio::time::sleep(POOL_STATUS_INTERVAL) => {}
            }
            match named_secrets(&secrets_api, &cfg.peers).await {
                Ok(now) if versions(&now) != versions(&secrets) => break,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the BGPPeers' Secrets"),
            }
        }
        // Let a burst of changes (a whole file applied) settle into one push.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Secrets the peers name (those that exist), by name.
async fn named_secrets(
    api: &Api<Secret>,
    peers: &[crd::v1beta2::BGPPeer],
) -> Result<BTreeMap<String, Secret>, kube::Error> {
    let names: BTreeSet<&str> = peers
        .iter()
        .filter(|p| p.spec.common.password.is_none())
        .filter_map(|p| p.spec.password_secret.as_ref()?.name.as_deref())
        .filter(|n| !n.is_empty())
        .collect();
    let mut out = BTreeMap::new();
    for name in names {
        if let Some(s) = api.get_opt(name).await? {
            out.insert(name.to_string(), s);
        }
    }
    Ok(out)
}

/// What tells one reading of the Secrets from another.
fn versions(secrets: &BTreeMap<String, Secret>) -> Vec<(&str, Option<&str>)> {
    secrets
        .iter()
        .map(|(n, s)| (n.as_str(), s.metadata.resource_version.as_deref()))
        .collect()
}

/// How often the IPAddressPools' usage counts are refreshed.
const POOL_STATUS_INTERVAL: Duration = Duration::from_secs(3);

/// Writes each pool's assigned and available counts per family (MetalLB's status fields) when
/// they change. Counts beyond i64 (large IPv6 pools) are written as i64::MAX, as MetalLB does.
async fn pool_status(ctx: &Ctx, pools: &Store<IPAddressPool>) {
    let Ok(stats) = ctx
        .ipam
        .clone()
        .get_stats(pb::GetStatsRequest::default())
        .await
    else {
        return;
    };
    let count = |s: &str| {
        s.parse::<u128>()
            .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX))
    };
    let api: Api<IPAddressPool> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    for pool in pools.state() {
        let mut want = crd::IPAddressPoolStatus::default();
        for st in stats
            .get_ref()
            .stats
            .iter()
            .filter(|st| st.pool == pool.name_any())
        {
            if st.family == pb::IpFamily::Ipv6 as i32 {
                want.assigned_ipv6 = count(&st.in_use);
                want.available_ipv6 = count(&st.available);
            } else {
                want.assigned_ipv4 = count(&st.in_use);
                want.available_ipv4 = count(&st.available);
            }
        }
        let have = pool.status.clone().unwrap_or_default();
        let same = (
            have.assigned_ipv4,
            have.assigned_ipv6,
            have.available_ipv4,
            have.available_ipv6,
        ) == (
            want.assigned_ipv4,
            want.assigned_ipv6,
            want.available_ipv4,
            want.available_ipv6,
        );
        if same {
            continue;
        }
        let patch = json!({"status": {
            "assignedIPv4": want.assigned_ipv4, "assignedIPv6": want.assigned_ipv6,
            "availableIPv4": want.available_ipv4, "availableIPv6": want.available_ipv6,
        }});
        if let Err(e) = api
            .patch_status(
                &pool.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::debug!(error = %e, pool = pool.name_any(), "cannot write the pool's counts");
        }
    }
}

async fn push_config(
    ctx: &Ctx,
    cfg: &validate::Config,
    secret: impl Fn(&str) -> Option<Secret>,
) -> Result<(), Error> {
    let cluster = &ctx.settings.cluster;
    let mut rejected = validate::check(cfg, &ctx.settings.namespace);
    let mut ipam = ctx.ipam.clone();
    let mut cs = ctx.cluster.clone();
    // Every object present keeps what it last had at the allocator; only the good ones are
    // (re)applied, and only objects that are gone are removed.
    let present_pools: BTreeSet<String> = cfg.pools.iter().map(|p| p.name_any()).collect();
    for p in &cfg.pools {
        if is_rejected(&rejected, "IPAddressPool", &p.name_any()) {
            continue;
        }
        let r = ipam
            .apply_pool(pb::ApplyPoolRequest {
                pool: Some(pool_to_pb(p, cluster)),
                create_only: false,
            })
            .await;
        applied(r, "IPAddressPool", &p.name_any(), &mut rejected)?;
    }
    let mine = format!("cluster/{cluster}");
    let existing = ipam
        .list_pools(pb::ListPoolsRequest {})
        .await
        .map_err(grpc)?
        .into_inner()
        .pools;
    for p in existing {
        if p.declared_by == mine && !present_pools.contains(&p.name) {
            tracing::info!(pool = p.name, "IPAddressPool deleted");
            ipam.delete_pool(pb::DeletePoolRequest { name: p.name })
                .await
                .map_err(grpc)?;
        }
    }
    let present_ads: BTreeSet<String> = cfg.l2.iter().map(|a| a.name_any()).collect();
    for a in &cfg.l2 {
        if is_rejected(&rejected, "L2Advertisement", &a.name_any()) {
            continue;
        }
        let r = cs.apply_l2_advertisement(l2_to_pb(a, cluster)).await;
        applied(r, "L2Advertisement", &a.name_any(), &mut rejected)?;
    }
    let existing = cs
        .list_l2_advertisements(pb::ListL2AdvertisementsRequest {
            cluster: cluster.clone(),
        })
        .await
        .map_err(grpc)?
        .into_inner()
        .advertisements;
    for a in existing {
        if !present_ads.contains(&a.name) {
            cs.delete_l2_advertisement(pb::DeleteL2AdvertisementRequest {
                cluster: cluster.clone(),
                name: a.name,
            })
            .await
            .map_err(grpc)?;
        }
    }
    push_bgp(ctx, cfg, secret, &mut rejected).await?;
    let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    for r in &rejected {
        *counts.entry(r.kind).or_default() += 1;
    }
    for kind in [
        "IPAddressPool",
        "L2Advertisement",
        "BGPAdvertisement",
        "BGPPeer",
        "Community",
    ] {
        ctx.metrics
            .set_rejected(kind, counts.get(kind).copied().unwrap_or(0));
    }
    for p in &cfg.pools {
        report(ctx, p, &rejected).await;
    }
    for o in &cfg.l2 {
        report(ctx, o, &rejected).await;
    }
    for o in &cfg.bgp {
        report(ctx, o, &rejected).await;
    }
    for o in &cfg.peers {
        report(ctx, o, &rejected).await;
    }
    for o in &cfg.communities {
        report(ctx, o, &rejected).await;
    }
    Ok(())
}

/// Applies the good Communities, BGPPeers and BGPAdvertisements (in that order, so that
/// advertisements find their aliases) and removes from the allocator those that are gone.
async fn push_bgp(
    ctx: &Ctx,
    cfg: &validate::Config,
    secret: impl Fn(&str) -> Option<Secret>,
    rejected: &mut Vec<validate::Rejection>,
) -> Result<(), Error> {
    let cluster = &ctx.settings.cluster;
    let mut cs = ctx.cluster.clone();
    for c in &cfg.communities {
        let name = c.name_any();
        if !is_rejected(rejected, "Community", &name) {
            let r = cs.apply_community(bgp::community_to_pb(c, cluster)).await;
            applied(r, "Community", &name, rejected)?;
        }
    }
    for p in &cfg.peers {
        let name = p.name_any();
        if is_rejected(rejected, "BGPPeer", &name) {
            continue;
        }
        if let Some(r) = bgp::unsupported(p) {
            rejected.push(r);
            continue;
        }
        match bgp::password(p, &ctx.settings.namespace, &secret) {
            Ok(pw) => {
                let r = cs.apply_bgp_peer(bgp::peer_to_pb(p, cluster, pw)).await;
                applied(r, "BGPPeer", &name, rejected)?;
            }
            Err(r) => rejected.push(r),
        }
    }
    for a in &cfg.bgp {
        let name = a.name_any();
        if !is_rejected(rejected, "BGPAdvertisement", &name) {
            let r = cs
                .apply_bgp_advertisement(bgp::advertisement_to_pb(a, cluster))
                .await;
            applied(r, "BGPAdvertisement", &name, rejected)?;
        }
    }
    let existing = cs
        .list_bgp_config(pb::ListBgpConfigRequest {
            cluster: cluster.clone(),
        })
        .await
        .map_err(grpc)?
        .into_inner();
    let gone: [(pb::BgpKind, BTreeSet<String>, BTreeSet<String>); 3] = [
        (
            pb::BgpKind::Advertisement,
            existing
                .advertisements
                .into_iter()
                .map(|a| a.name)
                .collect(),
            cfg.bgp.iter().map(ResourceExt::name_any).collect(),
        ),
        (
            pb::BgpKind::Peer,
            existing.peers.into_iter().map(|p| p.name).collect(),
            cfg.peers.iter().map(ResourceExt::name_any).collect(),
        ),
        (
            pb::BgpKind::Community,
            existing.communities.into_iter().map(|c| c.name).collect(),
            cfg.communities.iter().map(ResourceExt::name_any).collect(),
        ),
    ];
    for (kind, at_allocator, present) in gone {
        for name in at_allocator.difference(&present) {
            tracing::info!(kind = ?kind, name, "BGP object deleted");
            cs.delete_bgp_object(pb::DeleteBgpObjectRequest {
                cluster: cluster.clone(),
                kind: kind as i32,
                name: name.clone(),
            })
            .await
            .map_err(grpc)?;
        }
    }
    Ok(())
}

fn is_rejected(rejected: &[validate::Rejection], kind: &str, name: &str) -> bool {
    rejected.iter().any(|r| r.kind == kind && r.name == name)
}

/// What the allocator said to an object: refused (its message names the field) goes with the
/// rejections; unreachable ends this push.
fn applied<T>(
    r: Result<T, Status>,
    kind: &'static str,
    name: &str,
    rejected: &mut Vec<validate::Rejection>,
) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::Unavailable => Err(grpc(s)),
        Err(s) => {
            rejected.push(refused(kind, name, &s));
            Ok(())
        }
    }
}

/// The allocator refused an object: its message names the field.
fn refused(kind: &'static str, name: &str, s: &Status) -> validate::Rejection {
    validate::Rejection {
        kind,
        name: name.to_string(),
        field: "spec".into(),
        message: s.message().to_string(),
        transient: false,
    }
}

/// Writes an object's `Valid` condition when it changes, with an event when it goes bad. A
/// rejected object keeps what it last had at the allocator.
async fn report<K>(ctx: &Ctx, obj: &K, rejected: &[validate::Rejection])
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let name = obj.name_any();
    let rejection = rejected.iter().find(|r| r.kind == kind && r.name == name);
    let (status, reason, message) = match rejection {
        None => ("True", "Reconciled", String::new()),
        Some(r) if r.transient => ("False", "Pending", r.to_string()),
        Some(r) => ("False", "ConfigurationError", r.to_string()),
    };
    let current = serde_json::to_value(obj).unwrap_or_default();
    let valid = current["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Valid");
    if valid.is_some_and(|c| {
        c["status"] == status && c["reason"] == reason && c["message"] == message.as_str()
    }) {
        return;
    }
    if let Some(r) = rejection {
        tracing::warn!(rejection = %r, "configuration object not used");
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(r.to_string()),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, "cannot record an event");
        }
    }
    let condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "Valid".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: obj.meta().generation,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
    };
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let patch = json!({"status": {"conditions": [condition]}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, object = name, "cannot write the status");
    }
}

/// How often the announcements are read back into ServiceL2Status and ServiceBGPStatus objects.
const ANNOUNCEMENT_STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// The objects ferrolb writes to show where each Service is announced.
trait AnnouncementStatus:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    type Status: PartialEq + serde::Serialize;
    fn current(&self) -> Option<&Self::Status>;
}

impl AnnouncementStatus for crd::ServiceL2Status {
    type Status = crd::ServiceL2StatusStatus;
    fn current(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl AnnouncementStatus for crd::ServiceBGPStatus {
    type Status = crd::ServiceBGPStatusStatus;
    fn current(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

/// Keeps, from the allocator's announcement state and as MetalLB does, one ServiceL2Status per
/// announced Service (its node and interfaces) and one ServiceBGPStatus per Service and
/// advertising node (the BGPPeers it advertises to), each with MetalLB's labels, so that
/// `kubectl get servicel2statuses -A` and `kubectl get servicebgpstatuses -A` work as with
/// MetalLB.
async fn sync_announcement_status(ctx: Arc<Ctx>) {
    let ns = &ctx.settings.namespace;
    let l2_api: Api<crd::ServiceL2Status> = Api::namespaced(ctx.client.clone(), ns);
    let bgp_api: Api<crd::ServiceBGPStatus> = Api::namespaced(ctx.client.clone(), ns);
    let l2 = reflect(l2_api.clone(), Arc::new(Notify::new()));
    let bgp = reflect(bgp_api.clone(), Arc::new(Notify::new()));
    if !(ready(&l2).await && ready(&bgp).await) {
        return;
    }
    let request = || pb::ListAnnouncementsRequest {
        cluster: ctx.settings.cluster.clone(),
    };
    loop {
        tokio::time::sleep(ANNOUNCEMENT_STATUS_INTERVAL).await;
        if let Ok(list) = ctx.cluster.clone().list_announcements(request()).await {
            let want = l2_statuses(&list.into_inner().announcements);
            write_statuses(&ctx, &l2_api, &l2, want).await;
        }
        if let Ok(list) = ctx.cluster.clone().list_bgp_announcements(request()).await {
            let want = bgp_statuses(&list.into_inner().announcements);
            write_statuses(&ctx, &bgp_api, &bgp, want).await;
        }
    }
}

/// The labels MetalLB puts on its status objects.
fn status_labels(node: &str, namespace: &str, name: &str) -> serde_json::Value {
    json!({
        "metallb.io/node": node,
        "metallb.io/service-name": name,
        "metallb.io/service-namespace": namespace,
    })
}

type Wanted<S> = BTreeMap<String, (serde_json::Value, S)>;

fn l2_statuses(list: &[pb::Announcement]) -> Wanted<crd::ServiceL2StatusStatus> {
    let mut want = BTreeMap::new();
    for a in list.iter().filter(|a| !a.node.is_empty()) {
        for svc in &a.services {
            let (ns, name) = svc.split_once('/').unwrap_or(("", svc));
            let status = crd::ServiceL2StatusStatus {
                node: a.node.clone(),
                service_name: name.to_string(),
                service_namespace: ns.to_string(),
                interfaces: a
                    .interfaces
                    .iter()
                    .map(|i| crd::InterfaceInfo { name: i.clone() })
                    .collect(),
            };
            let labels = status_labels(&a.node, ns, name);
            want.insert(status_name("l2", &[ns, name]), (labels, status));
        }
    }
    want
}

/// One per Service and node; a dual-stack Service's two addresses merge their peers.
fn bgp_statuses(list: &[pb::BgpAnnouncement]) -> Wanted<crd::ServiceBGPStatusStatus> {
    let mut want: Wanted<crd::ServiceBGPStatusStatus> = BTreeMap::new();
    for a in list {
        for n in &a.nodes {
            for svc in &a.services {
                let (ns, name) = svc.split_once('/').unwrap_or(("", svc));
                let (_, status) = want
                    .entry(status_name("bgp", &[ns, name, &n.node]))
                    .or_insert_with(|| {
                        let status = crd::ServiceBGPStatusStatus {
                            node: n.node.clone(),
                            service_name: name.to_string(),
                            service_namespace: ns.to_string(),
                            peers: vec![],
                        };
                        (status_labels(&n.node, ns, name), status)
                    });
                status.peers.extend(n.peers.iter().cloned());
                status.peers.sort();
                status.peers.dedup();
            }
        }
    }
    want
}

/// Makes the namespace's objects of kind K exactly `want`: creates, relabels and updates the
/// status of what differs, deletes the rest.
async fn write_statuses<K: AnnouncementStatus>(
    ctx: &Ctx,
    api: &Api<K>,
    existing: &Store<K>,
    want: Wanted<K::Status>,
) {
    let kind = K::kind(&());
    let pp = PatchParams::default();
    for (name, (labels, status)) in &want {
        let current = existing.get(&ObjectRef::new(name).within(&ctx.settings.namespace));
        if current.as_ref().and_then(|c| c.current()) == Some(status) {
            continue;
        }
        if current.is_none() {
            let obj = json!({
                "apiVersion": K::api_version(&()), "kind": kind,
                "metadata": {"name": name, "namespace": ctx.settings.namespace, "labels": labels},
                "spec": {},
            });
            let Ok(obj) = serde_json::from_value::<K>(obj) else {
                continue;
            };
            if let Err(e) = api.create(&Default::default(), &obj).await {
                tracing::debug!(error = %e, name, %kind, "cannot create a status object");
                continue;
            }
        } else {
            let meta = json!({"metadata": {"labels": labels}});
            let _ = api.patch(name, &pp, &Patch::Merge(&meta)).await;
        }
        let patch = json!({"status": status});
        if let Err(e) = api.patch_status(name, &pp, &Patch::Merge(&patch)).await {
            tracing::debug!(error = %e, name, %kind, "cannot write a status object");
        }
    }
    for obj in existing.state() {
        let name = obj.name_any();
        if !want.contains_key(&name) {
            let _ = api.delete(&name, &Default::default()).await;
        }
    }
}

/// A status object's name: the prefix and the parts joined by `-`, cut to fit.
fn status_name(prefix: &str, parts: &[&str]) -> String {
    let full = format!("{prefix}-{}", parts.join("-"));
    full.chars().take(253).collect()
}

/// Reports every node's labels and NetworkUnavailable condition, and removes deleted nodes.
async fn sync_nodes(ctx: Arc<Ctx>, changed: Arc<Notify>) {
    let store = &ctx.nodes;
    if !ready(store).await {
        return;
    }
    let mut sent: BTreeMap<String, pb::Node> = BTreeMap::new();
    loop {
        let mut now = BTreeMap::new();
        for n in store.state() {
            let unavailable = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
                });
            now.insert(
                n.name_any(),
                pb::Node {
                    cluster: ctx.settings.cluster.clone(),
                    name: n.name_any(),
                    labels: n.labels().clone().into_iter().collect(),
                    network_unavailable: unavailable,
                },
            );
        }
        let mut cs = ctx.cluster.clone();
        let mut failed = false;
        for (name, node) in &now {
            if sent.get(name) != Some(node) && cs.apply_node(node.clone()).await.is_err() {
                failed = true;
            }
        }
        for name in sent.keys().filter(|n| !now.contains_key(*n)) {
            let _ = cs
                .delete_node(pb::DeleteNodeRequest {
                    cluster: ctx.settings.cluster.clone(),
                    name: name.clone(),
                })
                .await;
        }
        if failed {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        sent = now;
        changed.notified().await;
    }
}
