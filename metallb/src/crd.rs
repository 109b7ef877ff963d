//! MetalLB's custom resources (group `metallb.io`), field by field, so that a MetalLB user's YAML
//! applies unchanged. Defaults and limits live in the OpenAPI schema as in MetalLB's CRDs (and
//! in the accessors here, for files that no API server defaulted); the rules a schema cannot
//! express are in [`crate::validate`].
//!
//! The spec types are plain serde types. With the `kube` feature each kind is also a kube
//! `CustomResource` with its schema (`IPAddressPool`, `BGPPeer`, ...).
//!
//! Every spec keeps the fields it does not know in `other`, so that a typo or a field of a newer
//! MetalLB is refused by name rather than ignored (an API server prunes unknown fields first).
//!
//! Each configuration kind also has a status with conditions, where the adapter reports why an
//! object is not in use (MetalLB reports that in ConfigurationState objects).

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
#[cfg(feature = "kube")]
use kube::CustomResourceExt;
#[cfg(feature = "kube")]
use kube::core::crd::merge_crds;
use serde::{Deserialize, Serialize};

/// Fields of a spec that MetalLB's types do not have.
pub type Unknown = BTreeMap<String, serde_json::Value>;

/// Conditions of a configuration object: `Valid` (True when the allocator uses it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------
// IPAddressPool

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "IPAddressPool",
        doc = "Addresses Services of type LoadBalancer get, in CIDRs and ranges.",
        plural = "ipaddresspools",
        namespaced,
        status = "IPAddressPoolStatus",
        printcolumn = r#"{"name":"Auto Assign","type":"boolean","jsonPath":".spec.autoAssign"}"#,
        printcolumn = r#"{"name":"Avoid Buggy IPs","type":"boolean","jsonPath":".spec.avoidBuggyIPs"}"#,
        printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// CIDRs (`192.168.10.0/24`) or ranges (`192.168.9.1-192.168.9.5`), IPv4 and IPv6.
    pub addresses: Vec<String>,
    /// Whether Services get addresses from this pool without asking for it by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(extend("default" = true)))]
    pub auto_assign: Option<bool>,
    /// Skip IPv4 addresses ending in .0 and .255.
    #[serde(
        rename = "avoidBuggyIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "kube", schemars(extend("default" = false)))]
    pub avoid_buggy_ips: Option<bool>,
    /// Which Services may use the pool, and with which priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
    /// Fields MetalLB does not have, refused by name.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(skip))]
    pub other: Unknown,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower is tried first; unset is tried last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
    /// Fields MetalLB does not have, refused by name.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(skip))]
    pub other: Unknown,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    #[serde(rename = "assignedIPv4", default)]
    pub assigned_ipv4: i64,
    #[serde(rename = "assignedIPv6", default)]
    pub assigned_ipv6: i64,
    #[serde(rename = "availableIPv4", default)]
    pub available_ipv4: i64,
    #[serde(rename = "availableIPv6", default)]
    pub available_ipv6: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------
// L2Advertisement

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "L2Advertisement",
        doc = "Announces the addresses of some pools in layer 2 (ARP and NDP) from some nodes.",
        plural = "l2advertisements",
        namespaced,
        status = "ConfigStatus",
        printcolumn = r#"{"name":"IPAddressPools","type":"string","jsonPath":".spec.ipAddressPools"}"#,
        printcolumn = r#"{"name":"IPAddressPool Selectors","type":"string","jsonPath":".spec.ipAddressPoolSelectors"}"#,
        printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
        printcolumn = r#"{"name":"Node Selectors","type":"string","jsonPath":".spec.nodeSelectors","priority":10}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    /// Pools announced, by name. With no pool and no selector: every pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Nodes that may announce; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Interfaces announced on; empty: every eligible one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_node_selectors: Vec<PreferredNodeSelector>,
    /// Fields MetalLB does not have, refused by name.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(skip))]
    pub other: Unknown,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub struct PreferredNodeSelector {
    #[cfg_attr(feature = "kube", schemars(range(min = 1, max = 100)))]
    pub weight: i32,
    pub preference: LabelSelector,
    /// Fields MetalLB does not have, refused by name.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(skip))]
    pub other: Unknown,
}

