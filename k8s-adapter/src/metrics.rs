//! Prometheus metrics of the adapter, named `ferrolb_adapter_<what>`, and those of MetalLB's
//! Kubernetes client under MetalLB's names (`metallb_k8s_client_*`), so that MetalLB users'
//! alerts and dashboards work unchanged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
    /// MetalLB's: 1 once a configuration reached the allocator.
    config_loaded: Gauge,
    /// MetalLB's: 1 while the configuration in the API is not the one served (an object
    /// rejected, or the last push failed).
    config_stale: Gauge,
    /// MetalLB's: object updates handled (Services reconciled, configurations pushed), and
    /// those that failed.
    updates: Counter,
    update_errors: Counter,
    /// From a Service's creation to its first address in its status.
    addressed: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let (config_loaded, config_stale) = (Gauge::default(), Gauge::default());
        let (updates, update_errors) = (Counter::default(), Counter::default());
        let metallb = root.sub_registry_with_prefix("metallb_k8s_client");
        metallb.register(
            "config_loaded_bool",
            "1 if the MetalLB configuration was successfully loaded at least once.",
            config_loaded.clone(),
        );
        metallb.register(
            "config_stale_bool",
            "1 if running on a stale configuration, because the latest config failed to load.",
            config_stale.clone(),
        );
        metallb.register(
            "updates",
            "Number of k8s object updates that have been processed.",
            updates.clone(),
        );
        metallb.register(
            "update_errors",
            "Number of k8s object updates that failed for some reason.",
            update_errors.clone(),
        );
        let registry = root.sub_registry_with_prefix("ferrolb_adapter");
        // 10 ms to about 3 minutes: a pool with room answers in milliseconds; a Service that
        // waited for a pool waits as long as that took.
        let addressed = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register(
            "service_address_seconds",
            "Time from a Service's creation to its first address in its status",
            addressed.clone(),
        );
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
            registry: root,
            reviews,
            rejected,
            reconcile_errors,
            config_loaded,
            config_stale,
            updates,
            update_errors,
            addressed,
        }
    }

    /// A Service got its first address, `age` after it was created.
    pub fn service_addressed(&self, age: std::time::Duration) {
        self.addressed.observe(age.as_secs_f64());
    }

    /// A Service reconcile failed with an error of `kind`.
    pub fn reconcile_failed(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
        self.update_errors.inc();
    }

    /// A Service was reconciled.
    pub fn reconciled(&self) {
        self.updates.inc();
    }

    /// A configuration was pushed to the allocator (`Some(rejected objects)`), or could not be.
    pub fn config_pushed(&self, rejected: Option<usize>) {
        self.updates.inc();
        match rejected {
            Some(n) => {
                self.config_loaded.set(1);
                self.config_stale.set(i64::from(n > 0));
            }
            None => {
                self.update_errors.inc();
                self.config_stale.set(1);
            }
        }
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
        assert!(
            text.contains("metallb_k8s_client_update_errors_total 2"),
            "{text}"
        );
    }

    /// MetalLB's configuration gauges: loaded once a push got through, stale while an
    /// object is rejected or the last push failed.
    #[test]
    fn configuration_loaded_and_stale() {
        let m = Metrics::new();
        let has = |want: &str| {
            let text = m.encode();
            assert!(text.contains(want), "{want} in\n{text}");
        };
        has("metallb_k8s_client_config_loaded_bool 0");
        m.config_pushed(None);
        has("metallb_k8s_client_config_loaded_bool 0");
        has("metallb_k8s_client_config_stale_bool 1");
        m.config_pushed(Some(1));
        has("metallb_k8s_client_config_loaded_bool 1");
        has("metallb_k8s_client_config_stale_bool 1");
        m.config_pushed(Some(0));
        has("metallb_k8s_client_config_stale_bool 0");
        m.reconciled();
        has("metallb_k8s_client_updates_total 4");
        has("metallb_k8s_client_update_errors_total 1");
    }
}
