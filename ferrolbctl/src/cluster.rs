//! A cluster's nodes, endpoints, advertisements and announcements: the cluster state service's
//! commands.

use std::collections::BTreeMap;

use ferrolb_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::*;
use crate::output::*;
use crate::{ClusterClient, status_text};

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--label {s:?}: write key=value"))?;
    Ok((k.to_string(), v.to_string()))
}

pub async fn nodes(client: &mut ClusterClient, cmd: NodesCmd, out: Output) -> Result<(), String> {
    match cmd {
        NodesCmd::List { cluster } => {
            let r = client
                .list_nodes(pb::ListNodesRequest { cluster })
                .await
                .map_err(status_text)?
                .into_inner();
            let mut rows = Vec::new();
            let mut j = Vec::new();
            for st in r.nodes {
                let n = st.node.unwrap_or_default();
                let mut labels: Vec<String> =
                    n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                rows.push(vec![
                    n.name.clone(),
                    if st.announcer_live { "live" } else { "-" }.into(),
                    n.network_unavailable.to_string(),
                    labels.join(","),
                ]);
                j.push(json!({"name": n.name, "announcer_live": st.announcer_live,
                    "network_unavailable": n.network_unavailable, "labels": n.labels}));
            }
            emit(out, Value::Array(j), || {
                table(
                    &["NODE", "ANNOUNCER", "NETWORK UNAVAILABLE", "LABELS"],
                    &rows,
                )
            });
        }
        NodesCmd::Apply {
            name,
            cluster,
            labels,
            network_unavailable,
        } => {
            let labels = labels
                .iter()
                .map(|l| parse_label(l))
                .collect::<Result<_, _>>()?;
            let r = client
                .apply_node(pb::Node {
                    cluster,
                    name: name.clone(),
                    labels,
                    network_unavailable,
                })
                .await
                .map_err(status_text)?
                .into_inner();
            let verb = if r.created { "created" } else { "configured" };
            emit(out, json!({"node": name, "result": verb}), || {
                format!("node/{name} {verb}")
            });
        }
        NodesCmd::Delete { name, cluster } => {
            client
                .delete_node(pb::DeleteNodeRequest {
                    cluster,
                    name: name.clone(),
                })
                .await
                .map_err(status_text)?;
            emit(out, json!({"node": name, "result": "deleted"}), || {
                format!("node/{name} deleted")
            });
        }
    }
    Ok(())
}

pub async fn endpoints(client: &mut ClusterClient, cmd: EndpointsCmd) -> Result<(), String> {
    match cmd {
        EndpointsCmd::Set {
            cluster,
            namespace,
            name,
            nodes,
            local,
            labels,
        } => {
            let labels = labels
                .iter()
                .map(|l| parse_label(l))
                .collect::<Result<_, _>>()?;
            client
                .set_endpoints(pb::ServiceEndpoints {
                    cluster,
                    namespace,
                    name,
                    any_serving: !nodes.is_empty(),
                    serving_nodes: nodes,
                    traffic_policy_local: local,
                    labels,
                })
                .await
                .map_err(status_text)?;
        }
        EndpointsCmd::Delete {
            cluster,
            namespace,
            name,
        } => {
            client
                .delete_endpoints(pb::DeleteEndpointsRequest {
                    cluster,
                    namespace,
                    name,
                })
                .await
                .map_err(status_text)?;
        }
    }
    Ok(())
}

pub async fn l2(client: &mut ClusterClient, cmd: L2Cmd, out: Output) -> Result<(), String> {
    match cmd {
        L2Cmd::List { cluster } => {
            let r = client
                .list_l2_advertisements(pb::ListL2AdvertisementsRequest { cluster })
                .await
                .map_err(status_text)?
                .into_inner();
            let rows: Vec<Vec<String>> = r
                .advertisements
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.ip_address_pools.join(","),
                        a.interfaces.join(","),
                        a.node_selectors.len().to_string(),
                    ]
                })
                .collect();
            let j: Vec<Value> = r
                .advertisements
                .iter()
                .map(|a| {
                    json!({"name": a.name, "ip_address_pools": a.ip_address_pools,
                    "interfaces": a.interfaces})
                })
                .collect();
            emit(out, Value::Array(j), || {
                table(&["NAME", "POOLS", "INTERFACES", "NODE SELECTORS"], &rows)
            });
        }
        L2Cmd::Delete { name, cluster } => {
            client
                .delete_l2_advertisement(pb::DeleteL2AdvertisementRequest {
                    cluster,
                    name: name.clone(),
                })
                .await
                .map_err(status_text)?;
            emit(
                out,
                json!({"l2advertisement": name, "result": "deleted"}),
                || format!("l2advertisement/{name} deleted"),
            );
        }
    }
    Ok(())
}

pub async fn announcements(
    client: &mut ClusterClient,
    cluster: String,
    out: Output,
) -> Result<(), String> {
    let r = client
        .list_announcements(pb::ListAnnouncementsRequest { cluster })
        .await
        .map_err(status_text)?
        .into_inner();
    print_announcements(out, r.version, &r.announcements);
    Ok(())
}

const ANNOUNCEMENT_HEADERS: [&str; 5] = ["ADDRESS", "NODE", "INTERFACES", "SERVICES", "REASON"];

fn announcement_row(a: &pb::Announcement) -> Vec<String> {
    vec![
        a.ip.clone(),
        if a.node.is_empty() {
            "-".into()
        } else {
            a.node.clone()
        },
        if a.interfaces.is_empty() {
            "*".into()
        } else {
            a.interfaces.join(",")
        },
        a.services.join(","),
        a.reason.clone(),
    ]
}

fn announcement_json(a: &pb::Announcement) -> Value {
    json!({"ip": a.ip, "node": a.node, "interfaces": a.interfaces,
        "services": a.services, "reason": a.reason})
}

