//! A small Kubernetes API server for tests and benchmarks: HTTP on 127.0.0.1, real Kubernetes
//! JSON, any resource of any group (core `/api/v1`, and `/apis/GROUP/VERSION`), namespaced or
//! not. It lists and watches with resourceVersion (history replay, bookmarks-free, `410 Gone` for
//! history it no longer keeps), creates, replaces (with resourceVersion conflicts), patches
//! (merge, strategic-merge and apply patches are applied as JSON merge patches), deletes, and
//! serves the status subresource. It is enough to drive kube-runtime's watchers and controllers,
//! recorders and leases, not a mock of them. It answers kubectl's discovery (`/api`, `/apis`,
//! each group version's resources with their kinds, short names and scope) for the built-in
//! resources ferrolb touches and every CustomResourceDefinition it holds, so `kubectl get`
//! resolves `svc` or `ipaddresspools`, and prints server-side (Tables, in lists and in `get -w`
//! watches: a Service's NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE, a CRD's
//! `additionalPrinterColumns`). Its OpenAPI index
//! tells kubectl that every kind takes `fieldValidation`, so `kubectl apply` (client-side and
//! `--server-side`) and `kubectl delete` work. It keeps and answers JSON, and reads the protobuf
//! kubectl's typed commands send (`create namespace`, `create deployment`, `expose`) for those
//! kinds; other protobuf bodies get 415. A new Service
//! gets a ClusterIP (10.96.0.0/12, from 10.96.0.10) and node ports, as the real server gives them.
//! [`FakeKube::start`] installs MetalLB's CRDs (`start_empty` does not). Objects written over
//! HTTP to a collection a stored CRD serves are pruned (refused with 400 under
//! `fieldValidation=Strict`), defaulted and checked against its schema (422 naming the field; a
//! status write is checked in its status only, as validation ratcheting lets the rest stand);
//! [`FakeKube::put`] stores as given, for tests that need an object no schema would pass. Writes
//! and deletes over HTTP then go to the validating webhooks that ValidatingWebhookConfigurations register
//! (HTTPS, checked against their caBundle; a denial or, under failurePolicy Fail, an unreachable
//! webhook refuses the write). Not modelled: mutating webhooks, built-in kinds' validation, CEL
//! rules, patterns.

mod admission;
mod discovery;
mod protobuf;
mod schema;
mod table;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Where an object lives: the collection (`/api/v1/services`, `/apis/metallb.io/v1beta1/…`),
/// and its namespace ("" for cluster-scoped objects).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    collection: String,
    namespace: String,
    name: String,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    collection: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Events older than this are forgotten: watches from before it get 410 Gone.
    compacted: u64,
    uid: u64,
    /// The last ClusterIP (in 10.96.0.0/12, from 10.96.0.10) and node port handed out.
    cluster_ips: u32,
    node_ports: u16,
    /// Tokens TokenReview authenticates: token → (username, node, audiences).
    tokens: BTreeMap<String, (String, Option<String>, Vec<String>)>,
    /// Every PATCH: (path, patch type, field manager).
    patches: Vec<Patched>,
}

/// One PATCH the server took: the request path, the patch type (`apply`, `merge`, ...) and the
/// field manager it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patched {
    pub path: String,
    pub kind: String,
    pub manager: String,
}

/// The API server's shared state; cloned handles see the same objects.
#[derive(Clone)]
pub struct FakeKube {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    pub url: String,
}

/// Which part of an API path was asked for.
struct Target {
    collection: String,
    /// The request's namespace (None: every namespace, or cluster-scoped).
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let t = |plural: &str, namespace: Option<&str>, name: Option<&str>, status: bool| Target {
        collection: format!("{prefix}/{plural}"),
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        status,
    };
    Some(match rest {
        ["namespaces", ns, plural] => t(plural, Some(ns), None, false),
        ["namespaces", ns, plural, name] => t(plural, Some(ns), Some(name), false),
        ["namespaces", ns, plural, name, "status"] => t(plural, Some(ns), Some(name), true),
        [plural] => t(plural, None, None, false),
        [plural, name] => t(plural, None, Some(name), false),
        [plural, name, "status"] => t(plural, None, Some(name), true),
        _ => return None,
    })
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("just made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

/// `%XX` escapes of a query value.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `labelSelector=a=b,c=d` (equality terms only).
fn selected(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v.trim_start_matches('=')),
        None => !obj["metadata"]["labels"][term].is_null(),
    })
}

