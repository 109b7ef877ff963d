//! Prometheus metrics of the adapter, named `ferrolb_adapter_<what>`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    kind: String,
    verdict: String,
}

pub struct Metrics {
    registry: Registry,
    reviews: Family<ReviewLabels, Counter>,
    rejected: Family<KindLabel, Gauge>,
    reconcile_errors: Family<KindLabel, Counter>,
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
        let reconcile_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Service reconciles that failed and were queued again, by kind of error",
            reconcile_errors.clone(),
        );
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "webhook_reviews",
            "Admission reviews the validating webhook answered, by kind and verdict (allowed, refused, error)",
            reviews.clone(),
        );
        Metrics {
            registry,
            reviews,
            rejected,
            reconcile_errors,
        }
    }

    /// A Service reconcile failed with an error of `kind`.
    pub fn reconcile_failed(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// The webhook answered a review of a `kind` object.
    pub fn webhook_reviewed(&self, kind: &str, verdict: &str) {
        self.reviews
            .get_or_create(&ReviewLabels {
                kind: kind.into(),
                verdict: verdict.into(),
            })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_errors_are_counted_by_kind() {
        let m = Metrics::new();
        m.reconcile_failed("allocator_unavailable");
        m.reconcile_failed("allocator_unavailable");
        let text = m.encode();
        assert!(
            text.contains(
                "ferrolb_adapter_reconcile_errors_total{kind=\"allocator_unavailable\"} 2"
            ),
            "{text}"
        );
    }
}
