//! The layer-2 responder of one interface: answers ARP requests and neighbor solicitations for
//! the addresses this node announces, with the interface's own MAC, and sends gratuitous ARP and
//! unsolicited neighbor advertisements when an address is gained.
//!
//! One blocking thread per interface owns the raw socket and the set of addresses it answers
//! for; the control loop hands it commands over a channel, which it reads between frames (the
//! socket's read timeout bounds how late a change is seen). Frames that do not decode are
//! dropped and counted.
//!
//! When the kernel answers for an address (the announcer bound it to the interface), the
//! responder only announces it; it answers for the addresses it is told to.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender, NetworkInterface};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::BareCounter;
use crate::packet::arp::{self, Arp};
use crate::packet::ndp::{Message, Ndp};
use crate::packet::{Mac, arp::ETHERTYPE as ARP, ndp::ETHERTYPE as IPV6};

/// How long the responder blocks on the socket before it looks for new addresses.
const POLL: Duration = Duration::from_millis(50);

/// What the responders did, for metrics (shared by every interface's responder).
#[derive(Debug, Default)]
pub struct Counters {
    /// ARP requests and neighbor solicitations seen (for any address).
    pub arp_requests: Counter,
    pub solicitations: Counter,
    pub replies: Counter,
    pub gratuitous: Counter,
    /// ARP or NDP frames that did not decode.
    pub malformed: Counter,
    /// Assignments refused by the node's own policy, by reason.
    pub refused: Family<RefusalLabels, Counter>,
    /// MetalLB's per-address counters: requests for an address this node owns, the answers
    /// the userspace responder sent, and gratuitous rounds.
    pub requests_for: Family<IpLabel, BareCounter>,
    pub responses_for: Family<IpLabel, BareCounter>,
    pub gratuitous_for: Family<IpLabel, BareCounter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct IpLabel {
    pub ip: String,
}

fn ip_label(ip: IpAddr) -> IpLabel {
    IpLabel { ip: ip.to_string() }
}

impl Counters {
    /// `metallb_layer2_requests_received`, `…_responses_sent`, `…_gratuitous_sent`, by `ip`.
    pub fn register_metallb(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "requests_received",
            "Number of layer2 requests received for owned IPs",
            self.requests_for.clone(),
        );
        r.register(
            "responses_sent",
            "Number of layer2 responses sent for owned IPs in response to requests",
            self.responses_for.clone(),
        );
        r.register(
            "gratuitous_sent",
            "Number of gratuitous layer2 packets sent for owned IPs as a result of failovers",
            self.gratuitous_for.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: String,
}

/// The interface a responder serves.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
    raw: NetworkInterface,
}

impl Link {
    pub fn by_name(name: &str) -> io::Result<Link> {
        let raw = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no interface {name:?}"))
            })?;
        Link::new(raw).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} has no MAC address"),
            )
        })
    }

    /// An Ethernet-like interface (one with a MAC address).
    pub fn new(raw: NetworkInterface) -> Option<Link> {
        let mac = raw.mac.map(|m| Mac(m.octets()))?;
        Some(Link {
            name: raw.name.clone(),
            index: raw.index,
            mac,
            raw,
        })
    }

    /// A raw socket on the interface: every frame in, frames out as they are.
    pub fn channel(
        &self,
        promiscuous: bool,
        read_timeout: Duration,
    ) -> io::Result<(Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>)> {
        let config = Config {
            read_timeout: Some(read_timeout),
            promiscuous,
            ..Config::default()
        };
        match pnet_datalink::channel(&self.raw, config)? {
            Channel::Ethernet(tx, rx) => Ok((tx, rx)),
            _ => Err(io::Error::other("not an Ethernet channel")),
        }
    }

    /// Sends frames as they are (for tools and tests).
    pub fn send_raw(&self, frames: &[Vec<u8>]) -> io::Result<()> {
        let (mut tx, _) = self.channel(false, POLL)?;
        for f in frames {
            if let Some(r) = tx.send_to(f, None) {
                r?;
            }
        }
        Ok(())
    }

    /// The interface flags (`IFF_*`) when it was read.
    pub fn flags(&self) -> u32 {
        self.raw.flags
    }
}

/// What the control loop tells a responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The addresses to answer ARP and NDP for, and those to count requests for, from now on.
    Answer(Addresses),
    /// Send a gratuitous ARP or unsolicited NA for this address now, for the decision named
    /// (traces).
    Announce(IpAddr, ferrolb_common::telemetry::Origin),
}

/// What a responder does for which address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Answered by the userspace responder.
    pub answer: BTreeSet<IpAddr>,
    /// Every address this node announces (the kernel answers those bound to it): requests for
    /// them are counted.
    pub served: BTreeSet<IpAddr>,
}

