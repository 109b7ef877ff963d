//! The Services' endpoints, indexed: each EndpointSlice under the Service it belongs to, kept by
//! `apply` and `delete` from the watch (and swapped whole after a relist), so that a reconcile
//! reads its own Service's slices and never scans every slice of the cluster. Pure: the watch
//! feeds it, the reconciler reads it, and [`report`] turns a Service and its endpoints into what
//! the allocator is told.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferrolb_proto::v1 as pb;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::watcher;

/// The label that ties a slice to its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// A Service by namespace and name.
pub type ServiceKey = (String, String);

/// Where a Service's endpoints are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Nodes with a serving endpoint.
    pub nodes: BTreeSet<String>,
    /// Whether any endpoint serves (`ready` unset or true, or `serving` true: terminating but
    /// serving counts).
    pub any_serving: bool,
}

impl Endpoints {
    fn of(slice: &EndpointSlice) -> Endpoints {
        let mut e = Endpoints::default();
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            if c.is_none_or(|c| c.ready.unwrap_or(true) || c.serving == Some(true)) {
                e.any_serving = true;
                e.nodes.extend(ep.node_name.iter().cloned());
            }
        }
        e
    }
}

#[derive(Debug, Default, Clone)]
struct Slices {
    /// Service → slice name → its endpoints.
    by_service: HashMap<ServiceKey, BTreeMap<String, Endpoints>>,
    /// (namespace, slice name) → the Service it was filed under.
    service_of: HashMap<(String, String), ServiceKey>,
}

/// The index.
#[derive(Debug, Default)]
pub struct SliceIndex {
    current: Slices,
    /// A relist in progress: slices seen so far, swapped in when it completes.
    relisting: Option<Slices>,
}

impl Slices {
    /// Files a slice under its Service; returns the Services whose endpoints may have changed.
    fn apply(&mut self, slice: &EndpointSlice) -> Vec<ServiceKey> {
        let ns = slice.namespace().unwrap_or_default();
        let name = slice.name_any();
        let mut touched = self.delete(&ns, &name);
        if let Some(svc) = slice.labels().get(SERVICE_NAME) {
            let key = (ns.clone(), svc.clone());
            self.by_service
                .entry(key.clone())
                .or_default()
                .insert(name.clone(), Endpoints::of(slice));
            self.service_of.insert((ns, name), key.clone());
            touched.push(key);
        }
        touched
    }

    fn delete(&mut self, ns: &str, name: &str) -> Vec<ServiceKey> {
        let Some(key) = self.service_of.remove(&(ns.to_string(), name.to_string())) else {
            return vec![];
        };
        if let Some(slices) = self.by_service.get_mut(&key) {
            slices.remove(name);
            if slices.is_empty() {
                self.by_service.remove(&key);
            }
        }
        vec![key]
    }
}

impl SliceIndex {
    /// A slice created or changed.
    pub fn apply(&mut self, slice: &EndpointSlice) -> Vec<ServiceKey> {
        self.current.apply(slice)
    }

    /// A slice deleted.
    pub fn delete(&mut self, slice: &EndpointSlice) -> Vec<ServiceKey> {
        self.current
            .delete(&slice.namespace().unwrap_or_default(), &slice.name_any())
    }

    /// One event of the watch; returns the Services whose endpoints may have changed.
    pub fn handle(&mut self, ev: watcher::Event<EndpointSlice>) -> Vec<ServiceKey> {
        match ev {
            watcher::Event::Apply(s) => self.apply(&s),
            watcher::Event::Delete(s) => self.delete(&s),
            watcher::Event::Init => {
                self.relisting = Some(Slices::default());
                vec![]
            }
            watcher::Event::InitApply(s) => {
                self.relisting.get_or_insert_default().apply(&s);
                vec![]
            }
            watcher::Event::InitDone => {
                let fresh = self.relisting.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.current, fresh);
                // Every Service that had or has slices may have changed.
                let mut touched: BTreeSet<ServiceKey> = old.by_service.into_keys().collect();
                touched.extend(self.current.by_service.keys().cloned());
                touched.into_iter().collect()
            }
        }
    }

    /// A Service's endpoints, over all its slices.
    pub fn endpoints(&self, namespace: &str, name: &str) -> Endpoints {
        let key = (namespace.to_string(), name.to_string());
        let mut out = Endpoints::default();
        for e in self
            .current
            .by_service
            .get(&key)
            .into_iter()
            .flat_map(|s| s.values())
        {
            out.any_serving |= e.any_serving;
            out.nodes.extend(e.nodes.iter().cloned());
        }
        out
    }
}

