//! Configuration sync: MetalLB's configuration objects of the namespace go to the allocator as
//! they change. The MetalLB model ([`ferrolb_metallb`]) judges them first, as `ferrolbctl apply`
//! does; the good ones are applied, the rejected ones keep what they last had and are reported
//! in their `Valid` condition, an event and a metric, and what was deleted is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferrolb_metallb::convert;
use ferrolb_metallb::crd::{self, IPAddressPool, L2Advertisement};
use ferrolb_metallb::{Object, Rejection, kind, validate};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use crate::allocator::{Declared, Error};
use crate::controller::{Ctx, apply_as, apply_config, manager, ready, reflect};
use crate::pool_usage::PoolUsage;

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
    let mut usage = PoolUsage::default();
    loop {
        ferrolb_common::process::fault("config-sync");
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
        let pushed = push(&ctx, &cfg).await;
        ctx.metrics
            .config_pushed(pushed.as_ref().ok().map(Vec::len));
        let rejected = match pushed {
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
        // Until the next change, keep the pools' usage counts current as the cluster's leases
        // change, and look at the named Secrets again (one created late, or a password
        // rotated, is a change).
        usage.due_now();
        let mut secrets_tick = tokio::time::interval(SECRETS_INTERVAL);
        secrets_tick.reset();
        loop {
            usage.write_if_due(&ctx, &watched.pools).await;
            tokio::select! {
                _ = changed.notified() => break,
                _ = usage.wait(&*ctx.allocator, &ctx.settings.cluster) => continue,
                _ = secrets_tick.tick() => {}
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

/// How often the named Secrets are read again.
const SECRETS_INTERVAL: Duration = Duration::from_secs(3);

/// Judges the configuration, applies the good objects (Communities before the BGPPeers and
/// BGPAdvertisements that name them), removes from the allocator what is gone, and returns
/// every rejection, the allocator's refusals included.
async fn push(ctx: &Ctx, cfg: &ferrolb_metallb::Config) -> Result<Vec<Rejection>, Error> {
    let cluster = &ctx.settings.cluster;
    let namespace = &ctx.settings.namespace;
    let mut rejected = validate::check(cfg, namespace);
    let clusters = [cluster.clone()];
    for (kind, name, m) in convert::messages(cfg, namespace, cluster, &clusters, &mut rejected) {
        match ctx.allocator.apply(m).await {
            Ok(()) => {}
            // Refused: its message names the field, and it goes with the rejections.
            Err(Error::Refused { message, .. }) => {
                rejected.push(Rejection::by_allocator(kind, &name, &message));
            }
            Err(e) => return Err(e),
        }
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

/// The names of the objects of each kind the configuration holds, rejected ones included (a
/// rejected object is present: it keeps what it had at the allocator).
fn present(cfg: &ferrolb_metallb::Config) -> Declared {
    fn names<S>(objects: &[Object<S>]) -> BTreeSet<String> {
        objects.iter().map(|o| o.name.clone()).collect()
    }
    BTreeMap::from([
        (kind::POOL, names(&cfg.pools)),
        (kind::L2, names(&cfg.l2)),
        (kind::BGP_ADVERTISEMENT, names(&cfg.bgp)),
        (kind::PEER, names(&cfg.peers)),
        (kind::COMMUNITY, names(&cfg.communities)),
    ])
}

/// Removes from the allocator the pools, advertisements, peers and communities this cluster
/// declared that no longer exist.
async fn remove_deleted(ctx: &Ctx, cfg: &ferrolb_metallb::Config) -> Result<(), Error> {
    let cluster = &ctx.settings.cluster;
    let present = present(cfg);
    let none = BTreeSet::new();
    for (kind, at_allocator) in ctx.allocator.declared(cluster).await? {
        let here = present.get(kind).unwrap_or(&none);
        for name in at_allocator.difference(here) {
            tracing::info!(kind, name, "configuration object deleted");
            ctx.allocator.remove(cluster, kind, name).await?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Lab;

    fn pool(name: &str, addresses: &[&str]) -> Object<crd::IPAddressPoolSpec> {
        let spec = serde_json::from_value(json!({"addresses": addresses})).expect("a pool");
        Object::new(name, "metallb-system", spec)
    }

    fn config(pools: Vec<Object<crd::IPAddressPoolSpec>>) -> ferrolb_metallb::Config {
        let l2 = serde_json::from_value(json!({})).expect("an L2Advertisement");
        ferrolb_metallb::Config {
            pools,
            l2: vec![Object::new("home", "metallb-system", l2)],
            ..ferrolb_metallb::Config::default()
        }
    }

    fn names(d: &Declared, kind: &str) -> Vec<String> {
        d.get(kind).into_iter().flatten().cloned().collect()
    }

    #[tokio::test]
    async fn good_objects_are_applied_bad_ones_reported_and_deleted_ones_removed() {
        let lab = Lab::start(&[]).await;
        lab.allocator.declare(kind::POOL, "retired");
        lab.allocator.declare(kind::POOL, "broken");
        let cfg = config(vec![
            pool("lan", &["192.168.1.240-192.168.1.250"]),
            pool("broken", &["192.168.1.300/32"]),
        ]);
        let rejected = push(&lab.ctx, &cfg).await.expect("pushed");

        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(
            (rejected[0].kind, rejected[0].name.as_str()),
            (kind::POOL, "broken")
        );
        let held = lab.allocator.declared_now();
        // A rejected object keeps what it had; a deleted one is removed.
        assert_eq!(names(&held, kind::POOL), ["broken", "lan"]);
        assert_eq!(names(&held, kind::L2), ["home"]);
        assert_eq!(
            lab.calls("remove"),
            [format!("remove {} retired", kind::POOL)]
        );
        let metrics = lab.ctx.metrics.encode();
        assert!(
            metrics.contains(&format!(
                "ferrolb_adapter_rejected_objects{{kind=\"{}\"}} 1",
                kind::POOL
            )),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn the_allocators_refusal_is_a_rejection_of_that_object() {
        let lab = Lab::start(&[]).await;
        lab.allocator.refuse("shared");
        let cfg = config(vec![
            pool("lan", &["192.168.1.0/28"]),
            pool("shared", &["10.0.0.0/28"]),
        ]);
        let rejected = push(&lab.ctx, &cfg).await.expect("pushed");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].name, "shared");
        assert!(
            rejected[0]
                .message
                .contains("overlaps a pool of another cluster"),
            "{}",
            rejected[0].message
        );
        assert_eq!(names(&lab.allocator.declared_now(), kind::POOL), ["lan"]);
    }

    #[tokio::test]
    async fn an_unreachable_allocator_fails_the_push_so_that_it_is_tried_again() {
        let lab = Lab::start(&[]).await;
        lab.allocator.set_unavailable(true);
        let cfg = config(vec![pool("lan", &["192.168.1.0/28"])]);
        assert!(matches!(
            push(&lab.ctx, &cfg).await,
            Err(Error::AllocatorUnavailable(_))
        ));
    }
}