/// Serves `link` until the sender side of `commands` is dropped.
///
/// Solicitations go to each address's solicited-node group: the caller joins the groups of the
/// IPv6 addresses the responder answers for, or asks for `promiscuous` mode.
pub fn serve(
    link: &Link,
    promiscuous: bool,
    commands: Receiver<Command>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    // The first socket must open (else the caller hears why); later ones are retried, since a
    // socket fails for as long as its link is down and works again once it is up.
    let mut socket = Some(link.channel(promiscuous, POLL)?);
    let mut owned = Addresses::default();
    loop {
        let Some((tx, rx)) = socket.as_mut() else {
            std::thread::sleep(POLL);
            match commands.try_recv() {
                Ok(Command::Answer(next)) => owned = next,
                Ok(Command::Announce(..)) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
            socket = link.channel(promiscuous, POLL).ok();
            continue;
        };
        loop {
            match commands.try_recv() {
                Ok(Command::Answer(next)) => owned = next,
                Ok(Command::Announce(ip, origin)) => {
                    let span = origin.child(
                        || tracing::info_span!("gratuitous", address = %ip, interface = link.name),
                    );
                    span.in_scope(|| announce(&mut **tx, link, ip, &counters));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        match rx.next() {
            Ok(frame) => {
                if let Some(reply) = answer(frame, link.mac, &owned, &counters) {
                    send(&mut **tx, &reply);
                    counters.replies.inc();
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                tracing::debug!(interface = link.name, error = %e, "socket failed; opening it again");
                socket = None;
            }
        }
    }
}

fn send(tx: &mut dyn DataLinkSender, frame: &[u8]) {
    if let Some(Err(e)) = tx.send_to(frame, None) {
        tracing::warn!(error = %e, "sending a frame failed");
    }
}

/// The reply a frame calls for, if any. Pure: the tests drive it with captured frames.
pub fn answer(frame: &[u8], mac: Mac, owned: &Addresses, counters: &Counters) -> Option<Vec<u8>> {
    // MetalLB's per-address counts: a request for an address of this node, and an answer.
    let asked = |ip: IpAddr| {
        if owned.served.contains(&ip) || owned.answer.contains(&ip) {
            counters.requests_for.get_or_create(&ip_label(ip)).inc();
        }
        let answered = owned.answer.contains(&ip);
        if answered {
            counters.responses_for.get_or_create(&ip_label(ip)).inc();
        }
        answered
    };
    if frame.len() < 14 {
        return None;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ARP => {
            let req = match Arp::decode(frame) {
                Ok(r) => r,
                Err(_) => {
                    counters.malformed.inc();
                    return None;
                }
            };
            if req.operation == arp::Operation::Request {
                counters.arp_requests.inc();
            }
            let for_us = req.eth_dst == Mac::BROADCAST || req.eth_dst == mac;
            (req.operation == arp::Operation::Request && for_us && asked(IpAddr::V4(req.target_ip)))
                .then(|| req.reply(mac).encode())
        }
        IPV6 => {
            // Only ICMPv6 neighbor messages concern us; other IPv6 traffic is not ours to judge.
            if frame.len() < 14 + 41 || frame[14 + 6] != 58 || !matches!(frame[14 + 40], 135 | 136)
            {
                return None;
            }
            let ns = match Ndp::decode(frame) {
                Ok(n) => n,
                Err(_) => {
                    counters.malformed.inc();
                    return None;
                }
            };
            if matches!(ns.message, Message::Solicitation { .. }) {
                counters.solicitations.inc();
            }
            // As MetalLB: only solicitations that say where to answer (duplicate address
            // detection probes from :: carry no source address and are left alone).
            let Message::Solicitation {
                target,
                source_lla: Some(asker),
            } = ns.message
            else {
                return None;
            };
            asked(IpAddr::V6(target)).then(|| {
                Ndp {
                    eth_dst: asker,
                    eth_src: mac,
                    // From the target itself, as the kernel answers for its own addresses;
                    // clients such as ndisc6 match the answer by it.
                    src: target,
                    dst: ns.src,
                    message: Message::Advertisement {
                        router: false,
                        solicited: true,
                        override_: true,
                        target,
                        target_lla: Some(mac),
                    },
                }
                .encode()
            })
        }
        _ => None,
    }
}

/// Tells the LAN that `ip` is here now: a gratuitous ARP request and reply, or an unsolicited
/// neighbor advertisement with Override.
pub fn announce(tx: &mut dyn DataLinkSender, link: &Link, ip: IpAddr, counters: &Counters) {
    match ip {
        IpAddr::V4(v4) => {
            for op in [arp::Operation::Request, arp::Operation::Reply] {
                send(tx, &Arp::gratuitous(v4, link.mac, op).encode());
            }
        }
        IpAddr::V6(v6) => {
            send(tx, &Ndp::unsolicited(v6, link.mac, v6).encode());
        }
    }
    counters.gratuitous.inc();
    counters.gratuitous_for.get_or_create(&ip_label(ip)).inc();
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const ME: Mac = Mac([2, 0xfa, 0, 0, 0, 0x11]);
    const ASKER: Mac = Mac([2, 0xfa, 0, 0, 1, 0]);

    fn owned() -> Addresses {
        let set: BTreeSet<IpAddr> = ["10.250.0.200", "fd00:250::200"]
            .iter()
            .map(|s| s.parse().expect("test address"))
            .collect();
        Addresses {
            answer: set.clone(),
            served: set,
        }
    }

    /// MetalLB's counters, by address: requests for the node's addresses whoever answers
    /// them (the kernel, by default), answers only where the responder sent them.
    #[test]
    fn requests_and_answers_are_counted_by_address() {
        let c = Counters::default();
        let kernel = Addresses {
            answer: BTreeSet::new(),
            served: owned().served,
        };
        assert_eq!(answer(&who_has("10.250.0.200"), ME, &kernel, &c), None);
        assert!(answer(&who_has("10.250.0.200"), ME, &owned(), &c).is_some());
        assert_eq!(answer(&who_has("10.250.0.9"), ME, &owned(), &c), None);
        let label = ip_label("10.250.0.200".parse().expect("address"));
        assert_eq!(c.requests_for.get_or_create(&label).get(), 2);
        assert_eq!(c.responses_for.get_or_create(&label).get(), 1);
        let mut r = prometheus_client::registry::Registry::default();
        c.register_metallb(r.sub_registry_with_prefix("metallb_layer2"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encodes");
        for want in [
            "# TYPE metallb_layer2_requests_received unknown",
            "metallb_layer2_requests_received{ip=\"10.250.0.200\"} 2",
            "metallb_layer2_responses_sent{ip=\"10.250.0.200\"} 1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert!(!text.contains("10.250.0.9"), "{text}");
    }

    fn who_has(target: &str) -> Vec<u8> {
        Arp {
            eth_dst: Mac::BROADCAST,
            eth_src: ASKER,
            operation: arp::Operation::Request,
            sender_mac: ASKER,
            sender_ip: Ipv4Addr::new(10, 250, 0, 100),
            target_mac: Mac::ZERO,
            target_ip: target.parse().expect("test address"),
        }
        .encode()
    }

    fn solicit(target: &str, source_lla: Option<Mac>, src: &str) -> Vec<u8> {
        let target: Ipv6Addr = target.parse().expect("test address");
        let group = crate::packet::ndp::solicited_node(target);
        Ndp {
            eth_dst: crate::packet::ndp::multicast_mac(group),
            eth_src: ASKER,
            src: src.parse().expect("test address"),
            dst: group,
            message: Message::Solicitation { target, source_lla },
        }
        .encode()
    }

    #[test]
    fn answers_only_for_owned_addresses() {
        let c = Counters::default();
        let reply = answer(&who_has("10.250.0.200"), ME, &owned(), &c).expect("a reply");
        let reply = Arp::decode(&reply).expect("valid");
        assert_eq!((reply.sender_mac, reply.eth_dst), (ME, ASKER));
        assert_eq!(answer(&who_has("10.250.0.201"), ME, &owned(), &c), None);

        let asked = solicit("fd00:250::200", Some(ASKER), "fe80::1");
        let na = answer(&asked, ME, &owned(), &c).expect("an advertisement");
        let na = Ndp::decode(&na).expect("valid");
        let target: Ipv6Addr = "fd00:250::200".parse().expect("ip");
        let asker_ip: Ipv6Addr = "fe80::1".parse().expect("ip");
        assert_eq!((na.src, na.dst, na.eth_dst), (target, asker_ip, ASKER));
        assert!(matches!(
            na.message,
            Message::Advertisement {
                solicited: true,
                override_: true,
                target_lla: Some(ME),
                ..
            }
        ));
        // Duplicate address detection probes (from ::, no source address) are left alone.
        let dad = solicit("fd00:250::200", None, "::");
        assert_eq!(answer(&dad, ME, &owned(), &c), None);
        let other = solicit("fd00:250::201", Some(ASKER), "fe80::1");
        assert_eq!(answer(&other, ME, &owned(), &c), None);
        assert_eq!(c.malformed.get(), 0);
    }

    /// The same input as the `frame` fuzz target, from mutations of real requests: the
    /// responder's decision returns, whatever the bytes.
    #[test]
    fn answer_never_panics() {
        let c = Counters::default();
        let seeds = [
            who_has("10.250.0.200"),
            solicit("fd00:250::200", Some(ASKER), "fe80::1"),
        ];
        for seed in &seeds {
            for f in crate::packet::mutations(seed, 20_000) {
                let _ = answer(&f, ME, &owned(), &c);
            }
        }
        assert!(
            c.malformed.get() > 0,
            "mutations should produce malformed frames"
        );
    }

    #[test]
    fn malformed_frames_are_counted() {
        let c = Counters::default();
        let mut bad = who_has("10.250.0.200");
        bad[21] = 7; // unknown ARP operation
        assert_eq!(answer(&bad, ME, &owned(), &c), None);
        let mut bad = solicit("fd00:250::200", Some(ASKER), "fe80::1");
        bad[60] ^= 0xff; // checksum no longer matches
        assert_eq!(answer(&bad, ME, &owned(), &c), None);
        assert_eq!(answer(&[0u8; 3], ME, &owned(), &c), None);
        assert_eq!(c.malformed.get(), 2);
    }
}
