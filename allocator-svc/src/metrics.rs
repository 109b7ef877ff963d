//! Prometheus metrics of the allocator, named `ferrolb_allocator_<what>_<unit>`, and the pool
//! gauges of MetalLB's controller under MetalLB's names (`metallb_allocator_*`, by `pool`), so
//! that MetalLB users' alerts and dashboards work unchanged.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::addr::Family as IpFamily;
use crate::error::Error;
use crate::lease::PoolStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    pub family: String,
}

/// A tenant (`cluster/<c>`, `client/<x>`, `admin`, `allocator`, or `unauthenticated`) and
/// the method it called.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// MetalLB's `metallb_allocator_*` gauges, by pool.
#[derive(Default)]
struct MetallbPools {
    addresses: Family<PoolLabel, FloatGauge>,
    in_use: Family<PoolLabel, FloatGauge>,
    v4_addresses: Family<PoolLabel, FloatGauge>,
    v4_in_use: Family<PoolLabel, FloatGauge>,
    v6_addresses: Family<PoolLabel, FloatGauge>,
    v6_in_use: Family<PoolLabel, FloatGauge>,
    services: Family<PoolLabel, FloatGauge>,
}

impl MetallbPools {
    fn register(&self, r: &mut Registry) {
        let gauges = [
            (
                "addresses_total",
                "Number of usable IP addresses, per pool",
                &self.addresses,
            ),
            (
                "addresses_in_use_total",
                "Number of IP addresses in use, per pool",
                &self.in_use,
            ),
            (
                "ipv4_addresses_total",
                "Number of usable IPV4 addresses, per pool",
                &self.v4_addresses,
            ),
            (
                "ipv4_addresses_in_use_total",
                "Number of IPV4 addresses in use, per pool",
                &self.v4_in_use,
            ),
            (
                "ipv6_addresses_total",
                "Number of usable IPV6 addresses, per pool",
                &self.v6_addresses,
            ),
            (
                "ipv6_addresses_in_use_total",
                "Number of IPV6 addresses in use, per pool",
                &self.v6_in_use,
            ),
            (
                "services_allocated_total",
                "Number of services allocated, per pool",
                &self.services,
            ),
        ];
        for (name, help, family) in gauges {
            r.register(name, help, family.clone());
        }
    }

