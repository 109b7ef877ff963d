//! A MetalLB YAML file (many documents, as users keep them) read into one cluster's
//! [`Config`], the way an API server would hand the same objects to the adapter: an object
//! without a namespace is in the namespace the file is applied to, v1beta1 BGPPeers are read as
//! v1beta2, and `kubernetes.io/basic-auth` Secrets in the file are there for the peers'
//! `passwordSecret`s (their `stringData` merged into `data`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::crd::{v1beta1, v1beta2};
use crate::object::{Config, Object, Rejection, kind};

/// What a file holds.
#[derive(Debug, Default)]
pub struct File {
    pub config: Config,
    /// Objects whose spec does not even read (a number where text belongs, ...).
    pub unreadable: Vec<Rejection>,
    /// `Kind/name` of documents that are not MetalLB configuration, for the caller to report.
    pub skipped: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads every document; `namespace` is where objects without one go. An error names the
/// document that is not YAML or not an object.
pub fn read(text: &str, namespace: &str) -> Result<File, String> {
    let mut file = File::default();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = |e: &dyn std::fmt::Display| format!("document {}: {e}", i + 1);
        let value = serde_json::Value::deserialize(de).map_err(|e| at(&e))?;
        if value.is_null() {
            continue;
        }
        let doc: Document = serde_json::from_value(value.clone()).map_err(|e| at(&e))?;
        if doc.metadata.name.is_empty() {
            return Err(at(&"metadata.name is required"));
        }
        let (group, version) = doc.api_version.split_once('/').unwrap_or(("", ""));
        if doc.kind == "Secret" && doc.api_version == "v1" {
            secret(&mut file, value, namespace).map_err(|e| at(&e))?;
            continue;
        }
        if group != "metallb.io" {
            file.skipped
                .push(format!("{}/{}", doc.kind, doc.metadata.name));
            continue;
        }
        let c = &mut file.config;
        let u = &mut file.unreadable;
        match (doc.kind.as_str(), version) {
            ("IPAddressPool", _) => add(kind::POOL, doc, namespace, &mut c.pools, u),
            ("L2Advertisement", _) => add(kind::L2, doc, namespace, &mut c.l2, u),
            ("BGPAdvertisement", _) => add(kind::BGP_ADVERTISEMENT, doc, namespace, &mut c.bgp, u),
            ("Community", _) => add(kind::COMMUNITY, doc, namespace, &mut c.communities, u),
            ("BFDProfile", _) => add(kind::BFD_PROFILE, doc, namespace, &mut c.bfd_profiles, u),
            ("BGPPeer", "v1beta1") => {
                let mut old: Vec<Object<v1beta1::BGPPeerSpec>> = vec![];
                add(kind::PEER, doc, namespace, &mut old, u);
                c.peers.extend(old.into_iter().map(|o| Object {
                    spec: o.spec.into(),
                    name: o.name,
                    namespace: o.namespace,
                    labels: o.labels,
                    annotations: o.annotations,
                }));
            }
            ("BGPPeer", _) => add(kind::PEER, doc, namespace, &mut c.peers, u),
            _ => file
                .skipped
                .push(format!("{}/{}", doc.kind, doc.metadata.name)),
        }
    }
    Ok(file)
}

fn add<S: DeserializeOwned>(
    kind: &'static str,
    doc: Document,
    namespace: &str,
    to: &mut Vec<Object<S>>,
    unreadable: &mut Vec<Rejection>,
) {
    let name = doc.metadata.name;
    let spec = if doc.spec.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        doc.spec
    };
    match serde_json::from_value(spec) {
        Ok(spec) => to.push(Object {
            name,
            namespace: doc
                .metadata
                .namespace
                .unwrap_or_else(|| namespace.to_string()),
            labels: doc.metadata.labels,
            annotations: doc.metadata.annotations,
            spec,
        }),
        Err(e) => unreadable.push(Rejection::new(kind, &name, "spec", e.to_string())),
    }
}

/// A Secret of the file's namespace, for the peers' `passwordSecret`s.
fn secret(file: &mut File, value: serde_json::Value, namespace: &str) -> Result<(), String> {
    let mut s: Secret = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let ns = s.metadata.namespace.clone();
    if ns.as_deref().is_some_and(|ns| ns != namespace) {
        return Ok(());
    }
    let strings = s.string_data.take().unwrap_or_default();
    let data = s.data.get_or_insert_with(BTreeMap::new);
    for (k, v) in strings {
        data.insert(k, ByteString(v.into_bytes()));
    }
    let name = s.metadata.name.clone().unwrap_or_default();
    file.config.secrets.insert(name, s);
    Ok(())
}

