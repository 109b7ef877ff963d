//! What a Service asks of the allocator, by MetalLB's rules (`controller/service.go`): whether
//! ferrolb handles it at all, its families, explicit addresses, pool, sharing key, ports and
//! backend key; and the status and annotation written back. Pure functions over the Service.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_proto::v1 as pb;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceSpec};
use kube::ResourceExt;

/// The annotations MetalLB reads, without their prefix.
pub const ADDRESS_POOL: &str = "address-pool";
pub const LOAD_BALANCER_IPS: &str = "loadBalancerIPs";
pub const ALLOW_SHARED_IP: &str = "allow-shared-ip";
/// Written back: the pool the addresses came from.
pub const ALLOCATED_FROM_POOL: &str = "metallb.io/ip-allocated-from-pool";

const PREFIX: &str = "metallb.io/";
const OLD_PREFIX: &str = "metallb.universe.tf/";

/// A Kubernetes event to record on the Service: type (`Normal`/`Warning`), reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Event {
    fn warning(reason: &'static str, message: impl Into<String>) -> Event {
        Event {
            warning: true,
            reason,
            message: message.into(),
        }
    }
}

/// What to do with a Service.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Another load balancer's (its class is not ours): leave it alone.
    NotOurs,
    /// Not (or no longer) a load balancer of ours: release its lease and clear its status.
    Release,
    /// Ask the allocator for this; record the events.
    Allocate(Box<pb::AllocateRequest>, Vec<Event>),
    /// The Service asks for something impossible: release nothing, record the event.
    Invalid(Event),
}

/// `--lb-class`: without it only Services without a class are ours, with it only that class.
pub fn ours(svc: &Service, lb_class: Option<&str>) -> bool {
    let class = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_class.as_deref());
    class == lb_class
}

/// An annotation by MetalLB's name: `metallb.io/` wins over the deprecated
/// `metallb.universe.tf/`, whose use is reported.
fn annotation<'a>(svc: &'a Service, name: &str, events: &mut Vec<Event>) -> Option<&'a str> {
    let a = svc.metadata.annotations.as_ref()?;
    if let Some(v) = a.get(&format!("{PREFIX}{name}")) {
        return Some(v.as_str());
    }
    let old = a.get(&format!("{OLD_PREFIX}{name}"))?;
    events.push(Event::warning(
        "deprecatedAnnotation",
        format!("{OLD_PREFIX}{name} is deprecated, use {PREFIX}{name}"),
    ));
    Some(old.as_str())
}

fn family(ip: IpAddr) -> i32 {
    if ip.is_ipv4() {
        pb::IpFamily::Ipv4 as i32
    } else {
        pb::IpFamily::Ipv6 as i32
    }
}

/// The ETP=Local backend key: the selector as `labels.Set.String()` writes it (keys sorted).
pub fn backend_key(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What the Service asks of the allocator, for cluster `cluster`.
pub fn decide(
    svc: &Service,
    cluster: &str,
    lb_class: Option<&str>,
    namespace_labels: &BTreeMap<String, String>,
) -> Decision {
    if !ours(svc, lb_class) {
        return Decision::NotOurs;
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Decision::Release;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return Decision::Release;
    }
    let mut events = vec![];
    let families = match families(spec) {
        Ok(Some(f)) => f,
        Ok(None) => return Decision::Release,
        Err(e) => return Decision::Invalid(e),
    };
    let requested = match requested(svc, spec, &families, &mut events) {
        Ok(r) => r,
        Err(e) => return Decision::Invalid(e),
    };
    let pool = annotation(svc, ADDRESS_POOL, &mut events).unwrap_or_default();
    let sharing_key = annotation(svc, ALLOW_SHARED_IP, &mut events).unwrap_or_default();
    let backend_key = if spec.external_traffic_policy.as_deref() == Some("Local") {
        backend_key(&spec.selector.clone().unwrap_or_default())
    } else {
        String::new()
    };
    let request = pb::AllocateRequest {
        owner: Some(pb::Owner {
            cluster: cluster.to_string(),
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            ..pb::Owner::default()
        }),
        requested_ips: requested.iter().map(IpAddr::to_string).collect(),
        pool: pool.to_string(),
        sharing_key: sharing_key.to_string(),
        ports: ports(spec),
        backend_key,
        family_policy: families.policy as i32,
        primary_family: family(families.primary),
        namespace_labels: namespace_labels.clone().into_iter().collect(),
        service_labels: svc.labels().clone().into_iter().collect(),
        ttl_seconds: 0,
    };
    Decision::Allocate(Box::new(request), events)
}

/// The Service's families, from its cluster IPs (not from ipFamilies: MetalLB 0.15, #2726).
struct Families {
    cluster_ips: Vec<IpAddr>,
    primary: IpAddr,
    dual: bool,
    policy: pb::FamilyPolicy,
}

/// The families; None when the Service has no cluster IP yet (nothing to allocate).
fn families(spec: &ServiceSpec) -> Result<Option<Families>, Event> {
    let cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|s| s.parse().ok()).collect(),
        _ => spec
            .cluster_ip
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
    };
    let Some(&primary) = cluster_ips.first() else {
        return Ok(None);
    };
    let dual = cluster_ips.len() > 1;
    let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
    if policy == "RequireDualStack" && !dual {
        return Err(Event::warning(
            "not enough clusterips",
            "RequireDualStack needs a cluster IP of each family",
        ));
    }
    let policy = match (dual, policy) {
        (true, "RequireDualStack") => pb::FamilyPolicy::RequireDualStack,
        (true, _) => pb::FamilyPolicy::PreferDualStack,
        (false, _) => pb::FamilyPolicy::SingleStack,
    };
    Ok(Some(Families {
        cluster_ips,
        primary,
        dual,
        policy,
    }))
}

