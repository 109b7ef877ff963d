//! `scripts/bench service-to-ip`: Services created in the fake Kubernetes API server, served by
//! the real adapter and allocator (PostgreSQL), with an L2Advertisement for the pool so that the
//! allocator also decides who announces every Service: the time from creating a Service to its
//! ingress address being written, one Service at a time (1,000), and the time for 10,000
//! Services created at once to all have addresses. Baseline of the same run: the allocator's own
//! Allocate call, one at a time, on the same database.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrolb_e2e::fakekube::FakeKube;
use ferrolb_e2e::{Allocator, PgDb, TempDir, bin, client, percentile, service};
use ferrolb_proto::v1 as pb;
use serde_json::json;

const SERVICES: &str = "/api/v1/services";
const ONE_BY_ONE: usize = 1_000;
const AT_ONCE: usize = 10_000;

fn svc(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn has_ip(kube: &FakeKube, name: &str) -> bool {
    kube.get(SERVICES, "default", name)
        .is_some_and(|s| !s["status"]["loadBalancer"]["ingress"][0]["ip"].is_null())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let db = PgDb::new();
    let alloc = Allocator::start(Some(&db.url), &["--max-in-flight", "4096"]);
    let kube = FakeKube::start().await;
    let dir = TempDir::new("ferrolb-bench");
    kube.put(
        "/apis/metallb.io/v1beta1/ipaddresspools",
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
               "metadata": {"name": "bench", "namespace": "metallb-system"},
               "spec": {"addresses": ["10.80.0.0/16"]}}),
    );
    kube.put(
        "/apis/metallb.io/v1beta1/l2advertisements",
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
               "metadata": {"name": "bench", "namespace": "metallb-system"},
               "spec": {"ipAddressPools": ["bench"]}}),
    );
    let config = dir.0.join("kubeconfig");
    kube.kubeconfig(&config);
    let mut adapter = Command::new(bin("ferrolb-k8s-adapter"))
        .args([
            "--allocator",
            &alloc.url(),
            "--cluster",
            "bench",
            "--metrics-listen",
            "off",
        ])
        .args(ferrolb_e2e::test_pki().args("cluster/bench"))
        .env("KUBECONFIG", &config)
        .env("FERROLB_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Baseline: the allocator alone, one call at a time.
    let mut c = client(&alloc.url(), "admin").await;
    let mut pool = ferrolb_e2e::pool("baseline", &["10.90.0.0/16"]);
    pool.clients = vec![];
    ferrolb_e2e::apply(&mut c, pool).await;
    let mut base = vec![];
    for i in 0..ONE_BY_ONE {
        let start = Instant::now();
        c.allocate(pb::AllocateRequest {
            owner: Some(service("baseline", "default", &format!("b{i}"))),
            pool: "baseline".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        base.push(start.elapsed());
    }
    base.sort();

    // One Service at a time.
    let warm = "warm-up";
    kube.put(SERVICES, svc(warm));
    let k = kube.clone();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while !has_ip(&k, warm) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the adapter serves nothing"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap();
    let k = kube.clone();
    let mut each = tokio::task::spawn_blocking(move || {
        let mut v = vec![];
        for i in 0..ONE_BY_ONE {
            let name = format!("one-{i}");
            let start = Instant::now();
            k.put(SERVICES, svc(&name));
            while !has_ip(&k, &name) {
                std::thread::sleep(Duration::from_micros(200));
            }
            v.push(start.elapsed());
        }
        v
    })
    .await
    .unwrap();
    each.sort();

    // Ten thousand at once.
    let start = Instant::now();
    for i in 0..AT_ONCE {
        kube.put(SERVICES, svc(&format!("many-{i}")));
    }
    let k = kube.clone();
    let all = tokio::task::spawn_blocking(move || {
        let mut i = 0;
        while i < AT_ONCE {
            if has_ip(&k, &format!("many-{i}")) {
                i += 1;
            } else {
                assert!(
                    start.elapsed() < Duration::from_secs(600),
                    "{i} of {AT_ONCE} served"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        start.elapsed()
    })
    .await
    .unwrap();
    let _ = adapter.kill();
    let _ = adapter.wait();

    println!("{:<44} {:>8} {:>8}", "", "p50 ms", "p99 ms");
    println!(
        "{:<44} {:>8.2} {:>8.2}",
        "baseline: Allocate over gRPC, one at a time",
        ms(percentile(&base, 50.0)),
        ms(percentile(&base, 99.0))
    );
    println!(
        "{:<44} {:>8.2} {:>8.2}",
        "Service created -> ingress written",
        ms(percentile(&each, 50.0)),
        ms(percentile(&each, 99.0))
    );
    println!(
        "{AT_ONCE} Services created at once: all have addresses after {:.1} s",
        all.as_secs_f64()
    );
    println!(
        "RESULT service-to-ip p50_ms={:.1} p99_ms={:.1} all_10000_s={:.1} baseline_allocate_p50_ms={:.2}",
        ms(percentile(&each, 50.0)),
        ms(percentile(&each, 99.0)),
        all.as_secs_f64(),
        ms(percentile(&base, 50.0))
    );
}
