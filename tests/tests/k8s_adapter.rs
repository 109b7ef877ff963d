//! The Kubernetes adapter against the fake API server (real Kubernetes JSON, list and watch) and
//! a real allocator: the home-lab scenario's YAML applied unchanged gives `default/home-nginx`
//! 192.168.1.240 in its status, with MetalLB's annotation and event; deleting the Service
//! releases the address; a watch that lost its history (410 Gone) recovers. Services that
//! MetalLB served keep their addresses, restarts move nothing, and two clusters share a pool.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrolb_e2e::fakekube::FakeKube;
use ferrolb_e2e::home::scenarios;
use ferrolb_e2e::{Allocator, TempDir, bin};
use serde::Deserialize;
use serde_json::{Value, json};

const SERVICES: &str = "/api/v1/services";

/// Where a kind lives in the API.
fn collection(kind: &str) -> &'static str {
    match kind {
        "IPAddressPool" => "/apis/metallb.io/v1beta1/ipaddresspools",
        "L2Advertisement" => "/apis/metallb.io/v1beta1/l2advertisements",
        "BGPAdvertisement" => "/apis/metallb.io/v1beta1/bgpadvertisements",
        "BGPPeer" => "/apis/metallb.io/v1beta2/bgppeers",
        "Community" => "/apis/metallb.io/v1beta1/communities",
        "BFDProfile" => "/apis/metallb.io/v1beta1/bfdprofiles",
        "Secret" => "/api/v1/secrets",
        other => panic!("no collection for {other}"),
    }
}

/// `kubectl apply -f FILE`, unchanged.
fn apply_file(kube: &FakeKube, file: &str) {
    let text = std::fs::read_to_string(scenarios().join(file)).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
        if v.is_null() {
            continue;
        }
        kube.put(collection(v["kind"].as_str().unwrap()), v);
    }
}

fn service(name: &str, ports: &[(u16, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": name},
            "ports": ports.iter().map(|(p, proto)| json!({"port": p, "protocol": proto})).collect::<Vec<_>>(),
        },
        "status": {"loadBalancer": {}},
    })
}

fn slice(service: &str, nodes: &[&str]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abc"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": nodes.iter().enumerate().map(|(i, n)| json!({
            "addresses": [format!("10.244.0.{}", i + 10)],
            "conditions": {"ready": true, "serving": true},
            "nodeName": n,
        })).collect::<Vec<_>>(),
    })
}

