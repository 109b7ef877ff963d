//! The committed CRDs are the ones the types generate, and MetalLB users' YAML reads into them.
#![allow(clippy::unwrap_used)]

use ferrolb_k8s_adapter::crd;
use serde::Deserialize;

#[test]
fn committed_crds_are_fresh() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/crds/metallb.io.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        committed == crd::all_yaml(),
        "{path} is stale: run `cargo run -p ferrolb-k8s-adapter --bin ferrolb-crdgen` and commit it"
    );
}

#[test]
fn every_kind_has_its_schema_limits_and_versions() {
    let all = crd::all();
    let names: Vec<&str> = all.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(
        names,
        [
            "IPAddressPool",
            "L2Advertisement",
            "BGPAdvertisement",
            "BGPPeer",
            "Community",
            "BFDProfile",
            "ServiceL2Status",
            "ServiceBGPStatus"
        ]
    );
    let peer = &all[3];
    let versions: Vec<(&str, bool, bool)> = peer
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage))
        .collect();
    assert_eq!(
        versions,
        [("v1beta2", true, true), ("v1beta1", true, false)]
    );
    let yaml = crd::all_yaml();
    for needle in [
        "default: 179",
        "maximum: 16384",
        "default: true",
        "default: 32",
        "default: 128",
        "maximum: 254",
        "assignedIPv4",
        "subresources:",
    ] {
        assert!(yaml.contains(needle), "{needle} missing from the CRDs");
    }
}

/// The scenario files, as users wrote them for MetalLB, read into the adapter's types.
#[test]
fn scenario_files_read_unchanged() {
    let dir = std::env::var("FERROLB_SCENARIOS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/scenarios").to_string()
    });
    let mut kinds = vec![];
    for f in [
        "ip-pool.yaml",
        "l2-config.yaml",
        "home-ip-pool.yaml",
        "company-bgp-pool.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{f}"))
            .unwrap_or_else(|e| panic!("{dir}/{f}: {e} (set FERROLB_SCENARIOS)"));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap().to_string();
            match kind.as_str() {
                "IPAddressPool" => drop(serde_yaml::from_value::<crd::IPAddressPool>(v).unwrap()),
                "L2Advertisement" => {
                    drop(serde_yaml::from_value::<crd::L2Advertisement>(v).unwrap())
                }
                "BGPAdvertisement" => {
                    drop(serde_yaml::from_value::<crd::BGPAdvertisement>(v).unwrap())
                }
                "BGPPeer" => drop(serde_yaml::from_value::<crd::v1beta2::BGPPeer>(v).unwrap()),
                other => panic!("{f}: unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    for k in [
        "IPAddressPool",
        "L2Advertisement",
        "BGPAdvertisement",
        "BGPPeer",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in the scenarios");
    }
}
