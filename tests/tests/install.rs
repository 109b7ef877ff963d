//! The install file keeps the promises docs/security.md makes: Pod Security's restricted profile
//! for every namespace but the announcers', the announcer's privileges exactly NET_RAW and
//! NET_ADMIN, and no fixed password.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

fn install() -> Vec<Value> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ferrolb-native.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

/// What Pod Security's restricted profile refuses in a pod (the checks of its v1.33 policy that
/// these manifests could trip).
fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host].as_bool() == Some(true) {
            out.push(host.to_string());
        }
    }
    let allowed = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for vol in pod["volumes"].as_sequence().into_iter().flatten() {
        let kinds: Vec<&str> = vol
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(|k| k.as_str())
            .filter(|k| *k != "name")
            .collect();
        for k in kinds {
            if !allowed.contains(&k) {
                out.push(format!(
                    "volume {} of type {k}",
                    vol["name"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    let pod_sc = &pod["securityContext"];
    for c in pod["containers"].as_sequence().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"].as_bool() == Some(true) {
            out.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            out.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let drop = s(sc, &["capabilities", "drop"]).as_sequence();
        if !drop.is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL"))) {
            out.push(format!("{name}: capabilities are not all dropped"));
        }
        for add in s(sc, &["capabilities", "add"])
            .as_sequence()
            .into_iter()
            .flatten()
        {
            if add.as_str() != Some("NET_BIND_SERVICE") {
                out.push(format!("{name}: adds {add:?}"));
            }
        }
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or(pod_sc["runAsNonRoot"].as_bool());
        if non_root != Some(true) {
            out.push(format!("{name}: runAsNonRoot is not true"));
        }
        let uid = sc["runAsUser"].as_u64().or(pod_sc["runAsUser"].as_u64());
        if uid == Some(0) {
            out.push(format!("{name}: runs as uid 0"));
        }
        let seccomp =
            s(sc, &["seccompProfile", "type"])
                .as_str()
                .or(s(pod_sc, &["seccompProfile", "type"]).as_str());
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            out.push(format!("{name}: no seccomp profile"));
        }
    }
    out
}

#[test]
fn every_namespace_but_the_announcers_is_restricted() {
    let docs = install();
    let enforce: BTreeMap<String, String> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Namespace"))
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                s(
                    d,
                    &["metadata", "labels", "pod-security.kubernetes.io/enforce"],
                )
                .as_str()
                .unwrap_or("")
                .to_string(),
            )
        })
        .collect();
    assert_eq!(
        enforce.get("metallb-system").map(String::as_str),
        Some("privileged")
    );
    assert_eq!(
        enforce.get("ferrolb-system").map(String::as_str),
        Some("restricted")
    );
    let mut workloads = 0;
    for d in &docs {
        let kind = d["kind"].as_str().unwrap_or("");
        if !matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
            continue;
        }
        workloads += 1;
        let name = d["metadata"]["name"].as_str().unwrap();
        let ns = d["metadata"]["namespace"].as_str().unwrap();
        let pod = s(d, &["spec", "template", "spec"]);
        if name == "ferrolb-announcer" {
            assert_eq!(ns, "metallb-system", "the announcer's namespace");
            // Its privileges: the host network, and exactly NET_RAW and NET_ADMIN.
            let c = &pod["containers"][0]["securityContext"];
            let add: Vec<&str> = s(c, &["capabilities", "add"])
                .as_sequence()
                .unwrap()
                .iter()
                .filter_map(|x| x.as_str())
                .collect();
            assert_eq!(add, ["NET_RAW", "NET_ADMIN"]);
            assert_eq!(c["allowPrivilegeEscalation"].as_bool(), Some(false));
            continue;
        }
        assert_eq!(
            enforce.get(ns).map(String::as_str),
            Some("restricted"),
            "{name} in {ns}"
        );
        let v = restricted_violations(pod);
        assert!(v.is_empty(), "{kind} {name}: {v:?}");
    }
    assert_eq!(workloads, 4, "allocator, adapter, PostgreSQL, announcer");
}

#[test]
fn no_password_in_the_install_file() {
    for d in install() {
        if d["kind"].as_str() == Some("Secret") {
            panic!(
                "the install file carries Secret {:?}",
                d["metadata"]["name"]
            );
        }
        let text = serde_yaml::to_string(&d).unwrap();
        assert!(!text.contains("postgres://ferrolb:"), "{text}");
    }
}

/// The checks themselves: a pod that breaks each rule is caught.
#[test]
fn the_restricted_checks_catch_what_they_check() {
    let bad: Value = serde_yaml::from_str(
        "hostNetwork: true\nvolumes: [{name: h, hostPath: {path: /}}]\n\
         containers: [{name: c, securityContext: {capabilities: {add: [NET_ADMIN]}}}]\n",
    )
    .unwrap();
    let v = restricted_violations(&bad);
    for want in [
        "hostNetwork",
        "hostPath",
        "allowPrivilegeEscalation",
        "dropped",
        "NET_ADMIN",
        "runAsNonRoot",
        "seccomp",
    ] {
        assert!(
            v.iter().any(|x| x.contains(want)),
            "{want} not caught: {v:?}"
        );
    }
}