/// `fieldSelector=type=x,metadata.name=y` (equality terms on dotted paths only).
fn fields_selected(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let Some((path, want)) = term.split_once('=') else {
            return false;
        };
        let got = path.split('.').fold(obj, |v, k| &v[k]);
        got.as_str() == Some(want.trim_start_matches('='))
    })
}

impl FakeKube {
    /// Starts the server on a free port of 127.0.0.1, with MetalLB's CRDs installed (as after
    /// `kubectl apply -f deploy/ferrolb-native.yaml`): what is written over HTTP meets their
    /// schemas.
    pub async fn start() -> FakeKube {
        let kube = FakeKube::start_empty().await;
        kube.install_crds();
        kube
    }

    /// Starts the server with nothing in it, not even MetalLB's CRDs.
    pub async fn start_empty() -> FakeKube {
        FakeKube::start_on("127.0.0.1:0").await
    }

    /// Stores MetalLB's CRDs, from `deploy/crds/metallb.io.yaml`.
    pub fn install_crds(&self) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds/metallb.io.yaml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let crd: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !crd.is_null() {
                self.put(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                    crd,
                );
            }
        }
    }

    /// Starts the server on `addr`, empty.
    pub async fn start_on(addr: &str) -> FakeKube {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {addr} for the fake API server: {e}"));
        let addr = listener.local_addr().expect("its address");
        let (changes, _) = broadcast::channel(100_000);
        let fake = FakeKube {
            state: Arc::new(Mutex::new(State::default())),
            changes,
            url: format!("http://{addr}"),
        };
        let handler = fake.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let h = handler.clone();
                async move { h.handle(method, uri, headers, body).await }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    /// A kubeconfig file that points at this server, for binaries.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            self.url
        );
        std::fs::write(path, text).expect("write the kubeconfig");
    }

    /// A token that TokenReview authenticates as `username` (a pod on `node`) for `audiences`.
    pub fn allow_token(&self, token: &str, username: &str, node: Option<&str>, audiences: &[&str]) {
        let mut s = self.state.lock().expect("state");
        s.tokens.insert(
            token.to_string(),
            (
                username.to_string(),
                node.map(str::to_string),
                audiences.iter().map(|a| a.to_string()).collect(),
            ),
        );
    }

    /// TokenReview, as the API server answers it: authenticated for the audiences asked for.
    fn token_review(&self, body: &Value) -> Response {
        let token = body["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<String> = body["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let s = self.state.lock().expect("state");
        let status = match s.tokens.get(token) {
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
            Some((_, _, auds)) if !asked.iter().any(|a| auds.contains(a)) => json!({
                "authenticated": false,
                "error": "token audiences are invalid for the target audiences",
            }),
            Some((user, node, auds)) => {
                let mut extra = json!({});
                if let Some(n) = node {
                    extra["authentication.kubernetes.io/node-name"] = json!([n]);
                }
                json!({
                    "authenticated": true,
                    "user": {"username": user, "extra": extra},
                    "audiences": auds.iter().filter(|a| asked.contains(a)).collect::<Vec<_>>(),
                })
            }
        };
        ok(
            StatusCode::CREATED,
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "metadata": {}, "spec": body["spec"], "status": status}),
        )
    }

    /// Forgets all history up to now: watches that resume from before get 410 Gone.
    pub fn compact(&self) {
        let mut s = self.state.lock().expect("state");
        s.compacted = s.rv;
        s.history.clear();
    }

    /// The stored object, if any (`collection` as in the API path, e.g. `/api/v1/services`).
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().expect("state");
        s.objects
            .get(&Key {
                collection: collection.into(),
                namespace: namespace.into(),
                name: name.into(),
            })
            .cloned()
    }

    /// Every PATCH so far.
    pub fn patches(&self) -> Vec<Patched> {
        self.state.lock().expect("state").patches.clone()
    }

    /// Every object of a collection.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let s = self.state.lock().expect("state");
        s.objects
            .iter()
            .filter(|(k, _)| k.collection == collection)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object, as `kubectl apply` of a whole object would.
    pub fn put(&self, collection: &str, mut obj: Value) -> Value {
        let namespace = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = Key {
            collection: collection.into(),
            namespace,
            name,
        };
        let mut s = self.state.lock().expect("state");
        let kind = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if let Some(old) = s.objects.get(&key) {
            obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
            obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        self.store(&mut s, key, obj, kind)
    }

    /// Deletes an object; false if there was none.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) -> bool {
        let key = Key {
            collection: collection.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        let mut s = self.state.lock().expect("state");
        let Some(obj) = s.objects.remove(&key) else {
            return false;
        };
        s.rv += 1;
        let rv = s.rv;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            collection: key.collection,
            namespace: key.namespace,
            kind: "DELETED",
            object: obj,
        };
        s.history.push(change.clone());
        let _ = self.changes.send(change);
        true
    }

    fn store(&self, s: &mut State, key: Key, mut obj: Value, kind: &'static str) -> Value {
        s.rv += 1;
        let rv = s.rv;
        if obj["metadata"]["uid"].is_null() {
            s.uid += 1;
            obj["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", s.uid));
            obj["metadata"]["creationTimestamp"] =
                json!(table::timestamp(std::time::SystemTime::now()));
            if key.collection == "/api/v1/services" {
                allocate_service_addresses(s, &mut obj);
            }
        }
        if !key.namespace.is_empty() {
            obj["metadata"]["namespace"] = json!(key.namespace);
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.objects.insert(key.clone(), obj.clone());
        let change = Change {
            rv,
            collection: key.collection,
            namespace: key.namespace,
            kind,
            object: obj.clone(),
        };
        s.history.push(change.clone());
        let _ = self.changes.send(change);
        obj
    }

    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        // The CRDs and webhooks before any lock is taken: the schemas, discovery, printing and
        // admission read them.
        let crds = self.crds();
        let webhooks =
            self.list("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations");
        if method == Method::GET {
            let server = self.url.trim_start_matches("http://");
            if let Some(doc) = discovery::document(uri.path(), &crds, server)
                .or_else(|| discovery::openapi(uri.path(), &crds))
            {
                return ok(StatusCode::OK, &doc);
            }
        }
        let Some(t) = parse_path(uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no such path {}", uri.path()),
            );
        };
        let q = query(&uri);
        let as_table = table::wanted(headers.get("accept").and_then(|a| a.to_str().ok()));
        let body: Value = if body.is_empty() {
            Value::Null
        } else if protobuf::is_protobuf(&body) {
            // kubectl's typed commands (create, expose) write protobuf.
            match protobuf::to_json(&body) {
                Ok(v) => v,
                Err(e) => {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        e,
                    );
                }
            }
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", format!("body: {e}"));
                }
            }
        };
        if method == Method::POST && t.collection == "/apis/authentication.k8s.io/v1/tokenreviews" {
            return self.token_review(&body);
        }
        match (method, &t.name) {
            (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(t, q, as_table.then_some(crds))
            }
            (Method::GET, None) => self.list_response(&t, &q, as_table),
            (Method::GET, Some(name)) => {
                let object = self
                    .state
                    .lock()
                    .expect("state")
                    .objects
                    .get(&key(&t, name))
                    .cloned();
                match object {
                    Some(o) if as_table => ok(StatusCode::OK, &self.table(&t, &[o])),
                    Some(o) => ok(StatusCode::OK, &o),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{name} not found"),
                    ),
                }
            }
            (Method::POST, None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| {
                        body["metadata"]["generateName"].as_str().map(|g| {
                            let s = self.state.lock().expect("state");
                            format!("{g}{:05}", s.uid + 1)
                        })
                    });
                let Some(name) = name else {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "metadata.name is required",
                    );
                };
                let k = key(&t, &name);
                let mut obj = body;
                obj["metadata"]["name"] = json!(name);
                if let Some(refused) = admit(&t, &mut obj, &q, &crds) {
                    return refused;
                }
                if let Some(refused) = ask_webhooks(&webhooks, &t, "CREATE", &obj, None).await {
                    return refused;
                }
                let mut s = self.state.lock().expect("state");
                if s.objects.contains_key(&k) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{name} already exists"),
                    );
                }
                ok(StatusCode::CREATED, &self.store(&mut s, k, obj, "ADDED"))
            }
            (Method::PUT, Some(name)) => {
                let k = key(&t, name);
                let existing = self.state.lock().expect("state").objects.get(&k).cloned();
                let Some(old) = existing else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{name} not found"),
                    );
                };
                let sent_rv = body["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                if !sent_rv.is_empty()
                    && Some(sent_rv) != old["metadata"]["resourceVersion"].as_str()
                {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    );
                }
                let mut obj = if t.status {
                    let mut o = old.clone();
                    o["status"] = body["status"].clone();
                    o
                } else {
                    let mut o = body;
                    o["status"] = old["status"].clone();
                    o
                };
                obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                if let Some(refused) = admit(&t, &mut obj, &q, &crds) {
                    return refused;
                }
                if let Some(refused) = ask_webhooks(&webhooks, &t, "UPDATE", &obj, Some(&old)).await
                {
                    return refused;
                }
                let mut s = self.state.lock().expect("state");
                ok(StatusCode::OK, &self.store(&mut s, k, obj, "MODIFIED"))
            }
            (Method::PATCH, Some(name)) => {
                let content = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if content.contains("json-patch") {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        "JSON patches are not supported here",
                    );
                }
                let k = key(&t, name);
                let apply = content.contains("apply-patch");
                let kind = if apply {
                    "apply"
                } else if content.contains("strategic") {
                    "strategic"
                } else {
                    "merge"
                };
                let existing = {
                    let mut s = self.state.lock().expect("state");
                    s.patches.push(Patched {
                        path: uri.path().to_string(),
                        kind: kind.into(),
                        manager: q.get("fieldManager").cloned().unwrap_or_default(),
                    });
                    s.objects.get(&k).cloned()
                };
                let existed = existing.is_some();
                let old = match existing {
                    Some(o) => o,
                    None if apply => {
                        json!({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": name}})
                    }
                    None => {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("{name} not found"),
                        );
                    }
                };
                let mut patch = body;
                if let Some(p) = patch.as_object_mut() {
                    // The status subresource changes only the status, the object never it.
                    if t.status {
                        p.retain(|k, _| k == "status");
                    } else {
                        p.remove("status");
                    }
                    if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                        m.remove("managedFields");
                    }
                }
                let mut obj = old.clone();
                merge(&mut obj, &patch);
                if let Some(refused) = admit(&t, &mut obj, &q, &crds) {
                    return refused;
                }
                let (op, before) = if existed {
                    ("UPDATE", Some(&old))
                } else {
                    ("CREATE", None)
                };
                if let Some(refused) = ask_webhooks(&webhooks, &t, op, &obj, before).await {
                    return refused;
                }
                let mut s = self.state.lock().expect("state");
                let kind = if s.objects.contains_key(&k) {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                ok(StatusCode::OK, &self.store(&mut s, k, obj, kind))
            }
            (Method::DELETE, Some(name)) => {
                let k = key(&t, name);
                let old = self.state.lock().expect("state").objects.get(&k).cloned();
                if let Some(o) = &old
                    && let Some(refused) =
                        ask_webhooks(&webhooks, &t, "DELETE", &Value::Null, Some(o)).await
                {
                    return refused;
                }
                match old {
                    Some(o) if self.delete(&k.collection, &k.namespace, &k.name) => {
                        ok(StatusCode::OK, &o)
                    }
                    _ => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{name} not found"),
                    ),
                }
            }
            (m, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} here"),
            ),
        }
    }

    fn crds(&self) -> Vec<Value> {
        self.list("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    }

    /// `objects` of `t`'s collection as a Table, for kubectl's printing.
    fn table(&self, t: &Target, objects: &[Value]) -> Value {
        let crds = self.crds();
        let rv = self.state.lock().expect("state").rv;
        table::of(&t.collection, objects, &crds, rv)
    }

    fn list_response(&self, t: &Target, q: &BTreeMap<String, String>, as_table: bool) -> Response {
        let s = self.state.lock().expect("state");
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|(k, _)| k.collection == t.collection)
            .filter(|(k, _)| t.namespace.as_ref().is_none_or(|n| &k.namespace == n))
            .filter(|(_, v)| selected(v, q.get("labelSelector")))
            .filter(|(_, v)| fields_selected(v, q.get("fieldSelector")))
            .map(|(_, v)| v.clone())
            .collect();
        if as_table {
            drop(s);
            return ok(StatusCode::OK, &self.table(t, &items));
        }
        let list = json!({
            "kind": "List", "apiVersion": "v1",
            "metadata": {"resourceVersion": s.rv.to_string()},
            "items": items,
        });
        ok(StatusCode::OK, &list)
    }

    /// A watch; with `tables` (the CRDs, for kubectl's `get -w`), each event carries its object
    /// as a one-row Table, the first one with the column definitions.
    fn watch(
        &self,
        t: Target,
        q: BTreeMap<String, String>,
        tables: Option<Vec<Value>>,
    ) -> Response {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|r| r.parse().ok())
            .unwrap_or(290u64);
        let selector = q.get("labelSelector").cloned();
        let fields = q.get("fieldSelector").cloned();
        let mut rx = self.changes.subscribe();
        let (replay, gone) = {
            let s = self.state.lock().expect("state");
            let gone = from != 0 && from < s.compacted;
            let replay: Vec<Change> = s.history.iter().filter(|c| c.rv > from).cloned().collect();
            (replay, gone)
        };
        let matches = {
            let t_collection = t.collection.clone();
            let t_namespace = t.namespace.clone();
            move |c: &Change| {
                c.collection == t_collection
                    && t_namespace.as_ref().is_none_or(|n| &c.namespace == n)
                    && selected(&c.object, selector.as_ref())
                    && fields_selected(&c.object, fields.as_ref())
            }
        };
        let collection = t.collection.clone();
        let mut first = true;
        let mut line = move |c: &Change| {
            let object = match &tables {
                Some(crds) => {
                    let mut table =
                        table::of(&collection, std::slice::from_ref(&c.object), crds, c.rv);
                    if !std::mem::take(&mut first) {
                        table["columnDefinitions"] = json!([]);
                    }
                    table
                }
                None => c.object.clone(),
            };
            format!("{}\n", json!({"type": c.kind, "object": object}))
        };
        let stream = async_stream(move |tx| async move {
            if gone {
                let err = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
                    "code": 410, "message": format!("too old resource version: {from}"),
                }});
                let _ = tx.send(format!("{err}\n")).await;
                return;
            }
            let mut last = from;
            for c in replay.iter().filter(|c| matches(c)) {
                last = c.rv;
                if tx.send(line(c)).await.is_err() {
                    return;
                }
            }
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    c = rx.recv() => match c {
                        Ok(c) if c.rv > last && matches(&c) => {
                            last = c.rv;
                            if tx.send(line(&c)).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from_stream(
                stream.map(Ok::<_, std::convert::Infallible>),
            ))
            .expect("a streaming response")
    }
}

