//! The cluster state handlers on a store in memory: who may act for which cluster, what each
//! handler checks, and what it stores.

use std::sync::Mutex;

use ferrolb_common::Principal;
use tonic::Code;

use super::*;
use crate::bgp::{BgpAd, BgpPeer};
use crate::pool::{Pool, PoolSpec};
use crate::store::ClusterRows;

/// Cluster state in memory, and the pools it is checked against.
#[derive(Default)]
struct Mem {
    rows: Mutex<ClusterRows>,
    pools: Vec<Pool>,
}

/// Replaces the object with the same (cluster, name); says whether it is new.
fn upsert<T: Clone>(list: &mut Vec<T>, item: &T, same: impl Fn(&T) -> bool) -> bool {
    let before = list.len();
    list.retain(|x| !same(x));
    list.push(item.clone());
    list.len() > before
}

impl ClusterStore for Mem {
    async fn apply_node(&self, n: &NodeInfo) -> crate::error::Result<bool> {
        let mut rows = self.rows.lock().expect("rows");
        Ok(upsert(&mut rows.nodes, n, |x| {
            x.cluster == n.cluster && x.name == n.name
        }))
    }
    async fn delete_node(&self, cluster: &str, name: &str) -> crate::error::Result<()> {
        let mut rows = self.rows.lock().expect("rows");
        rows.nodes
            .retain(|x| !(x.cluster == cluster && x.name == name));
        Ok(())
    }
    async fn set_endpoints(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        e: &Endpoints,
    ) -> crate::error::Result<()> {
        let mut rows = self.rows.lock().expect("rows");
        let key = (namespace.to_string(), name.to_string());
        rows.endpoints
            .entry(cluster.to_string())
            .or_default()
            .insert(key, e.clone());
        Ok(())
    }
    async fn delete_endpoints(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> crate::error::Result<()> {
        let mut rows = self.rows.lock().expect("rows");
        if let Some(c) = rows.endpoints.get_mut(cluster) {
            c.remove(&(namespace.to_string(), name.to_string()));
        }
        Ok(())
    }
    async fn apply_l2(&self, ad: &L2Ad) -> crate::error::Result<bool> {
        let mut rows = self.rows.lock().expect("rows");
        Ok(upsert(&mut rows.ads, ad, |x| {
            x.cluster == ad.cluster && x.name == ad.name
        }))
    }
    async fn delete_l2(&self, cluster: &str, name: &str) -> crate::error::Result<()> {
        let mut rows = self.rows.lock().expect("rows");
        rows.ads
            .retain(|x| !(x.cluster == cluster && x.name == name));
        Ok(())
    }
    async fn apply_bgp_peer(&self, p: &BgpPeer) -> crate::error::Result<bool> {
        let mut rows = self.rows.lock().expect("rows");
        Ok(upsert(&mut rows.bgp_peers, p, |x| {
            x.cluster == p.cluster && x.name == p.name
        }))
    }
    async fn apply_bgp_advertisement(&self, a: &BgpAd) -> crate::error::Result<bool> {
        let mut rows = self.rows.lock().expect("rows");
        Ok(upsert(&mut rows.bgp_ads, a, |x| {
            x.cluster == a.cluster && x.name == a.name
        }))
    }
    async fn apply_community(&self, c: &CommunitySet) -> crate::error::Result<bool> {
        let mut rows = self.rows.lock().expect("rows");
        Ok(upsert(&mut rows.communities, c, |x| {
            x.cluster == c.cluster && x.name == c.name
        }))
    }
    async fn delete_bgp(
        &self,
        kind: BgpKind,
        cluster: &str,
        name: &str,
    ) -> crate::error::Result<()> {
        let mut rows = self.rows.lock().expect("rows");
        let other = |c: &str, n: &str| !(c == cluster && n == name);
        match kind {
            BgpKind::Peer => rows.bgp_peers.retain(|x| other(&x.cluster, &x.name)),
            BgpKind::Advertisement => rows.bgp_ads.retain(|x| other(&x.cluster, &x.name)),
            BgpKind::Community => rows.communities.retain(|x| other(&x.cluster, &x.name)),
        }
        Ok(())
    }
    async fn cluster_rows(&self) -> crate::error::Result<ClusterRows> {
        Ok(self.rows.lock().expect("rows").clone())
    }
    async fn pools(&self) -> crate::error::Result<Vec<Pool>> {
        Ok(self.pools.clone())
    }
}

struct Api {
    svc: ClusterState<Mem>,
    _view: watch::Sender<Arc<View>>,
}

fn api(pools: Vec<PoolSpec>) -> Api {
    let mem = Mem {
        pools: pools
            .into_iter()
            .map(|p| Pool::new(p).expect("a pool"))
            .collect(),
        ..Mem::default()
    };
    let (tx, rx) = watch::channel(Arc::new(View::default()));
    Api {
        svc: ClusterState::new(Arc::new(mem), rx, 4),
        _view: tx,
    }
}

/// A request as the authorization layer passes it on: from `cluster`'s adapter.
fn from<T>(cluster: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.extensions_mut().insert(Principal::Adapter {
        cluster: cluster.into(),
    });
    req
}

fn code<T>(r: Result<Response<T>, Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

fn node(cluster: &str, name: &str) -> pb::Node {
    pb::Node {
        cluster: cluster.into(),
        name: name.into(),
        ..pb::Node::default()
    }
}

#[tokio::test]
async fn a_cluster_acts_for_itself_only() {
    let a = api(vec![]);
    let created = a.svc.apply_node(from("east", node("east", "n1"))).await;
    assert!(created.expect("applied").into_inner().created);
    let again = a.svc.apply_node(from("east", node("east", "n1"))).await;
    assert!(!again.expect("applied").into_inner().created);
    let (c, m) = code(a.svc.apply_node(from("east", node("west", "n1"))).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(m.contains("may not act for cluster \"west\""), "{m}");
    let mut anonymous = Request::new(node("east", "n2"));
    anonymous.extensions_mut().clear();
    assert_eq!(
        code(a.svc.apply_node(anonymous).await).0,
        Code::Unauthenticated
    );
    let listed = a
        .svc
        .list_nodes(from(
            "east",
            pb::ListNodesRequest {
                cluster: "east".into(),
            },
        ))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.nodes.len(), 1);
}

#[tokio::test]
async fn endpoints_name_their_nodes_properly() {
    let a = api(vec![]);
    let ends = |nodes: &[&str]| pb::ServiceEndpoints {
        cluster: "east".into(),
        namespace: "default".into(),
        name: "web".into(),
        serving_nodes: nodes.iter().map(|n| n.to_string()).collect(),
        ..pb::ServiceEndpoints::default()
    };
    a.svc
        .set_endpoints(from("east", ends(&["n1"])))
        .await
        .expect("set");
    let (c, m) = code(a.svc.set_endpoints(from("east", ends(&["n 1"]))).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("serving_nodes"), "{m}");
    let rows = a.svc.store.cluster_rows().await.expect("rows");
    let stored = &rows.endpoints["east"][&("default".to_string(), "web".to_string())];
    assert!(stored.any_serving && stored.nodes.contains("n1"));
}

#[tokio::test]
async fn advertisements_are_checked_against_the_pools_open_to_the_cluster() {
    let shared = PoolSpec {
        clusters: vec!["east".into()],
        ..PoolSpec::new("shared", &["10.20.0.0/24"])
    };
    let theirs = PoolSpec {
        clusters: vec!["west".into()],
        ..PoolSpec::new("theirs", &["10.30.0.0/28"])
    };
    let a = api(vec![shared, theirs]);
    let ad = |name: &str, len: u32, pools: &[&str]| pb::BgpAdvertisement {
        cluster: "east".into(),
        name: name.into(),
        aggregation_length: Some(len),
        ip_address_pools: pools.iter().map(|p| p.to_string()).collect(),
        ..pb::BgpAdvertisement::default()
    };
    let (c, m) = code(
        a.svc
            .apply_bgp_advertisement(from("east", ad("wide", 16, &[])))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("of pool \"shared\""), "{m}");
    // West's pool is not east's to cover, so it is not held against east's advertisement.
    let ok = a
        .svc
        .apply_bgp_advertisement(from("east", ad("named", 24, &["shared", "theirs"])))
        .await;
    assert!(ok.expect("applied").into_inner().created);
    let rows = a.svc.store.cluster_rows().await.expect("rows");
    let names: Vec<&str> = rows.bgp_ads.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["named"]);
}

#[tokio::test]
async fn communities_and_their_aliases() {
    let a = api(vec![]);
    let community = |name: &str, alias: &str, value: &str| pb::Community {
        cluster: "east".into(),
        name: name.into(),
        communities: vec![pb::CommunityAlias {
            name: alias.into(),
            value: value.into(),
        }],
    };
    a.svc
        .apply_community(from("east", community("c1", "no-export", "65535:65281")))
        .await
        .expect("applied");
    let (c, m) = code(
        a.svc
            .apply_community(from("east", community("c2", "no-export", "65000:1")))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "an alias defined twice: {m}");
    // An advertisement may name the alias; an unknown one is refused.
    let ad = |name: &str, community: &str| pb::BgpAdvertisement {
        cluster: "east".into(),
        name: name.into(),
        communities: vec![community.into()],
        ..pb::BgpAdvertisement::default()
    };
    a.svc
        .apply_bgp_advertisement(from("east", ad("a", "no-export")))
        .await
        .expect("the alias resolves");
    let (c, _) = code(
        a.svc
            .apply_bgp_advertisement(from("east", ad("b", "unknown")))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    let del = pb::DeleteBgpObjectRequest {
        cluster: "east".into(),
        kind: pb::BgpKind::Advertisement as i32,
        name: "a".into(),
    };
    a.svc
        .delete_bgp_object(from("east", del))
        .await
        .expect("deleted");
    assert!(
        a.svc
            .store
            .cluster_rows()
            .await
            .expect("rows")
            .bgp_ads
            .is_empty()
    );
}
