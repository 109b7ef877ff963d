//! Tables for people, JSON for scripts.

use ferrolb_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::Output;

pub fn family_name(code: i32) -> &'static str {
    match pb::IpFamily::try_from(code) {
        Ok(pb::IpFamily::Ipv6) => "IPv6",
        _ => "IPv4",
    }
}

pub fn owner_name(o: Option<&pb::Owner>) -> String {
    match o {
        Some(o) if !o.client.is_empty() => format!("client/{}/{}", o.client, o.key),
        Some(o) => format!("{}/{}/{}", o.cluster, o.namespace, o.name),
        None => String::new(),
    }
}

pub fn lease_json(l: &pb::Lease) -> Value {
    json!({
        "owner": owner_name(l.owner.as_ref()),
        "ips": l.ips,
        "pool": l.pool,
        "sharing_key": l.sharing_key,
        "stranded": l.stranded,
        "expires_at": l.expires_at.as_ref().map(|t| t.seconds),
        "revision": l.revision,
    })
}

pub fn print_leases(out: Output, leases: &[pb::Lease]) {
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            vec![
                owner_name(l.owner.as_ref()),
                l.ips.join(","),
                l.pool.clone(),
                l.sharing_key.clone(),
                if l.stranded { "yes" } else { "" }.into(),
            ]
        })
        .collect();
    emit(
        out,
        Value::Array(leases.iter().map(lease_json).collect()),
        || table(&["OWNER", "IPS", "POOL", "SHARING KEY", "STRANDED"], &rows),
    );
}

pub fn print_pools(out: Output, pools: &[pb::Pool]) {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.auto_assign.unwrap_or(true).to_string(),
                p.avoid_buggy_ips.to_string(),
                p.addresses.join(","),
                p.declared_by.clone(),
            ]
        })
        .collect();
    let j: Vec<Value> = pools
        .iter()
        .map(|p| {
            json!({"name": p.name, "addresses": p.addresses, "auto_assign": p.auto_assign.unwrap_or(true),
                "avoid_buggy_ips": p.avoid_buggy_ips, "excluded_addresses": p.excluded_addresses,
                "clusters": p.clusters, "clients": p.clients, "declared_by": p.declared_by,
                "priority": p.service_allocation.as_ref().map(|s| s.priority)})
        })
        .collect();
    emit(out, Value::Array(j), || {
        table(
            &[
                "NAME",
                "AUTO ASSIGN",
                "AVOID BUGGY IPS",
                "ADDRESSES",
                "DECLARED BY",
            ],
            &rows,
        )
    });
}

pub fn emit(out: Output, j: Value, text: impl FnOnce() -> String) {
    match out {
        Output::Json => println!("{j}"),
        Output::Table => println!("{}", text()),
    }
}

/// Left-aligned columns, two spaces apart, like kubectl.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut lines = vec![line(headers.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}
