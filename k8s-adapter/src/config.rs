//! Configuration sync: MetalLB's configuration objects of the namespace go to the allocator as
//! they change. The MetalLB model ([`ferrolb_metallb`]) judges them first, as `ferrolbctl apply`
//! does; the good ones are applied, the rejected ones keep what they last had and are reported
//! in their `Valid` condition, an event and a metric, and what was deleted is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferrolb_metallb::convert::{self, Message};
use ferrolb_metallb::crd::{self, IPAddressPool, L2Advertisement};
use ferrolb_metallb::{Object, Rejection, kind, validate};
use ferrolb_proto::v1 as pb;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tonic::Status;

use crate::controller::{
    Ctx, Error, apply_as, apply_config, grpc, manager, ready, reflect, retry_soon,
};

/// The stores of every configuration kind.
struct Watched {
    pools: Store<IPAddressPool>,
    l2: Store<L2Advertisement>,
    bgp: Store<crd::BGPAdvertisement>,
    peers: Store<crd::v1beta2::BGPPeer>,
    communities: Store<crd::Community>,
    bfd: Store<crd::BFDProfile>,
}

impl Watched {
    fn new(ctx: &Ctx, changed: &Arc<Notify>) -> Self {
        let ns = &ctx.settings.namespace;
        let c = &ctx.client;
        Watched {
            pools: reflect(Api::namespaced(c.clone(), ns), Arc::clone(changed)),
            l2: reflect(Api::namespaced(c.clone(), ns), Arc::clone(changed)),
            bgp: reflect(Api::namespaced(c.clone(), ns), Arc::clone(changed)),
            peers: reflect(Api::namespaced(c.clone(), ns), Arc::clone(changed)),
            communities: reflect(Api::namespaced(c.clone(), ns), Arc::clone(changed)),
            bfd: reflect(Api::namespaced(c.clone(), ns), Arc::clone(changed)),
        }
    }

    async fn ready(&self) -> bool {
        ready(&self.pools).await
            && ready(&self.l2).await
            && ready(&self.bgp).await
            && ready(&self.peers).await
            && ready(&self.communities).await
            && ready(&self.bfd).await
    }

    /// The objects as the MetalLB model sees them.
    fn config(
        &self,
        nodes: Vec<BTreeMap<String, String>>,
        secrets: BTreeMap<String, Secret>,
    ) -> ferrolb_metallb::Config {
        fn all<K>(s: &Store<K>) -> Vec<Object<K::Spec>>
        where
            K: kube::Resource<DynamicType = ()> + kube::core::object::HasSpec + Clone + 'static,
            K::Spec: Clone,
        {
            s.state().iter().map(|k| Object::of(&**k)).collect()
        }
        ferrolb_metallb::Config {
            pools: all(&self.pools),
            l2: all(&self.l2),
            bgp: all(&self.bgp),
            peers: all(&self.peers),
            communities: all(&self.communities),
            bfd_profiles: all(&self.bfd),
            secrets,
            nodes,
        }
    }
}

