//! The adapter's loops: MetalLB's configuration objects and the cluster's nodes go to the
//! allocator as they change; every Service of type LoadBalancer gets its addresses written into
//! its status (kube-runtime's controller, re-run for all Services when the configuration
//! changes); the endpoints of each Service are reported for the layer-2 decision; and leases of
//! Services that are gone are released — only from complete lists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::Instrument;

use ferrolb_common::process::Critical;
use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;
use ferrolb_proto::v1::ipam_service_client::IpamServiceClient;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Mutex, Notify, RwLock, mpsc};

use crate::allocator::{self, Allocator, Error};
use crate::index::{self, ServiceKey, SliceIndex};
use crate::service::{self, ALLOCATED_FROM_POOL, Decision, Event};
use ferrolb_common::transport::{self, CallerHeader, ClientSecurity};

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

/// The field managers ferrolb writes under, one per writer, so that each owns its fields beside
/// other controllers and GitOps tools (and a writer's apply never drops another's fields).
pub(crate) mod manager {
    /// A Service's status and ferrolb's annotation on it.
    pub const SERVICE: &str = "ferrolb";
    /// Configuration objects' `Valid` condition.
    pub const CONDITIONS: &str = "ferrolb-conditions";
    /// IPAddressPools' address counts.
    pub const POOL_USAGE: &str = "ferrolb-pool-usage";
    /// ServiceL2Status and ServiceBGPStatus objects.
    pub const ANNOUNCEMENTS: &str = "ferrolb-announcements";
}

/// Server-side apply as `manager`, taking over fields another manager set (MetalLB's, after a
/// migration).
pub(crate) fn apply_as(manager: &str) -> PatchParams {
    PatchParams::apply(manager).force()
}

/// The apply configuration of a `K` named `name`: its type, its name and namespace, and `fields`.
pub(crate) fn apply_config<K: Resource<DynamicType = ()>>(
    name: &str,
    namespace: &str,
    mut fields: serde_json::Value,
) -> serde_json::Value {
    fields["apiVersion"] = json!(K::api_version(&()));
    fields["kind"] = json!(K::kind(&()));
    fields["metadata"]["name"] = json!(name);
    fields["metadata"]["namespace"] = json!(namespace);
    fields
}

/// What the reconcilers share.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) settings: Settings,
    pub(crate) allocator: Arc<dyn Allocator>,
    pub(crate) namespaces: Store<Namespace>,
    /// Every Service's EndpointSlices, by Service.
    pub(crate) slices: RwLock<SliceIndex>,
    pub(crate) nodes: Store<Node>,
    /// The endpoints last reported per Service (namespace, name).
    pub(crate) reported: Mutex<BTreeMap<ServiceKey, pb::ServiceEndpoints>>,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

/// Runs the adapter until one of its loops ends or panics (they should not): then it returns
/// why, and the process exits non-zero to be restarted.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(), String> {
    let allocator = Arc::new(grpc_allocator(&settings)?);

    let namespaces = reflect(
        Api::<Namespace>::all(client.clone()),
        Arc::new(Notify::new()),
    );
    let node_changes = Arc::new(Notify::new());
    let nodes = reflect(Api::<Node>::all(client.clone()), Arc::clone(&node_changes));

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
        allocator,
        namespaces,
        slices: RwLock::default(),
        nodes,
        reported: Mutex::default(),
        recorder,
        metrics,
    });

    // Configuration and nodes: every change is pushed, then every Service is looked at again.
    let (reprocess_tx, reprocess_rx) = mpsc::channel::<()>(16);
    let (configured_tx, mut configured) = tokio::sync::watch::channel(false);
    // An adapter that lost one of these loops must stop, not go on half alive.
    let critical = Critical::new();
    critical.spawn(
        "the configuration sync",
        crate::config::sync(Arc::clone(&ctx), reprocess_tx.clone(), configured_tx),
    );
    critical.spawn(
        "the node sync",
        crate::nodes::sync(Arc::clone(&ctx), node_changes),
    );
    critical.spawn("the status sync", crate::status::sync(Arc::clone(&ctx)));

    // Services that already show addresses claim them — once the pools are in place — before
    // any other Service is served, so that a restart (or the move from MetalLB) never hands one
    // of them to somebody else.
    tokio::select! {
        done = configured.wait_for(|done| *done) => {
            if done.is_err() {
                // The configuration sync is gone; its watcher says how.
                return Err(format!("stopping: {}", critical.failed().await));
            }
        }
        why = critical.failed() => return Err(format!("stopping: {why}")),
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
    let deleted = deletions(&client);
    critical.spawn(
        "the lease collector",
        collect_garbage(Arc::clone(&ctx), service_store, deleted),
    );
    let services = controller
        .reconcile_on(index_slices(client, Arc::clone(&ctx), &critical))
        .reconcile_all_on(tokio_stream::wrappers::ReceiverStream::new(reprocess_rx))
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        });
    tokio::select! {
        () = services => Err("the Service controller ended".into()),
        why = critical.failed() => Err(format!("stopping: {why}")),
    }
}

/// The allocator's gRPC client, as this cluster's adapter.
fn grpc_allocator(settings: &Settings) -> Result<allocator::Grpc, String> {
    let caller = CallerHeader::new(&settings.security, &format!("cluster/{}", settings.cluster))?;
    let endpoint = transport::endpoint(&settings.allocator, &settings.security)
        .map_err(|e| format!("--allocator {e}"))?
        .connect_timeout(Duration::from_secs(2));
    let channel = transport::connect_lazy(endpoint, &settings.security);
    Ok(allocator::Grpc {
        ipam: IpamServiceClient::with_interceptor(channel.clone(), caller.clone()),
        cluster: ClusterStateServiceClient::with_interceptor(channel, caller),
    })
}

