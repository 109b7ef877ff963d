//! OpenTelemetry traces across the lab's processes: the adapter, the allocator and the three
//! announcers export spans over OTLP/gRPC to a real receiver (the collector's TraceService,
//! served by tonic, in the router). A Service made a LoadBalancer through the Kubernetes API
//! yields one trace from the adapter's reconcile through the allocator's call, batch, commit, decision and
//! push to the announcing node's gratuitous ARP; killing that node's announcer yields one trace
//! from the loss to the new owner's gratuitous ARP. Every parent link in both is intact. The
//! announcing node exports MetalLB's `metallb_speaker_announced` for the Service. Needs root (the
//! lab).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferrolb_e2e::home::{CLUSTER, HomeLab, Options};
use ferrolb_e2e::otlp::{Received, Spans};

const RECEIVER: &str = "10.250.0.1:4317";

/// Waits until `find` answers from the spans received so far.
fn eventually<T>(what: &str, file: &std::path::Path, find: impl Fn(&[Received]) -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        let spans = Spans::read(file);
        if let Some(v) = find(&spans) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no {what} among {} spans received: {:#?}",
            spans.len(),
            spans
                .iter()
                .map(|s| format!("{} {} {} {:?}", s.service, s.trace_id, s.name, s.attributes))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The spans of `trace`, when they hang together: one root, every other span's parent among
/// them.
fn whole(spans: &[Received], trace: &str) -> Option<Vec<Received>> {
    let of: Vec<Received> = spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect();
    let ids: BTreeSet<&str> = of.iter().map(|s| s.span_id.as_str()).collect();
    let roots = of.iter().filter(|s| s.parent.is_empty()).count();
    let linked = of
        .iter()
        .all(|s| s.parent.is_empty() || ids.contains(s.parent.as_str()));
    (roots == 1 && linked).then_some(of)
}

/// A span of `service` named `name`, with the attribute `attr` when given.
type Want<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);

fn is(s: &Received, (service, name, attr): Want<'_>) -> bool {
    s.service == service
        && s.name == name
        && attr.is_none_or(|(k, v)| s.attributes.get(k).is_some_and(|a| a == v))
}

/// A whole trace that holds `start` and a span of each of `wants`.
fn trace(spans: &[Received], start: Want<'_>, wants: &[Want<'_>]) -> Option<Vec<Received>> {
    spans
        .iter()
        .filter(|s| is(s, start))
        .filter_map(|r| whole(spans, &r.trace_id))
        .find(|t| wants.iter().all(|w| t.iter().any(|s| is(s, *w))))
}

#[test]
fn one_trace_follows_a_service_to_the_wire_and_one_follows_a_failover() {
    let otlp = vec!["--otlp-endpoint".to_string(), format!("http://{RECEIVER}")];
    let mut lab = HomeLab::up(
        "ot",
        Options {
            allocator_args: otlp.clone(),
            announcer_args: otlp.clone(),
            ..Options::default()
        },
    );
    let file = lab.dir.0.join("spans.jsonl");
    let _receiver = ferrolb_e2e::Process(lab.spawn(
        "router",
        &ferrolb_e2e::bin("otlp-sink").to_string_lossy(),
        &[RECEIVER, &file.to_string_lossy()],
        "otlp",
    ));
    let mut kube = lab.start_kube();
    let _adapter = ferrolb_e2e::Process(lab.start_adapter_with(&[&otlp[0], &otlp[1]]));
    kube.put(
        "/apis/metallb.io/v1beta1/ipaddresspools",
        &serde_json::json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "home", "namespace": "metallb-system"},
            "spec": {"addresses": ["192.168.1.240/29"]}}),
    );
    kube.put(
        "/apis/metallb.io/v1beta1/l2advertisements",
        &serde_json::json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": "home", "namespace": "metallb-system"},
            "spec": {"ipAddressPools": ["home"]}}),
    );
    // The endpoints are known when the Service comes: one reconcile allocates its address and
    // reports its endpoints, and the announcement follows from both.
    lab.write_endpoints(&mut kube, "web", &["n1"]);
    kube.put(
        "/api/v1/services",
        &serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                     "ports": [{"port": 80, "protocol": "TCP"}]}}),
    );
    let start = Instant::now();
    let ip = loop {
        let svc = kube.get("/api/v1/services", "default", "web");
        if let Some(ip) = svc["status"]["loadBalancer"]["ingress"][0]["ip"].as_str() {
            break ip.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no address: {svc}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let node = lab
        .wait_owner(&ip, Duration::from_secs(20), |o| o.is_ok())
        .unwrap();
    // The announcing node says so under MetalLB's name, with the Service.
    let announced = format!(
        "metallb_speaker_announced{{ip=\"{ip}\",node=\"{node}\",protocol=\"layer2\",service=\"default/web\"}}"
    );
    let start = Instant::now();
    while lab.announcer_metric(&node, &announced) != 1 {
        assert!(start.elapsed() < Duration::from_secs(10), "no {announced}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let service = eventually("trace from the Service to the wire", &file, |spans| {
        let start = (
            "ferrolb-k8s-adapter",
            "reconcile",
            Some(("service", "default/web")),
        );
        let wants = [
            ("ferrolb-allocator", "ferrolb.v1.IpamService/Allocate", None),
            ("ferrolb-allocator", "batch", None),
            ("ferrolb-allocator", "commit", None),
            ("ferrolb-allocator", "decide announcements", None),
            (
                "ferrolb-allocator",
                "push assignments",
                Some(("node", node.as_str())),
            ),
            ("ferrolb-announcer", "assignments", None),
            (
                "ferrolb-announcer",
                "gratuitous",
                Some(("address", ip.as_str())),
            ),
        ];
        trace(spans, start, &wants)
    });
    let allocate = service
        .iter()
        .find(|s| s.name == "ferrolb.v1.IpamService/Allocate")
        .unwrap();
    assert_eq!(
        allocate.attributes.get("service").map(String::as_str),
        Some(format!("service/{CLUSTER}/default/web").as_str()),
        "{allocate:?}"
    );

    // The announcing node's announcer dies: the loss, the decision and the new owner's
    // gratuitous ARP are one trace.
    lab.kill_announcer(&node);
    let moved = lab
        .wait_owner(&ip, Duration::from_secs(20), |o| {
            o.as_ref().is_ok_and(|n| *n != node)
        })
        .unwrap();
    let failover = eventually("trace of the failover", &file, |spans| {
        let start = (
            "ferrolb-allocator",
            "announcer gone",
            Some(("node", node.as_str())),
        );
        let wants = [
            ("ferrolb-allocator", "decide announcements", None),
            (
                "ferrolb-allocator",
                "push assignments",
                Some(("node", moved.as_str())),
            ),
            (
                "ferrolb-announcer",
                "gratuitous",
                Some(("address", ip.as_str())),
            ),
        ];
        trace(spans, start, &wants)
    });
    assert!(
        failover.iter().all(|s| s.service != "ferrolb-k8s-adapter"),
        "the failover is a trace of its own: {failover:#?}"
    );
}
