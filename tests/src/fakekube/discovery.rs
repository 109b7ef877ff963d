//! API discovery as kubectl reads it: `/api`, `/apis` and each group version's resource list,
//! for the built-in resources ferrolb's tests use and for every CustomResourceDefinition the
//! server holds; and the OpenAPI v3 index (`/openapi/v3`, one document per group version) as far
//! as kubectl reads it before `apply`: which kinds take the `fieldValidation` parameter, so that
//! kubectl leaves validation to the server.

use serde_json::{Value, json};

/// A built-in resource: group, version, plural, kind, namespaced, short names, and whether it
/// has a status subresource.
type BuiltIn = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
);

const fn r(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
) -> BuiltIn {
    (group, version, plural, kind, namespaced, short, status)
}

/// The built-in resources: what the tests, the install file and the walk-through touch.
const BUILT_IN: &[BuiltIn] = &[
    r("", "v1", "namespaces", "Namespace", false, &["ns"], true),
    r("", "v1", "nodes", "Node", false, &["no"], true),
    r("", "v1", "services", "Service", true, &["svc"], true),
    r("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
    r("", "v1", "pods", "Pod", true, &["po"], true),
    r("", "v1", "secrets", "Secret", true, &[], false),
    r("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
    r("", "v1", "events", "Event", true, &["ev"], false),
    r(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
    ),
    r(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
    ),
    r("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true),
    r(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        &["sts"],
        true,
    ),
    r(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        true,
        &["rs"],
        true,
    ),
    r(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        &[],
        false,
    ),
    r(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
    ),
    r(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        true,
        &["ev"],
        false,
    ),
    r(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    ),
    r(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        &[],
        false,
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
        false,
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
        false,
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
        false,
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        false,
    ),
    r(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        &["netpol"],
        false,
    ),
    r(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        true,
    ),
    r(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        false,
        &[],
        false,
    ),
];

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One served resource, owned: a built-in one or a CRD's.
struct Served {
    group: String,
    version: String,
    plural: String,
    singular: String,
    kind: String,
    namespaced: bool,
    short: Vec<String>,
    status: bool,
}

fn served(crds: &[Value]) -> Vec<Served> {
    let mut out: Vec<Served> = BUILT_IN
        .iter()
        .map(
            |&(group, version, plural, kind, namespaced, short, status)| Served {
                group: group.into(),
                version: version.into(),
                plural: plural.into(),
                singular: kind.to_lowercase(),
                kind: kind.into(),
                namespaced,
                short: short.iter().map(|s| s.to_string()).collect(),
                status,
            },
        )
        .collect();
    for crd in crds {
        let spec = &crd["spec"];
        let names = &spec["names"];
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            out.push(Served {
                group: spec["group"].as_str().unwrap_or_default().into(),
                version: v["name"].as_str().unwrap_or_default().into(),
                plural: names["plural"].as_str().unwrap_or_default().into(),
                singular: names["singular"].as_str().unwrap_or_default().into(),
                kind: names["kind"].as_str().unwrap_or_default().into(),
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                short: names["shortNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect(),
                status: !v["subresources"]["status"].is_null(),
            });
        }
    }
    out
}

/// The discovery document at `path`, if it is one: `/api`, `/api/v1`, `/apis`, `/apis/G` or
/// `/apis/G/V`.
pub(super) fn document(path: &str, crds: &[Value], server: &str) -> Option<Value> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let all = served(crds);
    match segs.as_slice() {
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
        })),
        ["api", v] => Some(resource_list("", v, &all)),
        ["apis"] => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for s in all.iter().filter(|s| !s.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == s.group) {
                    Some((_, versions)) if !versions.contains(&s.version) => {
                        versions.push(s.version.clone())
                    }
                    Some(_) => {}
                    None => groups.push((s.group.clone(), vec![s.version.clone()])),
                }
            }
            Some(json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": groups.iter().map(|(g, vs)| group(g, vs)).collect::<Vec<_>>(),
            }))
        }
        ["apis", g] => {
            let versions: Vec<String> = all
                .iter()
                .filter(|s| s.group == *g)
                .map(|s| s.version.clone())
                .fold(Vec::new(), |mut v, x| {
                    if !v.contains(&x) {
                        v.push(x);
                    }
                    v
                });
            (!versions.is_empty()).then(|| {
                let mut d = group(g, &versions);
                d["kind"] = json!("APIGroup");
                d["apiVersion"] = json!("v1");
                d
            })
        }
        ["apis", g, v] => {
            let list = resource_list(g, v, &all);
            (!list["resources"].as_array().is_some_and(Vec::is_empty)).then_some(list)
        }
        _ => None,
    }
}

fn group(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.last().cloned().unwrap_or(Value::Null),
    })
}

fn resource_list(group: &str, version: &str, all: &[Served]) -> Value {
    let mut resources = Vec::new();
    for s in all
        .iter()
        .filter(|s| s.group == group && s.version == version)
    {
        resources.push(json!({
            "name": s.plural,
            "singularName": s.singular,
            "namespaced": s.namespaced,
            "kind": s.kind,
            "verbs": VERBS,
            "shortNames": s.short,
        }));
        if s.status {
            resources.push(json!({
                "name": format!("{}/status", s.plural),
                "singularName": "",
                "namespaced": s.namespaced,
                "kind": s.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

/// `/openapi/v3` or `/openapi/v3/api/v1`, `/openapi/v3/apis/G/V`.
pub(super) fn openapi(path: &str, crds: &[Value]) -> Option<Value> {
    let all = served(crds);
    let gv_path = |s: &Served| {
        if s.group.is_empty() {
            format!("api/{}", s.version)
        } else {
            format!("apis/{}/{}", s.group, s.version)
        }
    };
    let rest = path.strip_prefix("/openapi/v3")?;
    if rest.is_empty() || rest == "/" {
        let mut paths = serde_json::Map::new();
        for s in &all {
            let p = gv_path(s);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
            );
        }
        return Some(json!({"paths": paths}));
    }
    let wanted = rest.trim_start_matches('/');
    let mut paths = serde_json::Map::new();
    for s in all.iter().filter(|s| gv_path(s) == wanted) {
        let base = format!("/{}", gv_path(s));
        let item = if s.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", s.plural)
        } else {
            format!("{base}/{}/{{name}}", s.plural)
        };
        let gvk = json!({"group": s.group, "version": s.version, "kind": s.kind});
        let validation = json!([{
            "name": "fieldValidation", "in": "query",
            "schema": {"type": "string", "uniqueItems": true},
        }]);
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", s.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": validation,
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            item,
            json!({"patch": op("patch"), "put": op("put"), "get": op("get")}),
        );
    }
    (!paths.is_empty()).then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths,
            "components": {"schemas": {}},
        })
    })
}
