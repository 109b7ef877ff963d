//! Prometheus metrics of the announcer, named `ferrolb_announcer_<what>`, and those of MetalLB's
//! speaker under MetalLB's names (`metallb_bgp_*` by `peer`, `metallb_layer2_*` by `ip`,
//! `metallb_speaker_announced`), so that MetalLB users' alerts and dashboards work unchanged.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::bgp::fsm::State;
use crate::l2::Counters;

type PeerLabel = Vec<(&'static str, String)>;

fn peer(label: &str) -> PeerLabel {
    vec![("peer", label.to_string())]
}

/// A counter exposed under its bare name, as MetalLB's Go counters without a `_total` suffix
/// are (`metallb_layer2_requests_received`): of type `unknown`, since OpenMetrics gives a
/// counter's samples the suffix. `rate()` reads it as any counter.
#[derive(Clone, Debug, Default)]
pub struct BareCounter(Counter);

impl BareCounter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for BareCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for BareCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&i64::try_from(self.0.get()).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Per BGP session, labelled `peer="addr:port"` as MetalLB's.
#[derive(Default)]
pub struct BgpMetrics {
    session_up: Family<PeerLabel, Gauge>,
    session_state: Family<PeerLabel, Gauge>,
    prefixes: Family<PeerLabel, Gauge>,
    updates_sent: Family<PeerLabel, Counter>,
    updates_received: Family<PeerLabel, Counter>,
    notifications_sent: Family<PeerLabel, Counter>,
    notifications_received: Family<PeerLabel, Counter>,
    malformed: Family<PeerLabel, Counter>,
    /// MetalLB's `metallb_bgp_pending_prefixes_total`: what the session should advertise.
    pending: Family<PeerLabel, Gauge>,
}

impl BgpMetrics {
    /// The session's state, the prefixes the peer holds from it and those it should hold.
    pub fn set_state(&self, label: &str, state: State, advertised: usize, wanted: usize) {
        let l = peer(label);
        self.session_up
            .get_or_create(&l)
            .set(i64::from(state == State::Established));
        self.session_state.get_or_create(&l).set(state.number());
        self.prefixes.get_or_create(&l).set(advertised as i64);
        self.pending.get_or_create(&l).set(wanted as i64);
    }

    /// The session is gone: its gauges go (counters stay, as Prometheus expects).
    pub fn forget(&self, label: &str) {
        let l = peer(label);
        self.session_up.remove(&l);
        self.session_state.remove(&l);
        self.prefixes.remove(&l);
        self.pending.remove(&l);
    }

    pub fn update_sent(&self, label: &str) {
        self.updates_sent.get_or_create(&peer(label)).inc();
    }
    pub fn update_received(&self, label: &str) {
        self.updates_received.get_or_create(&peer(label)).inc();
    }
    pub fn notification_sent(&self, label: &str) {
        self.notifications_sent.get_or_create(&peer(label)).inc();
    }
    pub fn notification_received(&self, label: &str) {
        self.notifications_received
            .get_or_create(&peer(label))
            .inc();
    }
    pub fn malformed(&self, label: &str) {
        self.malformed.get_or_create(&peer(label)).inc();
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "bgp_session_up",
            "1 while the BGP session is Established",
            self.session_up.clone(),
        );
        r.register(
            "bgp_session_state",
            "BGP state of the session (1 Idle, 2 Connect, 3 Active, 4 OpenSent, 5 OpenConfirm, 6 Established)",
            self.session_state.clone(),
        );
        r.register(
            "bgp_announced_prefixes",
            "Prefixes the peer holds from this node",
            self.prefixes.clone(),
        );
        r.register(
            "bgp_updates_sent",
            "UPDATE messages sent",
            self.updates_sent.clone(),
        );
        r.register(
            "bgp_updates_received",
            "UPDATE messages received",
            self.updates_received.clone(),
        );
        r.register(
            "bgp_notifications_sent",
            "NOTIFICATION messages sent",
            self.notifications_sent.clone(),
        );
        r.register(
            "bgp_notifications_received",
            "NOTIFICATION messages received",
            self.notifications_received.clone(),
        );
        r.register(
            "bgp_malformed_messages",
            "Messages from the peer that did not decode (each ends the session with a NOTIFICATION)",
            self.malformed.clone(),
        );
    }

    /// MetalLB's native speaker's set, sharing the series above.
    fn register_metallb(&self, r: &mut Registry) {
        r.register(
            "session_up",
            "BGP session state (1 is up, 0 is down)",
            self.session_up.clone(),
        );
        r.register(
            "updates",
            "Number of BGP UPDATE messages sent",
            self.updates_sent.clone(),
        );
        r.register(
            "announced_prefixes_total",
            "Number of prefixes currently being advertised on the BGP session",
            self.prefixes.clone(),
        );
        r.register(
            "pending_prefixes_total",
            "Number of prefixes that should be advertised on the BGP session",
            self.pending.clone(),
        );
    }
}

