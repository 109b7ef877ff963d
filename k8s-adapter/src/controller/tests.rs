//! Reconcile against the lab's Kubernetes API server and an allocator in memory: what a Service
//! gets written, which events it gets, and what the allocator is asked.

use serde_json::json;

use super::*;
use crate::testing::{EVENTS, Lab, SERVICES};

async fn run(lab: &Lab, svc: Service) -> Result<Action, Error> {
    reconcile(Arc::new(svc), Arc::clone(&lab.ctx)).await
}

fn ingress(svc: &Service) -> Vec<String> {
    service::current_ips(svc)
}

#[tokio::test]
async fn a_service_gets_an_address_its_pool_and_one_endpoint_report() {
    let lab = Lab::start(&["192.168.1.240", "192.168.1.241"]).await;
    let svc = lab.service("web", |_| {});
    run(&lab, svc).await.expect("reconciled");

    let svc = lab.stored("web");
    assert_eq!(ingress(&svc), ["192.168.1.240"]);
    assert_eq!(
        svc.annotations()
            .get(ALLOCATED_FROM_POOL)
            .map(String::as_str),
        Some("default")
    );
    assert_eq!(lab.reasons("web"), ["IPAllocated"]);
    let managers: Vec<_> = lab
        .kube
        .patches()
        .into_iter()
        .map(|p| (p.kind, p.manager))
        .collect();
    assert_eq!(
        managers,
        [
            ("apply".into(), "ferrolb".into()),
            ("apply".into(), "ferrolb".into())
        ],
        "status and annotation are server-side applied as ferrolb"
    );
    let report = lab.allocator.endpoints("default", "web").expect("reported");
    assert_eq!(report.cluster, "home");

    // The status write wakes the Service again: nothing is written, announced or reported twice.
    run(&lab, svc).await.expect("reconciled again");
    assert_eq!(lab.kube.patches().len(), 2);
    assert_eq!(lab.reasons("web"), ["IPAllocated"]);
    assert_eq!(lab.calls("set_endpoints"), ["set_endpoints default/web"]);
    assert_eq!(lab.calls("allocate").len(), 2);
}

#[tokio::test]
async fn a_shown_address_is_claimed_first() {
    let lab = Lab::start(&["192.168.1.240", "192.168.1.241"]).await;
    let svc = lab.service("web", |v| {
        v["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.168.1.241"}]}});
    });
    run(&lab, svc).await.expect("reconciled");
    assert_eq!(
        lab.calls("allocate"),
        [r#"allocate default/web ["192.168.1.241"]"#]
    );
    assert_eq!(ingress(&lab.stored("web")), ["192.168.1.241"]);
    // The lease is new to the allocator, so the Service is told; its status was already right.
    assert_eq!(lab.reasons("web"), ["IPAllocated"]);
}

