//! Pools, leases, allocation and allowances: the IPAM service's commands.

use ferrolb_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::*;
use crate::output::*;
use crate::{Client, ClusterClient, status_text};

pub async fn pools(
    client: &mut Client,
    cluster_client: &mut ClusterClient,
    cmd: PoolsCmd,
    out: Output,
) -> Result<(), String> {
    match cmd {
        PoolsCmd::List => {
            let r = client
                .list_pools(pb::ListPoolsRequest {})
                .await
                .map_err(status_text)?
                .into_inner();
            print_pools(out, &r.pools);
        }
        PoolsCmd::Get { name } => {
            let p = client
                .get_pool(pb::GetPoolRequest { name })
                .await
                .map_err(status_text)?
                .into_inner();
            print_pools(out, &[p]);
        }
        PoolsCmd::Apply { file } => {
            let target = crate::apply::Target {
                cluster: "",
                namespace: "metallb-system",
                pools_only: true,
            };
            crate::apply::apply(client, cluster_client, &file, target, out).await?;
        }
        PoolsCmd::Delete { name } => {
            let r = client
                .delete_pool(pb::DeletePoolRequest { name: name.clone() })
                .await
                .map_err(status_text)?
                .into_inner();
            emit(
                out,
                json!({"pool": name, "stranded_leases": r.stranded_leases}),
                || {
                    format!(
                        "ipaddresspool/{name} deleted ({} leases stranded)",
                        r.stranded_leases
                    )
                },
            );
        }
    }
    Ok(())
}