/// What the real API server gives a new Service: a ClusterIP from the service CIDR (unless it
/// names one, or is headless or an ExternalName), and node ports for NodePort and LoadBalancer
/// Services (unless `allocateLoadBalancerNodePorts: false`).
fn allocate_service_addresses(s: &mut State, svc: &mut Value) {
    let spec = &mut svc["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if kind != "ExternalName" && spec["clusterIP"].is_null() {
        s.cluster_ips += 1;
        let n = 9 + s.cluster_ips;
        let ip = format!("10.96.{}.{}", n / 256, n % 256);
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
    }
    let node_ports = kind == "NodePort"
        || (kind == "LoadBalancer"
            && spec["allocateLoadBalancerNodePorts"].as_bool() != Some(false));
    if node_ports && let Some(ports) = spec["ports"].as_array_mut() {
        for p in ports.iter_mut().filter(|p| p["nodePort"].is_null()) {
            s.node_ports += 1;
            p["nodePort"] = json!(30_000 + (s.node_ports % 2768));
        }
    }
}

/// Makes an object written to `t`'s collection what its CRD's schema says (pruned, defaulted),
/// or gives the API server's refusal.
fn admit(
    t: &Target,
    obj: &mut Value,
    q: &BTreeMap<String, String>,
    crds: &[Value],
) -> Option<Response> {
    let served = schema::served(&t.collection, crds)?;
    let strict = q.get("fieldValidation").is_some_and(|v| v == "Strict");
    match served.admit(obj, strict, t.status) {
        Ok(()) => None,
        Err(schema::Refusal::Unknown(m)) => Some(status(StatusCode::BAD_REQUEST, "BadRequest", m)),
        Err(schema::Refusal::Invalid(m)) => {
            Some(status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m))
        }
    }
}

/// The validating webhooks' verdict on a write to `t`'s collection (the status subresource is
/// not reviewed), or the API server's refusal.
async fn ask_webhooks(
    webhooks: &[Value],
    t: &Target,
    operation: &'static str,
    object: &Value,
    old: Option<&Value>,
) -> Option<Response> {
    if webhooks.is_empty() || t.status {
        return None;
    }
    let segs: Vec<&str> = t.collection.trim_matches('/').split('/').collect();
    let (group, version, resource) = match segs.as_slice() {
        ["api", v, r] => ("", *v, *r),
        ["apis", g, v, r] => (*g, *v, *r),
        _ => return None,
    };
    let write = admission::Write {
        operation,
        group,
        version,
        resource,
        object,
        old,
    };
    let (code, message) = admission::review(webhooks, &write).await?;
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    Some(status(
        code,
        code.canonical_reason().unwrap_or("Invalid"),
        message,
    ))
}

fn key(t: &Target, name: &str) -> Key {
    Key {
        collection: t.collection.clone(),
        namespace: t.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = String>
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