#[tokio::test]
async fn a_shown_address_the_pools_do_not_allow_is_replaced() {
    let lab = Lab::start(&["192.168.1.240"]).await;
    let svc = lab.service("web", |v| {
        v["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}});
    });
    run(&lab, svc).await.expect("reconciled");
    assert_eq!(ingress(&lab.stored("web")), ["192.168.1.240"]);
    assert_eq!(lab.reasons("web"), ["ClearAssignment", "IPAllocated"]);
    let events = lab.kube.list(EVENTS);
    let note = events[0]["note"].as_str().expect("note");
    assert!(
        note.starts_with(
            "current IP for \"default/web\" not allowed by config, will attempt for new IP assignment"
        ),
        "{note}"
    );
}

#[tokio::test]
async fn a_full_pool_is_an_event_and_no_status() {
    let lab = Lab::start(&["192.168.1.240"]).await;
    let other = pb::Owner {
        cluster: "home".into(),
        namespace: "default".into(),
        name: "first".into(),
        ..pb::Owner::default()
    };
    lab.allocator.put_lease(other, &["192.168.1.240"]);
    let svc = lab.service("web", |_| {});
    let action = run(&lab, svc).await.expect("a refusal is no error");
    assert_eq!(action, Action::requeue(lab.ctx.settings.resync));
    assert!(ingress(&lab.stored("web")).is_empty());
    assert!(lab.kube.patches().is_empty());
    assert_eq!(lab.reasons("web"), ["AllocationFailed"]);
    let events = lab.kube.list(EVENTS);
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(
        events[0]["note"],
        "Failed to allocate IP for \"default/web\": no available IPs"
    );
}

#[tokio::test]
async fn an_unreachable_allocator_is_an_error_tried_again_soon_and_counted() {
    let lab = Lab::start(&["192.168.1.240"]).await;
    lab.allocator.set_unavailable(true);
    let svc = lab.service("web", |_| {});
    let e = run(&lab, svc.clone()).await.expect_err("unavailable");
    assert!(matches!(e, Error::AllocatorUnavailable(_)), "{e}");
    let action = error_policy(Arc::new(svc), &e, Arc::clone(&lab.ctx));
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    assert!(
        lab.ctx
            .metrics
            .encode()
            .contains("ferrolb_adapter_reconcile_errors_total{kind=\"allocator_unavailable\"} 1")
    );
    assert!(lab.kube.patches().is_empty());
    assert!(lab.reasons("web").is_empty());

    lab.allocator.set_unavailable(false);
    run(&lab, lab.stored("web")).await.expect("reconciled");
    assert_eq!(ingress(&lab.stored("web")), ["192.168.1.240"]);
}

#[tokio::test]
async fn a_service_that_stops_being_a_load_balancer_gives_its_address_back() {
    let lab = Lab::start(&["192.168.1.240"]).await;
    run(&lab, lab.service("web", |_| {}))
        .await
        .expect("reconciled");
    assert!(lab.allocator.lease("default", "web").is_some());

    let mut v = lab.kube.get(SERVICES, "default", "web").expect("stored");
    v["spec"]["type"] = json!("ClusterIP");
    lab.kube.put(SERVICES, v);
    run(&lab, lab.stored("web")).await.expect("released");

    let svc = lab.stored("web");
    assert!(ingress(&svc).is_empty());
    assert!(!svc.annotations().contains_key(ALLOCATED_FROM_POOL));
    assert!(lab.allocator.lease("default", "web").is_none());
    assert!(lab.allocator.endpoints("default", "web").is_none());
    assert_eq!(
        lab.calls("delete_endpoints"),
        ["delete_endpoints default/web"]
    );
}

#[tokio::test]
async fn another_class_is_left_alone() {
    let lab = Lab::start(&["192.168.1.240"]).await;
    let svc = lab.service("web", |v| {
        v["spec"]["loadBalancerClass"] = json!("example.com/other");
    });
    assert_eq!(
        run(&lab, svc).await.expect("reconciled"),
        Action::await_change()
    );
    assert!(lab.allocator.calls().is_empty());
}

#[tokio::test]
async fn only_leases_of_services_that_are_gone_are_collected() {
    let lab = Lab::start(&["192.168.1.240", "192.168.1.241"]).await;
    run(&lab, lab.service("kept", |_| {})).await.expect("kept");
    run(&lab, lab.service("gone", |_| {})).await.expect("gone");

    let (store, mut writer) = reflector::store::<Service>();
    writer.apply_watcher_event(&watcher::Event::Apply(lab.stored("kept")));
    collect_once(&lab.ctx, &store).await.expect("collected");

    assert!(lab.allocator.lease("default", "kept").is_some());
    assert!(lab.allocator.lease("default", "gone").is_none());
    assert_eq!(lab.calls("release"), ["release default/gone"]);
}

#[tokio::test]
async fn a_failed_lease_listing_releases_nothing() {
    let lab = Lab::start(&["192.168.1.240"]).await;
    run(&lab, lab.service("web", |_| {}))
        .await
        .expect("reconciled");
    lab.allocator.set_unavailable(true);
    let (store, _writer) = reflector::store::<Service>();
    assert!(collect_once(&lab.ctx, &store).await.is_err());
    lab.allocator.set_unavailable(false);
    assert!(lab.allocator.lease("default", "web").is_some());
    assert!(lab.calls("release").is_empty());
}
