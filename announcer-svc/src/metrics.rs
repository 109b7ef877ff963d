//! Prometheus metrics of the announcer, named `ferrolb_announcer_<what>`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::l2::Counters;

pub struct Metrics {
    registry: Registry,
    pub stream_connected: Gauge,
    pub stream_reconnects: Counter,
    pub addresses: Gauge,
}

impl Metrics {
    /// Registers the stream gauges and the responders' counters.
    pub fn new(l2: &Arc<Counters>) -> Metrics {
        let mut registry = Registry::with_prefix("ferrolb_announcer");
        let m = Metrics {
            registry: Registry::default(),
            stream_connected: Gauge::default(),
            stream_reconnects: Counter::default(),
            addresses: Gauge::default(),
        };
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
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
