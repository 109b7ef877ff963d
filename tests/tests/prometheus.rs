//! A real Prometheus (Debian's `prometheus` and `promtool`) scrapes the lab's allocator,
//! adapter and three announcers, and runs the alerts of `deploy/monitoring/prometheus-rule.yaml`:
//! `promtool check rules` passes, every metric the alerts read has series in the live lab, and
//! the pool alert fires when the test fills a pool. Every query of the Grafana dashboard
//! (`deploy/monitoring/grafana-dashboard.json`) returns series from the same lab. Needs root
//! (the lab) and both programs (`scripts/test` installs them).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferrolb_e2e::home::{HomeLab, NODES, Options, node_address};
use serde_json::Value;

const PROMETHEUS: &str = "10.250.0.1:9090";

/// The rule groups of the PrometheusRule, as a Prometheus rule file, with every `for` hold set
/// to 0s: the same expressions, firing at their first evaluation.
fn rule_file() -> (String, Vec<String>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/monitoring/prometheus-rule.yaml"
    );
    let rule: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut groups = rule["spec"]["groups"].clone();
    let mut exprs = Vec::new();
    for group in groups.as_sequence_mut().unwrap() {
        for r in group["rules"].as_sequence_mut().unwrap() {
            exprs.push(r["expr"].as_str().unwrap().to_string());
            if r.get("for").is_some() {
                r["for"] = "0s".into();
            }
        }
    }
    let mut file = serde_yaml::Mapping::new();
    file.insert("groups".into(), groups);
    (serde_yaml::to_string(&file).unwrap(), exprs)
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if (word.starts_with("ferrolb_") || word.starts_with("metallb_"))
            && !out.iter().any(|w| w == word)
        {
            out.push(word.to_string());
        }
    }
    out
}