/// What the allocator is told about a Service's endpoints.
pub fn report(cluster: &str, svc: &Service, e: Endpoints) -> pb::ServiceEndpoints {
    let local = svc
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local");
    pb::ServiceEndpoints {
        cluster: cluster.to_string(),
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        serving_nodes: e.nodes.into_iter().collect(),
        any_serving: e.any_serving,
        traffic_policy_local: local,
        labels: svc.labels().clone().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use kube::api::ObjectMeta;

    /// A slice of `service` with endpoints (node, ready, serving).
    fn slice(
        name: &str,
        service: Option<&str>,
        eps: &[(&str, Option<bool>, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: service.map(|s| [(SERVICE_NAME.to_string(), s.to_string())].into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(node, ready, serving)| Endpoint {
                    node_name: Some(node.to_string()),
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *serving,
                        terminating: None,
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: None,
        }
    }

    fn key(s: &str) -> ServiceKey {
        ("default".into(), s.into())
    }

    #[test]
    fn slices_are_filed_under_their_service() {
        let mut ix = SliceIndex::default();
        assert_eq!(
            ix.apply(&slice("web-a", Some("web"), &[("n1", None, None)])),
            [key("web")]
        );
        ix.apply(&slice(
            "web-b",
            Some("web"),
            &[("n2", Some(false), Some(true)), ("n3", Some(false), None)],
        ));
        ix.apply(&slice(
            "db-a",
            Some("db"),
            &[("n3", Some(false), Some(false))],
        ));
        let web = ix.endpoints("default", "web");
        assert_eq!(web.nodes, ["n1".to_string(), "n2".to_string()].into());
        assert!(web.any_serving);
        let db = ix.endpoints("default", "db");
        assert!(db.nodes.is_empty() && !db.any_serving);
        assert_eq!(ix.endpoints("other", "web"), Endpoints::default());

        // A slice that moves to another Service leaves the first.
        assert_eq!(
            ix.apply(&slice("web-b", Some("db"), &[("n2", None, None)])),
            [key("web"), key("db")]
        );
        assert_eq!(
            ix.endpoints("default", "web").nodes,
            ["n1".to_string()].into()
        );
        assert!(ix.endpoints("default", "db").any_serving);
        assert_eq!(ix.delete(&slice("web-a", Some("web"), &[])), [key("web")]);
        assert_eq!(ix.endpoints("default", "web"), Endpoints::default());
        // A slice without the label belongs to no Service.
        assert!(
            ix.apply(&slice("loose", None, &[("n1", None, None)]))
                .is_empty()
        );
    }

    #[test]
    fn a_relist_replaces_the_index_whole() {
        let mut ix = SliceIndex::default();
        ix.apply(&slice("web-a", Some("web"), &[("n1", None, None)]));
        assert!(ix.handle(watcher::Event::Init).is_empty());
        ix.handle(watcher::Event::InitApply(slice(
            "db-a",
            Some("db"),
            &[("n2", None, None)],
        )));
        // Until the relist is done, the old view serves.
        assert!(ix.endpoints("default", "web").any_serving);
        let mut touched = ix.handle(watcher::Event::InitDone);
        touched.sort();
        assert_eq!(touched, [key("db"), key("web")]);
        assert!(!ix.endpoints("default", "web").any_serving);
        assert!(ix.endpoints("default", "db").any_serving);
    }

    #[test]
    fn the_report_says_the_traffic_policy() {
        let mut svc = Service::default();
        svc.metadata.name = Some("web".into());
        svc.metadata.namespace = Some("default".into());
        svc.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            external_traffic_policy: Some("Local".into()),
            ..Default::default()
        });
        let e = Endpoints {
            nodes: ["n1".to_string()].into(),
            any_serving: true,
        };
        let r = report("home", &svc, e);
        assert_eq!((r.cluster.as_str(), r.name.as_str()), ("home", "web"));
        assert!(r.traffic_policy_local && r.any_serving);
        assert_eq!(r.serving_nodes, ["n1"]);
    }
}
