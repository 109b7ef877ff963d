//! Owners, allocation requests and leases: the allocator's domain types, free of any wire format.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::addr::Family;
use crate::error::{Error, Result};
use crate::pool::Caller;
use crate::selector::Labels;

/// Who holds a lease: a Service of one cluster, or a key of an external client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Owner {
    Service {
        cluster: String,
        namespace: String,
        name: String,
    },
    External {
        client: String,
        key: String,
    },
}

impl Owner {
    /// The unique key the database stores. Cluster, client and namespace names hold no '/'.
    pub fn key(&self) -> String {
        match self {
            Owner::Service {
                cluster,
                namespace,
                name,
            } => format!("service/{cluster}/{namespace}/{name}"),
            Owner::External { client, key } => format!("external/{client}/{key}"),
        }
    }

    /// Whether the caller may act for this owner.
    pub fn belongs_to(&self, caller: &Caller) -> bool {
        match (caller, self) {
            (Caller::Admin, _) => true,
            (Caller::Cluster(c), Owner::Service { cluster, .. }) => c == cluster,
            (Caller::Client(c), Owner::External { client, .. }) => c == client,
            _ => false,
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Owner::Service { namespace, .. } => namespace,
            Owner::External { .. } => "",
        }
    }

    /// Checks the names an owner is made of.
    pub fn validate(&self) -> Result<()> {
        let part = |field: &str, v: &str, slash_ok: bool| {
            if v.is_empty() {
                Err(Error::invalid(field, "must not be empty"))
            } else if !slash_ok && v.contains('/') {
                Err(Error::invalid(field, format!("{v:?} must not contain '/'")))
            } else if v.len() > 253 {
                Err(Error::invalid(field, "longer than 253 characters"))
            } else {
                Ok(())
            }
        };
        match self {
            Owner::Service {
                cluster,
                namespace,
                name,
            } => {
                part("owner.cluster", cluster, false)?;
                part("owner.namespace", namespace, false)?;
                part("owner.name", name, false)
            }
            Owner::External { client, key } => {
                part("owner.client", client, false)?;
                part("owner.key", key, true)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn code(self) -> i64 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Port {
    pub protocol: Protocol,
    pub port: u16,
}

/// Kubernetes' ipFamilyPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// What an owner asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocRequest {
    pub owner: Owner,
    pub requested_ips: Vec<IpAddr>,
    pub pool: Option<String>,
    pub sharing_key: String,
    pub ports: Vec<Port>,
    pub backend_key: String,
    pub policy: FamilyPolicy,
    pub primary: Family,
    pub namespace_labels: Labels,
    pub service_labels: Labels,
    pub ttl_seconds: Option<u32>,
}

impl AllocRequest {
    /// A single-stack IPv4 request for a Service, with nothing else asked for.
    pub fn service(cluster: &str, namespace: &str, name: &str) -> AllocRequest {
        AllocRequest {
            owner: Owner::Service {
                cluster: cluster.into(),
                namespace: namespace.into(),
                name: name.into(),
            },
            requested_ips: vec![],
            pool: None,
            sharing_key: String::new(),
            ports: vec![],
            backend_key: String::new(),
            policy: FamilyPolicy::SingleStack,
            primary: Family::V4,
            namespace_labels: Labels::new(),
            service_labels: Labels::new(),
            ttl_seconds: None,
        }
    }

    /// Checks what a request can be checked for without the pools.
    pub fn validate(&mut self) -> Result<()> {
        self.owner.validate()?;
        if self.requested_ips.len() > 2 {
            return Err(Error::invalid(
                "requested_ips",
                format!("at most two addresses, got {}", self.requested_ips.len()),
            ));
        }
        if let [a, b] = self.requested_ips[..]
            && Family::of(a) == Family::of(b)
        {
            return Err(Error::invalid(
                "requested_ips",
                format!(
                    "{a} and {b} are of the same family; two addresses must be one IPv4 and one IPv6"
                ),
            ));
        }
        for ip in &self.requested_ips {
            if !self.families().contains(&Family::of(*ip)) {
                return Err(Error::invalid(
                    "requested_ips",
                    format!("{ip} does not match the service's IP families"),
                ));
            }
        }
        if self.policy == FamilyPolicy::RequireDualStack && self.requested_ips.len() == 1 {
            return Err(Error::invalid(
                "requested_ips",
                "a RequireDualStack service needs one address of each family",
            ));
        }
        if matches!(&self.pool, Some(p) if p.is_empty()) {
            self.pool = None;
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.ports {
            if p.port == 0 {
                return Err(Error::invalid("ports", "port 0 is not a port"));
            }
            if !seen.insert(*p) {
                return Err(Error::invalid(
                    "ports",
                    format!("{:?}/{} is listed twice", p.protocol, p.port),
                ));
            }
        }
        if self.ttl_seconds.is_some() && matches!(self.owner, Owner::Service { .. }) {
            return Err(Error::invalid(
                "ttl_seconds",
                "only external leases expire; Services hold their leases until released",
            ));
        }
        Ok(())
    }

    /// The families wanted, primary first.
    pub fn families(&self) -> Vec<Family> {
        match self.policy {
            FamilyPolicy::SingleStack => vec![self.primary],
            _ => vec![self.primary, self.primary.other()],
        }
    }

    /// The sharing group of the addresses this request takes: services share an address only
    /// with equal non-empty sharing keys and equal backend keys; otherwise the owner alone.
    pub fn share_group(&self) -> String {
        crate::state::share_group(&self.owner.key(), &self.sharing_key, &self.backend_key)
    }
}

/// One address of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAddr {
    pub family: Family,
    pub ip: IpAddr,
    pub pool: String,
    pub stranded: bool,
}

/// What an owner holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: Owner,
    /// Primary family first.
    pub addrs: Vec<LeaseAddr>,
    pub sharing_key: String,
    pub backend_key: String,
    pub ports: Vec<Port>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revision: u64,
}

impl Lease {
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addrs.iter().map(|a| a.ip).collect()
    }

    pub fn stranded(&self) -> bool {
        self.addrs.iter().any(|a| a.stranded)
    }

    pub fn pool(&self) -> &str {
        self.addrs.first().map_or("", |a| a.pool.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Allocated,
    Updated,
    Released,
    Expired,
    Stranded,
}

impl EventKind {
    pub fn code(self) -> i64 {
        match self {
            EventKind::Allocated => 1,
            EventKind::Updated => 2,
            EventKind::Released => 3,
            EventKind::Expired => 4,
            EventKind::Stranded => 5,
        }
    }

    pub fn from_code(code: i64) -> Option<EventKind> {
        Some(match code {
            1 => EventKind::Allocated,
            2 => EventKind::Updated,
            3 => EventKind::Released,
            4 => EventKind::Expired,
            5 => EventKind::Stranded,
            _ => return None,
        })
    }
}

/// A change to a lease, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEvent {
    pub revision: u64,
    pub kind: EventKind,
    pub lease: Lease,
}

/// Filters and a page of `ListLeases`.
#[derive(Debug, Clone, Default)]
pub struct LeaseFilter {
    pub pool: Option<String>,
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub client: Option<String>,
    pub stranded_only: bool,
    /// Owner key to start after.
    pub after: Option<String>,
    pub limit: u32,
}

/// Per pool and family counts; IPv6 counts need all 128 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub pool: String,
    pub family: Family,
    pub capacity: u128,
    pub in_use: u128,
    pub leases: u64,
    pub stranded: u64,
    /// Services (not other clients) whose primary address is of this family: summed over a
    /// pool's families, the Services it serves.
    pub services: u64,
}

/// A Service's lease in `cluster`, namespace `default`, of `ips` from `pool`, for tests.
#[cfg(test)]
pub(crate) fn service_lease(cluster: &str, name: &str, pool: &str, ips: &[&str]) -> Lease {
    Lease {
        owner: Owner::Service {
            cluster: cluster.into(),
            namespace: "default".into(),
            name: name.into(),
        },
        addrs: ips
            .iter()
            .map(|ip| {
                let ip: std::net::IpAddr = ip.parse().expect("test address");
                LeaseAddr {
                    family: crate::addr::Family::of(ip),
                    ip,
                    pool: pool.into(),
                    stranded: false,
                }
            })
            .collect(),
        sharing_key: String::new(),
        backend_key: String::new(),
        ports: vec![],
        created_ms: 0,
        expires_ms: None,
        revision: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> AllocRequest {
        AllocRequest::service("c", "default", "web")
    }

    fn field_of(r: &mut AllocRequest) -> String {
        match r.validate() {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        let mut r = req();
        r.requested_ips = vec![ip("10.0.0.1"), ip("2001:db8::1"), ip("10.0.0.2")];
        r.policy = FamilyPolicy::RequireDualStack;
        assert_eq!(field_of(&mut r), "requested_ips");
        let mut r = req();
        r.policy = FamilyPolicy::PreferDualStack;
        r.requested_ips = vec![ip("10.0.0.1"), ip("10.0.0.2")];
        assert_eq!(field_of(&mut r), "requested_ips");
        let mut r = req();
        r.requested_ips = vec![ip("2001:db8::1")];
        assert_eq!(field_of(&mut r), "requested_ips", "wrong family");
        let mut r = req();
        r.owner = Owner::Service {
            cluster: "c".into(),
            namespace: String::new(),
            name: "x".into(),
        };
        assert_eq!(field_of(&mut r), "owner.namespace");
        let mut r = req();
        r.ports = vec![
            Port {
                protocol: Protocol::Tcp,
                port: 80
            };
            2
        ];
        assert_eq!(field_of(&mut r), "ports");
        let mut r = req();
        r.ttl_seconds = Some(60);
        assert_eq!(field_of(&mut r), "ttl_seconds");
        let mut r = req();
        r.ports = vec![
            Port {
                protocol: Protocol::Tcp,
                port: 53,
            },
            Port {
                protocol: Protocol::Udp,
                port: 53,
            },
        ];
        assert!(
            r.validate().is_ok(),
            "TCP/53 and UDP/53 are different ports"
        );
    }

    #[test]
    fn share_groups() {
        let mut a = req();
        let mut b = req();
        b.owner = Owner::Service {
            cluster: "c".into(),
            namespace: "default".into(),
            name: "dns".into(),
        };
        assert_ne!(a.share_group(), b.share_group(), "no key: exclusive");
        a.sharing_key = "k".into();
        b.sharing_key = "k".into();
        assert_eq!(a.share_group(), b.share_group());
        b.backend_key = "app=dns".into();
        assert_ne!(a.share_group(), b.share_group(), "backend keys must match");
        b.backend_key = a.backend_key.clone();
        b.owner = Owner::Service {
            cluster: "other".into(),
            namespace: "default".into(),
            name: "dns".into(),
        };
        assert_ne!(
            a.share_group(),
            b.share_group(),
            "one cluster's key is not another's"
        );
        b.owner = Owner::External {
            client: "c".into(),
            key: "dns".into(),
        };
        assert_ne!(a.share_group(), b.share_group(), "nor an external client's");
    }
}