/// Where `ferrolbctl apply` puts a file's objects.
pub async fn leases(client: &mut Client, cmd: LeasesCmd, out: Output) -> Result<(), String> {
    match cmd {
        LeasesCmd::List {
            pool,
            cluster,
            namespace,
            client: ext,
            stranded,
        } => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let r = client
                    .list_leases(pb::ListLeasesRequest {
                        pool: pool.clone(),
                        cluster: cluster.clone(),
                        namespace: namespace.clone(),
                        client: ext.clone(),
                        stranded_only: stranded,
                        page_size: 1000,
                        page_token: token,
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner();
                all.extend(r.leases);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            print_leases(out, &all);
        }
        LeasesCmd::Get(o) => {
            let l = client
                .get_lease(pb::GetLeaseRequest {
                    owner: Some(o.owner()),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            print_leases(out, &[l]);
        }
        LeasesCmd::Move(o) => {
            let l = client
                .move_lease(pb::MoveLeaseRequest {
                    owner: Some(o.owner()),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            print_leases(out, &[l]);
        }
    }
    Ok(())
}

pub fn parse_port(s: &str) -> Result<pb::Port, String> {
    let (proto, port) = s
        .split_once('/')
        .ok_or_else(|| format!("--port {s:?}: write protocol/port, e.g. tcp/80"))?;
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => pb::Protocol::Tcp,
        "udp" => pb::Protocol::Udp,
        "sctp" => pb::Protocol::Sctp,
        _ => return Err(format!("--port {s:?}: protocol is tcp, udp or sctp")),
    };
    let port = port
        .parse()
        .map_err(|_| format!("--port {s:?}: not a port number"))?;
    Ok(pb::Port {
        protocol: protocol as i32,
        port,
    })
}

pub async fn allocate(client: &mut Client, a: AllocateArgs, out: Output) -> Result<(), String> {
    let ports = a
        .ports
        .iter()
        .map(|p| parse_port(p))
        .collect::<Result<_, _>>()?;
    let r = client
        .allocate(pb::AllocateRequest {
            owner: Some(a.owner.owner()),
            requested_ips: a.ips,
            pool: a.pool,
            sharing_key: a.sharing_key,
            ports,
            backend_key: String::new(),
            family_policy: match a.policy {
                Policy::Single => pb::FamilyPolicy::SingleStack,
                Policy::PreferDual => pb::FamilyPolicy::PreferDualStack,
                Policy::RequireDual => pb::FamilyPolicy::RequireDualStack,
            } as i32,
            primary_family: match a.family {
                Fam::Ipv4 => pb::IpFamily::Ipv4,
                Fam::Ipv6 => pb::IpFamily::Ipv6,
            } as i32,
            namespace_labels: Default::default(),
            service_labels: Default::default(),
            ttl_seconds: a.ttl,
        })
        .await
        .map_err(status_text)?
        .into_inner();
    print_leases(out, &r.lease.into_iter().collect::<Vec<_>>());
    Ok(())
}

/// Gives an owner's addresses back.
pub async fn release(client: &mut Client, o: OwnerArgs, out: Output) -> Result<(), String> {
    let r = client
        .release(pb::ReleaseRequest {
            owner: Some(o.owner()),
        })
        .await
        .map_err(status_text)?
        .into_inner();
    emit(out, json!({ "released": r.ips }), || {
        format!("released {}", r.ips.join(", "))
    });
    Ok(())
}

/// Extends an external lease.
pub async fn renew(
    client: &mut Client,
    owner: OwnerArgs,
    ttl: u32,
    out: Output,
) -> Result<(), String> {
    let l = client
        .renew(pb::RenewRequest {
            owner: Some(owner.owner()),
            ttl_seconds: ttl,
        })
        .await
        .map_err(status_text)?
        .into_inner();
    print_leases(out, &[l]);
    Ok(())
}

/// A pool's use as a bar of 20 cells and a percentage: `[#####...............] 25%`. Counts
/// are decimal strings (an IPv6 pool's exceed every integer type but u128); a pool with no
/// capacity shows an empty bar. Any use at all fills at least one cell, and a pool is 100% only
/// when full.
fn use_bar(in_use: &str, capacity: &str) -> String {
    const CELLS: usize = 20;
    let (used, cap) = (
        in_use.parse::<u128>().unwrap_or(0),
        capacity.parse::<u128>().unwrap_or(0),
    );
    if cap == 0 {
        return format!("[{}]   -", ".".repeat(CELLS));
    }
    let share = used.min(cap) as f64 / cap as f64;
    let mut filled = (share * CELLS as f64).round() as usize;
    let mut percent = (share * 100.0).floor() as u32;
    if used > 0 {
        filled = filled.max(1);
    }
    if used < cap {
        filled = filled.min(CELLS - 1);
        percent = percent.min(99);
    }
    format!(
        "[{}{}] {percent:>3}%",
        "#".repeat(filled),
        ".".repeat(CELLS - filled)
    )
}

/// Capacity and use per pool and family.
pub async fn stats(client: &mut Client, pool: String, out: Output) -> Result<(), String> {
    let r = client
        .get_stats(pb::GetStatsRequest { pool })
        .await
        .map_err(status_text)?
        .into_inner();
    let rows: Vec<Vec<String>> = r
        .stats
        .iter()
        .map(|s| {
            vec![
                s.pool.clone(),
                family_name(s.family).into(),
                s.capacity.clone(),
                s.in_use.clone(),
                s.available.clone(),
                s.leases.to_string(),
                s.stranded_leases.to_string(),
                use_bar(&s.in_use, &s.capacity),
            ]
        })
        .collect();
    let j: Vec<Value> = r
        .stats
        .iter()
        .map(|s| {
            json!({"pool": s.pool, "family": family_name(s.family), "capacity": s.capacity,
                "in_use": s.in_use, "available": s.available, "leases": s.leases,
                "stranded_leases": s.stranded_leases})
        })
        .collect();
    emit(out, Value::Array(j), || {
        table(
            &[
                "POOL",
                "FAMILY",
                "CAPACITY",
                "IN USE",
                "AVAILABLE",
                "LEASES",
                "STRANDED",
                "USE",
            ],
            &rows,
        )
    });
    Ok(())
}

/// Follows lease events from a revision on.
pub async fn watch(
    client: &mut Client,
    from: u64,
    pool: String,
    out: Output,
) -> Result<(), String> {
    let mut stream = client
        .watch_leases(pb::WatchLeasesRequest {
            from_revision: from,
            pool,
        })
        .await
        .map_err(status_text)?
        .into_inner();
    while let Some(ev) = stream.message().await.map_err(status_text)? {
        let kind = pb::LeaseEventType::try_from(ev.r#type)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("LEASE_EVENT_TYPE_")
                    .to_string()
            })
            .unwrap_or_default();
        let lease = ev.lease.unwrap_or_default();
        let j = json!({"revision": ev.revision, "type": kind, "lease": lease_json(&lease)});
        emit(out, j, || {
            format!(
                "{} {} {} {}",
                ev.revision,
                kind,
                owner_name(lease.owner.as_ref()),
                lease.ips.join(",")
            )
        });
    }
    Ok(())
}

/// Sets or shows a cluster's allowance.
pub async fn allowances(
    client: &mut Client,
    cmd: AllowancesCmd,
    out: Output,
) -> Result<(), String> {
    let a = match cmd {
        AllowancesCmd::Set { cluster, ranges } => client
            .set_allowance(pb::Allowance { cluster, ranges })
            .await
            .map_err(status_text)?
            .into_inner(),
        AllowancesCmd::Get { cluster } => client
            .get_allowance(pb::GetAllowanceRequest { cluster })
            .await
            .map_err(status_text)?
            .into_inner(),
    };
    emit(
        out,
        json!({"cluster": a.cluster, "ranges": a.ranges}),
        || {
            if a.ranges.is_empty() {
                format!(
                    "cluster {}: no allowance (it may declare any pool)",
                    a.cluster
                )
            } else {
                format!("cluster {}: {}", a.cluster, a.ranges.join(", "))
            }
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::use_bar;

    #[test]
    fn use_bars() {
        assert_eq!(use_bar("0", "10"), "[....................]   0%");
        assert_eq!(use_bar("5", "20"), "[#####...............]  25%");
        assert_eq!(use_bar("10", "10"), "[####################] 100%");
        // Nearly full is not full, and a little is not nothing.
        assert_eq!(use_bar("999", "1000"), "[###################.]  99%");
        assert_eq!(
            use_bar("2", "1208925819614629174706176"),
            "[#...................]   0%"
        );
        assert_eq!(use_bar("0", "0"), "[....................]   -");
    }
}