    fn set(&self, stats: &[PoolStats]) {
        let all = [
            &self.addresses,
            &self.in_use,
            &self.v4_addresses,
            &self.v4_in_use,
            &self.v6_addresses,
            &self.v6_in_use,
            &self.services,
        ];
        for family in all {
            family.clear();
        }
        for s in stats {
            let pool = PoolLabel {
                pool: s.pool.clone(),
            };
            // Every gauge of a pool exists, 0 for a family it does not have (as MetalLB's).
            for family in all {
                let _ = family.get_or_create(&pool);
            }
            let add = |family: &Family<PoolLabel, FloatGauge>, n: f64| {
                family.get_or_create(&pool).inc_by(n);
            };
            let (addresses, in_use) = match s.family {
                IpFamily::V4 => (&self.v4_addresses, &self.v4_in_use),
                IpFamily::V6 => (&self.v6_addresses, &self.v6_in_use),
            };
            add(&self.addresses, s.capacity as f64);
            add(&self.in_use, s.in_use as f64);
            add(addresses, s.capacity as f64);
            add(in_use, s.in_use as f64);
            add(&self.services, s.services as f64);
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub allocations: Counter,
    pub releases: Counter,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    capacity: Family<PoolLabels, FloatGauge>,
    in_use: Family<PoolLabels, FloatGauge>,
    stranded: Family<PoolLabels, Gauge>,
    /// Announcer streams this replica holds.
    pub announcer_streams: Gauge,
    /// TLS handshakes refused, by reason (no_certificate, expired, unknown_issuer, identity, …).
    pub tls_refused: Family<ReasonLabels, Counter>,
    /// Calls refused by the authorization table or an object check, by method.
    pub denied: Family<MethodLabels, Counter>,
    /// ServiceAccount tokens refused at the bootstrap port, by reason.
    pub tokens_refused: Family<ReasonLabels, Counter>,
    /// Calls by tenant and method, and those refused (not authenticated, not allowed, or an
    /// object that is not the caller's).
    pub tenant_calls: Family<TenantLabels, Counter>,
    pub tenant_refusals: Family<TenantLabels, Counter>,
    /// From the loss of an address's announcer to another node's report that it announces it
    /// (after its gratuitous announcement), by reason.
    failovers: Family<ReasonLabels, Histogram, fn() -> Histogram>,
    metallb: MetallbPools,
}

fn failover_histogram() -> Histogram {
    // 5 ms to about 40 s: a crash moves an address in tens of milliseconds, a cut link in the
    // heartbeat timeout.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s: a local allocation takes about a millisecond, a slow database seconds.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            allocations: Counter::default(),
            releases: Counter::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            capacity: Family::default(),
            in_use: Family::default(),
            stranded: Family::default(),
            announcer_streams: Gauge::default(),
            tls_refused: Family::default(),
            denied: Family::default(),
            tokens_refused: Family::default(),
            tenant_calls: Family::default(),
            tenant_refusals: Family::default(),
            failovers: Family::new_with_constructor(failover_histogram),
            metallb: MetallbPools::default(),
        };
        m.metallb
            .register(root.sub_registry_with_prefix("metallb_allocator"));
        let registry = root.sub_registry_with_prefix("ferrolb_allocator");
        registry.register(
            "failover_seconds",
            "Time from losing an address's announcer to another node announcing it, by reason (heartbeats_stopped, stream_ended, not_ready, protocol_error)",
            m.failovers.clone(),
        );
        registry.register(
            "tenant_calls",
            "Calls by tenant (cluster/<c>, client/<x>, admin, allocator, unauthenticated) and method",
            m.tenant_calls.clone(),
        );
        registry.register(
            "tenant_refusals",
            "Calls refused by tenant and method: not authenticated, not allowed, or an object not the caller's",
            m.tenant_refusals.clone(),
        );
        registry.register(
            "tokens_refused",
            "ServiceAccount tokens refused at the bootstrap port, by reason",
            m.tokens_refused.clone(),
        );
        registry.register(
            "tls_handshakes_refused",
            "TLS handshakes refused, by reason",
            m.tls_refused.clone(),
        );
        registry.register(
            "calls_denied",
            "Calls refused because the caller's identity may not make them, by method",
            m.denied.clone(),
        );
        registry.register(
            "announcer_streams",
            "Announcer streams held by this replica",
            m.announcer_streams.clone(),
        );
        registry.register("allocations", "Leases handed out", m.allocations.clone());
        registry.register(
            "releases",
            "Leases released by their owners",
            m.releases.clone(),
        );
        registry.register(
            "errors",
            "Failed calls by method and gRPC code",
            m.errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a call, by method",
            m.latency.clone(),
        );
        registry.register(
            "pool_capacity_addresses",
            "Addresses a pool can hand out (exclusions and avoided buggy IPs removed)",
            m.capacity.clone(),
        );
        registry.register(
            "pool_in_use_addresses",
            "Distinct addresses of a pool held by leases",
            m.in_use.clone(),
        );
        registry.register(
            "pool_stranded_leases",
            "Leases whose address their pool no longer covers",
            m.stranded.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Records one call.
    pub fn observe(&self, method: &str, took: Duration, error: Option<&Error>) {
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    method: method.to_string(),
                    code: e.code_name().to_string(),
                })
                .inc();
        }
    }

    /// An address moved to another node, `took` after its announcer was lost for `reason`.
    pub fn failed_over(&self, reason: &str, took: Duration) {
        self.failovers
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Replaces the pool gauges with fresh statistics.
    pub fn set_pools(&self, stats: &[PoolStats]) {
        self.metallb.set(stats);
        self.capacity.clear();
        self.in_use.clear();
        self.stranded.clear();
        for s in stats {
            let labels = PoolLabels {
                pool: s.pool.clone(),
                family: match s.family {
                    IpFamily::V4 => "ipv4".into(),
                    IpFamily::V6 => "ipv6".into(),
                },
            };
            // A gauge is a float: an IPv6 pool's size is exact only up to 2^53, which is what
            // Prometheus can hold; the API's Stats call gives the exact count.
            self.capacity.get_or_create(&labels).set(s.capacity as f64);
            self.in_use.get_or_create(&labels).set(s.in_use as f64);
            self.stranded
                .get_or_create(&labels)
                .set(i64::try_from(s.stranded).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.allocations.inc();
        m.observe(
            "Allocate",
            Duration::from_millis(2),
            Some(&Error::Exhausted("full".into())),
        );
        m.set_pools(&[
            PoolStats {
                pool: "home".into(),
                family: IpFamily::V4,
                capacity: 6,
                in_use: 2,
                leases: 2,
                stranded: 1,
                services: 1,
            },
            PoolStats {
                pool: "home".into(),
                family: IpFamily::V6,
                capacity: 16,
                in_use: 1,
                leases: 1,
                stranded: 0,
                services: 1,
            },
        ]);
        let text = m.encode();
        for want in [
            "ferrolb_allocator_allocations_total 1",
            "ferrolb_allocator_errors_total{method=\"Allocate\",code=\"RESOURCE_EXHAUSTED\"} 1",
            "ferrolb_allocator_request_duration_seconds_count{method=\"Allocate\"} 1",
            "ferrolb_allocator_pool_capacity_addresses{pool=\"home\",family=\"ipv4\"} 6",
            "ferrolb_allocator_pool_in_use_addresses{pool=\"home\",family=\"ipv4\"} 2",
            "ferrolb_allocator_pool_stranded_leases{pool=\"home\",family=\"ipv4\"} 1",
            // MetalLB's names: both families together, and each.
            "# TYPE metallb_allocator_addresses_total gauge",
            "metallb_allocator_addresses_total{pool=\"home\"} 22.0",
            "metallb_allocator_addresses_in_use_total{pool=\"home\"} 3.0",
            "metallb_allocator_ipv4_addresses_total{pool=\"home\"} 6.0",
            "metallb_allocator_ipv4_addresses_in_use_total{pool=\"home\"} 2.0",
            "metallb_allocator_ipv6_addresses_total{pool=\"home\"} 16.0",
            "metallb_allocator_ipv6_addresses_in_use_total{pool=\"home\"} 1.0",
            "metallb_allocator_services_allocated_total{pool=\"home\"} 2.0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