/// The webhook's registration reaches the adapter: its Service selects the adapter's pods on a
/// port the adapter serves and its NetworkPolicy admits, and the adapter may renew what the
/// registration and its certificate need, and nothing else of their kind.
#[test]
fn the_webhook_reaches_the_adapter() {
    let docs = install();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let vwc = find(
        "ValidatingWebhookConfiguration",
        "ferrolb-webhook-configuration",
    );
    let hooks = vwc["webhooks"].as_sequence().unwrap();
    let resources: Vec<&str> = hooks
        .iter()
        .map(|h| h["rules"][0]["resources"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        [
            "ipaddresspools",
            "l2advertisements",
            "bgpadvertisements",
            "bgppeers",
            "communities",
            "bfdprofiles"
        ]
    );
    for h in hooks {
        let svc = &h["clientConfig"]["service"];
        assert_eq!(svc["name"].as_str(), Some("ferrolb-webhook"));
        assert_eq!(svc["namespace"].as_str(), Some("ferrolb-system"));
        assert_eq!(svc["port"].as_u64(), Some(443));
        assert_eq!(h["failurePolicy"].as_str(), Some("Fail"));
        assert_eq!(h["sideEffects"].as_str(), Some("None"));
    }
    let service = find("Service", "ferrolb-webhook");
    let adapter = find("Deployment", "ferrolb-k8s-adapter");
    assert_eq!(
        service["spec"]["selector"],
        adapter["spec"]["template"]["metadata"]["labels"]
    );
    let target = service["spec"]["ports"][0]["targetPort"].as_str().unwrap();
    let container = &adapter["spec"]["template"]["spec"]["containers"][0];
    let port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(target))
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap();
    let listen = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("FERROLB_WEBHOOK_LISTEN"))
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert_eq!(listen, format!("0.0.0.0:{port}"));
    let policy = find("NetworkPolicy", "ferrolb-k8s-adapter");
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"][0]["port"].as_u64(),
        Some(port)
    );

    let rules = |kind: &str, name: &str| find(kind, name)["rules"].as_sequence().unwrap().clone();
    let may = |rules: &[Value], resource: &str, verb: &str| -> Vec<Value> {
        rules
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|x| x.as_str() == Some(resource))
                    && r["verbs"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .any(|x| x.as_str() == Some(verb))
            })
            .map(|r| r["resourceNames"].clone())
            .collect()
    };
    let cluster = rules("ClusterRole", "ferrolb-k8s-adapter");
    for verb in ["get", "update"] {
        assert_eq!(
            may(&cluster, "validatingwebhookconfigurations", verb),
            [serde_yaml::from_str::<Value>("[ferrolb-webhook-configuration]").unwrap()],
            "{verb}"
        );
    }
    let metallb = rules("Role", "ferrolb-k8s-adapter");
    assert_eq!(
        may(&metallb, "secrets", "update"),
        [serde_yaml::from_str::<Value>("[ferrolb-webhook-cert]").unwrap()]
    );
}

/// `deploy/with-monitoring` (the installation and the monitoring component) builds with
/// kubectl's kustomize, and each PodMonitor finds its pods on a port they serve: the
/// announcers' and the allocator's metrics ports, and the adapter's, which the component opens on
/// the pod's address and admits in a NetworkPolicy.
#[test]
fn the_monitoring_component_scrapes_every_part() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/with-monitoring");
    let out = std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(&dir)
        .output()
        .expect("kubectl must be installed (scripts/test installs it where it is missing)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let monitors: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("PodMonitor"))
        .collect();
    assert_eq!(monitors.len(), 3);
    for m in monitors {
        let wanted = &m["spec"]["selector"]["matchLabels"];
        let ns = m["metadata"]["namespace"].as_str();
        let workload = docs
            .iter()
            .find(|d| {
                matches!(d["kind"].as_str(), Some("Deployment" | "DaemonSet"))
                    && d["metadata"]["namespace"].as_str() == ns
                    && &d["spec"]["template"]["metadata"]["labels"] == wanted
            })
            .unwrap_or_else(|| panic!("no pods for {:?}", m["metadata"]["name"]));
        let port = m["spec"]["podMetricsEndpoints"][0]["port"]
            .as_str()
            .unwrap();
        let container = &workload["spec"]["template"]["spec"]["containers"][0];
        let number =
            container["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|p| p["name"].as_str() == Some(port))
                .unwrap_or_else(|| panic!("no port {port} in {:?}", workload["metadata"]["name"]))
                ["containerPort"]
                .as_u64()
                .unwrap();
        if workload["metadata"]["name"].as_str() == Some("ferrolb-k8s-adapter") {
            let listen = container["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|e| e["name"].as_str() == Some("FERROLB_METRICS_LISTEN"))
                .unwrap()["value"]
                .as_str()
                .unwrap();
            assert_eq!(listen, format!("0.0.0.0:{number}"));
            let admitted = docs.iter().any(|d| {
                d["kind"].as_str() == Some("NetworkPolicy")
                    && &d["spec"]["podSelector"]["matchLabels"] == wanted
                    && d["spec"]["ingress"][0]["ports"][0]["port"].as_u64() == Some(number)
            });
            assert!(admitted, "no NetworkPolicy admits the adapter's metrics");
        }
    }
    assert!(
        docs.iter()
            .any(|d| d["kind"].as_str() == Some("PrometheusRule"))
    );
    // The dashboard, for Grafana's sidecar, is the file the Prometheus test checks.
    let dashboard = docs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("ConfigMap")
                && d["metadata"]["name"].as_str() == Some("ferrolb-grafana-dashboard")
        })
        .expect("the dashboard's ConfigMap");
    assert_eq!(
        dashboard["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    let file = std::fs::read_to_string(dir.join("../monitoring/grafana-dashboard.json")).unwrap();
    assert_eq!(
        dashboard["data"]["grafana-dashboard.json"].as_str(),
        Some(file.as_str())
    );
}