fn failed(message: impl Into<String>) -> Event {
    Event::warning("LoadBalancerFailed", message)
}

/// Explicit addresses: the annotation, or the deprecated spec field; not both, at most one per
/// family, each of a family the Service has.
fn requested(
    svc: &Service,
    spec: &ServiceSpec,
    families: &Families,
    events: &mut Vec<Event>,
) -> Result<Vec<IpAddr>, Event> {
    let mut requested: Vec<IpAddr> = vec![];
    let spec_ip = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty());
    if let Some(list) = annotation(svc, LOAD_BALANCER_IPS, events) {
        if spec_ip.is_some() {
            return Err(failed(format!(
                "{PREFIX}{LOAD_BALANCER_IPS} and spec.loadBalancerIP cannot both be set"
            )));
        }
        for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let ip = part.parse::<IpAddr>().map_err(|_| {
                failed(format!(
                    "{PREFIX}{LOAD_BALANCER_IPS}: {part:?} is not an IP address"
                ))
            })?;
            requested.push(ip);
        }
        if requested.len() > 2
            || (requested.len() == 2 && requested[0].is_ipv4() == requested[1].is_ipv4())
        {
            return Err(failed(format!(
                "{PREFIX}{LOAD_BALANCER_IPS}: at most one address per family"
            )));
        }
    } else if let Some(ip) = spec_ip {
        match ip.parse::<IpAddr>() {
            Ok(ip) if !families.dual => requested.push(ip),
            Ok(_) => {
                return Err(failed(
                    "spec.loadBalancerIP cannot serve a dual-stack Service: use the loadBalancerIPs annotation",
                ));
            }
            Err(_) => {
                return Err(failed(format!(
                    "spec.loadBalancerIP: {ip:?} is not an IP address"
                )));
            }
        }
    }
    let of_a_family = |ip: &IpAddr| {
        families
            .cluster_ips
            .iter()
            .any(|c| c.is_ipv4() == ip.is_ipv4())
    };
    if !requested.iter().all(of_a_family) {
        let list: Vec<String> = requested.iter().map(IpAddr::to_string).collect();
        return Err(failed(format!(
            "requested loadBalancer IP(s) {:?} does not match the ipFamily of the service",
            list.join(",")
        )));
    }
    Ok(requested)
}

/// The Service's ports, for sharing an address.
fn ports(spec: &ServiceSpec) -> Vec<pb::Port> {
    spec.ports
        .iter()
        .flatten()
        .map(|p| pb::Port {
            protocol: match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => pb::Protocol::Udp as i32,
                "SCTP" => pb::Protocol::Sctp as i32,
                _ => pb::Protocol::Tcp as i32,
            },
            port: u32::try_from(p.port).unwrap_or(0),
        })
        .collect()
}

/// `status.loadBalancer` for a lease's addresses (primary family first).
pub fn ingress(ips: &[String]) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: Some(
            ips.iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.clone()),
                    ..LoadBalancerIngress::default()
                })
                .collect(),
        ),
    }
}

