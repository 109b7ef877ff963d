//! Mutual TLS at the allocator's door: who gets no connection at all (no certificate, expired,
//! not yet valid, another CA, another trust domain), a client that refuses an impostor
//! allocator, tenants that reach only their own state and leases, and certificates rotated under
//! an open announcer stream.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferrolb_common::Principal;
use ferrolb_common::pki::{self, LeafSpec, Validity};
use ferrolb_common::tls::TlsFiles;
use ferrolb_e2e::pki::{DOMAIN, Pki, args_for, security_for};
use ferrolb_e2e::{Allocator, TempDir, apply, channel, client, pool, service, test_pki};
use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const DAY: Duration = Duration::from_secs(86400);

/// A raw TLS 1.3 connection that trusts the test CA's allocator by host name, presenting
/// `client` if given. Returns what the server did: `Ok` if it took the connection (it answered
/// HTTP/2's preface with its SETTINGS), or the error.
async fn knock(addr: std::net::SocketAddr, client: Option<&TlsFiles>) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(test_pki().ca_path()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(f) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&f.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&f.key).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server judges the client's certificate after the client thinks it is done;
    // its verdict arrives with the first read.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await {
        Ok(Ok(_)) if buf[3] == 4 => Ok(()),
        Ok(Ok(_)) => Err(format!("unexpected frame {buf:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

fn leaf(ca: &Pki, stem: &str, who: &Principal, domain: &str, validity: Validity) -> TlsFiles {
    let cert = pki::issue(
        &ca.ca,
        &LeafSpec {
            principal: who,
            domain,
            dns_names: &[],
            ips: &[],
            validity,
        },
    )
    .unwrap();
    pki::write(&ca.dir, stem, &cert).unwrap();
    let (cert, key) = pki::paths(&ca.dir, stem);
    TlsFiles {
        cert,
        key,
        ca: ca.ca_path(),
    }
}

/// Waits until the allocator's metrics show `want`.
async fn until_metric(a: &Allocator, want: &str) {
    let start = std::time::Instant::now();
    loop {
        let text = a.metrics_text();
        if text.contains(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "missing {want:?} in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_certificates_are_refused_at_the_handshake() {
    let a = Allocator::start(None, &[]);
    let me = Principal::Admin("ops".into());
    let now = SystemTime::now();
    let pki = test_pki();
    let foreign = Pki::named("ferrolb-foreign-ca", "foreign.example");
    let cases = [
        ("no_certificate", None),
        (
            "expired",
            Some(leaf(
                pki,
                "expired",
                &me,
                DOMAIN,
                Validity {
                    not_before: now - 2 * DAY,
                    not_after: now - DAY,
                },
            )),
        ),
        (
            "not_yet_valid",
            Some(leaf(
                pki,
                "future",
                &me,
                DOMAIN,
                Validity {
                    not_before: now + DAY,
                    not_after: now + 2 * DAY,
                },
            )),
        ),
        (
            "unknown_issuer",
            Some(leaf(
                &foreign,
                "foreign",
                &me,
                DOMAIN,
                Validity::for_next(DAY),
            )),
        ),
        (
            "identity",
            Some(leaf(
                pki,
                "elsewhere",
                &me,
                "other.example",
                Validity::for_next(DAY),
            )),
        ),
    ];
    for (reason, files) in &cases {
        let got = knock(a.addr, files.as_ref()).await;
        assert!(got.is_err(), "{reason}: the allocator took the connection");
        until_metric(
            &a,
            &format!("ferrolb_allocator_tls_handshakes_refused_total{{reason=\"{reason}\"}} 1"),
        )
        .await;
    }
    // A good certificate of the same CA gets in, by the same door.
    knock(a.addr, Some(&pki.files("admin"))).await.unwrap();
    // And a gRPC client with a refused certificate learns why.
    let (_, files) = &cases[1];
    let security = security_for(files.clone().unwrap());
    let endpoint = ferrolb_common::transport::endpoint(&a.url(), &security).unwrap();
    let mut c = pb::ipam_service_client::IpamServiceClient::new(
        ferrolb_common::transport::connect_lazy(endpoint, &security),
    );
    let e = c.list_pools(pb::ListPoolsRequest {}).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn clients_refuse_an_allocator_that_is_not_one() {
    // A server with a valid server certificate of the right CA, but the allocator identity
    // of another trust domain.
    let impostor = leaf(
        test_pki(),
        "impostor",
        &Principal::Allocator,
        "other.example",
        Validity::for_next(DAY),
    );
    let a = Allocator::start(
        None,
        &args_for(&impostor)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let err = ferrolb_e2e::try_channel(&a.url(), "cluster/home/node/n1", Duration::from_secs(2))
        .await
        .expect_err("an announcer's connection to an impostor");
    assert!(
        err.contains("spiffe://other.example/allocator") && err.contains("ForeignDomain"),
        "{err}"
    );
}

/// Cluster a's adapter touches only cluster a: every call on b's state and leases is refused,
/// whether the object exists or not, and saying "admin" in metadata changes nothing.
#[tokio::test]
async fn a_cluster_reaches_only_its_own() {
    let a = Allocator::start(None, &[]);
    let mut admin = client(&a.url(), "admin").await;
    apply(&mut admin, pool("shared", &["10.9.0.0/28"])).await;
    let mut b = client(&a.url(), "cluster/b").await;
    b.allocate(pb::AllocateRequest {
        owner: Some(service("b", "default", "web")),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ipam = client(&a.url(), "cluster/a").await;
    for name in ["web", "does-not-exist"] {
        let owner = || Some(service("b", "default", name));
        let codes = [
            ipam.release(pb::ReleaseRequest { owner: owner() })
                .await
                .map(|_| ())
                .unwrap_err(),
            ipam.get_lease(pb::GetLeaseRequest { owner: owner() })
                .await
                .map(|_| ())
                .unwrap_err(),
            ipam.move_lease(pb::MoveLeaseRequest { owner: owner() })
                .await
                .map(|_| ())
                .unwrap_err(),
        ];
        for e in codes {
            assert_eq!(e.code(), Code::PermissionDenied, "{name}: {e:?}");
        }
    }
    // External clients likewise: y cannot release, renew or read x's leases.
    let external = |client: &str, key: &str| pb::Owner {
        client: client.into(),
        key: key.into(),
        ..Default::default()
    };
    let mut x = client(&a.url(), "client/x").await;
    x.allocate(pb::AllocateRequest {
        owner: Some(external("x", "vm-1")),
        ttl_seconds: 600,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut y = client(&a.url(), "client/y").await;
    for key in ["vm-1", "vm-404"] {
        let owner = || Some(external("x", key));
        let codes = [
            y.release(pb::ReleaseRequest { owner: owner() })
                .await
                .map(|_| ())
                .unwrap_err(),
            y.renew(pb::RenewRequest {
                owner: owner(),
                ttl_seconds: 60,
            })
            .await
            .map(|_| ())
            .unwrap_err(),
            y.get_lease(pb::GetLeaseRequest { owner: owner() })
                .await
                .map(|_| ())
                .unwrap_err(),
        ];
        for e in codes {
            assert_eq!(e.code(), Code::PermissionDenied, "{key}: {e:?}");
        }
    }
    let e = ipam
        .list_leases(pb::ListLeasesRequest {
            cluster: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let mut cs = ClusterStateServiceClient::new(channel(&a.url(), "cluster/a").await);
    let b_ = || "b".to_string();
    let errors = vec![
        cs.apply_node(pb::Node {
            cluster: b_(),
            name: "n1".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        cs.delete_node(pb::DeleteNodeRequest {
            cluster: b_(),
            name: "n1".into(),
        })
        .await
        .map(|_| ()),
        cs.list_nodes(pb::ListNodesRequest { cluster: b_() })
            .await
            .map(|_| ()),
        cs.set_endpoints(pb::ServiceEndpoints {
            cluster: b_(),
            namespace: "default".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        cs.apply_l2_advertisement(pb::L2Advertisement {
            cluster: b_(),
            name: "l2".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        cs.list_l2_advertisements(pb::ListL2AdvertisementsRequest { cluster: b_() })
            .await
            .map(|_| ()),
        cs.list_announcements(pb::ListAnnouncementsRequest { cluster: b_() })
            .await
            .map(|_| ()),
        cs.list_failovers(pb::ListAnnouncementsRequest { cluster: b_() })
            .await
            .map(|_| ()),
        cs.apply_bgp_peer(pb::BgpPeer {
            cluster: b_(),
            name: "p".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        cs.list_bgp_config(pb::ListBgpConfigRequest { cluster: b_() })
            .await
            .map(|_| ()),
    ];
    for (i, r) in errors.into_iter().enumerate() {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "call {i}: {e:?}");
    }
    // b's lease is untouched.
    let lease = b
        .get_lease(pb::GetLeaseRequest {
            owner: Some(service("b", "default", "web")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.ips, vec!["10.9.0.0".to_string()]);
    // Each tenant's calls and refusals are counted as its own: a's two Release attempts on b's
    // leases, y's on x's, and b's own call that went through.
    until_metric(
        &a,
        "ferrolb_allocator_tenant_refusals_total{tenant=\"cluster/a\",method=\"Release\"} 2",
    )
    .await;
    until_metric(
        &a,
        "ferrolb_allocator_tenant_refusals_total{tenant=\"client/y\",method=\"Release\"} 2",
    )
    .await;
    until_metric(
        &a,
        "ferrolb_allocator_tenant_calls_total{tenant=\"cluster/b\",method=\"GetLease\"} 1",
    )
    .await;
    assert!(
        !a.metrics_text()
            .contains("tenant_refusals_total{tenant=\"cluster/b\""),
        "{}",
        a.metrics_text()
    );
}

/// Cluster a copies b's sharing key: it gets an address of its own, never b's.
#[tokio::test]
async fn a_sharing_key_does_not_cross_clusters() {
    let a = Allocator::start(None, &[]);
    let mut admin = client(&a.url(), "admin").await;
    apply(&mut admin, pool("shared", &["10.9.0.0/28"])).await;
    let req = |cluster: &str, ports: u32| pb::AllocateRequest {
        owner: Some(service(cluster, "default", "dns")),
        sharing_key: "dns".into(),
        ports: vec![pb::Port {
            port: ports,
            protocol: pb::Protocol::Udp as i32,
        }],
        ..Default::default()
    };
    let mut b = client(&a.url(), "cluster/b").await;
    let theirs = b
        .allocate(req("b", 53))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let mut ca = client(&a.url(), "cluster/a").await;
    let ours = ca
        .allocate(req("a", 5353))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_ne!(ours.ips, theirs.ips, "cluster a joined b's shared address");
    // Asking for b's address by name, with b's key, is refused with the reason.
    let e = ca
        .allocate(pb::AllocateRequest {
            owner: Some(service("a", "default", "dns2")),
            requested_ips: theirs.ips.clone(),
            ..req("a", 5354)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Within one cluster the key still shares.
    let mut b2 = b.clone();
    let again = b2
        .allocate(pb::AllocateRequest {
            owner: Some(service("b", "default", "dns-tcp")),
            ports: vec![pb::Port {
                port: 53,
                protocol: pb::Protocol::Tcp as i32,
            }],
            ..req("b", 53)
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(again.ips, theirs.ips);
}

/// The allocator's certificate, key and CA bundle are replaced while an announcer stream is
/// open: the stream goes on, new handshakes see the new files, a bundle with both CAs accepts
/// both, and once the old CA leaves the bundle its certificates are refused.
#[tokio::test]
async fn certificates_rotate_under_an_open_stream() {
    let dir = TempDir::new("ferrolb-rotate");
    let old = test_pki();
    let new = Pki::new("ferrolb-new-ca");
    let server = TlsFiles {
        cert: dir.0.join("allocator.pem"),
        key: dir.0.join("allocator-key.pem"),
        ca: dir.0.join("bundle.pem"),
    };
    let install = |from: &TlsFiles, bundle: &[&Pki]| {
        let text: String = bundle
            .iter()
            .map(|p| std::fs::read_to_string(p.ca_path()).unwrap())
            .collect();
        pki::write_file(&server.ca, &text, 0o644).unwrap();
        pki::write_file(
            &server.key,
            &std::fs::read_to_string(&from.key).unwrap(),
            0o600,
        )
        .unwrap();
        pki::write_file(
            &server.cert,
            &std::fs::read_to_string(&from.cert).unwrap(),
            0o644,
        )
        .unwrap();
    };
    install(&old.files("allocator"), &[old]);
    let a = Allocator::start(
        None,
        &args_for(&server)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let mut admin = client(&a.url(), "admin").await;
    apply(&mut admin, pool("p", &["10.9.0.0/28"])).await;

    // An announcer of the old CA streams.
    let mut stream = ferrolb_proto::v1::announcer_service_client::AnnouncerServiceClient::new(
        channel(&a.url(), "cluster/home/node/n1").await,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AnnouncerMessage {
        kind: Some(pb::announcer_message::Kind::Hello(pb::Hello {
            cluster: "home".into(),
            node: "n1".into(),
            capabilities: vec!["l2".into()],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = stream
        .announce(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(inbound.message().await.unwrap().is_some());
    let beat = {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let status = pb::AnnouncerMessage {
                    kind: Some(pb::announcer_message::Kind::Status(pb::AnnouncerStatus {
                        ready: true,
                        ..Default::default()
                    })),
                };
                if tx.send(status).await.is_err() {
                    return;
                }
            }
        })
    };

    // The new CA's certificate for the allocator, and a bundle of both.
    install(&new.files("allocator"), &[old, &new]);
    // A client that trusts only the new CA gets in once the server presents the new
    // certificate; a client whose own certificate is the old CA's still does, through the
    // bundle.
    let new_admin = new.files("admin");
    let old_admin = TlsFiles {
        ca: new.ca_path(),
        ..old.files("admin")
    };
    let start = std::time::Instant::now();
    while !gets_in(&a, &new_admin).await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new files were not taken up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gets_in(&a, &old_admin).await,
        "the bundle does not trust the old CA"
    );

    // The old CA leaves the bundle: its certificates no longer get in.
    install(&new.files("allocator"), &[&new]);
    let start = std::time::Instant::now();
    while gets_in(&a, &old_admin).await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the old CA is still trusted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gets_in(&a, &new_admin).await);
    // Through it all the stream stayed open: it still hears the allocator.
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(2), inbound.message())
            .await
            .expect("the stream went silent")
            .expect("the stream broke");
        assert!(m.is_some(), "the stream ended");
    }
    beat.abort();
}

/// Does a call with these files succeed?
async fn gets_in(a: &Allocator, files: &TlsFiles) -> bool {
    let security = security_for(files.clone());
    let endpoint = ferrolb_common::transport::endpoint(&a.url(), &security).unwrap();
    match ferrolb_common::transport::connect(endpoint, &security).await {
        Ok(ch) => pb::ipam_service_client::IpamServiceClient::new(ch)
            .list_pools(pb::ListPoolsRequest {})
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// A pool an operator declares without naming clusters or clients is the operator's alone; it
/// opens to those it names, or to all with `*`.
#[tokio::test]
async fn an_operators_pool_is_its_own_unless_opened() {
    let a = Allocator::start(None, &[]);
    let mut admin = client(&a.url(), "admin").await;
    let closed = pb::Pool {
        name: "ops".into(),
        addresses: vec!["10.9.1.0/30".into()],
        ..Default::default()
    };
    apply(&mut admin, closed.clone()).await;
    let mut c = client(&a.url(), "cluster/c").await;
    let want = || pb::AllocateRequest {
        owner: Some(service("c", "default", "web")),
        ..Default::default()
    };
    let e = c.allocate(want()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("open to it"), "{e:?}");
    let listed = c
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.pools.is_empty(), "{listed:?}");
    admin
        .allocate(pb::AllocateRequest {
            owner: Some(service("ops", "default", "probe")),
            ..Default::default()
        })
        .await
        .unwrap();
    apply(
        &mut admin,
        pb::Pool {
            clusters: vec!["c".into()],
            ..closed
        },
    )
    .await;
    let lease = c
        .allocate(want())
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.pool, "ops");
}

/// An operator gives cluster a an allowance: a declares pools inside it only; a cluster without
/// one declares as before; only operators set allowances.
#[tokio::test]
async fn a_cluster_with_an_allowance_declares_pools_only_inside_it() {
    let a = Allocator::start(None, &[]);
    let mut admin = client(&a.url(), "admin").await;
    admin
        .set_allowance(pb::Allowance {
            cluster: "a".into(),
            ranges: vec!["10.20.0.0/24".into(), "fd00:20::/64".into()],
        })
        .await
        .unwrap();
    let own = |name: &str, addrs: &[&str]| pb::Pool {
        name: name.into(),
        addresses: addrs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut ca = client(&a.url(), "cluster/a").await;
    let apply = |pool: pb::Pool| pb::ApplyPoolRequest {
        pool: Some(pool),
        create_only: false,
    };
    ca.apply_pool(apply(own(
        "inside",
        &["10.20.0.0/26", "fd00:20::10-fd00:20::20"],
    )))
    .await
    .unwrap();
    let e = ca
        .apply_pool(apply(own("outside", &["10.20.0.200-10.20.1.10"])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("outside cluster \"a\"'s allowance"),
        "{e:?}"
    );
    // Its view of its allowance; another cluster cannot read it, nor set its own.
    let got = ca
        .get_allowance(pb::GetAllowanceRequest {
            cluster: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.ranges.len(), 2);
    let mut cb = client(&a.url(), "cluster/b").await;
    let e = cb
        .get_allowance(pb::GetAllowanceRequest {
            cluster: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = cb
        .set_allowance(pb::Allowance {
            cluster: "b".into(),
            ranges: vec!["0.0.0.0/0".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Without an allowance, a cluster's CRDs work as they always did.
    cb.apply_pool(apply(own("b-pool", &["10.30.0.0/24"])))
        .await
        .unwrap();
    // Removing the allowance frees a.
    admin
        .set_allowance(pb::Allowance {
            cluster: "a".into(),
            ranges: vec![],
        })
        .await
        .unwrap();
    ca.apply_pool(apply(own("outside", &["10.20.0.200-10.20.1.10"])))
        .await
        .unwrap();
}