fn print_announcements(out: Output, version: u64, list: &[pb::Announcement]) {
    let rows: Vec<Vec<String>> = list.iter().map(announcement_row).collect();
    let j: Vec<Value> = list.iter().map(announcement_json).collect();
    emit(out, json!({"version": version, "announcements": j}), || {
        table(&ANNOUNCEMENT_HEADERS, &rows)
    });
}

/// The list, then one line per address whose announcement changed, with the time (UTC) it was
/// seen and the node before: `12:00:03.120 192.168.1.240 n1 -> n3 default/nginx`.
pub async fn watch_announcements(
    client: &mut ClusterClient,
    cluster: String,
    out: Output,
) -> Result<(), String> {
    let mut stream = client
        .watch_announcements(pb::ListAnnouncementsRequest { cluster })
        .await
        .map_err(status_text)?
        .into_inner();
    let mut before: Option<BTreeMap<String, pb::Announcement>> = None;
    while let Some(update) = stream.message().await.map_err(status_text)? {
        let now: BTreeMap<String, pb::Announcement> = update
            .announcements
            .iter()
            .map(|a| (a.ip.clone(), a.clone()))
            .collect();
        match &before {
            None => print_announcements(out, update.version, &update.announcements),
            Some(prev) => {
                for change in changes(prev, &now) {
                    let (ip, was, is) = &change;
                    let node = |a: Option<&pb::Announcement>| {
                        a.filter(|a| !a.node.is_empty())
                            .map_or("-".to_string(), |a| a.node.clone())
                    };
                    let j = json!({"time": clock(), "version": update.version, "ip": ip,
                        "before": was.map(announcement_json), "now": is.map(announcement_json)});
                    emit(out, j, || {
                        let services = is
                            .or(*was)
                            .map(|a| a.services.join(","))
                            .unwrap_or_default();
                        let reason = is.map(|a| a.reason.clone()).unwrap_or("gone".into());
                        format!(
                            "{} {ip} {} -> {} {services} {reason}",
                            clock(),
                            node(*was),
                            node(*is)
                        )
                        .trim_end()
                        .to_string()
                    });
                }
            }
        }
        before = Some(now);
    }
    Ok(())
}

type Change<'a> = (
    &'a String,
    Option<&'a pb::Announcement>,
    Option<&'a pb::Announcement>,
);

/// The addresses whose announcement differs between two lists, with both sides.
fn changes<'a>(
    before: &'a BTreeMap<String, pb::Announcement>,
    now: &'a BTreeMap<String, pb::Announcement>,
) -> Vec<Change<'a>> {
    let ips: std::collections::BTreeSet<&String> = before.keys().chain(now.keys()).collect();
    ips.into_iter()
        .filter_map(|ip| {
            let (was, is) = (before.get(ip), now.get(ip));
            (was != is).then_some((ip, was, is))
        })
        .collect()
}

/// The time of day in UTC, to the millisecond.
fn clock() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// The failovers the allocator replica timed for a cluster.
pub async fn history(
    client: &mut ClusterClient,
    cluster: String,
    out: Output,
) -> Result<(), String> {
    let r = client
        .list_failovers(pb::ListAnnouncementsRequest { cluster })
        .await
        .map_err(status_text)?
        .into_inner();
    let at = |f: &pb::Failover| {
        f.at.as_ref().map_or_else(String::new, |t| {
            let millis = u32::try_from(t.nanos / 1_000_000).unwrap_or(0);
            ferrolb_common::time::rfc3339(t.seconds, Some(millis))
        })
    };
    let rows: Vec<Vec<String>> = r
        .failovers
        .iter()
        .map(|f| {
            vec![
                at(f),
                f.ip.clone(),
                f.from_node.clone(),
                f.to_node.clone(),
                f.reason.clone(),
                format!("{} ms", f.took_ms),
            ]
        })
        .collect();
    let j: Vec<Value> = r
        .failovers
        .iter()
        .map(|f| {
            json!({"at": at(f), "ip": f.ip, "from": f.from_node, "to": f.to_node,
                "reason": f.reason, "took_ms": f.took_ms})
        })
        .collect();
    emit(out, Value::Array(j), || {
        table(&["TIME", "ADDRESS", "FROM", "TO", "REASON", "TOOK"], &rows)
    });
    Ok(())
}

pub async fn bgp_announcements(
    client: &mut ClusterClient,
    cluster: String,
    out: Output,
) -> Result<(), String> {
    let r = client
        .list_bgp_announcements(pb::ListAnnouncementsRequest { cluster })
        .await
        .map_err(status_text)?
        .into_inner();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for a in &r.announcements {
        if a.nodes.is_empty() {
            rows.push(vec![
                a.ip.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                a.services.join(","),
                a.reason.clone(),
            ]);
        }
        for n in &a.nodes {
            rows.push(vec![
                a.ip.clone(),
                n.node.clone(),
                n.prefix.clone(),
                n.peers.join(","),
                a.services.join(","),
                String::new(),
            ]);
        }
    }
    let j: Vec<Value> = r
        .announcements
        .iter()
        .map(|a| {
            let nodes: Vec<Value> = a
                .nodes
                .iter()
                .map(|n| json!({"node": n.node, "prefix": n.prefix, "peers": n.peers}))
                .collect();
            json!({"ip": a.ip, "services": a.services, "nodes": nodes, "reason": a.reason})
        })
        .collect();
    emit(
        out,
        json!({"version": r.version, "announcements": j}),
        || {
            table(
                &["ADDRESS", "NODE", "PREFIX", "PEERS", "SERVICES", "REASON"],
                &rows,
            )
        },
    );
    Ok(())
}