/// Wakes on every deleted Service.
fn deletions(client: &Client) -> Arc<Notify> {
    let deleted = Arc::new(Notify::new());
    let wake = Arc::clone(&deleted);
    let services = Api::<Service>::all(client.clone());
    tokio::spawn(
        watcher(services, watcher::Config::default())
            .default_backoff()
            .for_each(move |ev| {
                if let Ok(watcher::Event::Delete(_)) = ev {
                    wake.notify_one();
                }
                async {}
            }),
    );
    deleted
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

/// Services reconciled at once: below the allocator's calls in flight per identity (64 by
/// default), so that configuration and node sync calls still fit beside a burst.
const RECONCILE_CONCURRENCY: u16 = 48;

fn error_policy(svc: Arc<Service>, e: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failed(e.kind());
    tracing::warn!(service = svc.name_any(), error = %e, "Service not settled; trying again");
    Action::requeue(e.retry_after())
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

/// Keeps the slice index from the EndpointSlice watch and asks for the Services whose endpoints
/// changed to be reconciled (after the index has the change, so that the reconcile sees it).
fn index_slices(
    client: Client,
    ctx: Arc<Ctx>,
    critical: &Critical,
) -> impl futures::Stream<Item = ObjectRef<Service>> + Send + 'static {
    let (tx, rx) = mpsc::channel(1024);
    critical.spawn("the EndpointSlice index", async move {
        let mut events = std::pin::pin!(
            watcher(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default()
            )
            .default_backoff()
        );
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(error = %e, "EndpointSlice watch");
                    continue;
                }
            };
            let touched = ctx.slices.write().await.handle(ev);
            for (ns, name) in touched {
                if tx.send(ObjectRef::new(&name).within(&ns)).await.is_err() {
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(service = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()))
)]
async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.metrics.reconciled();
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
            let e = ctx.slices.read().await.endpoints(&ns, &svc.name_any());
            let report = index::report(&ctx.settings.cluster, &svc, e);
            // What this process last reported is not reported again (a Service is reconciled
            // again after every status write).
            let key = (report.namespace.clone(), report.name.clone());
            if ctx.reported.lock().await.get(&key) != Some(&report) {
                ctx.allocator.set_endpoints(report.clone()).await?;
                ctx.reported.lock().await.insert(key, report);
            }
            Ok(resync)
        }
    }
}

async fn allocate(ctx: &Ctx, svc: &Service, req: pb::AllocateRequest) -> Result<(), Error> {
    let current = service::current_ips(svc);
    // A Service that already shows addresses (ferrolb's, or MetalLB's before a migration)
    // claims exactly those first.
    let who = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    let mut answer = None;
    if req.requested_ips.is_empty() && !current.is_empty() {
        let claim = pb::AllocateRequest {
            requested_ips: current.clone(),
            ..req.clone()
        };
        answer = match try_allocate(ctx, claim).await? {
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
        None => match try_allocate(ctx, req).await? {
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
    let (name, ns) = (svc.name_any(), svc.namespace().unwrap_or_default());
    let pp = apply_as(manager::SERVICE);
    if current != lease.ips {
        let status = json!({"status": {"loadBalancer": service::ingress(&lease.ips)}});
        let status = apply_config::<Service>(&name, &ns, status);
        let span = tracing::info_span!("write status", address = ?lease.ips);
        api.patch_status(&name, &pp, &Patch::Apply(&status))
            .instrument(span)
            .await?;
        // A Service's first address: how long after its creation it was shown.
        if current.is_empty()
            && let Some(created) = svc.metadata.creation_timestamp.as_ref()
        {
            let age = SystemTime::now()
                .duration_since(SystemTime::from(created.0))
                .unwrap_or_default();
            ctx.metrics.service_addressed(age);
        }
    }
    let annotated = svc.annotations().get(ALLOCATED_FROM_POOL);
    if annotated != Some(&lease.pool) {
        let meta = json!({"metadata": {"annotations": {ALLOCATED_FROM_POOL: lease.pool}}});
        let meta = apply_config::<Service>(&name, &ns, meta);
        api.patch(&name, &pp, &Patch::Apply(&meta)).await?;
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
    ctx: &Ctx,
    req: pb::AllocateRequest,
) -> Result<Result<pb::AllocateResponse, String>, Error> {
    match ctx.allocator.allocate(req).await {
        Ok(r) => Ok(Ok(r)),
        Err(Error::Refused { message, .. }) => Ok(Err(message)),
        Err(e) => Err(e),
    }
}

/// Releases an owner's lease and forgets its endpoints; says whether there was a lease.
async fn release_owner(ctx: &Ctx, o: pb::Owner) -> Result<bool, Error> {
    ctx.reported
        .lock()
        .await
        .remove(&(o.namespace.clone(), o.name.clone()));
    let released = ctx.allocator.release(o.clone()).await?;
    let forgotten = ctx
        .allocator
        .delete_endpoints(&o.cluster, &o.namespace, &o.name)
        .await;
    if let Err(e) = forgotten {
        tracing::debug!(error = %e, "cannot forget endpoints");
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
    // Removing fields: a merge patch of nulls, as ferrolb's manager.
    let pp = PatchParams {
        field_manager: Some(manager::SERVICE.into()),
        ..PatchParams::default()
    };
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
pub(crate) fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    tokio::spawn(
        reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        )
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
pub(crate) async fn ready<K>(store: &Store<K>) -> bool
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
    for lease in ctx.allocator.leases(&ctx.settings.cluster).await? {
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

#[cfg(test)]
mod tests;
