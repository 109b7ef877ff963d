//! Conversions between `ferrolb.v1` messages and the allocator's domain types. Proto types stop
//! here; everything past this module speaks the domain.

use std::collections::BTreeMap;

use ferrolb_common::Principal;
use ferrolb_proto::v1 as pb;
use tonic::Status;

use crate::addr::{self, Family};
use crate::error::Error;
use crate::lease::{
    AllocRequest, EventKind, FamilyPolicy, Lease, LeaseEvent, Owner, PoolStats, Port, Protocol,
};
use crate::pool::{Caller, PoolSpec, ServiceAllocation};
use crate::selector::{LabelSelector, Labels, Requirement};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::Exhausted(_) => Status::resource_exhausted(msg),
            Error::Conflict(_) => Status::failed_precondition(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::OutOfRange(_) => Status::out_of_range(msg),
            Error::Aborted(_) => Status::aborted(msg),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Internal(_) => Status::internal(msg),
        }
    }
}

/// The caller of an IpamService or ClusterStateService call, as the authorization layer
/// verified it.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    match principal(req)? {
        Principal::Admin(_) => Ok(Caller::Admin),
        Principal::Adapter { cluster } => Ok(Caller::Cluster(cluster.clone())),
        Principal::Client(c) => Ok(Caller::Client(c.clone())),
        other => Err(Status::permission_denied(format!(
            "{other} may not make this call"
        ))),
    }
}

/// The verified identity of the caller.
pub fn principal<T>(req: &tonic::Request<T>) -> Result<&Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("the connection has no verified identity"))
}

pub fn selector(field: &str, s: pb::LabelSelector) -> Result<LabelSelector, Error> {
    let match_expressions = s
        .match_expressions
        .into_iter()
        .map(|r| {
            Requirement::new(r.key, &r.operator, r.values).map_err(|m| Error::invalid(field, m))
        })
        .collect::<Result<_, _>>()?;
    Ok(LabelSelector {
        match_labels: s.match_labels.into_iter().collect(),
        match_expressions,
    })
}

pub fn selector_to_pb(s: &LabelSelector) -> pb::LabelSelector {
    pb::LabelSelector {
        match_labels: s.match_labels.clone().into_iter().collect(),
        match_expressions: s
            .match_expressions
            .iter()
            .map(|r| pb::LabelSelectorRequirement {
                key: r.key.clone(),
                operator: format!("{:?}", r.operator),
                values: r.values.clone(),
            })
            .collect(),
    }
}

pub fn selectors(field: &str, list: Vec<pb::LabelSelector>) -> Result<Vec<LabelSelector>, Error> {
    list.into_iter().map(|s| selector(field, s)).collect()
}

pub fn pool_spec(p: pb::Pool) -> Result<PoolSpec, Error> {
    let service_allocation = match p.service_allocation {
        None => None,
        Some(sa) => Some(ServiceAllocation {
            priority: sa.priority,
            namespaces: sa.namespaces,
            namespace_selectors: selectors(
                "pool.service_allocation.namespace_selectors",
                sa.namespace_selectors,
            )?,
            service_selectors: selectors(
                "pool.service_allocation.service_selectors",
                sa.service_selectors,
            )?,
        }),
    };
    Ok(PoolSpec {
        name: p.name,
        addresses: p.addresses,
        auto_assign: p.auto_assign.unwrap_or(true),
        avoid_buggy_ips: p.avoid_buggy_ips,
        service_allocation,
        excluded: p.excluded_addresses,
        clusters: p.clusters,
        clients: p.clients,
        declared_by: String::new(),
        labels: p.labels.into_iter().collect(),
    })
}

