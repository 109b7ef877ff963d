//! AnnouncerService across allocator replicas on one PostgreSQL, with scripted announcers: a
//! broken stream moves the owner's addresses at once, stopped heartbeats within the timeout,
//! the replicas learn of each other's sessions through LISTEN/NOTIFY, and an announcer that
//! comes back at the current version resumes without a snapshot. Also the protocol's errors.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrolb_e2e::{Allocator, PgDb, apply, channel, client, pool, service};
use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::allocator_message::Kind as Down;
use ferrolb_proto::v1::announcer_message::Kind as Up;
use ferrolb_proto::v1::announcer_service_client::AnnouncerServiceClient;
use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const VIP: &str = "192.168.1.240";

/// A scripted announcer: what it was told, and a switch for its heartbeats.
struct Fake {
    node: String,
    tx: mpsc::Sender<pb::AnnouncerMessage>,
    inbound: tonic::Streaming<pb::AllocatorMessage>,
    beating: Arc<AtomicBool>,
    held: std::collections::BTreeSet<String>,
    version: u64,
    first: pb::Assignments,
    heart: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    /// Gone for good: the heartbeats stop and the stream closes.
    fn drop(&mut self) {
        self.heart.abort();
    }
}

fn hello(node: &str, version: u64, announcing: &[&str]) -> pb::AnnouncerMessage {
    pb::AnnouncerMessage {
        kind: Some(Up::Hello(pb::Hello {
            cluster: "home".into(),
            node: node.into(),
            interfaces: vec![],
            capabilities: vec!["l2".into()],
            version,
            announcing: announcing.iter().map(|s| s.to_string()).collect(),
        })),
    }
}

/// An open stream: what the fake sends, what it hears.
type Opened = (
    mpsc::Sender<pb::AnnouncerMessage>,
    tonic::Streaming<pb::AllocatorMessage>,
);

/// Opens a stream with `caller`'s certificate, and the `x-ferrolb-caller` metadata if given.
async fn open_with(
    url: &str,
    caller: &str,
    header: Option<&str>,
    first: pb::AnnouncerMessage,
) -> Result<Opened, tonic::Status> {
    let mut c = AnnouncerServiceClient::new(channel(url, caller).await);
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(h) = header {
        req.metadata_mut()
            .insert("x-ferrolb-caller", h.parse().unwrap());
    }
    let inbound = c.announce(req).await?.into_inner();
    Ok((tx, inbound))
}

async fn open(
    url: &str,
    caller: &str,
    first: pb::AnnouncerMessage,
) -> Result<Opened, tonic::Status> {
    open_with(url, caller, None, first).await
}

impl Fake {
    async fn connect(url: &str, node: &str, version: u64, announcing: &[&str]) -> Fake {
        let me = format!("cluster/home/node/{node}");
        let (tx, mut inbound) = open(url, &me, hello(node, version, announcing))
            .await
            .unwrap();
        let first = match inbound.message().await.unwrap() {
            Some(pb::AllocatorMessage {
                kind: Some(Down::Assignments(a)),
            }) => a,
            other => panic!("{node}: the stream did not open with assignments: {other:?}"),
        };
        assert!(first.heartbeat_interval_ms > 0 && first.heartbeat_interval_ms <= 100);
        let beating = Arc::new(AtomicBool::new(true));
        let (beat_tx, on) = (tx.clone(), Arc::clone(&beating));
        let every = Duration::from_millis(u64::from(first.heartbeat_interval_ms));
        let heart = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if !on.load(Ordering::Relaxed) {
                    continue;
                }
                let status = pb::AnnouncerMessage {
                    kind: Some(Up::Status(pb::AnnouncerStatus {
                        ready: true,
                        ..Default::default()
                    })),
                };
                if beat_tx.send(status).await.is_err() {
                    return;
                }
            }
        });
        let mut f = Fake {
            node: node.into(),
            tx,
            inbound,
            beating,
            held: announcing.iter().map(|s| s.to_string()).collect(),
            version,
            first: first.clone(),
            heart,
        };
        f.apply(first);
        f
    }

    fn apply(&mut self, a: pb::Assignments) {
        if a.snapshot {
            self.held.clear();
        }
        for ip in a.unset {
            self.held.remove(&ip);
        }
        for s in a.set {
            self.held.insert(s.ip);
        }
        self.version = a.version;
    }

    /// Reads until `want` says the held set is right, or `within` passes; returns how long.
    async fn until(&mut self, within: Duration, want: impl Fn(&Fake) -> bool) -> Duration {
        let start = Instant::now();
        while !want(self) {
            let left = within.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, self.inbound.message()).await {
                Ok(Ok(Some(pb::AllocatorMessage {
                    kind: Some(Down::Assignments(a)),
                }))) => self.apply(a),
                Ok(Ok(Some(_))) => {}
                other => panic!("{}: waiting {within:?}: {other:?}", self.node),
            }
        }
        start.elapsed()
    }

    /// Reads whatever arrives during `window`.
    async fn drain(&mut self, window: Duration) {
        let end = tokio::time::Instant::now() + window;
        while let Ok(Ok(Some(m))) = tokio::time::timeout_at(end, self.inbound.message()).await {
            if let Some(Down::Assignments(a)) = m.kind {
                self.apply(a);
            }
        }
    }

    fn holds(&self) -> bool {
        self.held.contains(VIP)
    }
}

