//! Every field of every kind takes any text without a panic: each value of a complete
//! configuration (one object of every kind, every field set) is replaced in turn by arbitrary
//! strings, by numbers out of every range and by values of the wrong type, and the file is read,
//! checked and converted as `ferrolbctl apply` and the adapter do.

use serde_json::{Value, json};

use crate::object::Config;
use crate::testing::strings;
use crate::{convert, parse, validate, yaml};

const NS: &str = "metallb-system";

/// One object of each kind with every field the crate reads.
fn documents() -> Vec<Value> {
    let selector = json!({
        "matchLabels": {"zone": "a"},
        "matchExpressions": [{"key": "role", "operator": "In", "values": ["edge"]}],
    });
    vec![
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "pool", "labels": {"tier": "web"}},
            "spec": {"addresses": ["192.168.1.240/28", "10.0.0.1-10.0.0.9", "2001:db8::/120"],
                "autoAssign": true, "avoidBuggyIPs": true,
                "serviceAllocation": {"priority": 10, "namespaces": ["web"],
                    "namespaceSelectors": [selector.clone()], "serviceSelectors": [selector.clone()]}}}),
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": "l2"},
            "spec": {"ipAddressPools": ["pool"], "ipAddressPoolSelectors": [selector.clone()],
                "nodeSelectors": [selector.clone()], "interfaces": ["eth0"]}}),
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "Community",
            "metadata": {"name": "communities"},
            "spec": {"communities": [{"name": "no-export", "value": "65535:65281"}]}}),
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "BFDProfile",
            "metadata": {"name": "fast"},
            "spec": {"receiveInterval": 300, "transmitInterval": 300, "detectMultiplier": 3,
                "echoInterval": 50, "echoMode": false, "passiveMode": false, "minimumTtl": 254}}),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
            "metadata": {"name": "peer-secret"},
            "stringData": {"username": "u", "password": "hunter2"}}),
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": "peer"},
            "spec": {"myASN": 64500, "peerASN": 64501, "peerAddress": "10.0.0.1",
                "sourceAddress": "10.0.0.2", "peerPort": 179, "holdTime": "90s",
                "keepaliveTime": "30s", "routerID": "10.0.0.2",
                "passwordSecret": {"name": "peer-secret", "namespace": NS},
                "ebgpMultiHop": false,
                "enableGracefulRestart": true, "nodeSelectors": [selector.clone()]}}),
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": "peer-frr"},
            "spec": {"myASN": 64500, "dynamicASN": "external", "peerAddress": "10.0.0.4",
                "vrf": "red", "interface": "eth1", "dualStackAddressFamily": true,
                "bfdProfile": "fast", "connectTime": "5s"}}),
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": "peer-plain"},
            "spec": {"myASN": 64500, "peerASN": 64501, "peerAddress": "10.0.0.3",
                "password": "secret"}}),
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement",
            "metadata": {"name": "bgp"},
            "spec": {"aggregationLength": 32, "aggregationLengthV6": 128, "localPref": 100,
                "communities": ["no-export", "64500:1", "large:1:2:3"],
                "ipAddressPools": ["pool"], "ipAddressPoolSelectors": [selector.clone()],
                "nodeSelectors": [selector], "peers": ["peer"]}}),
    ]
}

/// Every path to a leaf value (string, number, bool) below `v`.
fn leaves(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(Step::Key(k.clone()));
                leaves(child, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                at.push(Step::Index(i));
                leaves(child, at, out);
                at.pop();
            }
        }
        _ => out.push(at.clone()),
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn at_mut<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// The documents as one file.
fn file_text(docs: &[Value]) -> String {
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Reads, checks and converts a file as the two doors do; only a panic fails.
fn read_all(docs: &[Value]) {
    let Ok(file) = yaml::read(&file_text(docs), NS) else {
        return;
    };
    let cfg: &Config = &file.config;
    let rejections = validate::check(cfg, NS);
    let _ = crate::verdicts(&rejections);
    let clusters = ["c".to_string()];
    for p in &cfg.pools {
        let _ = convert::pool(p, &clusters);
    }
    for a in &cfg.l2 {
        let _ = convert::l2_advertisement(a, "c");
    }
    for a in &cfg.bgp {
        let _ = convert::bgp_advertisement(a, "c");
    }
    for c in &cfg.communities {
        let _ = convert::community(c, "c");
    }
    for p in &cfg.peers {
        let password = validate::password(p, NS, &cfg.secrets);
        let _ = convert::bgp_peer(p, "c", format!("{password:?}"), None);
    }
}

#[test]
fn every_field_takes_any_value_without_a_panic() {
    let base = documents();
    read_all(&base);
    // The base reads whole, so that a varied value reaches every rule behind it: only the
    // FRR-mode peer is refused.
    let file = yaml::read(&file_text(&base), NS).expect("the base reads");
    assert_eq!(file.unreadable, vec![]);
    let refused: Vec<String> = validate::check(&file.config, NS)
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(
        refused.iter().all(|n| n == "peer-frr"),
        "{:?}",
        validate::check(&file.config, NS)
    );
    let mut paths = Vec::new();
    for (d, doc) in base.iter().enumerate() {
        let mut found = Vec::new();
        leaves(doc, &mut Vec::new(), &mut found);
        paths.extend(found.into_iter().map(|p| (d, p)));
    }
    assert!(paths.len() > 60, "{} values to vary", paths.len());
    let mut odd = vec![
        json!(1e30),
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(4294967296u64),
        json!(true),
        json!({}),
        json!([]),
        json!(null),
    ];
    odd.extend(strings(13, 40).into_iter().map(Value::String));
    let mut tried = 0;
    for (d, path) in &paths {
        for value in &odd {
            let mut docs = base.clone();
            *at_mut(&mut docs[*d], path) = value.clone();
            read_all(&docs);
            tried += 1;
        }
    }
    assert!(tried > 2500, "{tried} files");
}

#[test]
fn the_value_parsers_take_any_text_without_a_panic() {
    for s in strings(7, 20_000) {
        let _ = parse::go_duration(&s);
        let _ = parse::community(&s);
        let _ = parse::address_entry(&s);
        let _ = yaml::read(&s, NS);
    }
}

#[test]
fn a_hold_time_past_any_clock_is_refused_by_name() {
    let mut docs = documents();
    docs[5]["spec"]["holdTime"] = json!("99999999999999999999h");
    assert_eq!(docs[5]["metadata"]["name"], "peer");
    let file = yaml::read(&file_text(&docs), NS).expect("reads");
    let rejections = validate::check(&file.config, NS);
    let verdict = crate::verdict(&rejections, crate::kind::PEER, "peer")
        .unwrap_or_else(|| panic!("not refused: {rejections:?} {:?}", file.unreadable));
    assert!(
        verdict.contains("spec.holdTime") && verdict.contains("99999999999999999999h"),
        "{verdict}"
    );
}