pub fn pool_to_pb(s: &PoolSpec) -> pb::Pool {
    pb::Pool {
        name: s.name.clone(),
        addresses: s.addresses.clone(),
        auto_assign: Some(s.auto_assign),
        avoid_buggy_ips: s.avoid_buggy_ips,
        service_allocation: s
            .service_allocation
            .as_ref()
            .map(|sa| pb::ServiceAllocation {
                priority: sa.priority,
                namespaces: sa.namespaces.clone(),
                namespace_selectors: sa.namespace_selectors.iter().map(selector_to_pb).collect(),
                service_selectors: sa.service_selectors.iter().map(selector_to_pb).collect(),
            }),
        excluded_addresses: s.excluded.clone(),
        clusters: s.clusters.clone(),
        clients: s.clients.clone(),
        declared_by: s.declared_by.clone(),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub fn owner(o: Option<pb::Owner>) -> Result<Owner, Error> {
    let o = o.ok_or_else(|| Error::invalid("owner", "is required"))?;
    match (o.cluster.is_empty(), o.client.is_empty()) {
        (false, true) if o.key.is_empty() => Ok(Owner::Service {
            cluster: o.cluster,
            namespace: o.namespace,
            name: o.name,
        }),
        (true, false) if o.namespace.is_empty() && o.name.is_empty() => Ok(Owner::External {
            client: o.client,
            key: o.key,
        }),
        _ => Err(Error::invalid(
            "owner",
            "set either cluster, namespace and name (a Service) or client and key (an external lease)",
        )),
    }
}

pub fn owner_to_pb(o: &Owner) -> pb::Owner {
    match o {
        Owner::Service {
            cluster,
            namespace,
            name,
        } => pb::Owner {
            cluster: cluster.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            ..Default::default()
        },
        Owner::External { client, key } => pb::Owner {
            client: client.clone(),
            key: key.clone(),
            ..Default::default()
        },
    }
}

pub fn family(code: i32, field: &str) -> Result<Family, Error> {
    match pb::IpFamily::try_from(code) {
        Ok(pb::IpFamily::Unspecified | pb::IpFamily::Ipv4) => Ok(Family::V4),
        Ok(pb::IpFamily::Ipv6) => Ok(Family::V6),
        Err(_) => Err(Error::invalid(field, format!("unknown IP family {code}"))),
    }
}

pub fn family_to_pb(f: Family) -> pb::IpFamily {
    match f {
        Family::V4 => pb::IpFamily::Ipv4,
        Family::V6 => pb::IpFamily::Ipv6,
    }
}

fn port(p: pb::Port) -> Result<Port, Error> {
    let protocol = match pb::Protocol::try_from(p.protocol) {
        Ok(pb::Protocol::Tcp | pb::Protocol::Unspecified) => Protocol::Tcp,
        Ok(pb::Protocol::Udp) => Protocol::Udp,
        Ok(pb::Protocol::Sctp) => Protocol::Sctp,
        Err(_) => {
            return Err(Error::invalid(
                "ports",
                format!("unknown protocol {}", p.protocol),
            ));
        }
    };
    let port = u16::try_from(p.port)
        .map_err(|_| Error::invalid("ports", format!("{} is not a port number", p.port)))?;
    Ok(Port { protocol, port })
}

fn port_to_pb(p: &Port) -> pb::Port {
    pb::Port {
        protocol: match p.protocol {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
            Protocol::Sctp => pb::Protocol::Sctp,
        } as i32,
        port: u32::from(p.port),
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> Labels {
    m.into_iter().collect::<BTreeMap<_, _>>()
}

pub fn alloc_request(r: pb::AllocateRequest) -> Result<AllocRequest, Error> {
    let requested_ips = r
        .requested_ips
        .iter()
        .map(|s| addr::parse_ip(s).map_err(|e| Error::invalid("requested_ips", e.to_string())))
        .collect::<Result<_, _>>()?;
    let policy = match pb::FamilyPolicy::try_from(r.family_policy) {
        Ok(pb::FamilyPolicy::Unspecified | pb::FamilyPolicy::SingleStack) => {
            FamilyPolicy::SingleStack
        }
        Ok(pb::FamilyPolicy::PreferDualStack) => FamilyPolicy::PreferDualStack,
        Ok(pb::FamilyPolicy::RequireDualStack) => FamilyPolicy::RequireDualStack,
        Err(_) => {
            return Err(Error::invalid(
                "family_policy",
                format!("unknown family policy {}", r.family_policy),
            ));
        }
    };
    Ok(AllocRequest {
        owner: owner(r.owner)?,
        requested_ips,
        pool: (!r.pool.is_empty()).then_some(r.pool),
        sharing_key: r.sharing_key,
        ports: r.ports.into_iter().map(port).collect::<Result<_, _>>()?,
        backend_key: r.backend_key,
        policy,
        primary: family(r.primary_family, "primary_family")?,
        namespace_labels: labels(r.namespace_labels),
        service_labels: labels(r.service_labels),
        ttl_seconds: (r.ttl_seconds > 0).then_some(r.ttl_seconds),
    })
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn lease_to_pb(l: &Lease) -> pb::Lease {
    pb::Lease {
        owner: Some(owner_to_pb(&l.owner)),
        ips: l.ips().iter().map(ToString::to_string).collect(),
        pool: l.pool().to_string(),
        sharing_key: l.sharing_key.clone(),
        backend_key: l.backend_key.clone(),
        ports: l.ports.iter().map(port_to_pb).collect(),
        stranded: l.stranded(),
        created_at: Some(timestamp(l.created_ms)),
        expires_at: l.expires_ms.map(timestamp),
        revision: l.revision,
    }
}

pub fn event_to_pb(e: &LeaseEvent) -> pb::LeaseEvent {
    let kind = match e.kind {
        EventKind::Allocated => pb::LeaseEventType::Allocated,
        EventKind::Updated => pb::LeaseEventType::Updated,
        EventKind::Released => pb::LeaseEventType::Released,
        EventKind::Expired => pb::LeaseEventType::Expired,
        EventKind::Stranded => pb::LeaseEventType::Stranded,
    };
    pb::LeaseEvent {
        revision: e.revision,
        r#type: kind as i32,
        lease: Some(lease_to_pb(&e.lease)),
    }
}

pub fn stats_to_pb(s: &PoolStats) -> pb::PoolStats {
    pb::PoolStats {
        pool: s.pool.clone(),
        family: family_to_pb(s.family) as i32,
        capacity: s.capacity.to_string(),
        in_use: s.in_use.to_string(),
        available: s.capacity.saturating_sub(s.in_use).to_string(),
        leases: s.leases,
        stranded_leases: s.stranded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_one_kind() {
        let both = pb::Owner {
            cluster: "c".into(),
            client: "x".into(),
            ..Default::default()
        };
        assert!(owner(Some(both)).is_err());
        assert!(owner(None).is_err());
        let ext = pb::Owner {
            client: "ipam".into(),
            key: "vm/1".into(),
            ..Default::default()
        };
        assert_eq!(
            owner(Some(ext)),
            Ok(Owner::External {
                client: "ipam".into(),
                key: "vm/1".into()
            })
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let field = |r: pb::AllocateRequest| match alloc_request(r) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        };
        let owner = Some(pb::Owner {
            cluster: "c".into(),
            namespace: "d".into(),
            name: "s".into(),
            ..Default::default()
        });
        let base = pb::AllocateRequest {
            owner,
            ..Default::default()
        };
        assert_eq!(
            field(pb::AllocateRequest {
                requested_ips: vec!["10.0.0.300".into()],
                ..base.clone()
            }),
            "requested_ips"
        );
        assert_eq!(
            field(pb::AllocateRequest {
                family_policy: 9,
                ..base.clone()
            }),
            "family_policy"
        );
        assert_eq!(
            field(pb::AllocateRequest {
                ports: vec![pb::Port {
                    protocol: 1,
                    port: 70000
                }],
                ..base.clone()
            }),
            "ports"
        );
        assert_eq!(
            field(pb::AllocateRequest {
                primary_family: 7,
                ..base
            }),
            "primary_family"
        );
    }
}
