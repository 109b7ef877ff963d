//! Server-side printing: the `Table` kubectl asks for (`Accept: …;as=Table;g=meta.k8s.io`), with
//! the columns the real API server prints for Services (NAME TYPE CLUSTER-IP EXTERNAL-IP
//! PORT(S) AGE), a CustomResourceDefinition's `additionalPrinterColumns` for its objects, and
//! NAME and AGE for everything else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Whether the request asks for a Table.
pub(super) fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("as=Table"))
}

/// The Table of `items` from `collection` (`/api/v1/services`, `/apis/G/V/plural`).
pub(super) fn of(collection: &str, items: &[Value], crds: &[Value], rv: u64) -> Value {
    let columns = columns(collection, crds);
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": columns.iter().map(|c| c.cell(o)).collect::<Vec<_>>(),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns.iter().map(Column::definition).collect::<Vec<_>>(),
        "rows": rows,
    })
}

struct Column {
    name: String,
    kind: &'static str,
    priority: i64,
    value: Cell,
}

enum Cell {
    Name,
    Age,
    /// A CRD's JSONPath (`.spec.addresses`).
    Path(String),
    ServiceType,
    ClusterIp,
    ExternalIp,
    Ports,
    Selector,
}

impl Column {
    fn new(name: &str, kind: &'static str, value: Cell) -> Column {
        Column {
            name: name.into(),
            kind,
            priority: 0,
            value,
        }
    }

    fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "format": if matches!(self.value, Cell::Name) { "name" } else { "" },
            "description": "",
            "priority": self.priority,
        })
    }

    fn cell(&self, o: &Value) -> Value {
        let spec = &o["spec"];
        match &self.value {
            Cell::Name => o["metadata"]["name"].clone(),
            Cell::Age => json!(age(o["metadata"]["creationTimestamp"].as_str())),
            Cell::Path(path) => {
                let v = path
                    .trim_start_matches('.')
                    .split('.')
                    .fold(o, |v, k| &v[k]);
                match v {
                    Value::Array(_) | Value::Object(_) => json!(v.to_string()),
                    _ => v.clone(),
                }
            }
            Cell::ServiceType => spec["type"].clone(),
            Cell::ClusterIp => json!(spec["clusterIP"].as_str().unwrap_or("<none>")),
            Cell::ExternalIp => json!(external_ips(o)),
            Cell::Ports => json!(ports(spec)),
            Cell::Selector => json!(match spec["selector"].as_object() {
                Some(m) if !m.is_empty() => m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => "<none>".into(),
            }),
        }
    }
}

fn columns(collection: &str, crds: &[Value]) -> Vec<Column> {
    if collection == "/api/v1/services" {
        let mut selector = Column::new("Selector", "string", Cell::Selector);
        selector.priority = 1;
        return vec![
            Column::new("Name", "string", Cell::Name),
            Column::new("Type", "string", Cell::ServiceType),
            Column::new("Cluster-IP", "string", Cell::ClusterIp),
            Column::new("External-IP", "string", Cell::ExternalIp),
            Column::new("Port(s)", "string", Cell::Ports),
            Column::new("Age", "string", Cell::Age),
            selector,
        ];
    }
    let mut out = vec![Column::new("Name", "string", Cell::Name)];
    match super::schema::served(collection, crds).map(|s| s.columns) {
        Some(cols) if !cols.is_empty() => {
            for c in cols {
                let kind = match c["type"].as_str() {
                    Some("boolean") => "boolean",
                    Some("integer") => "integer",
                    Some("number") => "number",
                    Some("date") => "date",
                    _ => "string",
                };
                let mut col = Column::new(
                    c["name"].as_str().unwrap_or_default(),
                    kind,
                    Cell::Path(c["jsonPath"].as_str().unwrap_or_default().to_string()),
                );
                col.priority = c["priority"].as_i64().unwrap_or(0);
                out.push(col);
            }
        }
        _ => out.push(Column::new("Age", "date", Cell::Age)),
    }
    out
}

/// A Service's EXTERNAL-IP as kubectl shows it.
fn external_ips(svc: &Value) -> String {
    let spec = &svc["spec"];
    let ingress: Vec<&str> = svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
        .collect();
    let external: Vec<&str> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match spec["type"].as_str() {
        Some("LoadBalancer") => {
            let all: Vec<&str> = ingress.into_iter().chain(external).collect();
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        _ if !external.is_empty() => external.join(","),
        _ => "<none>".into(),
    }
}

/// PORT(S): `80:31234/TCP,443/TCP`.
fn ports(spec: &Value) -> String {
    let list: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(n) => format!("{}:{n}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(",")
    }
}

/// Now as RFC 3339, as the API server stamps `creationTimestamp`.
pub(super) fn timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    ferrolb_common::time::rfc3339(secs, None)
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2026-12-03T16:00:00Z`).
fn parse(ts: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// AGE as kubectl shows a duration (`45s`, `3m12s`, `5h`, `12d`).
fn age(created: Option<&str>) -> String {
    let Some(then) = created.and_then(parse) else {
        return "<unknown>".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    human(now - then)
}

fn human(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match secs {
        s if s < 0 => "0s".into(),
        s if s < 120 => format!("{s}s"),
        _ if m < 10 && secs % 60 != 0 => format!("{m}m{}s", secs % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

#[cfg(test)]
mod tests {
    use super::{human, parse, timestamp};

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        assert_eq!(human(45), "45s");
        assert_eq!(human(192), "3m12s");
        assert_eq!(human(600), "10m");
        assert_eq!(human(5 * 3600), "5h");
        assert_eq!(human(3 * 86_400 + 7200), "3d2h");
        assert_eq!(human(12 * 86_400), "12d");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_313_600);
        let ts = timestamp(at);
        assert_eq!(ts, "2026-12-03T16:00:00Z");
        assert_eq!(parse(&ts), Some(1_796_313_600));
    }
}