fn ingress(kube: &FakeKube, name: &str) -> Vec<String> {
    kube.get(SERVICES, "default", name)
        .map(|s| {
            s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Adapter(Child, u16);

impl Adapter {
    fn start(kube: &FakeKube, alloc: &Allocator, dir: &TempDir) -> Adapter {
        Adapter::for_cluster(kube, alloc, dir, "home")
    }

    fn for_cluster(kube: &FakeKube, alloc: &Allocator, dir: &TempDir, cluster: &str) -> Adapter {
        Adapter::spawn(Adapter::command(
            kube,
            alloc,
            dir,
            cluster,
            &format!("adapter-{cluster}"),
            "15",
        ))
    }

    fn spawn((mut cmd, port): (Command, u16)) -> Adapter {
        Adapter(cmd.spawn().expect("start ferrolb-k8s-adapter"), port)
    }

    /// The command that starts an adapter replica called `pod`, whose leader lease lasts
    /// `lease_seconds`, and its metrics port.
    fn command(
        kube: &FakeKube,
        alloc: &Allocator,
        dir: &TempDir,
        cluster: &str,
        pod: &str,
        lease_seconds: &str,
    ) -> (Command, u16) {
        let config = dir.0.join(format!("kubeconfig-{cluster}"));
        kube.kubeconfig(&config);
        let port = ferrolb_e2e::free_port();
        let mut cmd = Command::new(bin("ferrolb-k8s-adapter"));
        cmd.args(["--allocator", &alloc.url(), "--cluster", cluster])
            .args(ferrolb_e2e::test_pki().args(&format!("cluster/{cluster}")))
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(["--lease-seconds", lease_seconds])
            .env("POD_NAME", pod)
            .env("KUBECONFIG", &config)
            .env(
                "FERROLB_LOG",
                std::env::var("FERROLB_E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null());
        (cmd, port)
    }

    /// A figure from the adapter's metrics, if it is there.
    fn metric(&self, line_start: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{}/metrics", self.1)])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(line_start).map(|v| v.trim().to_string()))
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_yaml_gives_home_nginx_its_address() {
    let kube = FakeKube::start().await;
    let alloc = Allocator::start(None, &[]);
    let dir = TempDir::new("ferrolb-adapter");
    kube.put(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    );
    apply_file(&kube, "home-ip-pool.yaml");
    let adapter = Adapter::start(&kube, &alloc, &dir);

    // kubectl expose deployment nginx --type=LoadBalancer --port=80
    kube.put(SERVICES, service("home-nginx", &[(80, "TCP")]));
    kube.put(
        "/apis/discovery.k8s.io/v1/endpointslices",
        slice("home-nginx", &["n1", "n2"]),
    );
    let k = kube.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "home-nginx gets 192.168.1.240",
            Duration::from_secs(20),
            || ingress(&k, "home-nginx") == ["192.168.1.240"],
        )
    })
    .await
    .unwrap();
    // How long it took, from the Service's creation (one Service, well under 10 s).
    wait_for(
        "the time to address recorded",
        Duration::from_secs(2),
        || adapter.metric("ferrolb_adapter_service_address_seconds_count") == Some("1".into()),
    );
    let within_10s = adapter.metric("ferrolb_adapter_service_address_seconds_bucket{le=\"10.24\"}");
    assert_eq!(within_10s.as_deref(), Some("1"));
    // MetalLB's annotation and event follow.
    let k = kube.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "the annotation and the IPAllocated event",
            Duration::from_secs(10),
            || {
                let svc = k.get(SERVICES, "default", "home-nginx").unwrap();
                let events = k.list("/apis/events.k8s.io/v1/events");
                svc["metadata"]["annotations"]["metallb.io/ip-allocated-from-pool"] == "home-pool"
                    && events.iter().any(|e| {
                        e["reason"] == "IPAllocated" && e["regarding"]["name"] == "home-nginx"
                    })
            },
        )
    })
    .await
    .unwrap();

    // The pool's status counts what is used (MetalLB's fields).
    let k = kube.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the pool's counts", Duration::from_secs(10), || {
            let p = k
                .get(
                    "/apis/metallb.io/v1beta1/ipaddresspools",
                    "metallb-system",
                    "home-pool",
                )
                .unwrap();
            p["status"]["assignedIPv4"] == 1 && p["status"]["availableIPv4"] == 5
        })
    })
    .await
    .unwrap();
    // Every write is a server-side apply under one of ferrolb's field managers: the Service's
    // status and annotation as "ferrolb", the pool's counts and conditions as their own.
    let patches = kube.patches();
    let by = |path: &str| -> Vec<(String, String)> {
        patches
            .iter()
            .filter(|p| p.path.ends_with(path))
            .map(|p| (p.kind.clone(), p.manager.clone()))
            .collect()
    };
    let apply = |m: &str| ("apply".to_string(), m.to_string());
    assert!(
        by("/services/home-nginx/status").contains(&apply("ferrolb")),
        "{patches:?}"
    );
    assert!(
        by("/services/home-nginx").contains(&apply("ferrolb")),
        "{patches:?}"
    );
    let pool_status = by("/ipaddresspools/home-pool/status");
    assert!(
        pool_status.contains(&apply("ferrolb-pool-usage")),
        "{patches:?}"
    );
    assert!(
        pool_status.contains(&apply("ferrolb-conditions")),
        "{patches:?}"
    );
    // Events are the exception: a repeated event is counted in its series by a merge patch, as
    // the event recorder of client-go and kube-rs does.
    assert!(
        patches
            .iter()
            .filter(|p| !p.path.starts_with("/apis/events.k8s.io/"))
            .all(|p| p.kind == "apply" && p.manager.starts_with("ferrolb")),
        "{patches:?}"
    );

    // The allocator knows the Service's endpoints and the cluster's advertisement.
    let mut ipam = alloc.client("cluster/home").await;
    let lease = ipam
        .get_lease(ferrolb_proto::v1::GetLeaseRequest {
            owner: Some(ferrolb_e2e::service("home", "default", "home-nginx")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.ips, ["192.168.1.240"]);

    // A watch that lost its history starts over (410 Gone), and the next Service is served.
    kube.compact();
    kube.put(SERVICES, service("second", &[(443, "TCP")]));
    let k = kube.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "second gets the next address",
            Duration::from_secs(20),
            || ingress(&k, "second") == ["192.168.1.241"],
        )
    })
    .await
    .unwrap();

    // The Service goes away: its address is released.
    assert!(kube.delete(SERVICES, "default", "home-nginx"));
    let url = alloc.url();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        wait_for("the lease is released", Duration::from_secs(20), || {
            rt.block_on(async {
                let mut c = ferrolb_e2e::client(&url, "cluster/home").await;
                c.get_lease(ferrolb_proto::v1::GetLeaseRequest {
                    owner: Some(ferrolb_e2e::service("home", "default", "home-nginx")),
                })
                .await
                .is_err_and(|s| s.code() == tonic::Code::NotFound)
            })
        })
    })
    .await
    .unwrap();
}