/// Watches MetalLB's configuration objects in the namespace; on every change applies the valid
/// ones, reports the rejected ones, removes what was deleted, and asks for every Service to be
/// looked at again.
pub(crate) async fn sync(
    ctx: Arc<Ctx>,
    reprocess: mpsc::Sender<()>,
    configured: tokio::sync::watch::Sender<bool>,
) {
    let changed = Arc::new(Notify::new());
    let watched = Watched::new(&ctx, &changed);
    // BGPPeers' passwordSecrets are read by name, one by one: the namespace's other Secrets
    // never reach the adapter, and its RBAC grants `get` on Secrets, not `list`.
    let secrets_api = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    if !watched.ready().await {
        return;
    }
    loop {
        let peers: Vec<_> = watched.peers.state();
        let secrets = match named_secrets(&secrets_api, &peers).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the BGPPeers' Secrets; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let nodes = ctx
            .nodes
            .state()
            .iter()
            .map(|n| n.labels().clone())
            .collect();
        let cfg = watched.config(nodes, secrets.clone());
        let rejected = match push(&ctx, &cfg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot push the configuration; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        report_all(&ctx, &watched, &rejected).await;
        configured.send_replace(true);
        let _ = reprocess.try_send(());
        // Until the next change, keep the pools' usage counts current, and look at the named
        // Secrets again (one created late, or a password rotated, is a change).
        loop {
            pool_status(&ctx, &watched.pools).await;
            tokio::select! {
                _ = changed.notified() => break,
                _ = tokio::time::sleep(POOL_STATUS_INTERVAL) => {}
            }
            match named_secrets(&secrets_api, &peers).await {
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
    peers: &[Arc<crd::v1beta2::BGPPeer>],
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
        let name = pool.name_any();
        let patch = apply_config::<IPAddressPool>(&name, &ctx.settings.namespace, patch);
        if let Err(e) = api
            .patch_status(&name, &apply_as(manager::POOL_USAGE), &Patch::Apply(&patch))
            .await
        {
            tracing::debug!(error = %e, pool = pool.name_any(), "cannot write the pool's counts");
        }
    }
}

/// Judges the configuration, applies the good objects (Communities before the BGPPeers and
/// BGPAdvertisements that name them), removes from the allocator what is gone, and returns
/// every rejection, the allocator's refusals included.
async fn push(ctx: &Ctx, cfg: &ferrolb_metallb::Config) -> Result<Vec<Rejection>, Error> {
    let cluster = &ctx.settings.cluster;
    let namespace = &ctx.settings.namespace;
    let mut rejected = validate::check(cfg, namespace);
    let mut ipam = ctx.ipam.clone();
    let mut cs = ctx.cluster.clone();
    let clusters = [cluster.clone()];
    for (kind, name, m) in convert::messages(cfg, namespace, cluster, &clusters, &mut rejected) {
        let r = match m {
            Message::Pool(p) => ipam
                .apply_pool(pb::ApplyPoolRequest {
                    pool: Some(p),
                    create_only: false,
                })
                .await
                .map(drop),
            Message::L2Advertisement(a) => cs.apply_l2_advertisement(a).await.map(drop),
            Message::Community(c) => cs.apply_community(c).await.map(drop),
            Message::BgpPeer(p) => cs.apply_bgp_peer(p).await.map(drop),
            Message::BgpAdvertisement(a) => cs.apply_bgp_advertisement(a).await.map(drop),
        };
        applied(r, kind, &name, &mut rejected)?;
    }
    remove_deleted(ctx, cfg).await?;
    let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    for r in &rejected {
        *counts.entry(r.kind).or_default() += 1;
    }
    for kind in kind::ALL {
        ctx.metrics
            .set_rejected(kind, counts.get(kind).copied().unwrap_or(0));
    }
    Ok(rejected)
}

/// Removes from the allocator the pools, advertisements, peers and communities this cluster
/// declared that no longer exist. A rejected object is present: it keeps what it had.
async fn remove_deleted(ctx: &Ctx, cfg: &ferrolb_metallb::Config) -> Result<(), Error> {
    let cluster = &ctx.settings.cluster;
    let mut ipam = ctx.ipam.clone();
    let mut cs = ctx.cluster.clone();
    let present_pools: BTreeSet<String> = cfg.pools.iter().map(|p| p.name.clone()).collect();
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
    let present_ads: BTreeSet<String> = cfg.l2.iter().map(|a| a.name.clone()).collect();
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
            cfg.bgp.iter().map(|o| o.name.clone()).collect(),
        ),
        (
            pb::BgpKind::Peer,
            existing.peers.into_iter().map(|p| p.name).collect(),
            cfg.peers.iter().map(|o| o.name.clone()).collect(),
        ),
        (
            pb::BgpKind::Community,
            existing.communities.into_iter().map(|c| c.name).collect(),
            cfg.communities.iter().map(|o| o.name.clone()).collect(),
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

/// What the allocator said to an object: refused (its message names the field) goes with the
/// rejections; unreachable ends this push.
fn applied<T>(
    r: Result<T, Status>,
    kind: &'static str,
    name: &str,
    rejected: &mut Vec<Rejection>,
) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if retry_soon(&s) => Err(grpc(s)),
        Err(s) => {
            rejected.push(Rejection::by_allocator(kind, name, s.message()));
            Ok(())
        }
    }
}

async fn report_all(ctx: &Ctx, w: &Watched, rejected: &[Rejection]) {
    for o in w.pools.state() {
        report(ctx, &*o, rejected).await;
    }
    for o in w.l2.state() {
        report(ctx, &*o, rejected).await;
    }
    for o in w.bgp.state() {
        report(ctx, &*o, rejected).await;
    }
    for o in w.peers.state() {
        report(ctx, &*o, rejected).await;
    }
    for o in w.communities.state() {
        report(ctx, &*o, rejected).await;
    }
    for o in w.bfd.state() {
        report(ctx, &*o, rejected).await;
    }
}

/// Writes an object's `Valid` condition when it changes, with an event when it goes bad. A
/// rejected object keeps what it last had at the allocator.
async fn report<K>(ctx: &Ctx, obj: &K, rejected: &[Rejection])
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let name = obj.name_any();
    let verdict = ferrolb_metallb::verdict(rejected, &kind, &name);
    let (status, reason, message) = match &verdict {
        None => ("True", "Reconciled", String::new()),
        Some(v) if ferrolb_metallb::waiting(rejected, &kind, &name) => {
            ("False", "Pending", v.clone())
        }
        Some(v) => ("False", "ConfigurationError", v.clone()),
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
    if let Some(v) = &verdict {
        tracing::warn!(%kind, name, verdict = v, "configuration object not used");
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(v.clone()),
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
    let patch = apply_config::<K>(&name, &ctx.settings.namespace, patch);
    if let Err(e) = api
        .patch_status(&name, &apply_as(manager::CONDITIONS), &Patch::Apply(&patch))
        .await
    {
        tracing::debug!(error = %e, object = name, "cannot write the status");
    }
}