pub struct Metrics {
    registry: Registry,
    pub stream_connected: Gauge,
    pub stream_reconnects: Counter,
    pub addresses: Gauge,
    pub bgp: Arc<BgpMetrics>,
    pub bfd: Arc<crate::bfd::runner::Metrics>,
    /// MetalLB's `metallb_speaker_announced{ip,node,protocol,service}`: 1 per Service on each
    /// address this node announces.
    announced: Family<Vec<(&'static str, String)>, Gauge>,
}

impl Metrics {
    /// Registers the stream gauges and the responders' counters.
    pub fn new(l2: &Arc<Counters>) -> Metrics {
        let mut root = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            stream_connected: Gauge::default(),
            stream_reconnects: Counter::default(),
            addresses: Gauge::default(),
            bgp: Arc::new(BgpMetrics::default()),
            bfd: Arc::default(),
            announced: Family::default(),
        };
        m.bfd
            .register_metallb(root.sub_registry_with_prefix("metallb_bfd"));
        root.sub_registry_with_prefix("metallb_speaker").register(
            "announced",
            "Services being announced from this node. This is desired state, it does not guarantee that the routing protocols have converged.",
            m.announced.clone(),
        );
        m.bgp
            .register_metallb(root.sub_registry_with_prefix("metallb_bgp"));
        l2.register_metallb(root.sub_registry_with_prefix("metallb_layer2"));
        let registry = root.sub_registry_with_prefix("ferrolb_announcer");
        m.bgp.register(registry);
        m.bfd.register(registry.sub_registry_with_prefix("bfd"));
        registry.register(
            "stream_connected",
            "1 while the assignment stream to an allocator is open",
            m.stream_connected.clone(),
        );
        registry.register(
            "stream_reconnects",
            "Times the assignment stream was opened again",
            m.stream_reconnects.clone(),
        );
        registry.register(
            "addresses_announced",
            "Addresses this node announces",
            m.addresses.clone(),
        );
        registry.register(
            "arp_requests_received",
            "ARP requests seen by the responders, for any address",
            l2.arp_requests.clone(),
        );
        registry.register(
            "neighbor_solicitations_received",
            "Neighbor solicitations seen by the responders, for any address",
            l2.solicitations.clone(),
        );
        registry.register(
            "replies_sent",
            "ARP replies and neighbor advertisements sent by the userspace responder",
            l2.replies.clone(),
        );
        registry.register(
            "gratuitous_sent",
            "Gratuitous ARP and unsolicited neighbor advertisement rounds sent",
            l2.gratuitous.clone(),
        );
        registry.register(
            "malformed_frames",
            "ARP and NDP frames dropped because they do not decode",
            l2.malformed.clone(),
        );
        registry.register(
            "assignments_refused",
            "Addresses and prefixes from the allocator this node refused to announce, by reason",
            l2.refused.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    /// What the node announces in layer 2 now: each address with its Services.
    pub fn set_layer2(
        &self,
        node: &str,
        services: &std::collections::BTreeMap<std::net::IpAddr, Vec<String>>,
    ) {
        self.addresses.set(services.len() as i64);
        self.announced.clear();
        for (ip, services) in services {
            for service in services {
                self.announced
                    .get_or_create(&vec![
                        ("ip", ip.to_string()),
                        ("node", node.to_string()),
                        ("protocol", "layer2".to_string()),
                        ("service", service.clone()),
                    ])
                    .set(1);
            }
        }
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

    /// A session's figures under ferrolb's names and MetalLB's.
    #[test]
    fn bgp_sessions_under_both_names() {
        let m = Metrics::new(&Arc::default());
        m.bgp.set_state("10.0.0.1:179", State::Established, 2, 3);
        m.bgp.update_sent("10.0.0.1:179");
        let text = m.encode();
        for want in [
            "ferrolb_announcer_bgp_session_up{peer=\"10.0.0.1:179\"} 1",
            "ferrolb_announcer_bgp_announced_prefixes{peer=\"10.0.0.1:179\"} 2",
            "metallb_bgp_session_up{peer=\"10.0.0.1:179\"} 1",
            "metallb_bgp_updates_total{peer=\"10.0.0.1:179\"} 1",
            "metallb_bgp_announced_prefixes_total{peer=\"10.0.0.1:179\"} 2",
            "metallb_bgp_pending_prefixes_total{peer=\"10.0.0.1:179\"} 3",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        m.bgp.forget("10.0.0.1:179");
        assert!(!m.encode().contains("metallb_bgp_session_up{"));
    }

    /// MetalLB's announced gauge: one series per Service and address, gone when the address is.
    #[test]
    fn announced_services_under_metallbs_name() {
        let m = Metrics::new(&Arc::default());
        let ip: std::net::IpAddr = "192.168.1.240".parse().unwrap();
        let shared = vec!["default/dns-tcp".to_string(), "default/dns-udp".to_string()];
        m.set_layer2("n1", &[(ip, shared)].into());
        let text = m.encode();
        for service in ["default/dns-tcp", "default/dns-udp"] {
            let want = format!(
                "metallb_speaker_announced{{ip=\"192.168.1.240\",node=\"n1\",protocol=\"layer2\",service=\"{service}\"}} 1"
            );
            assert!(text.contains(&want), "{want} in\n{text}");
        }
        assert!(
            text.contains("ferrolb_announcer_addresses_announced 1"),
            "{text}"
        );
        m.set_layer2("n1", &Default::default());
        assert!(!m.encode().contains("metallb_speaker_announced{"));
    }
}
