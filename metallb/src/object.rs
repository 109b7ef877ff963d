//! One cluster's MetalLB configuration as the rules see it, whichever door it came through (a
//! file read by `ferrolbctl`, or objects watched by the Kubernetes adapter), and the verdict on
//! each object.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;

use crate::crd::{
    BFDProfileSpec, BGPAdvertisementSpec, CommunitySpec, IPAddressPoolSpec, L2AdvertisementSpec,
    v1beta2::BGPPeerSpec,
};

/// An object's identity and metadata, with its spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object<S> {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: S,
}

impl<S> Object<S> {
    pub fn new(name: &str, namespace: &str, spec: S) -> Self {
        Object {
            name: name.to_string(),
            namespace: namespace.to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            spec,
        }
    }
}

#[cfg(feature = "kube")]
impl<S: Clone> Object<S> {
    /// The view of a Kubernetes object.
    pub fn of<K>(k: &K) -> Self
    where
        K: kube::ResourceExt + kube::core::object::HasSpec<Spec = S>,
    {
        Object {
            name: k.name_any(),
            namespace: k.namespace().unwrap_or_default(),
            labels: k.labels().clone(),
            annotations: k.annotations().clone(),
            spec: k.spec().clone(),
        }
    }
}

/// Every object of one cluster's configuration.
// `Debug` is written by hand below: it names the Secrets, never their data.
#[derive(Clone, Default)]
pub struct Config {
    pub pools: Vec<Object<IPAddressPoolSpec>>,
    pub l2: Vec<Object<L2AdvertisementSpec>>,
    pub bgp: Vec<Object<BGPAdvertisementSpec>>,
    pub peers: Vec<Object<BGPPeerSpec>>,
    pub communities: Vec<Object<CommunitySpec>>,
    pub bfd_profiles: Vec<Object<BFDProfileSpec>>,
    /// The Secrets BGPPeers name in `passwordSecret`, by name (those that exist).
    pub secrets: BTreeMap<String, Secret>,
    /// The labels of the cluster's nodes, for advertisements' node sets.
    pub nodes: Vec<BTreeMap<String, String>>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("pools", &self.pools)
            .field("l2", &self.l2)
            .field("bgp", &self.bgp)
            .field("peers", &self.peers)
            .field("communities", &self.communities)
            .field("bfd_profiles", &self.bfd_profiles)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// The kinds, as MetalLB names them.
pub mod kind {
    pub const POOL: &str = "IPAddressPool";
    pub const L2: &str = "L2Advertisement";
    pub const BGP_ADVERTISEMENT: &str = "BGPAdvertisement";
    pub const PEER: &str = "BGPPeer";
    pub const COMMUNITY: &str = "Community";
    pub const BFD_PROFILE: &str = "BFDProfile";
    /// Every configuration kind, in the order they are applied.
    pub const ALL: [&str; 6] = [POOL, L2, COMMUNITY, BFD_PROFILE, PEER, BGP_ADVERTISEMENT];
}

/// Why an object is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub name: String,
    /// The field at fault, as a path (`spec.holdTime`, `spec.addresses[1]`).
    pub field: String,
    pub message: String,
    /// Caused by another object that may appear later (a missing alias, profile or Secret):
    /// MetalLB's "transient" errors.
    pub transient: bool,
}

impl Rejection {
    pub fn new(kind: &'static str, name: &str, field: &str, message: impl Into<String>) -> Self {
        Rejection {
            kind,
            name: name.to_string(),
            field: field.to_string(),
            message: message.into(),
            transient: false,
        }
    }

    /// The allocator refused the object; its message names the field.
    pub fn by_allocator(kind: &'static str, name: &str, message: &str) -> Self {
        Rejection::new(kind, name, "spec", message)
    }

    /// The same rejection, marked as waiting for another object.
    pub fn transient(self) -> Self {
        Rejection {
            transient: true,
            ..self
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?}: {}: {}",
            self.kind, self.name, self.field, self.message
        )
    }
}

/// The verdict on one object: every rejection of it, in one line (empty: it is used). Both doors
/// show this text: the adapter in the object's `Valid` condition and event, `ferrolbctl apply`
/// on its error output.
pub fn verdict(rejections: &[Rejection], kind: &str, name: &str) -> Option<String> {
    let mine: Vec<String> = rejections
        .iter()
        .filter(|r| r.kind == kind && r.name == name)
        .map(ToString::to_string)
        .collect();
    (!mine.is_empty()).then(|| mine.join("; "))
}

/// The verdict on every rejected object, in the order they were first rejected.
pub fn verdicts(rejections: &[Rejection]) -> Vec<String> {
    let mut objects: Vec<(&str, &str)> = vec![];
    for r in rejections {
        if !objects.contains(&(r.kind, r.name.as_str())) {
            objects.push((r.kind, &r.name));
        }
    }
    objects
        .into_iter()
        .filter_map(|(k, n)| verdict(rejections, k, n))
        .collect()
}

/// Whether every rejection of the object is transient (it waits for another object).
pub fn waiting(rejections: &[Rejection], kind: &str, name: &str) -> bool {
    rejections
        .iter()
        .filter(|r| r.kind == kind && r.name == name)
        .all(|r| r.transient)
}