async fn configure(url: &str) {
    let mut ipam = client(url, "admin").await;
    apply(
        &mut ipam,
        pool("home-pool", &["192.168.1.240-192.168.1.245"]),
    )
    .await;
    let mut cs = ClusterStateServiceClient::new(channel(url, "cluster/home").await);
    cs.apply_l2_advertisement(pb::L2Advertisement {
        cluster: "home".into(),
        name: "home-l2".into(),
        ip_address_pools: vec!["home-pool".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    ipam.allocate(pb::AllocateRequest {
        owner: Some(service("home", "default", "home-nginx")),
        ..Default::default()
    })
    .await
    .unwrap();
    cs.set_endpoints(pb::ServiceEndpoints {
        cluster: "home".into(),
        namespace: "default".into(),
        name: "home-nginx".into(),
        serving_nodes: vec!["n1".into(), "n2".into()],
        any_serving: true,
        traffic_policy_local: false,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_across_replicas() {
    let db = PgDb::new();
    let a = Allocator::start(Some(&db.url), &[]);
    let b = Allocator::start(Some(&db.url), &[]);
    configure(&a.url()).await;

    // n1 streams from replica A, n2 from replica B; exactly one of them gets the address.
    let mut n1 = Fake::connect(&a.url(), "n1", 0, &[]).await;
    let mut n2 = Fake::connect(&b.url(), "n2", 0, &[]).await;
    assert!(n1.first.snapshot && n2.first.snapshot);
    let start = Instant::now();
    while !n1.holds() && !n2.holds() {
        assert!(start.elapsed() < Duration::from_secs(3), "nobody got {VIP}");
        n1.drain(Duration::from_millis(20)).await;
        n2.drain(Duration::from_millis(20)).await;
    }
    n1.drain(Duration::from_millis(300)).await;
    n2.drain(Duration::from_millis(300)).await;
    assert!(
        n1.holds() != n2.holds(),
        "n1 {:?}, n2 {:?}",
        n1.held,
        n2.held
    );
    let (owner, mut other) = if n1.holds() { (n1, n2) } else { (n2, n1) };

    // The owner's stream breaks: the other node, on the other replica, gets it at once.
    let name = owner.node.clone();
    let other_url = if other.node == "n1" { a.url() } else { b.url() };
    drop(owner);
    let took = other.until(Duration::from_secs(2), Fake::holds).await;
    assert!(
        took < Duration::from_millis(500),
        "broken stream acted on after {took:?}"
    );

    // It comes back, on the replica of the other node, and wins the address back.
    let mut owner = Fake::connect(&other_url, &name, 0, &[]).await;
    owner.until(Duration::from_secs(2), Fake::holds).await;
    other.until(Duration::from_secs(2), |f| !f.holds()).await;

    // Its heartbeats stop while the stream stays open: detected within the 300 ms timeout.
    owner.beating.store(false, Ordering::Relaxed);
    let took = other.until(Duration::from_secs(2), Fake::holds).await;
    assert!(
        took < Duration::from_millis(800),
        "stopped heartbeats acted on after {took:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = owner.inbound.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the silent announcer's stream was not ended");
}

#[tokio::test]
async fn an_announcer_in_step_resumes_without_a_snapshot() {
    let a = Allocator::start(None, &[]);
    configure(&a.url()).await;
    let mut n1 = Fake::connect(&a.url(), "n1", 0, &[]).await;
    n1.until(Duration::from_secs(3), Fake::holds).await;
    let version = n1.version;
    // A second stream of the same node (as after a reconnect) replaces the session.
    let again = Fake::connect(&a.url(), "n1", version, &[VIP]).await;
    let _ = &again.tx;
    assert!(!again.first.snapshot, "{:?}", again.first);
    assert!(again.first.set.is_empty() && again.first.unset.is_empty());
    assert!(again.first.version >= version);
    drop(n1);
    drop(again);
    // One that holds what it should not gets a snapshot that takes it away.
    let mut stale = Fake::connect(&a.url(), "n1", version, &[VIP, "192.168.1.245"]).await;
    assert!(stale.first.snapshot, "{:?}", stale.first);
    assert!(!stale.held.contains("192.168.1.245"));
    stale
        .until(Duration::from_secs(2), |f| {
            f.held.iter().eq([VIP.to_string()].iter())
        })
        .await;
}

#[tokio::test]
async fn protocol_errors() {
    let a = Allocator::start(None, &[]);
    let status = pb::AnnouncerMessage {
        kind: Some(Up::Status(pb::AnnouncerStatus::default())),
    };
    let n1 = "cluster/home/node/n1";
    let e = open(&a.url(), n1, status).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = open(&a.url(), "cluster/other/node/n1", hello("n1", 0, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut no_l2 = hello("n1", 0, &[]);
    if let Some(Up::Hello(h)) = &mut no_l2.kind {
        h.capabilities.clear();
    }
    let e = open(&a.url(), n1, no_l2).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = open(&a.url(), n1, hello("", 0, &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

/// A node's certificate opens its own node's stream and nothing else; no metadata changes who
/// calls.
#[tokio::test]
async fn a_node_is_only_itself() {
    let a = Allocator::start(None, &[]);
    configure(&a.url()).await;
    let n1 = "cluster/home/node/n1";
    let e = open(&a.url(), n1, hello("n2", 0, &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("may not announce as node \"n2\""),
        "{e:?}"
    );
    for header in ["admin", "cluster/home", "cluster/home/node/n2"] {
        let e = open_with(&a.url(), n1, Some(header), hello("n2", 0, &[]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{header}: {e:?}");
    }
    // The adapter of the cluster and an operator are not nodes either.
    for caller in ["cluster/home", "admin"] {
        let e = open(&a.url(), caller, hello("n1", 0, &[]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{caller}: {e:?}");
    }
    // And a node touches no cluster state, no pool and no lease.
    let mut ipam = client(&a.url(), n1).await;
    let e = ipam
        .apply_pool(pb::ApplyPoolRequest {
            pool: Some(pool("mine", &["10.77.0.0/24"])),
            create_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = ipam
        .release(pb::ReleaseRequest {
            owner: Some(service("home", "default", "home-nginx")),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut cs = ClusterStateServiceClient::new(channel(&a.url(), n1).await);
    let e = cs
        .set_endpoints(pb::ServiceEndpoints {
            cluster: "home".into(),
            namespace: "default".into(),
            name: "home-nginx".into(),
            serving_nodes: vec!["n1".into()],
            any_serving: true,
            traffic_policy_local: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = cs
        .apply_node(pb::Node {
            cluster: "home".into(),
            name: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Its own stream opens.
    let (_tx, mut inbound) = open(&a.url(), n1, hello("n1", 0, &[])).await.unwrap();
    assert!(inbound.message().await.unwrap().is_some());
}

/// How a stream ends: cleanly (None) or with a status code.
async fn end_of(inbound: &mut tonic::Streaming<pb::AllocatorMessage>) -> Option<Code> {
    loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(s) => return Some(s.code()),
        }
    }
}

/// A node that connects again while its old stream still looks alive: the newer stream takes
/// over, the older one is ended (ABORTED), and its end does not take the node's session away.
#[tokio::test]
async fn a_newer_stream_of_a_node_ends_the_older() {
    let a = Allocator::start(None, &[]);
    configure(&a.url()).await;
    let mut old = Fake::connect(&a.url(), "n1", 0, &[]).await;
    old.until(Duration::from_secs(3), Fake::holds).await;
    let mut new = Fake::connect(&a.url(), "n1", old.version, &[VIP]).await;
    let ended = tokio::time::timeout(Duration::from_secs(2), end_of(&mut old.inbound))
        .await
        .expect("the older stream was not ended");
    assert_eq!(ended, Some(Code::Aborted));
    drop(old);
    // The session is the newer stream's: it keeps the address, and the cluster says so.
    new.drain(Duration::from_millis(1500)).await;
    assert!(new.holds(), "{:?}", new.held);
    let mut cs = ClusterStateServiceClient::new(channel(&a.url(), "cluster/home").await);
    let list = cs
        .list_announcements(pb::ListAnnouncementsRequest {
            cluster: "home".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let owner: Vec<_> = list
        .announcements
        .iter()
        .filter(|x| x.ip == VIP)
        .map(|x| x.node.clone())
        .collect();
    assert_eq!(owner, vec!["n1".to_string()], "{list:?}");
}

/// BGP passwords are sealed in the database, and a node receives only the passwords of the
/// peers that select it.
#[tokio::test]
async fn a_node_gets_only_its_peers_passwords_and_none_are_stored_in_the_clear() {
    let db = PgDb::new();
    let a = Allocator::start(Some(&db.url), &[]);
    let mut cs = ClusterStateServiceClient::new(channel(&a.url(), "cluster/home").await);
    let rack = |r: &str| pb::LabelSelector {
        match_labels: [("rack".to_string(), r.to_string())].into(),
        ..Default::default()
    };
    for (node, r) in [("n1", "a"), ("n2", "b")] {
        cs.apply_node(pb::Node {
            cluster: "home".into(),
            name: node.into(),
            labels: [("rack".to_string(), r.to_string())].into(),
            network_unavailable: false,
        })
        .await
        .unwrap();
    }
    for (name, r, pw) in [("p1", "a", "pw-for-rack-a"), ("p2", "b", "pw-for-rack-b")] {
        cs.apply_bgp_peer(pb::BgpPeer {
            cluster: "home".into(),
            name: name.into(),
            my_asn: 64512,
            peer_asn: 64512,
            peer_address: "10.250.0.1".into(),
            node_selectors: vec![rack(r)],
            password: pw.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let bgp_hello = |node: &str| {
        let mut m = hello(node, 0, &[]);
        if let Some(Up::Hello(h)) = &mut m.kind {
            h.capabilities.push("bgp".into());
        }
        m
    };
    let (_tx, mut inbound) = open(&a.url(), "cluster/home/node/n1", bgp_hello("n1"))
        .await
        .unwrap();
    let mut sessions = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Ok(Some(m))) = tokio::time::timeout_at(end, inbound.message()).await {
        if let Some(Down::Assignments(x)) = m.kind {
            sessions.extend(x.sessions_set);
        }
    }
    let seen: Vec<(String, String)> = sessions
        .iter()
        .map(|s| (s.name.clone(), s.password.clone()))
        .collect();
    assert!(
        seen.contains(&("p1".into(), "pw-for-rack-a".into())),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|(n, p)| n == "p1" && p != "pw-for-rack-b"),
        "{seen:?}"
    );
    // At rest: sealed, not as given.
    let out = std::process::Command::new("psql")
        .args([&db.url, "-tAc", "SELECT spec FROM bgp_objects"])
        .output()
        .unwrap();
    let stored = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stored.contains("password_sealed\":\"v1:"),
        "{stored}"
    );
    assert!(!stored.contains("pw-for-rack"), "{stored}");
    // A second replica with the same key reads them; the passwords survive a restart.
    drop(a);
    let b = Allocator::start(Some(&db.url), &[]);
    let (_tx2, mut inbound2) = open(&b.url(), "cluster/home/node/n2", bgp_hello("n2"))
        .await
        .unwrap();
    let first = inbound2.message().await.unwrap().unwrap();
    let Some(Down::Assignments(x)) = first.kind else {
        panic!("{first:?}")
    };
    let seen: Vec<(String, String)> = x
        .sessions_set
        .iter()
        .map(|s| (s.name.clone(), s.password.clone()))
        .collect();
    assert_eq!(seen, vec![("p2".to_string(), "pw-for-rack-b".to_string())]);
}

/// The same across replicas: the node's older stream on replica A ends once its newer one on
/// replica B holds the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_stream_on_another_replica_ends_the_older() {
    let db = PgDb::new();
    let a = Allocator::start(Some(&db.url), &[]);
    let b = Allocator::start(Some(&db.url), &[]);
    configure(&a.url()).await;
    let mut old = Fake::connect(&a.url(), "n1", 0, &[]).await;
    old.until(Duration::from_secs(3), Fake::holds).await;
    let mut new = Fake::connect(&b.url(), "n1", old.version, &[VIP]).await;
    let ended = tokio::time::timeout(Duration::from_secs(3), end_of(&mut old.inbound))
        .await
        .expect("the older stream on the other replica was not ended");
    assert_eq!(ended, Some(Code::Aborted));
    drop(old);
    new.drain(Duration::from_millis(1500)).await;
    assert!(new.holds(), "{:?}", new.held);
}