/// Waits, off the runtime's threads, until `name` shows exactly `ips`.
async fn until_ingress(kube: &FakeKube, name: &str, ips: &[&str]) {
    let (k, name) = (kube.clone(), name.to_string());
    let want: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        wait_for(
            &format!("{name} shows {want:?}"),
            Duration::from_secs(20),
            || ingress(&k, &name) == want,
        )
    })
    .await
    .unwrap();
}

fn with_status(mut svc: Value, ip: &str) -> Value {
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
    svc
}

/// Services that MetalLB gave addresses keep exactly those when ferrolb takes over, and no
/// address changes when the adapter and the allocator restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_and_restarts_keep_every_address() {
    let kube = FakeKube::start().await;
    let db = ferrolb_e2e::PgDb::new();
    let dir = TempDir::new("ferrolb-adapter");
    apply_file(&kube, "home-ip-pool.yaml");
    // As MetalLB left them: not in address order.
    kube.put(
        SERVICES,
        with_status(service("web", &[(80, "TCP")]), "192.168.1.243"),
    );
    kube.put(
        SERVICES,
        with_status(service("dns", &[(53, "UDP")]), "192.168.1.240"),
    );
    kube.put(SERVICES, service("new", &[(8080, "TCP")]));
    let alloc = Allocator::start(Some(&db.url), &[]);
    let adapter = Adapter::start(&kube, &alloc, &dir);
    until_ingress(&kube, "web", &["192.168.1.243"]).await;
    until_ingress(&kube, "dns", &["192.168.1.240"]).await;
    until_ingress(&kube, "new", &["192.168.1.241"]).await;

    // Everything restarts; nothing moves.
    drop(adapter);
    drop(alloc);
    let alloc = Allocator::start(Some(&db.url), &[]);
    let _adapter = Adapter::start(&kube, &alloc, &dir);
    kube.put(SERVICES, service("later", &[(80, "TCP")]));
    until_ingress(&kube, "later", &["192.168.1.242"]).await;
    for (name, ip) in [
        ("web", "192.168.1.243"),
        ("dns", "192.168.1.240"),
        ("new", "192.168.1.241"),
    ] {
        assert_eq!(ingress(&kube, name), [ip], "{name}");
    }
}

/// Two clusters, each with its own API server and adapter, draw from one pool the operator
/// opened to both: their Services never get the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_share_a_pool_without_collisions() {
    let alloc = Allocator::start(None, &[]);
    let mut admin = alloc.client("admin").await;
    let mut shared = ferrolb_e2e::pool("shared", &["10.77.0.0/28"]);
    shared.clusters = vec!["east".into(), "west".into()];
    ferrolb_e2e::apply(&mut admin, shared).await;
    let dir = TempDir::new("ferrolb-adapter");
    let east = FakeKube::start().await;
    let west = FakeKube::start().await;
    let _a = Adapter::for_cluster(&east, &alloc, &dir, "east");
    let _b = Adapter::for_cluster(&west, &alloc, &dir, "west");
    for i in 0..6 {
        east.put(SERVICES, service(&format!("e{i}"), &[(80, "TCP")]));
        west.put(SERVICES, service(&format!("w{i}"), &[(80, "TCP")]));
    }
    let (e, w) = (east.clone(), west.clone());
    let all = tokio::task::spawn_blocking(move || {
        let mut all = vec![];
        wait_for(
            "twelve Services with addresses",
            Duration::from_secs(20),
            || {
                all = (0..6)
                    .flat_map(|i| [ingress(&e, &format!("e{i}")), ingress(&w, &format!("w{i}"))])
                    .flatten()
                    .collect::<Vec<_>>();
                all.len() == 12
            },
        );
        all
    })
    .await
    .unwrap();
    let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 12, "{all:?}");
}

