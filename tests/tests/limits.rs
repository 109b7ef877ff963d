//! One identity's flood never starves another's calls: open streams and calls in flight are
//! limited per identity, and an external client has a lease quota and a TTL cap.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferrolb_e2e::{Allocator, apply, channel, client, pool, service};
use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::announcer_service_client::AnnouncerServiceClient;
use ferrolb_proto::v1::ipam_service_client::IpamServiceClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_idle_streams_do_not_starve_another_identity() {
    let a = Allocator::start(None, &["--max-watches-per-identity", "16"]);
    let mut admin = client(&a.url(), "admin").await;
    apply(&mut admin, pool("p", &["10.9.0.0/24"])).await;

    // 300 watches from one client identity: 16 open, the rest refused at once.
    let flood = channel(&a.url(), "client/flood").await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        match IpamServiceClient::new(flood.clone())
            .watch_leases(pb::WatchLeasesRequest::default())
            .await
        {
            Ok(s) => open.push(s.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("watches open"), "{e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (16, 284));

    // 300 Announce streams from one node that never say hello: each holds a call of its
    // identity's until the hello deadline; those over its share are refused at once.
    let node = channel(&a.url(), "cluster/home/node/n1").await;
    let mut hellos = Vec::new();
    for _ in 0..300 {
        let mut c = AnnouncerServiceClient::new(node.clone());
        hellos.push(tokio::spawn(async move {
            let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AnnouncerMessage>(1);
            let r = c
                .announce(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            // Keep the sender until the call ends, so that no hello ever comes.
            drop(_tx);
            r.map(|_| ()).map_err(|e| e.code())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another identity is served at once.
    let mut other = client(&a.url(), "cluster/other").await;
    let start = std::time::Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(2),
        other.allocate(pb::AllocateRequest {
            owner: Some(service("other", "default", "web")),
            ..Default::default()
        }),
    )
    .await
    .expect("another identity's Allocate waited")
    .unwrap();
    assert!(got.into_inner().lease.is_some());
    assert!(start.elapsed() < Duration::from_secs(1));

    let mut exhausted = 0;
    for h in hellos {
        if h.await.unwrap() == Err(Code::ResourceExhausted) {
            exhausted += 1;
        }
    }
    assert!(exhausted >= 300 - 64, "only {exhausted} refused at once");
    drop(open);
}

#[tokio::test]
async fn a_client_over_its_quota_is_told_so() {
    let a = Allocator::start(
        None,
        &[
            "--max-leases-per-client",
            "3",
            "--max-lease-ttl-seconds",
            "600",
        ],
    );
    let mut admin = client(&a.url(), "admin").await;
    apply(&mut admin, pool("p", &["10.9.0.0/24"])).await;
    let mut x = client(&a.url(), "client/x").await;
    let ext = |key: &str, ttl: u32| pb::AllocateRequest {
        owner: Some(pb::Owner {
            client: "x".into(),
            key: key.into(),
            ..Default::default()
        }),
        ttl_seconds: ttl,
        ..Default::default()
    };
    let lease = x
        .allocate(ext("vm-0", 0))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert!(lease.expires_at.is_some(), "no TTL asked for: the maximum");
    let e = x.allocate(ext("vm-1", 601)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("ttl_seconds"), "{e:?}");
    for key in ["vm-1", "vm-2"] {
        x.allocate(ext(key, 60)).await.unwrap();
    }
    let e = x.allocate(ext("vm-3", 60)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-leases-per-client 3"), "{e:?}");
}