// ---------------------------------------------------------------------------------------------
// BGPAdvertisement

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "BGPAdvertisement",
        doc = "Advertises the addresses of some pools over BGP, with attributes.",
        plural = "bgpadvertisements",
        namespaced,
        status = "ConfigStatus",
        printcolumn = r#"{"name":"IPAddressPools","type":"string","jsonPath":".spec.ipAddressPools"}"#,
        printcolumn = r#"{"name":"IPAddressPool Selectors","type":"string","jsonPath":".spec.ipAddressPoolSelectors"}"#,
        printcolumn = r#"{"name":"Peers","type":"string","jsonPath":".spec.peers"}"#,
        printcolumn = r#"{"name":"Node Selectors","type":"string","jsonPath":".spec.nodeSelectors","priority":10}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAdvertisementSpec {
    /// The IPv4 prefix length advertised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 1), extend("default" = 32)))]
    pub aggregation_length: Option<i32>,
    /// The IPv6 prefix length advertised.
    #[serde(
        rename = "aggregationLengthV6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "kube", schemars(range(min = 1), extend("default" = 128)))]
    pub aggregation_length_v6: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// `AA:NN`, `large:G:L1:L2`, or the name of a Community alias.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// BGPPeer names the prefixes go to; empty: every peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
    /// Fields MetalLB does not have, refused by name.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(skip))]
    pub other: Unknown,
}

// ---------------------------------------------------------------------------------------------
// BGPPeer (v1beta2 stored; v1beta1 served too)

/// The BGPPeer fields both versions share.
// `Debug` is written by hand below: it never shows the password.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PeerCommon {
    #[serde(rename = "myASN")]
    pub my_asn: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 1, max = 16384), extend("default" = 179)))]
    pub peer_port: Option<u16>,
    /// A duration (`90s`): 0, or at least 3 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    #[serde(rename = "routerID", default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebgp_multi_hop: Option<bool>,
}

impl std::fmt::Debug for PeerCommon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCommon")
            .field("my_asn", &self.my_asn)
            .field("source_address", &self.source_address)
            .field("peer_port", &self.peer_port)
            .field("hold_time", &self.hold_time)
            .field("keepalive_time", &self.keepalive_time)
            .field("router_id", &self.router_id)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("bfd_profile", &self.bfd_profile)
            .field("ebgp_multi_hop", &self.ebgp_multi_hop)
            .finish()
    }
}

pub mod v1beta2 {
    use super::*;

    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
    #[cfg_attr(
        feature = "kube",
        derive(kube::CustomResource, schemars::JsonSchema),
        kube(
            group = "metallb.io",
            version = "v1beta2",
            kind = "BGPPeer",
            doc = "A BGP router the nodes peer with.",
            plural = "bgppeers",
            namespaced,
            status = "ConfigStatus",
            printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.peerAddress"}"#,
            printcolumn = r#"{"name":"ASN","type":"string","jsonPath":".spec.peerASN"}"#,
            printcolumn = r#"{"name":"BFD Profile","type":"string","jsonPath":".spec.bfdProfile"}"#,
            printcolumn = r#"{"name":"Multi Hops","type":"string","jsonPath":".spec.ebgpMultiHop"}"#
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct BGPPeerSpec {
        #[serde(flatten)]
        pub common: PeerCommon,
        #[serde(rename = "peerASN", default, skip_serializing_if = "Option::is_none")]
        pub peer_asn: Option<u32>,
        #[serde(
            rename = "dynamicASN",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub dynamic_asn: Option<DynamicAsn>,
        #[serde(rename = "localASN", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "kube", schemars(range(min = 1)))]
        pub local_asn: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub peer_address: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interface: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub connect_time: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub node_selectors: Vec<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password_secret: Option<SecretReference>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub enable_graceful_restart: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub vrf: Option<String>,
        #[serde(rename = "disableMP", default, skip_serializing_if = "Option::is_none")]
        pub disable_mp: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub dual_stack_address_family: Option<bool>,
        /// Fields MetalLB does not have, refused by name.
        #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
        #[cfg_attr(feature = "kube", schemars(skip))]
        pub other: Unknown,
    }

    #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
    #[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum DynamicAsn {
        Internal,
        External,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
    #[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
    pub struct SecretReference {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespace: Option<String>,
    }
}

pub mod v1beta1 {
    use super::*;

