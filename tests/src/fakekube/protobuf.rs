//! The Kubernetes protobuf encoding, read as far as kubectl's typed commands write it
//! (`kubectl create namespace`, `kubectl create deployment`, `kubectl expose`): the `k8s\0`
//! envelope (runtime.Unknown) around a Namespace, Deployment or Service, turned into the JSON the
//! rest of the server keeps. Fields these commands do not set are not read.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::{Value, json};

const MAGIC: &[u8] = b"k8s\0";

#[derive(Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

#[derive(Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(Message)]
struct ObjectMeta {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    generate_name: String,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
}

/// Namespace, Deployment and Service alike: metadata, then a spec.
#[derive(Message)]
struct Object {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(bytes = "vec", tag = "2")]
    spec: Vec<u8>,
}

#[derive(Message)]
struct DeploymentSpec {
    #[prost(int32, optional, tag = "1")]
    replicas: Option<i32>,
    #[prost(message, optional, tag = "2")]
    selector: Option<LabelSelector>,
    #[prost(message, optional, tag = "3")]
    template: Option<PodTemplateSpec>,
}

#[derive(Message)]
struct LabelSelector {
    #[prost(btree_map = "string, string", tag = "1")]
    match_labels: BTreeMap<String, String>,
}

#[derive(Message)]
struct PodTemplateSpec {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<PodSpec>,
}

#[derive(Message)]
struct PodSpec {
    #[prost(message, repeated, tag = "2")]
    containers: Vec<Container>,
}

#[derive(Message)]
struct Container {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    image: String,
    #[prost(message, repeated, tag = "6")]
    ports: Vec<ContainerPort>,
}

#[derive(Message)]
struct ContainerPort {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "3")]
    container_port: i32,
    #[prost(string, tag = "4")]
    protocol: String,
}

#[derive(Message)]
struct ServiceSpec {
    #[prost(message, repeated, tag = "1")]
    ports: Vec<ServicePort>,
    #[prost(btree_map = "string, string", tag = "2")]
    selector: BTreeMap<String, String>,
    #[prost(string, tag = "3")]
    cluster_ip: String,
    #[prost(string, tag = "4")]
    type_: String,
    #[prost(string, tag = "8")]
    load_balancer_ip: String,
    #[prost(string, tag = "11")]
    external_traffic_policy: String,
}

#[derive(Message)]
struct ServicePort {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    protocol: String,
    #[prost(int32, tag = "3")]
    port: i32,
    #[prost(message, optional, tag = "4")]
    target_port: Option<IntOrString>,
    #[prost(int32, tag = "5")]
    node_port: i32,
}

#[derive(Message)]
struct IntOrString {
    #[prost(int64, tag = "1")]
    kind: i64,
    #[prost(int32, tag = "2")]
    int_val: i32,
    #[prost(string, tag = "3")]
    str_val: String,
}

/// Whether `body` is in the protobuf encoding.
pub(super) fn is_protobuf(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// The object in `body` as JSON, or why it cannot be read.
pub(super) fn to_json(body: &[u8]) -> Result<Value, String> {
    let bytes = body
        .strip_prefix(MAGIC)
        .ok_or("not the k8s protobuf envelope")?;
    let unknown = Unknown::decode(bytes).map_err(|e| e.to_string())?;
    let tm = unknown.type_meta.ok_or("no type in the envelope")?;
    let object = Object::decode(unknown.raw.as_slice()).map_err(|e| e.to_string())?;
    let spec = match tm.kind.as_str() {
        "Namespace" => json!({}),
        "Deployment" => deployment(&object.spec)?,
        "Service" => service(&object.spec)?,
        other => {
            return Err(format!(
                "the lab API server reads {other} in JSON only (kubectl apply sends JSON)"
            ));
        }
    };
    let mut out = json!({
        "apiVersion": tm.api_version,
        "kind": tm.kind,
        "metadata": meta(object.metadata.as_ref()),
    });
    if tm.kind != "Namespace" {
        out["spec"] = spec;
    }
    Ok(out)
}

fn meta(m: Option<&ObjectMeta>) -> Value {
    let Some(m) = m else {
        return json!({});
    };
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_string(), v);
    };
    for (k, v) in [
        ("name", &m.name),
        ("generateName", &m.generate_name),
        ("namespace", &m.namespace),
    ] {
        if !v.is_empty() {
            put(k, json!(v));
        }
    }
    if !m.labels.is_empty() {
        put("labels", json!(m.labels));
    }
    if !m.annotations.is_empty() {
        put("annotations", json!(m.annotations));
    }
    Value::Object(out)
}

fn deployment(spec: &[u8]) -> Result<Value, String> {
    let s = DeploymentSpec::decode(spec).map_err(|e| e.to_string())?;
    let template = s.template.unwrap_or_default();
    let containers: Vec<Value> = template
        .spec
        .unwrap_or_default()
        .containers
        .iter()
        .map(|c| {
            let ports: Vec<Value> = c
                .ports
                .iter()
                .map(|p| json!({"containerPort": p.container_port, "protocol": p.protocol}))
                .collect();
            let mut v = json!({"name": c.name, "image": c.image});
            if !ports.is_empty() {
                v["ports"] = json!(ports);
            }
            v
        })
        .collect();
    Ok(json!({
        "replicas": s.replicas.unwrap_or(1),
        "selector": {"matchLabels": s.selector.unwrap_or_default().match_labels},
        "template": {
            "metadata": meta(template.metadata.as_ref()),
            "spec": {"containers": containers},
        },
    }))
}

fn service(spec: &[u8]) -> Result<Value, String> {
    let s = ServiceSpec::decode(spec).map_err(|e| e.to_string())?;
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({"port": p.port, "protocol": if p.protocol.is_empty() { "TCP" } else { &p.protocol }});
            if !p.name.is_empty() {
                v["name"] = json!(p.name);
            }
            if let Some(t) = &p.target_port {
                v["targetPort"] = if t.kind == 1 { json!(t.str_val) } else { json!(t.int_val) };
            }
            if p.node_port != 0 {
                v["nodePort"] = json!(p.node_port);
            }
            v
        })
        .collect();
    let mut out = json!({
        "ports": ports,
        "type": if s.type_.is_empty() { "ClusterIP" } else { &s.type_ },
    });
    if !s.selector.is_empty() {
        out["selector"] = json!(s.selector);
    }
    for (k, v) in [
        ("clusterIP", &s.cluster_ip),
        ("loadBalancerIP", &s.load_balancer_ip),
        ("externalTrafficPolicy", &s.external_traffic_policy),
    ] {
        if !v.is_empty() {
            out[k] = json!(v);
        }
    }
    Ok(out)
}
