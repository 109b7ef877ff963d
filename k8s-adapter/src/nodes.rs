//! Node sync: every node's labels and NetworkUnavailable condition go to the allocator, and
//! deleted nodes are removed there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_proto::v1 as pb;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use tokio::sync::Notify;

use crate::allocator::Allocator;
use crate::controller::{Ctx, ready};

/// Reports every node's labels and NetworkUnavailable condition, and removes deleted nodes.
pub(crate) async fn sync(ctx: Arc<Ctx>, changed: Arc<Notify>) {
    let store = &ctx.nodes;
    if !ready(store).await {
        return;
    }
    let mut sent: BTreeMap<String, pb::Node> = BTreeMap::new();
    loop {
        let now = store
            .state()
            .iter()
            .map(|n| (n.name_any(), report(&ctx.settings.cluster, n)))
            .collect();
        if !push(&*ctx.allocator, &ctx.settings.cluster, &sent, &now).await {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        sent = now;
        changed.notified().await;
    }
}

/// What the allocator is told of a node.
fn report(cluster: &str, n: &Node) -> pb::Node {
    let unavailable = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
        });
    pb::Node {
        cluster: cluster.into(),
        name: n.name_any(),
        labels: n.labels().clone().into_iter().collect(),
        network_unavailable: unavailable,
    }
}

/// Sends the nodes that changed since `sent` and removes those that are gone; false if a call
/// failed (everything is sent again then).
async fn push(
    allocator: &dyn Allocator,
    cluster: &str,
    sent: &BTreeMap<String, pb::Node>,
    now: &BTreeMap<String, pb::Node>,
) -> bool {
    let mut ok = true;
    for (name, node) in now {
        if sent.get(name) != Some(node) && allocator.apply_node(node.clone()).await.is_err() {
            ok = false;
        }
    }
    for name in sent.keys().filter(|n| !now.contains_key(*n)) {
        if allocator.delete_node(cluster, name).await.is_err() {
            ok = false;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::fake::FakeAllocator;
    use serde_json::json;

    fn node(name: &str, zone: &str, network_unavailable: bool) -> Node {
        let status = if network_unavailable { "True" } else { "False" };
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
            "status": {"conditions": [{"type": "NetworkUnavailable", "status": status}]},
        }))
        .expect("a Node")
    }

    fn reports(nodes: &[Node]) -> BTreeMap<String, pb::Node> {
        nodes
            .iter()
            .map(|n| (n.name_any(), report("home", n)))
            .collect()
    }

    #[test]
    fn a_node_is_reported_with_its_labels_and_network_condition() {
        let r = report("home", &node("n1", "a", true));
        assert_eq!(r.cluster, "home");
        assert_eq!(r.name, "n1");
        assert_eq!(r.labels["topology.kubernetes.io/zone"], "a");
        assert!(r.network_unavailable);
        assert!(!report("home", &node("n1", "a", false)).network_unavailable);
    }

    #[tokio::test]
    async fn only_changes_are_sent_and_deleted_nodes_are_removed() {
        let fake = FakeAllocator::with_pool("default", &[]);
        let first = reports(&[node("n1", "a", false), node("n2", "a", false)]);
        assert!(push(&fake, "home", &BTreeMap::new(), &first).await);
        assert_eq!(fake.calls(), ["apply_node n1", "apply_node n2"]);

        let second = reports(&[node("n1", "b", false)]);
        assert!(push(&fake, "home", &first, &second).await);
        assert_eq!(
            fake.calls()[2..],
            ["apply_node n1".to_string(), "delete_node n2".to_string()]
        );
        assert_eq!(fake.nodes().keys().collect::<Vec<_>>(), ["n1"]);
        assert_eq!(
            fake.nodes()["n1"].labels["topology.kubernetes.io/zone"],
            "b"
        );
    }

    #[tokio::test]
    async fn a_failed_call_is_reported_so_that_everything_is_sent_again() {
        let fake = FakeAllocator::with_pool("default", &[]);
        fake.set_unavailable(true);
        let now = reports(&[node("n1", "a", false)]);
        assert!(!push(&fake, "home", &BTreeMap::new(), &now).await);
    }
}