fn valid_condition(kube: &FakeKube, collection: &str, name: &str) -> (String, String) {
    let o = kube
        .get(collection, "metallb-system", name)
        .unwrap_or_default();
    let c = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Valid")
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// A bad object is reported in its status, an event and a metric, and never stops the good
/// configuration: an edit that breaks a pool leaves its last good version serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_are_reported_and_the_good_configuration_keeps_serving() {
    let kube = FakeKube::start().await;
    let alloc = Allocator::start(None, &[]);
    let dir = TempDir::new("ferrolb-adapter");
    apply_file(&kube, "home-ip-pool.yaml");
    let adapter = Adapter::start(&kube, &alloc, &dir);
    kube.put(SERVICES, service("home-nginx", &[(80, "TCP")]));
    until_ingress(&kube, "home-nginx", &["192.168.1.240"]).await;

    let pools = "/apis/metallb.io/v1beta1/ipaddresspools";
    kube.put(
        pools,
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
               "metadata": {"name": "broken", "namespace": "metallb-system"},
               "spec": {"addresses": []}}),
    );
    // The home pool edited into something the allocator refuses.
    let mut home = kube.get(pools, "metallb-system", "home-pool").unwrap();
    home["spec"]["addresses"] = json!(["192.168.1.300-192.168.1.301"]);
    kube.put(pools, home);

    let k = kube.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "both pools reported invalid",
            Duration::from_secs(20),
            || {
                let (b, bm) = valid_condition(&k, pools, "broken");
                let (h, hm) = valid_condition(&k, pools, "home-pool");
                b == "False"
                    && bm.contains("pool has no prefixes defined")
                    && h == "False"
                    && hm.contains("192.168.1.300")
            },
        )
    })
    .await
    .unwrap();
    assert_eq!(
        valid_condition(
            &kube,
            "/apis/metallb.io/v1beta1/l2advertisements",
            "home-l2"
        )
        .0,
        "True"
    );
    let events = kube.list("/apis/events.k8s.io/v1/events");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "ConfigurationError" && e["regarding"]["name"] == "broken"),
        "{events:?}"
    );
    assert_eq!(
        adapter
            .metric("ferrolb_adapter_rejected_objects{kind=\"IPAddressPool\"}")
            .as_deref(),
        Some("2")
    );
    // The last good home pool still serves.
    kube.put(SERVICES, service("second", &[(80, "TCP")]));
    until_ingress(&kube, "second", &["192.168.1.241"]).await;
}

fn lease_holder(kube: &FakeKube) -> String {
    kube.get(
        "/apis/coordination.k8s.io/v1/leases",
        "metallb-system",
        "ferrolb-k8s-adapter",
    )
    .map(|l| {
        l["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
    .unwrap_or_default()
}

/// Two adapter replicas: one leads and serves; the other waits, and takes over when the leader
/// dies and its lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader() {
    let kube = FakeKube::start().await;
    let alloc = Allocator::start(None, &[]);
    let dir = TempDir::new("ferrolb-adapter");
    apply_file(&kube, "home-ip-pool.yaml");
    let a = Adapter::spawn(Adapter::command(
        &kube,
        &alloc,
        &dir,
        "home",
        "replica-a",
        "2",
    ));
    let k = kube.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("replica-a leads", Duration::from_secs(10), || {
            lease_holder(&k) == "replica-a"
        })
    })
    .await
    .unwrap();
    let mut b = Adapter::spawn(Adapter::command(
        &kube,
        &alloc,
        &dir,
        "home",
        "replica-b",
        "2",
    ));
    kube.put(SERVICES, service("home-nginx", &[(80, "TCP")]));
    until_ingress(&kube, "home-nginx", &["192.168.1.240"]).await;
    assert_eq!(
        lease_holder(&kube),
        "replica-a",
        "the waiting replica took over"
    );

    drop(a);
    let k = kube.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("replica-b takes over", Duration::from_secs(10), || {
            lease_holder(&k) == "replica-b"
        })
    })
    .await
    .unwrap();
    kube.put(SERVICES, service("second", &[(80, "TCP")]));
    until_ingress(&kube, "second", &["192.168.1.241"]).await;

    // Another holder appears on the lease: the leader hears it has lost and stops, non-zero.
    let leases = "/apis/coordination.k8s.io/v1/leases";
    let mut lease = kube
        .get(leases, "metallb-system", "ferrolb-k8s-adapter")
        .unwrap();
    lease["spec"]["holderIdentity"] = json!("replica-c");
    lease["spec"]["leaseDurationSeconds"] = json!(3600);
    lease["spec"]["renewTime"] = json!(micro_time_now());
    kube.put(leases, lease);
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = b.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the replica that lost its lease kept running"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(!status.success(), "{status}");
}

