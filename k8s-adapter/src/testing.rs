//! The adapter's test fixture: a context on the lab's Kubernetes API server and an allocator in
//! memory, with a look at what was written and asked.

use std::sync::Arc;
use std::time::Duration;

use ferrolb_common::transport::ClientSecurity;
use ferrolb_e2e::fakekube::FakeKube;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use serde_json::{Value, json};

use crate::allocator::Allocator;
use crate::allocator::fake::FakeAllocator;
use crate::controller::{Ctx, Settings};

pub(crate) const SERVICES: &str = "/api/v1/services";
pub(crate) const EVENTS: &str = "/apis/events.k8s.io/v1/events";

pub(crate) struct Lab {
    pub(crate) kube: FakeKube,
    pub(crate) allocator: Arc<FakeAllocator>,
    pub(crate) ctx: Arc<Ctx>,
}

impl Lab {
    /// A cluster "home" with the pool "default" of `addresses`.
    pub(crate) async fn start(addresses: &[&str]) -> Lab {
        let kube = FakeKube::start().await;
        let config = kube::Config::new(kube.url.parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let allocator = Arc::new(FakeAllocator::with_pool("default", addresses));
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "ferrolb-k8s-adapter".into(),
                instance: None,
            },
        );
        let ctx = Arc::new(Ctx {
            client,
            settings: Settings {
                cluster: "home".into(),
                namespace: "metallb-system".into(),
                lb_class: None,
                allocator: String::new(),
                security: ClientSecurity::DevPlaintext,
                resync: Duration::from_secs(300),
            },
            allocator: Arc::clone(&allocator) as Arc<dyn Allocator>,
            namespaces: reflector::store().0,
            slices: Default::default(),
            nodes: reflector::store().0,
            reported: Default::default(),
            recorder,
            metrics: Arc::default(),
        });
        Lab {
            kube,
            allocator,
            ctx,
        }
    }

    /// Stores a Service of type LoadBalancer, changed by `f`, and returns it as the API has it.
    pub(crate) fn service(&self, name: &str, f: impl FnOnce(&mut Value)) -> Service {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "selector": {"app": name},
                "ports": [{"port": 80, "protocol": "TCP"}],
            },
        });
        f(&mut v);
        self.kube.put(SERVICES, v);
        self.stored(name)
    }

    pub(crate) fn stored(&self, name: &str) -> Service {
        let v = self.kube.get(SERVICES, "default", name).expect("stored");
        serde_json::from_value(v).expect("a Service")
    }

    /// The reasons of the events recorded on Service `name`, oldest first.
    pub(crate) fn reasons(&self, name: &str) -> Vec<String> {
        self.kube
            .list(EVENTS)
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub(crate) fn calls(&self, method: &str) -> Vec<String> {
        let calls = self.allocator.calls();
        calls
            .into_iter()
            .filter(|c| c.split(' ').next() == Some(method))
            .collect()
    }
}