/// The addresses a Service's status already shows (from ferrolb, or from MetalLB before it).
pub fn current_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    fn svc(annotations: &[(&str, &str)], f: impl FnOnce(&mut ServiceSpec)) -> Service {
        let mut spec = ServiceSpec {
            type_: Some("LoadBalancer".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            selector: Some([("app".to_string(), "nginx".to_string())].into()),
            ..ServiceSpec::default()
        };
        f(&mut spec);
        Service {
            metadata: ObjectMeta {
                name: Some("home-nginx".into()),
                namespace: Some("default".into()),
                labels: Some([("team".to_string(), "web".to_string())].into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn request(d: Decision) -> (pb::AllocateRequest, Vec<Event>) {
        match d {
            Decision::Allocate(r, e) => (*r, e),
            other => panic!("expected an allocation, got {other:?}"),
        }
    }

    fn invalid(d: Decision) -> Event {
        match d {
            Decision::Invalid(e) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn decide_default(s: &Service) -> Decision {
        decide(s, "home", None, &BTreeMap::new())
    }

    #[test]
    fn a_plain_service() {
        let (r, events) = request(decide_default(&svc(&[], |_| {})));
        assert!(events.is_empty());
        let owner = r.owner.expect("owner");
        assert_eq!(
            (
                owner.cluster.as_str(),
                owner.namespace.as_str(),
                owner.name.as_str()
            ),
            ("home", "default", "home-nginx")
        );
        assert_eq!(r.family_policy, pb::FamilyPolicy::SingleStack as i32);
        assert_eq!(r.primary_family, pb::IpFamily::Ipv4 as i32);
        assert_eq!(
            r.ports,
            [pb::Port {
                protocol: pb::Protocol::Tcp as i32,
                port: 80
            }]
        );
        assert_eq!(r.backend_key, "");
        assert_eq!(r.service_labels["team"], "web");
    }

    #[test]
    fn class_and_type() {
        let classed = svc(&[], |s| {
            s.load_balancer_class = Some("ferrolb.io/lb".into())
        });
        assert_eq!(decide_default(&classed), Decision::NotOurs);
        assert!(matches!(
            decide(&classed, "home", Some("ferrolb.io/lb"), &BTreeMap::new()),
            Decision::Allocate(..)
        ));
        assert_eq!(
            decide(
                &svc(&[], |_| {}),
                "home",
                Some("ferrolb.io/lb"),
                &BTreeMap::new()
            ),
            Decision::NotOurs
        );
        let cluster_ip = svc(&[], |s| s.type_ = Some("ClusterIP".into()));
        assert_eq!(decide_default(&cluster_ip), Decision::Release);
        let headless = svc(&[], |s| s.cluster_ips = Some(vec!["None".into()]));
        assert_eq!(decide_default(&headless), Decision::Release);
    }

    #[test]
    fn families_follow_the_cluster_ips() {
        let dual = |policy: &str| {
            svc(&[], |s| {
                s.cluster_ips = Some(vec!["fd00::10".into(), "10.96.0.10".into()]);
                s.ip_family_policy = Some(policy.into());
            })
        };
        let (r, _) = request(decide_default(&dual("PreferDualStack")));
        assert_eq!(r.family_policy, pb::FamilyPolicy::PreferDualStack as i32);
        assert_eq!(r.primary_family, pb::IpFamily::Ipv6 as i32);
        let (r, _) = request(decide_default(&dual("RequireDualStack")));
        assert_eq!(r.family_policy, pb::FamilyPolicy::RequireDualStack as i32);
        // PreferDualStack with one cluster IP stays single-stack.
        let one = svc(&[], |s| s.ip_family_policy = Some("PreferDualStack".into()));
        assert_eq!(
            request(decide_default(&one)).0.family_policy,
            pb::FamilyPolicy::SingleStack as i32
        );
        let require = svc(&[], |s| {
            s.ip_family_policy = Some("RequireDualStack".into())
        });
        assert_eq!(
            invalid(decide_default(&require)).reason,
            "not enough clusterips"
        );
    }

    #[test]
    fn annotations_and_their_deprecated_twins() {
        let s = svc(
            &[
                ("metallb.io/address-pool", "home-pool"),
                ("metallb.universe.tf/address-pool", "old-pool"),
                ("metallb.universe.tf/allow-shared-ip", "dns"),
                ("metallb.io/loadBalancerIPs", "192.168.1.241"),
            ],
            |_| {},
        );
        let (r, events) = request(decide_default(&s));
        assert_eq!(r.pool, "home-pool", "metallb.io/ wins");
        assert_eq!(r.sharing_key, "dns");
        assert_eq!(r.requested_ips, ["192.168.1.241"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "deprecatedAnnotation");
        assert!(events[0].warning);
    }

    #[test]
    fn explicit_addresses() {
        let spec_ip = svc(&[], |s| s.load_balancer_ip = Some("192.168.1.242".into()));
        assert_eq!(
            request(decide_default(&spec_ip)).0.requested_ips,
            ["192.168.1.242"]
        );
        let both = svc(&[("metallb.io/loadBalancerIPs", "192.168.1.241")], |s| {
            s.load_balancer_ip = Some("192.168.1.242".into())
        });
        assert_eq!(invalid(decide_default(&both)).reason, "LoadBalancerFailed");
        let two_v4 = svc(
            &[("metallb.io/loadBalancerIPs", "192.168.1.241, 192.168.1.242")],
            |_| {},
        );
        assert!(
            invalid(decide_default(&two_v4))
                .message
                .contains("one address per family")
        );
        let wrong_family = svc(&[("metallb.io/loadBalancerIPs", "fd00::1")], |_| {});
        assert!(
            invalid(decide_default(&wrong_family))
                .message
                .contains("does not match the ipFamily")
        );
        let garbage = svc(&[("metallb.io/loadBalancerIPs", "192.168.1")], |_| {});
        assert!(
            invalid(decide_default(&garbage))
                .message
                .contains("not an IP address")
        );
        let dual = svc(
            &[("metallb.io/loadBalancerIPs", " fd00::1 ,192.168.1.241")],
            |s| {
                s.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
                s.ip_family_policy = Some("RequireDualStack".into());
            },
        );
        assert_eq!(
            request(decide_default(&dual)).0.requested_ips,
            ["fd00::1", "192.168.1.241"]
        );
        let dual_spec = svc(&[], |s| {
            s.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
            s.ip_family_policy = Some("PreferDualStack".into());
            s.load_balancer_ip = Some("192.168.1.242".into());
        });
        assert!(
            invalid(decide_default(&dual_spec))
                .message
                .contains("dual-stack")
        );
    }

    #[test]
    fn local_traffic_policy_shares_only_with_the_same_selector() {
        let local = svc(&[], |s| {
            s.external_traffic_policy = Some("Local".into());
            s.selector = Some(
                [
                    ("tier".to_string(), "a".to_string()),
                    ("app".to_string(), "x".to_string()),
                ]
                .into(),
            );
        });
        assert_eq!(
            request(decide_default(&local)).0.backend_key,
            "app=x,tier=a"
        );
        let mut ports = svc(&[], |s| {
            s.ports = Some(vec![
                ServicePort {
                    port: 53,
                    protocol: Some("UDP".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    port: 53,
                    protocol: None,
                    ..ServicePort::default()
                },
            ])
        });
        ports.metadata.labels = None;
        let r = request(decide_default(&ports)).0;
        assert_eq!(
            r.ports.iter().map(|p| p.protocol).collect::<Vec<_>>(),
            [pb::Protocol::Udp as i32, pb::Protocol::Tcp as i32]
        );
        assert!(r.service_labels.is_empty());
    }

    #[test]
    fn status_round_trip() {
        let status = ingress(&["192.168.1.240".into(), "fd00::240".into()]);
        let mut s = svc(&[], |_| {});
        s.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
            load_balancer: Some(status),
            ..Default::default()
        });
        assert_eq!(current_ips(&s), ["192.168.1.240", "fd00::240"]);
    }

    /// Whatever text a Service carries in the annotations and fields the adapter reads, the
    /// decision is made without a panic.
    #[test]
    fn any_text_in_a_service_is_decided_without_a_panic() {
        let texts = ferrolb_metallb::testing::strings(21, 600);
        let keys = [
            "metallb.io/address-pool",
            "metallb.io/allow-shared-ip",
            "metallb.io/loadBalancerIPs",
            "metallb.universe.tf/address-pool",
            "metallb.universe.tf/allow-shared-ip",
            "metallb.universe.tf/loadBalancerIPs",
            ALLOCATED_FROM_POOL,
        ];
        for t in &texts {
            for key in keys {
                let _ = decide_default(&svc(&[(key, t)], |_| {}));
            }
            let t = t.clone();
            type Edit<'a> = Box<dyn Fn(&mut ServiceSpec) + 'a>;
            let variants: [Edit; 8] = [
                Box::new(|s| s.load_balancer_ip = Some(t.clone())),
                Box::new(|s| s.ip_family_policy = Some(t.clone())),
                Box::new(|s| s.ip_families = Some(vec![t.clone(), "IPv6".into()])),
                Box::new(|s| s.external_traffic_policy = Some(t.clone())),
                Box::new(|s| s.load_balancer_class = Some(t.clone())),
                Box::new(|s| s.cluster_ips = Some(vec![t.clone()])),
                Box::new(|s| s.type_ = Some(t.clone())),
                Box::new(|s| {
                    s.ports = Some(vec![ServicePort {
                        port: i32::MAX,
                        protocol: Some(t.clone()),
                        ..ServicePort::default()
                    }])
                }),
            ];
            for v in &variants {
                let _ = decide_default(&svc(&[], |s| v(s)));
                let _ = decide(&svc(&[], |s| v(s)), "home", Some(&t), &BTreeMap::new());
            }
        }
    }
}
