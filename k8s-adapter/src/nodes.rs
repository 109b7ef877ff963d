//! Node sync: every node's labels and NetworkUnavailable condition go to the allocator, and
//! deleted nodes are removed there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_proto::v1 as pb;
use kube::ResourceExt;
use tokio::sync::Notify;

use crate::controller::{Ctx, ready};

/// Reports every node's labels and NetworkUnavailable condition, and removes deleted nodes.
pub(crate) async fn sync(ctx: Arc<Ctx>, changed: Arc<Notify>) {
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
