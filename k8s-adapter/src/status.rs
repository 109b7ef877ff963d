//! Where each Service is announced, as MetalLB shows it: one ServiceL2Status per announced
//! Service and one ServiceBGPStatus per Service and advertising node, kept from the allocator's
//! announcement state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_metallb::crd;
use ferrolb_proto::v1 as pb;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::controller::{Ctx, apply_as, apply_config, manager, ready, reflect};

/// How soon a broken announcement watch is opened again.
const RETRY: Duration = Duration::from_secs(1);
/// How often the status objects are written again without a change (repairing hand edits).
const REWRITE: Duration = Duration::from_secs(30);

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
pub(crate) async fn sync(ctx: Arc<Ctx>) {
    let ns = &ctx.settings.namespace;
    let l2_api: Api<crd::ServiceL2Status> = Api::namespaced(ctx.client.clone(), ns);
    let bgp_api: Api<crd::ServiceBGPStatus> = Api::namespaced(ctx.client.clone(), ns);
    let l2 = reflect(l2_api.clone(), Arc::new(Notify::new()));
    let bgp = reflect(bgp_api.clone(), Arc::new(Notify::new()));
    if !(ready(&l2).await && ready(&bgp).await) {
        return;
    }
    // Follow the allocator's announcements as they change; write the objects on every change,
    // and again now and then, so that one deleted or edited by hand comes back.
    let mut last: Option<pb::AnnouncementsUpdate> = None;
    let mut announcing: Option<BTreeMap<String, String>> = None;
    loop {
        let watched = ctx.allocator.watch_announcements(&ctx.settings.cluster);
        let mut stream = match watched.await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the announcements; trying again");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(Ok(update)) => {
                        tell_moves(&ctx, &mut announcing, &update.announcements).await;
                        last = Some(update);
                    }
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "the announcement watch ended");
                        break;
                    }
                },
                _ = tokio::time::sleep(REWRITE) => {}
            }
            if let Some(u) = &last {
                write_statuses(&ctx, &l2_api, &l2, l2_statuses(&u.announcements)).await;
                write_statuses(&ctx, &bgp_api, &bgp, bgp_statuses(&u.bgp_announcements)).await;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// How long a move's event waits for the allocator's timing of the failover (the new node
/// reports it announces after the decision the move is seen in).
const FAILOVER_TIMING_WAIT: Duration = Duration::from_secs(3);

/// MetalLB's `nodeAssigned` event on each Service whose layer-2 announcing node is new or
/// changed since the last update (`before`: Service → node; nothing is told of the first
/// update after a start, which only says where things already are). A move after a failover
/// says why and how long the address was without an announcer, as the allocator timed it.
async fn tell_moves(
    ctx: &Arc<Ctx>,
    before: &mut Option<BTreeMap<String, String>>,
    list: &[pb::Announcement],
) {
    let now: BTreeMap<String, String> = list
        .iter()
        .filter(|a| !a.node.is_empty())
        .flat_map(|a| a.services.iter().map(|s| (s.clone(), a.node.clone())))
        .collect();
    let Some(prev) = before.replace(now.clone()) else {
        return;
    };
    for (svc, node) in &now {
        let was = prev.get(svc);
        if was == Some(node) {
            continue;
        }
        let ip = list
            .iter()
            .find(|a| a.services.contains(svc))
            .map(|a| a.ip.clone())
            .unwrap_or_default();
        let (ctx, svc, node, was) = (Arc::clone(ctx), svc.clone(), node.clone(), was.cloned());
        // Waiting for the timing must not hold the status objects back.
        tokio::spawn(async move {
            let mut note = format!("announcing from node {node:?} with protocol \"layer2\"");
            if let Some(was) = &was {
                note += &format!(", after node {was:?}");
                if let Some(f) = failover(&ctx, &ip, was, &node).await {
                    note += &format!(" ({}: {} ms without an announcer)", f.reason, f.took_ms);
                }
            }
            node_assigned(&ctx, &svc, &node, note).await;
        });
    }
}

/// The failover of `ip` from `from` to `to` the allocator timed in the last minute, waiting
/// for it a little.
async fn failover(ctx: &Ctx, ip: &str, from: &str, to: &str) -> Option<pb::Failover> {
    let since = std::time::SystemTime::now() - Duration::from_secs(60);
    let start = tokio::time::Instant::now();
    loop {
        let found = ctx.allocator.failovers(&ctx.settings.cluster).await.ok()?;
        let recent = |f: &pb::Failover| {
            f.at.as_ref()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                .is_some_and(|at| at >= since)
        };
        if let Some(f) = found
            .into_iter()
            .rev()
            .find(|f| f.ip == ip && f.from_node == from && f.to_node == to && recent(f))
        {
            return Some(f);
        }
        if start.elapsed() > FAILOVER_TIMING_WAIT {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records a `nodeAssigned` event on Service `svc` (`namespace/name`).
async fn node_assigned(ctx: &Ctx, svc: &str, node: &str, note: String) {
    let (ns, name) = svc.split_once('/').unwrap_or(("", svc));
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let Ok(Some(service)) = api.get_opt(name).await else {
        return;
    };
    // The node is the event's related object: a move to another node is an event of its own, a
    // move back counts in that node's event series.
    let node_ref = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.to_string()),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Normal,
        reason: "nodeAssigned".into(),
        note: Some(note),
        action: "Announce".into(),
        secondary: Some(node_ref),
    };
    if let Err(e) = ctx.recorder.publish(&ev, &service.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot record an event");
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
    let ns = &ctx.settings.namespace;
    let pp = apply_as(manager::ANNOUNCEMENTS);
    for (name, (labels, status)) in &want {
        let current = existing.get(&ObjectRef::new(name).within(ns));
        if current.as_ref().and_then(|c| c.current()) == Some(status) {
            continue;
        }
        // The object with its labels (created by the apply when missing), then its status.
        let obj = apply_config::<K>(
            name,
            ns,
            json!({"metadata": {"labels": labels}, "spec": {}}),
        );
        if let Err(e) = api.patch(name, &pp, &Patch::Apply(&obj)).await {
            tracing::debug!(error = %e, name, %kind, "cannot write a status object");
            continue;
        }
        let patch = apply_config::<K>(name, ns, json!({"status": status}));
        if let Err(e) = api.patch_status(name, &pp, &Patch::Apply(&patch)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_l2_status_per_announced_service_with_metallbs_labels() {
        let list = [
            pb::Announcement {
                ip: "192.168.1.240".into(),
                node: "n1".into(),
                interfaces: strings(&["eth0"]),
                services: strings(&["default/web", "default/dns"]),
                ..pb::Announcement::default()
            },
            pb::Announcement {
                ip: "192.168.1.241".into(),
                reason: "noEndpoints".into(),
                services: strings(&["default/idle"]),
                ..pb::Announcement::default()
            },
        ];
        let want = l2_statuses(&list);
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            ["l2-default-dns", "l2-default-web"],
            "an address nobody announces has no status"
        );
        let (labels, status) = &want["l2-default-web"];
        assert_eq!(labels["metallb.io/node"], "n1");
        assert_eq!(labels["metallb.io/service-name"], "web");
        assert_eq!(labels["metallb.io/service-namespace"], "default");
        assert_eq!(status.node, "n1");
        assert_eq!(
            status.interfaces,
            [crd::InterfaceInfo {
                name: "eth0".into()
            }]
        );
    }

    #[test]
    fn one_bgp_status_per_service_and_node_with_the_peers_of_both_families() {
        let node = |name: &str, prefix: &str, peers: &[&str]| pb::BgpNodeAnnouncement {
            node: name.into(),
            prefix: prefix.into(),
            peers: strings(peers),
        };
        let list = [
            pb::BgpAnnouncement {
                ip: "203.0.113.10".into(),
                services: strings(&["prod/api"]),
                nodes: vec![
                    node("n1", "203.0.113.10/32", &["tor-b", "tor-a"]),
                    node("n2", "203.0.113.10/32", &["tor-a"]),
                ],
                ..pb::BgpAnnouncement::default()
            },
            pb::BgpAnnouncement {
                ip: "2001:db8::10".into(),
                services: strings(&["prod/api"]),
                nodes: vec![node("n1", "2001:db8::10/128", &["tor-a", "tor-v6"])],
                ..pb::BgpAnnouncement::default()
            },
        ];
        let want = bgp_statuses(&list);
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            ["bgp-prod-api-n1", "bgp-prod-api-n2"]
        );
        assert_eq!(
            want["bgp-prod-api-n1"].1.peers,
            ["tor-a", "tor-b", "tor-v6"]
        );
        assert_eq!(want["bgp-prod-api-n2"].1.peers, ["tor-a"]);
        assert_eq!(want["bgp-prod-api-n2"].0["metallb.io/node"], "n2");
    }

    #[test]
    fn names_fit_kubernetes() {
        let long = "x".repeat(300);
        assert_eq!(status_name("l2", &["ns", &long]).chars().count(), 253);
        assert_eq!(status_name("bgp", &["a", "b", "n"]), "bgp-a-b-n");
    }
}
