//! Prometheus metrics of the adapter, named `ferrolb_adapter_<what>`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

pub struct Metrics {
    registry: Registry,
    rejected: Family<KindLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferrolb_adapter");
        let rejected = Family::<KindLabel, Gauge>::default();
        registry.register(
            "rejected_objects",
            "Configuration objects not in use because they are invalid, by kind",
            rejected.clone(),
        );
        Metrics { registry, rejected }
    }

    pub fn set_rejected(&self, kind: &str, n: i64) {
        self.rejected
            .get_or_create(&KindLabel { kind: kind.into() })
            .set(n);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