    /// The deprecated BGPPeer version, still served: its node selectors have their own type.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
    #[cfg_attr(
        feature = "kube",
        derive(kube::CustomResource, schemars::JsonSchema),
        kube(
            group = "metallb.io",
            version = "v1beta1",
            kind = "BGPPeer",
            doc = "A BGP router the nodes peer with (deprecated version: use v1beta2).",
            plural = "bgppeers",
            namespaced,
            status = "ConfigStatus",
            printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.peerAddress"}"#,
            printcolumn = r#"{"name":"ASN","type":"string","jsonPath":".spec.peerASN"}"#,
            printcolumn = r#"{"name":"BFD Profile","type":"string","jsonPath":".spec.bfdProfile"}"#,
            printcolumn = r#"{"name":"Multi Hops","type":"string","jsonPath":".spec.ebgpMultiHop"}"#
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct BGPPeerSpec {
        #[serde(flatten)]
        pub common: PeerCommon,
        #[serde(rename = "peerASN")]
        pub peer_asn: u32,
        pub peer_address: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub node_selectors: Vec<NodeSelector>,
        /// Fields MetalLB does not have, refused by name.
        #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
        #[cfg_attr(feature = "kube", schemars(skip))]
        pub other: Unknown,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
    #[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
    #[serde(rename_all = "camelCase")]
    pub struct NodeSelector {
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub match_labels: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub match_expressions: Vec<MatchExpression>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
    #[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
    pub struct MatchExpression {
        pub key: String,
        pub operator: String,
        #[serde(default)]
        pub values: Vec<String>,
    }
}

// ---------------------------------------------------------------------------------------------
// Community, BFDProfile

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "Community",
        doc = "Names for BGP communities, usable in BGPAdvertisements.",
        plural = "communities",
        namespaced,
        status = "ConfigStatus"
    )
)]
pub struct CommunitySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<CommunityAlias>,
    /// Fields MetalLB does not have, refused by name.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(skip))]
    pub other: Unknown,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub struct CommunityAlias {
    pub name: String,
    /// `AA:NN` or `large:G:L1:L2`.
    pub value: String,
    /// Fields MetalLB does not have, refused by name.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(skip))]
    pub other: Unknown,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "BFDProfile",
        doc = "BFD settings BGPPeers refer to.",
        plural = "bfdprofiles",
        namespaced,
        status = "ConfigStatus",
        printcolumn = r#"{"name":"Passive Mode","type":"boolean","jsonPath":".spec.passiveMode"}"#,
        printcolumn = r#"{"name":"Transmit Interval","type":"integer","jsonPath":".spec.transmitInterval"}"#,
        printcolumn = r#"{"name":"Receive Interval","type":"integer","jsonPath":".spec.receiveInterval"}"#,
        printcolumn = r#"{"name":"Multiplier","type":"integer","jsonPath":".spec.detectMultiplier"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BFDProfileSpec {
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 10, max = 60000)))]
    pub receive_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 10, max = 60000)))]
    pub transmit_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 2, max = 255)))]
    pub detect_multiplier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 10, max = 60000)))]
    pub echo_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 1, max = 254)))]
    pub minimum_ttl: Option<u32>,
    /// Fields MetalLB does not have, refused by name.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "kube", schemars(skip))]
    pub other: Unknown,
}

mod announced;
pub use announced::*;

#[cfg(feature = "kube")]
/// Every CustomResourceDefinition, BGPPeer with both its versions (v1beta2 stored).
pub fn all() -> Vec<CustomResourceDefinition> {
    let peers = merge_crds(
        vec![v1beta2::BGPPeer::crd(), v1beta1::BGPPeer::crd()],
        "v1beta2",
    )
    .expect("both BGPPeer versions describe one kind");
    vec![
        IPAddressPool::crd(),
        L2Advertisement::crd(),
        BGPAdvertisement::crd(),
        peers,
        Community::crd(),
        BFDProfile::crd(),
        ServiceL2Status::crd(),
        ServiceBGPStatus::crd(),
    ]
}

#[cfg(feature = "kube")]
/// The CRDs as one multi-document YAML file, as committed under `deploy/crds/`.
pub fn all_yaml() -> String {
    let mut out = String::from(
        "# Generated by `cargo run -p ferrolb-k8s-adapter --bin ferrolb-crdgen`; do not edit.\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD serializes"));
    }
    out
}