/// Now as a Kubernetes MicroTime.
fn micro_time_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Objects MetalLB's rules judge, one file each: every rule family, good and bad, so that both
/// doors are compared on acceptance as well as on refusal.
const CORPUS: &[&str] = &[
    // Durations with fractions and FRR-only fields left empty are fine.
    r#"{"kind":"BGPPeer","metadata":{"name":"p"},"spec":{"myASN":64512,"peerASN":64513,"peerAddress":"10.9.0.1","holdTime":"1.5m","vrf":""}}"#,
    r#"{"kind":"BGPPeer","metadata":{"name":"p"},"spec":{"myASN":64512,"peerASN":64513,"peerAddress":"10.9.0.1","holdTime":"2s","keepaliveTime":"5s"}}"#,
    r#"{"kind":"BGPPeer","metadata":{"name":"p"},"spec":{"myASN":64512,"peerASN":64513,"peerAddress":"10.9.0.1","bfdProfile":"fast","vrf":"red"}}"#,
    r#"{"kind":"BGPPeer","metadata":{"name":"p"},"spec":{"myASN":64512,"peerASN":64512,"peerAddress":"10.9.0","ebgpMultiHop":true,"passwordSecret":{"name":"later"}}}"#,
    r#"{"kind":"IPAddressPool","metadata":{"name":"bad"},"spec":{"addresses":["10.9.0.0/33","10.9.1.9-10.9.1.1"],"adresses":[]}}"#,
    r#"{"kind":"IPAddressPool","metadata":{"name":"p","annotations":{"ferrolb.io/clusters":"elsewhere"}},"spec":{"addresses":["10.9.0.0/24"],"serviceAllocation":{"namespaces":["a","a"]}}}"#,
    r#"{"kind":"IPAddressPool","metadata":{"name":"p","annotations":{"ferrolb.io/clusters":"elsewhere"}},"spec":{"addresses":["10.9.0.0/24"]}}"#,
    r#"{"kind":"IPAddressPool","metadata":{"name":"p"},"spec":{"addresses":["10.9.0.0/24"]}}
{"kind":"BGPAdvertisement","metadata":{"name":"wide"},"spec":{"aggregationLength":16,"communities":["gold","99999999:1"]}}
{"kind":"BGPAdvertisement","metadata":{"name":"a"},"spec":{"localPref":100}}
{"kind":"BGPAdvertisement","metadata":{"name":"b"},"spec":{"localPref":200}}"#,
    r#"{"kind":"Community","metadata":{"name":"c"},"spec":{"communities":[{"name":"gold","value":"large:1:2"},{"name":"silver","value":"65000:1"}]}}"#,
    r#"{"kind":"L2Advertisement","metadata":{"name":"l2"},"spec":{"ipAddressPools":["x","x"],"nodeSelectors":[{"matchExpressions":[{"key":"k","operator":"Near"}]}]}}"#,
    r#"{"kind":"L2Advertisement","metadata":{"name":"l2"},"spec":{"serviceSelectors":[{"matchLabels":{"app":"web"}}]}}"#,
    r#"{"kind":"BFDProfile","metadata":{"name":"b"},"spec":{"detectMultiplier":1,"receiveInterval":300}}"#,
];

/// The objects of a file as JSON documents, each with MetalLB's group and namespace.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .map(|mut v| {
            if v["apiVersion"].is_null() {
                let version = if v["kind"] == "BGPPeer" {
                    "v1beta2"
                } else {
                    "v1beta1"
                };
                v["apiVersion"] = json!(format!("metallb.io/{version}"));
            }
            if v["metadata"]["namespace"].is_null() {
                v["metadata"]["namespace"] = json!("metallb-system");
            }
            v
        })
        .collect()
}