impl From<v1beta1::BGPPeerSpec> for v1beta2::BGPPeerSpec {
    fn from(old: v1beta1::BGPPeerSpec) -> Self {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement,
        };
        v1beta2::BGPPeerSpec {
            common: old.common,
            peer_asn: Some(old.peer_asn),
            peer_address: Some(old.peer_address),
            node_selectors: old
                .node_selectors
                .into_iter()
                .map(|n| LabelSelector {
                    match_labels: (!n.match_labels.is_empty()).then_some(n.match_labels),
                    match_expressions: (!n.match_expressions.is_empty()).then(|| {
                        n.match_expressions
                            .into_iter()
                            .map(|e| LabelSelectorRequirement {
                                key: e.key,
                                operator: e.operator,
                                values: Some(e.values),
                            })
                            .collect()
                    }),
                })
                .collect(),
            other: old.other,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_with_every_field() {
        let text = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: web
  annotations:
    ferrolb.io/clusters: "east, west"
    ferrolb.io/excluded-addresses: 10.0.0.1
spec:
  addresses: [10.0.0.0/24, "fc00::1-fc00::ff"]
  autoAssign: false
  avoidBuggyIPs: true
  serviceAllocation:
    priority: 50
    namespaces: [web]
    namespaceSelectors:
    - matchLabels: {team: web}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2, namespace: metallb-system}
spec:
  ipAddressPools: [web]
  interfaces: [eth0]
  preferredNodeSelectors:
  - weight: 50
    preference: {matchLabels: {rack: r1}}
---
apiVersion: metallb.io/v1beta1
kind: BGPPeer
metadata: {name: old}
spec:
  myASN: 64512
  peerASN: 64513
  peerAddress: 10.0.0.9
  nodeSelectors: [{matchLabels: {rack: a}}]
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: core}
spec:
  myASN: 4200000001
  peerASN: 65000
  peerAddress: 10.100.1.1
  holdTime: 1m30s
  passwordSecret: {name: pw}
---
apiVersion: v1
kind: Secret
metadata: {name: pw}
type: kubernetes.io/basic-auth
stringData: {password: s3cret}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
"#;
        let f = read(text, "metallb-system").expect("reads");
        assert_eq!(f.skipped, ["ConfigMap/other"]);
        assert!(f.unreadable.is_empty());
        let c = &f.config;
        assert_eq!(c.pools[0].namespace, "metallb-system");
        assert_eq!(c.pools[0].spec.addresses.len(), 2);
        assert_eq!(c.l2[0].spec.preferred_node_selectors[0].weight, 50);
        assert_eq!(c.peers[0].spec.peer_asn, Some(64513));
        assert_eq!(c.peers[0].spec.node_selectors.len(), 1);
        assert_eq!(c.peers[1].spec.common.hold_time.as_deref(), Some("1m30s"));
        assert_eq!(
            crate::validate::password(&c.peers[1], "metallb-system", &c.secrets).expect("pw"),
            "s3cret"
        );
        assert!(crate::validate::check(c, "metallb-system").is_empty());
        // Neither the Secret's data nor an inline password reaches a Debug print.
        let mut shown = c.clone();
        shown.peers[0].spec.common.password = Some("hunter2".into());
        let text = format!(
            "{:?}",
            File {
                config: shown,
                ..File::default()
            }
        );
        assert!(
            !text.contains("ByteString") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(
            text.contains("<redacted>") && text.contains("\"pw\""),
            "{text}"
        );
    }

    #[test]
    fn what_does_not_read_is_named() {
        let text = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec:\n  autoAssign: maybe\n";
        let f = read(text, "metallb-system").expect("reads");
        assert_eq!(f.unreadable[0].name, "p");
        assert!(
            f.unreadable[0]
                .to_string()
                .contains("IPAddressPool \"p\": spec:")
        );
        let typo = text.replace(
            "autoAssign: maybe",
            "addresses: [10.0.0.0/24]\n  adresess: []",
        );
        let f = read(&typo, "metallb-system").expect("reads");
        let r = crate::validate::check(&f.config, "metallb-system");
        assert!(
            r.iter()
                .any(|r| r.field == "spec.adresess" && r.message == "unknown field")
        );
        assert!(read("kind: [", "metallb-system").is_err());
        assert!(
            read("kind: IPAddressPool\n", "x")
                .unwrap_err()
                .contains("metadata.name")
        );
    }
}
