//! `ferrolbctl apply`: a MetalLB YAML file judged and applied as the Kubernetes adapter does it.

use ferrolb_metallb::convert::{self, Message};
use ferrolb_metallb::{Rejection, kind, validate, yaml};
use ferrolb_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::Output;
use crate::{Client, ClusterClient, status_text};

#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub cluster: &'a str,
    pub namespace: &'a str,
    /// `pools apply`: the file's other kinds are ignored.
    pub pools_only: bool,
}

/// Applies a MetalLB YAML file as the Kubernetes adapter applies the same objects: MetalLB's
/// rules (the `ferrolb-metallb` model) judge each object, the good ones go to the allocator in
/// the adapter's order, each rejected object is printed with its verdict — the text the adapter
/// writes in its `Valid` condition — and the command fails if any was rejected.
pub async fn apply(
    client: &mut Client,
    cluster_client: &mut ClusterClient,
    file: &std::path::Path,
    to: Target<'_>,
    out: Output,
) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut parsed =
        yaml::read(&text, to.namespace).map_err(|e| format!("{}: {e}", file.display()))?;
    keep_what_applies(&mut parsed, to).map_err(|e| format!("{}: {e}", file.display()))?;
    // The cluster's nodes, for the advertisements' node sets (as the adapter has them).
    if !to.cluster.is_empty() && !parsed.config.bgp.is_empty() {
        parsed.config.nodes = node_labels(cluster_client, to.cluster).await?;
    }
    let cfg = &parsed.config;
    let mut rejected = parsed.unreadable;
    rejected.extend(validate::check(cfg, to.namespace));
    // A cluster's MetalLB YAML: its pools are that cluster's to draw from (unless their
    // ferrolb.io/clusters annotation says who).
    let clusters: Vec<String> = [to.cluster.to_string()]
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect();
    let mut results = Vec::new();
    for (kind, name, m) in
        convert::messages(cfg, to.namespace, to.cluster, &clusters, &mut rejected)
    {
        match send(client, cluster_client, m).await {
            Ok((created, stranded)) => results.push(applied(out, kind, &name, created, stranded)),
            Err(s) if s.code() == tonic::Code::Unavailable => return Err(status_text(s)),
            Err(s) => rejected.push(Rejection::by_allocator(kind, &name, s.message())),
        }
    }
    if out == Output::Json {
        println!("{}", Value::Array(results));
    }
    let verdicts = ferrolb_metallb::verdicts(&rejected);
    for v in &verdicts {
        eprintln!("error: {v}");
    }
    match verdicts.len() {
        0 => Ok(()),
        n => Err(format!("{}: {n} objects rejected", file.display())),
    }
}

/// Drops what this apply does not take (`pools apply` takes pools only) and what it cannot
/// place (cluster objects without a cluster), saying so.
fn keep_what_applies(parsed: &mut yaml::File, to: Target<'_>) -> Result<(), String> {
    let cfg = &mut parsed.config;
    if to.pools_only {
        let others = cfg.l2.drain(..).map(|o| (kind::L2, o.name));
        let others = others
            .chain(cfg.peers.drain(..).map(|o| (kind::PEER, o.name)))
            .chain(cfg.bgp.drain(..).map(|o| (kind::BGP_ADVERTISEMENT, o.name)))
            .chain(cfg.communities.drain(..).map(|o| (kind::COMMUNITY, o.name)));
        for (kind, name) in others {
            eprintln!("ignoring {kind}/{name}: use ferrolbctl apply --cluster");
        }
    }
    let cluster_objects = cfg.l2.len() + cfg.peers.len() + cfg.bgp.len() + cfg.communities.len();
    if cluster_objects > 0 && to.cluster.is_empty() {
        return Err(
            "advertisements, peers and communities belong to a cluster: say which with --cluster"
                .into(),
        );
    }
    for s in &parsed.skipped {
        eprintln!("ignoring {s}: not a kind the allocator takes");
    }
    Ok(())
}

/// The labels of the cluster's nodes, as its adapter reported them.
async fn node_labels(
    cluster_client: &mut ClusterClient,
    cluster: &str,
) -> Result<Vec<std::collections::BTreeMap<String, String>>, String> {
    let nodes = cluster_client
        .list_nodes(pb::ListNodesRequest {
            cluster: cluster.to_string(),
        })
        .await
        .map_err(status_text)?
        .into_inner()
        .nodes;
    Ok(nodes
        .into_iter()
        .filter_map(|n| n.node)
        .map(|n| n.labels.into_iter().collect())
        .collect())
}

/// Applies one object: whether it was created, and how many leases it strands (pools).
async fn send(
    client: &mut Client,
    cluster_client: &mut ClusterClient,
    m: Message,
) -> Result<(bool, u64), tonic::Status> {
    match m {
        Message::Pool(p) => client
            .apply_pool(pb::ApplyPoolRequest {
                pool: Some(p),
                create_only: false,
            })
            .await
            .map(|r| (r.get_ref().created, r.get_ref().stranded_leases)),
        Message::L2Advertisement(a) => cluster_client
            .apply_l2_advertisement(a)
            .await
            .map(|r| (r.get_ref().created, 0)),
        Message::Community(c) => cluster_client
            .apply_community(c)
            .await
            .map(|r| (r.get_ref().created, 0)),
        Message::BgpPeer(p) => cluster_client
            .apply_bgp_peer(p)
            .await
            .map(|r| (r.get_ref().created, 0)),
        Message::BgpAdvertisement(a) => cluster_client
            .apply_bgp_advertisement(a)
            .await
            .map(|r| (r.get_ref().created, 0)),
    }
}

/// One applied object: a line for people, a JSON object for scripts.
fn applied(out: Output, kind: &str, name: &str, created: bool, stranded: u64) -> Value {
    let verb = if created { "created" } else { "configured" };
    if out == Output::Table {
        let note = if stranded > 0 {
            format!(" ({stranded} leases stranded)")
        } else {
            String::new()
        };
        println!("{}/{name} {verb}{note}", kind.to_lowercase());
    }
    json!({"kind": kind, "name": name, "result": verb, "stranded_leases": stranded})
}