/// `ferrolbctl apply` of `file` as the cluster's adapter, against its own allocator: the
/// verdicts it prints, and whether it failed.
fn ferrolbctl_verdicts(file: &std::path::Path, cluster: &str) -> (Vec<String>, bool) {
    let alloc = Allocator::start(None, &[]);
    let out = Command::new(bin("ferrolbctl"))
        .args(["--server", &alloc.url()])
        .args(ferrolb_e2e::test_pki().args(&format!("cluster/{cluster}")))
        .args(["apply", "--cluster", cluster, "-f"])
        .arg(file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut verdicts: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("error: ").map(String::from))
        .collect();
    verdicts.sort();
    (verdicts, !out.status.success())
}

/// The same objects through the lab's API server and the adapter: the messages of the `Valid`
/// conditions that are not True, once every object has one.
fn adapter_verdicts(docs: &[Value], cluster: &str) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kube = rt.block_on(FakeKube::start());
    let alloc = Allocator::start(None, &[]);
    let dir = TempDir::new("ferrolb-doors");
    let _adapter = Adapter::for_cluster(&kube, &alloc, &dir, cluster);
    for d in docs {
        kube.put(collection(d["kind"].as_str().unwrap()), d.clone());
    }
    let judged: Vec<&Value> = docs.iter().filter(|d| d["kind"] != "Secret").collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let conditions: Vec<Option<Value>> = judged
            .iter()
            .map(|d| {
                let kind = d["kind"].as_str().unwrap();
                let name = d["metadata"]["name"].as_str().unwrap();
                kube.get(collection(kind), "metallb-system", name)?["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Valid")
                    .cloned()
            })
            .collect();
        if conditions.iter().all(Option::is_some) {
            let mut verdicts: Vec<String> = conditions
                .into_iter()
                .flatten()
                .filter(|c| c["status"] != "True")
                .map(|c| c["message"].as_str().unwrap().to_string())
                .collect();
            verdicts.sort();
            return verdicts;
        }
        assert!(
            Instant::now() < deadline,
            "the adapter did not judge every object: {conditions:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One YAML gets one verdict: every scenario file and every file of the corpus goes through
/// `ferrolbctl apply` and through the Kubernetes adapter (each with an allocator of its own, as
/// the same cluster), and both doors refuse the same objects with the same messages, MetalLB's
/// rules and the allocator's refusals alike.
#[test]
fn one_yaml_one_verdict_through_both_doors() {
    let dir = TempDir::new("ferrolb-corpus");
    let mut files: Vec<(String, String)> = [
        "home-ip-pool.yaml",
        "ip-pool.yaml",
        "l2-config.yaml",
        "company-bgp-pool.yaml",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read_to_string(scenarios().join(f)).unwrap(),
        )
    })
    .collect();
    files.extend(CORPUS.iter().enumerate().map(|(i, text)| {
        let yaml = text.lines().collect::<Vec<_>>().join("\n---\n");
        (format!("corpus-{i}.yaml"), yaml)
    }));
    let mut refused = 0;
    for (name, text) in &files {
        let docs = documents(text);
        let path = dir.0.join(name);
        let yaml: Vec<String> = docs
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        std::fs::write(&path, yaml.join("---\n")).unwrap();
        let (ctl, failed) = ferrolbctl_verdicts(&path, "doors");
        let adapter = adapter_verdicts(&docs, "doors");
        assert_eq!(ctl, adapter, "{name}: ferrolbctl and the adapter disagree");
        assert_eq!(failed, !ctl.is_empty(), "{name}: ferrolbctl's exit status");
        eprintln!("{name}: {ctl:?}");
        refused += ctl.len();
    }
    assert!(refused >= 10, "the corpus refuses too little: {refused}");
}

/// An adapter whose configuration sync dies (a failure injected by `FERROLB_FAULTS`) does not go
/// on serving Services half alive: it exits non-zero and says which loop it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_loses_its_configuration_sync_exits() {
    let kube = FakeKube::start().await;
    let alloc = Allocator::start(None, &[]);
    let dir = TempDir::new("ferrolb-adapter");
    let (mut cmd, _) = Adapter::command(&kube, &alloc, &dir, "home", "adapter-home", "15");
    let out = cmd
        .env("FERROLB_FAULTS", "config-sync")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferrolb-k8s-adapter");
    let adapter = tokio::task::spawn_blocking(move || out.wait_with_output());
    let out = tokio::time::timeout(Duration::from_secs(20), adapter)
        .await
        .expect("the adapter went on without its configuration sync")
        .unwrap()
        .unwrap();
    assert!(!out.status.success(), "exit status {}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("the configuration sync panicked: fault injected at config-sync"),
        "{log}"
    );
}