/// The result of an instant query; None while Prometheus does not answer yet.
fn try_query(lab: &HomeLab, q: &str) -> Option<Vec<Value>> {
    let o = lab.lab.run(
        "router",
        &[
            "curl",
            "-sf",
            "--data-urlencode",
            &format!("query={q}"),
            &format!("http://{PROMETHEUS}/api/v1/query"),
        ],
    );
    if !o.status.success() {
        return None;
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{q}: {out}: {e}"));
    assert_eq!(v["status"], "success", "{q}: {v}");
    Some(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn query(lab: &HomeLab, q: &str) -> Vec<Value> {
    try_query(lab, q)
        .unwrap_or_else(|| panic!("Prometheus does not answer: {}", lab.log("prometheus")))
}

fn firing(lab: &HomeLab) -> Vec<Value> {
    let out = lab.must(
        "router",
        &["curl", "-s", &format!("http://{PROMETHEUS}/api/v1/alerts")],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["state"] == "firing")
        .collect()
}

fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {what} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_the_lab_and_the_alerts_hold() {
    for program in ["prometheus", "promtool"] {
        assert!(
            std::process::Command::new(program)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{program} is missing: apt-get install prometheus (scripts/test installs it)"
        );
    }
    let mut lab = HomeLab::up("pm", Options::default());
    let (rules, exprs) = rule_file();
    let rules_path = lab.dir.0.join("rules.yml");
    std::fs::write(&rules_path, rules).unwrap();
    let check = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut kube = lab.start_kube();
    let _adapter = ferrolb_e2e::Process(lab.start_adapter());
    // A pool of two addresses, and a BGP peer that never answers (no router runs BGP here): its
    // sessions exist, and are down.
    kube.put(
        "/apis/metallb.io/v1beta1/ipaddresspools",
        &serde_json::json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "tiny", "namespace": "metallb-system"},
            "spec": {"addresses": ["192.168.1.240-192.168.1.241"]}}),
    );
    kube.put(
        "/apis/metallb.io/v1beta1/l2advertisements",
        &serde_json::json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": "tiny", "namespace": "metallb-system"},
            "spec": {"ipAddressPools": ["tiny"]}}),
    );
    kube.put(
        "/apis/metallb.io/v1beta2/bgppeers",
        &serde_json::json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": "silent", "namespace": "metallb-system"},
            "spec": {"myASN": 65001, "peerASN": 65000, "peerAddress": "10.250.0.1"}}),
    );

    let mut targets = vec![
        ("ferrolb-allocator", "10.250.0.1:7471".to_string()),
        ("ferrolb-adapter", "127.0.0.1:7473".to_string()),
    ];
    for n in NODES {
        targets.push(("ferrolb-announcer", format!("{}:7472", node_address(n))));
    }
    let scrape: String = targets
        .iter()
        .map(|(job, t)| format!("- job_name: {job}-{t}\n  static_configs:\n  - targets: ['{t}']\n"))
        .collect();
    let config = lab.dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n- {}\nscrape_configs:\n{scrape}",
            rules_path.display()
        ),
    )
    .unwrap();
    let data = lab.dir.0.join("prometheus-data");
    let _prometheus = ferrolb_e2e::Process(lab.spawn(
        "router",
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address={PROMETHEUS}"),
        ],
        "prometheus",
    ));

    // Every part is scraped.
    eventually("every target up", || {
        let up = try_query(&lab, "up == 1")?;
        (up.len() == targets.len()).then_some(())
    });
    let alerts = |name: &str| -> Vec<Value> {
        firing(&lab)
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .collect()
    };
    eventually("the silent peer's sessions reported down", || {
        (!alerts("FerrolbBGPSessionDown").is_empty()).then_some(())
    });
    assert!(alerts("FerrolbPoolExhausted").is_empty());

    // The pool fills: half of it is not "nearly full", all of it is exhausted.
    let mut service = |name: &str| {
        kube.put(
            "/api/v1/services",
            &serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "LoadBalancer", "selector": {"app": name},
                         "ports": [{"port": 80, "protocol": "TCP"}]}}),
        );
        lab.write_endpoints(&mut kube, name, &NODES);
    };
    service("first");
    eventually("one address in use", || {
        let v = query(
            &lab,
            "metallb_allocator_addresses_in_use_total{pool=\"tiny\"} == 1",
        );
        (!v.is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(alerts("FerrolbPoolNearlyFull").is_empty());
    assert!(alerts("FerrolbPoolExhausted").is_empty());
    service("second");
    let fired = eventually("FerrolbPoolExhausted", || {
        alerts("FerrolbPoolExhausted").into_iter().next()
    });
    assert_eq!(fired["labels"]["pool"], "tiny", "{fired}");
    assert_eq!(fired["labels"]["severity"], "critical", "{fired}");

    // A call the cluster's identity may not make, refused and counted as the cluster's.
    let tls = ferrolb_e2e::test_pki().args(&format!("cluster/{}", ferrolb_e2e::home::CLUSTER));
    let ctl = ferrolb_e2e::bin("ferrolbctl")
        .to_string_lossy()
        .into_owned();
    let mut refused = vec![ctl.as_str(), "--server", "https://10.250.0.1:7470"];
    refused.extend(tls.iter().map(String::as_str));
    refused.extend([
        "allowances",
        "set",
        "--cluster",
        "home",
        "--range",
        "10.0.0.0/8",
    ]);
    assert!(!lab.lab.run("router", &refused).status.success());

    // The first address's node dies: the failover is timed.
    let owner = lab.owner("192.168.1.240").unwrap();
    lab.kill_announcer(&owner);
    eventually("a failover timed", || {
        (!query(&lab, "ferrolb_allocator_failover_seconds_count >= 1").is_empty()).then_some(())
    });
    // No alert reads a metric that does not exist.
    for expr in &exprs {
        for name in metric_names(expr) {
            eventually(&format!("series of {name}"), || {
                (!query(&lab, &name).is_empty()).then_some(())
            });
        }
    }

    // With every kind of series present (MetalLB's bare-named counters among them), every
    // scrape still parses, but the killed announcer's.
    assert_eq!(
        query(&lab, "up == 1").len(),
        targets.len() - 1,
        "{:?}",
        query(&lab, "up")
    );

    // Every panel of the dashboard shows something.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/monitoring/grafana-dashboard.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            eventually(&format!("series for {:?}: {expr}", panel["title"]), || {
                (!query(&lab, expr).is_empty()).then_some(())
            });
        }
    }
}
