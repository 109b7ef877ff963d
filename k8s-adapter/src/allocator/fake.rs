//! An allocator in memory for the adapter's tests: one pool of addresses handed out in order,
//! leases by owner, the configuration objects it was given, and every call it answered. It can
//! be made unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use ferrolb_metallb::convert::Message;
use ferrolb_metallb::kind;
use ferrolb_proto::v1 as pb;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::Code;

use super::{Allocator, Declared, Error};

#[derive(Default)]
struct State {
    pool: String,
    addresses: Vec<String>,
    /// Leases by "namespace/name".
    leases: BTreeMap<String, pb::Lease>,
    endpoints: BTreeMap<String, pb::ServiceEndpoints>,
    nodes: BTreeMap<String, pb::Node>,
    declared: Declared,
    calls: Vec<String>,
    unavailable: bool,
    /// Configuration objects applied with these names are refused.
    refused: BTreeSet<String>,
    /// The open lease watches.
    watches: Vec<mpsc::UnboundedSender<Result<(), Error>>>,
}

pub(crate) struct FakeAllocator(Mutex<State>);

fn key(o: &pb::Owner) -> String {
    format!("{}/{}", o.namespace, o.name)
}

fn refused(code: Code, message: impl Into<String>) -> Error {
    Error::Refused {
        code,
        message: message.into(),
    }
}

