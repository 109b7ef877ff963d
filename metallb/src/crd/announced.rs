//! Where Services are announced: ServiceL2Status and ServiceBGPStatus, written by the adapter
//! from the allocator's decisions (MetalLB's speaker writes them in MetalLB).

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "ServiceL2Status",
        doc = "Where a Service is announced in layer 2 (written by ferrolb).",
        plural = "servicel2statuses",
        namespaced,
        status = "ServiceL2StatusStatus",
        printcolumn = r#"{"name":"Allocated Node","type":"string","jsonPath":".status.node"}"#,
        printcolumn = r#"{"name":"Service Name","type":"string","jsonPath":".status.serviceName"}"#,
        printcolumn = r#"{"name":"Service Namespace","type":"string","jsonPath":".status.serviceNamespace"}"#
    )
)]
pub struct ServiceL2StatusSpec {}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceL2StatusStatus {
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default)]
    pub service_namespace: String,
    /// Empty: every eligible interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceInfo>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub struct InterfaceInfo {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "ServiceBGPStatus",
        doc = "Which BGP peers a node advertises a Service to (written by ferrolb).",
        plural = "servicebgpstatuses",
        namespaced,
        status = "ServiceBGPStatusStatus",
        printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
        printcolumn = r#"{"name":"Service Name","type":"string","jsonPath":".status.serviceName"}"#,
        printcolumn = r#"{"name":"Service Namespace","type":"string","jsonPath":".status.serviceNamespace"}"#
    )
)]
pub struct ServiceBGPStatusSpec {}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceBGPStatusStatus {
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default)]
    pub service_namespace: String,
    /// The BGPPeers this node advertises the Service to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}