impl FakeAllocator {
    /// An allocator with one pool, `pool`, of `addresses`.
    pub(crate) fn with_pool(pool: &str, addresses: &[&str]) -> FakeAllocator {
        FakeAllocator(Mutex::new(State {
            pool: pool.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ..State::default()
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the call; fails it when the allocator is unreachable.
    fn call(&self, what: String) -> Result<std::sync::MutexGuard<'_, State>, Error> {
        let mut s = self.state();
        s.calls.push(what);
        if s.unavailable {
            return Err(Error::AllocatorUnavailable("connection refused".into()));
        }
        Ok(s)
    }

    /// Every call answered so far, as "method target".
    pub(crate) fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    pub(crate) fn set_unavailable(&self, down: bool) {
        self.state().unavailable = down;
    }

    /// Ends every lease watch with an error, as a restarting allocator does.
    pub(crate) fn break_watches(&self) {
        let mut s = self.state();
        for w in s.watches.drain(..) {
            let _ = w.send(Err(Error::AllocatorUnavailable("restarting".into())));
        }
    }

    pub(crate) fn lease(&self, ns: &str, name: &str) -> Option<pb::Lease> {
        self.state().leases.get(&format!("{ns}/{name}")).cloned()
    }

    /// Gives `owner` a lease of `ips` directly, as another door would.
    pub(crate) fn put_lease(&self, owner: pb::Owner, ips: &[&str]) {
        let mut s = self.state();
        let lease = pb::Lease {
            owner: Some(owner.clone()),
            ips: ips.iter().map(|a| a.to_string()).collect(),
            pool: s.pool.clone(),
            ..pb::Lease::default()
        };
        s.leases.insert(key(&owner), lease);
        s.changed();
    }

    pub(crate) fn endpoints(&self, ns: &str, name: &str) -> Option<pb::ServiceEndpoints> {
        self.state().endpoints.get(&format!("{ns}/{name}")).cloned()
    }

    pub(crate) fn nodes(&self) -> BTreeMap<String, pb::Node> {
        self.state().nodes.clone()
    }

    pub(crate) fn declared_now(&self) -> Declared {
        self.state().declared.clone()
    }

    /// Holds a configuration object, as if the cluster had declared it before.
    pub(crate) fn declare(&self, kind: &'static str, name: &str) {
        self.state()
            .declared
            .entry(kind)
            .or_default()
            .insert(name.into());
    }

    /// Refuses configuration objects named `name`, as the allocator refuses a pool that
    /// overlaps another cluster's.
    pub(crate) fn refuse(&self, name: &str) {
        self.state().refused.insert(name.into());
    }
}

impl State {
    /// Tells the lease watches of a change (closed ones are forgotten).
    fn changed(&mut self) {
        self.watches.retain(|w| w.send(Ok(())).is_ok());
    }

    fn in_use(&self, ip: &str, by: &str) -> bool {
        self.leases
            .iter()
            .any(|(k, l)| k != by && l.ips.iter().any(|i| i == ip))
    }
}

#[tonic::async_trait]
impl Allocator for FakeAllocator {
    async fn allocate(&self, req: pb::AllocateRequest) -> Result<pb::AllocateResponse, Error> {
        let owner = req.owner.clone().unwrap_or_default();
        let k = key(&owner);
        let mut s = self.call(format!("allocate {k} {:?}", req.requested_ips))?;
        if let Some(l) = s.leases.get(&k)
            && (req.requested_ips.is_empty() || req.requested_ips == l.ips)
        {
            return Ok(pb::AllocateResponse {
                lease: Some(l.clone()),
                created: false,
            });
        }
        let ips = if req.requested_ips.is_empty() {
            let free = s.addresses.iter().find(|a| !s.in_use(a, &k));
            let Some(free) = free else {
                return Err(refused(Code::ResourceExhausted, "no available IPs"));
            };
            vec![free.clone()]
        } else {
            for ip in &req.requested_ips {
                if !s.addresses.contains(ip) {
                    let why = format!("{ip} is not in a pool open to the Service");
                    return Err(refused(Code::FailedPrecondition, why));
                }
                if s.in_use(ip, &k) {
                    let why = format!("{ip} is already in use");
                    return Err(refused(Code::AlreadyExists, why));
                }
            }
            req.requested_ips.clone()
        };
        let lease = pb::Lease {
            owner: Some(owner),
            ips,
            pool: s.pool.clone(),
            ..pb::Lease::default()
        };
        s.leases.insert(k, lease.clone());
        s.changed();
        Ok(pb::AllocateResponse {
            lease: Some(lease),
            created: true,
        })
    }

    async fn release(&self, owner: pb::Owner) -> Result<bool, Error> {
        let k = key(&owner);
        let mut s = self.call(format!("release {k}"))?;
        let held = s.leases.remove(&k).is_some();
        if held {
            s.changed();
        }
        Ok(held)
    }

    async fn leases(&self, cluster: &str) -> Result<Vec<pb::Lease>, Error> {
        let s = self.call(format!("leases {cluster}"))?;
        Ok(s.leases.values().cloned().collect())
    }

    async fn lease_changes(
        &self,
        cluster: &str,
    ) -> Result<BoxStream<'static, Result<(), Error>>, Error> {
        let mut s = self.call(format!("lease_changes {cluster}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        s.watches.push(tx);
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed())
    }

    async fn stats(&self) -> Result<Vec<pb::PoolStats>, Error> {
        let s = self.call("stats".into())?;
        Ok(vec![pb::PoolStats {
            pool: s.pool.clone(),
            family: pb::IpFamily::Ipv4 as i32,
            in_use: s.leases.len().to_string(),
            available: s.addresses.len().saturating_sub(s.leases.len()).to_string(),
            ..pb::PoolStats::default()
        }])
    }

    async fn set_endpoints(&self, e: pb::ServiceEndpoints) -> Result<(), Error> {
        let k = format!("{}/{}", e.namespace, e.name);
        let mut s = self.call(format!("set_endpoints {k}"))?;
        s.endpoints.insert(k, e);
        Ok(())
    }

    async fn delete_endpoints(&self, _cluster: &str, ns: &str, name: &str) -> Result<(), Error> {
        let k = format!("{ns}/{name}");
        let mut s = self.call(format!("delete_endpoints {k}"))?;
        s.endpoints.remove(&k);
        Ok(())
    }

    async fn apply_node(&self, n: pb::Node) -> Result<(), Error> {
        let mut s = self.call(format!("apply_node {}", n.name))?;
        s.nodes.insert(n.name.clone(), n);
        Ok(())
    }

    async fn delete_node(&self, _cluster: &str, name: &str) -> Result<(), Error> {
        let mut s = self.call(format!("delete_node {name}"))?;
        s.nodes.remove(name);
        Ok(())
    }

    async fn apply(&self, m: Message) -> Result<(), Error> {
        let (kind, name) = match &m {
            Message::Pool(p) => (kind::POOL, p.name.clone()),
            Message::L2Advertisement(a) => (kind::L2, a.name.clone()),
            Message::Community(c) => (kind::COMMUNITY, c.name.clone()),
            Message::BgpPeer(p) => (kind::PEER, p.name.clone()),
            Message::BgpAdvertisement(a) => (kind::BGP_ADVERTISEMENT, a.name.clone()),
        };
        let mut s = self.call(format!("apply {kind} {name}"))?;
        if s.refused.contains(&name) {
            let why = format!("{name} overlaps a pool of another cluster");
            return Err(refused(Code::FailedPrecondition, why));
        }
        s.declared.entry(kind).or_default().insert(name);
        Ok(())
    }

    async fn declared(&self, cluster: &str) -> Result<Declared, Error> {
        let s = self.call(format!("declared {cluster}"))?;
        Ok(s.declared.clone())
    }

    async fn remove(&self, _cluster: &str, kind: &'static str, name: &str) -> Result<(), Error> {
        let mut s = self.call(format!("remove {kind} {name}"))?;
        s.declared.entry(kind).or_default().remove(name);
        Ok(())
    }

    async fn watch_announcements(
        &self,
        cluster: &str,
    ) -> Result<BoxStream<'static, Result<pb::AnnouncementsUpdate, Error>>, Error> {
        drop(self.call(format!("watch_announcements {cluster}"))?);
        Ok(futures::stream::pending().boxed())
    }

    async fn failovers(&self, cluster: &str) -> Result<Vec<pb::Failover>, Error> {
        drop(self.call(format!("failovers {cluster}"))?);
        Ok(vec![])
    }
}
