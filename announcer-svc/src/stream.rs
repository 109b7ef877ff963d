//! The announcer's side of `AnnouncerService.Announce`: hello, assignments down, heartbeats up;
//! reconnects with backoff to any allocator replica, and never drops what it announces while
//! the allocator is away (fail static).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_common::transport::{self, ClientSecurity, error_chain};
use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::allocator_message::Kind as Down;
use ferrolb_proto::v1::announcer_message::Kind as Up;
use ferrolb_proto::v1::announcer_service_client::AnnouncerServiceClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::agent::{Status, Update};
use crate::bgp::{self, rib::Route, speaker::PeerSpec, wire::Prefix};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Allocator replicas, tried in turn.
    pub allocators: Vec<String>,
    pub cluster: String,
    pub node: String,
    /// Mutual TLS that accepts only the allocator's identity.
    pub security: ClientSecurity,
    pub connect_timeout: Duration,
    pub max_backoff: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Where the stream's messages go: the layer-2 part to the agent, the BGP part to the BGP
/// speakers. The one place that splits them.
#[derive(Clone)]
pub struct Dispatch {
    pub l2: mpsc::Sender<Update>,
    pub bgp: mpsc::Sender<bgp::Update>,
}

impl Dispatch {
    /// Sends a message's parts to each; false when either has stopped.
    async fn send(&self, a: pb::Assignments, fresh_session: bool) -> bool {
        let span = tracing::info_span!(
            "assignments",
            version = a.version,
            set = a.set.len(),
            unset = a.unset.len(),
            snapshot = a.snapshot
        );
        ferrolb_common::telemetry::follow(&span, &a.traceparent);
        let (mut l2, mut bgp) = update(a, fresh_session);
        let origin = ferrolb_common::telemetry::Origin::of(&span);
        l2.origin = origin.clone();
        if let Some(b) = bgp.as_mut() {
            b.origin = origin;
        }
        if let Some(b) = bgp
            && self.bgp.send(b).await.is_err()
        {
            return false;
        }
        self.l2.send(l2).await.is_ok()
    }

    fn is_closed(&self) -> bool {
        self.l2.is_closed() || self.bgp.is_closed()
    }
}

/// Runs the stream until the agent or the BGP speakers stop.
pub async fn run(
    settings: Settings,
    updates: Dispatch,
    mut status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut turn = 0usize;
    loop {
        let target = &settings.allocators[turn % settings.allocators.len()];
        turn += 1;
        let outcome = session(&settings, target, &updates, &mut status, &metrics).await;
        metrics.stream_connected.set(0);
        if updates.is_closed() {
            return;
        }
        match outcome {
            Ok(why) => {
                tracing::warn!(
                    allocator = target,
                    reason = why,
                    "stream ended; announcing what we had"
                );
                backoff = MIN_BACKOFF;
            }
            Err(e) => {
                tracing::warn!(allocator = target, error = e, retry_in = ?backoff,
                    "allocator unreachable; announcing what we had");
            }
        }
        metrics.stream_reconnects.inc();
        // Wait, but come back at once when an interface comes up again: the allocator is likely
        // reachable through it.
        let was_ready = status.borrow().ready;
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                r = status.changed() => {
                    if r.is_err() { return; }
                    if !was_ready && status.borrow().ready { break; }
                }
            }
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

fn status_message(s: &Status) -> pb::AnnouncerMessage {
    pb::AnnouncerMessage {
        kind: Some(Up::Status(pb::AnnouncerStatus {
            version: s.version,
            announcing: s.announcing.iter().map(IpAddr::to_string).collect(),
            ready: s.ready,
            interfaces: interfaces(s),
        })),
    }
}

fn interfaces(s: &Status) -> Vec<pb::Interface> {
    s.interfaces
        .iter()
        .map(|(name, mac, eligible)| pb::Interface {
            name: name.clone(),
            mac: mac.clone(),
            eligible: *eligible,
        })
        .collect()
}

/// An assignments message as the layer-2 agent's update and the BGP speakers' (None when it
/// changes nothing of BGP); malformed addresses are dropped and logged.
fn update(a: pb::Assignments, fresh_session: bool) -> (Update, Option<bgp::Update>) {
    let parse = |s: &str| match s.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            tracing::warn!(
                address = s,
                "allocator sent an address that does not parse; ignored"
            );
            None
        }
    };
    let changes = bgp_changes(
        a.sessions_set,
        a.sessions_unset,
        a.routes_set,
        a.routes_unset,
    );
    let bgp = (a.snapshot || !changes.is_empty()).then_some(bgp::Update {
        changes,
        snapshot: a.snapshot,
        origin: Default::default(),
    });
    let l2 = Update {
        fresh_session,
        version: a.version,
        snapshot: a.snapshot,
        services: a
            .set
            .iter()
            .filter_map(|s| parse(&s.ip).map(|ip| (ip, s.services.clone())))
            .collect(),
        set: a
            .set
            .into_iter()
            .filter_map(|s| s.ip.parse().ok().map(|ip| (ip, s.interfaces)))
            .collect(),
        unset: a.unset.iter().filter_map(|s| parse(s)).collect(),
        origin: Default::default(),
    };
    (l2, bgp)
}

/// The BGP part of an assignments message; what does not parse is dropped and logged.
fn bgp_changes(
    sessions_set: Vec<pb::BgpSession>,
    sessions_unset: Vec<String>,
    routes_set: Vec<pb::BgpRoute>,
    routes_unset: Vec<String>,
) -> bgp::Changes {
    bgp::Changes {
        sessions_set: sessions_set
            .into_iter()
            .filter_map(|s| {
                let name = s.name.clone();
                peer_spec(s)
                    .map_err(|e| tracing::warn!(peer = name, error = e, "BGP peer ignored"))
                    .ok()
            })
            .collect(),
        sessions_unset,
        routes_set: routes_set.into_iter().filter_map(routes).collect(),
        routes_unset: routes_unset.iter().filter_map(|s| prefix(s)).collect(),
    }
}

fn prefix(s: &str) -> Option<Prefix> {
    match s.parse::<Prefix>() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(
                error = e,
                "allocator sent a prefix that does not parse; ignored"
            );
            None
        }
    }
}

/// A BGP session as the speaker runs it.
fn peer_spec(s: pb::BgpSession) -> Result<PeerSpec, String> {
    let ip = |field: &str, v: &str| {
        v.parse::<IpAddr>()
            .map_err(|_| format!("{field} {v:?} is not an address"))
    };
    Ok(PeerSpec {
        address: ip("peer address", &s.peer_address)?,
        port: u16::try_from(s.peer_port).map_err(|_| "peer port out of range".to_string())?,
        source: if s.source_address.is_empty() {
            None
        } else {
            Some(ip("source address", &s.source_address)?)
        },
        my_as: s.my_asn,
        peer_as: s.peer_asn,
        router_id: if s.router_id.is_empty() {
            None
        } else {
            Some(
                s.router_id
                    .parse()
                    .map_err(|_| format!("router ID {:?} is not IPv4", s.router_id))?,
            )
        },
        hold_time: u16::try_from(s.hold_time).map_err(|_| "hold time out of range".to_string())?,
        keepalive: s.keepalive_time.and_then(|k| u16::try_from(k).ok()),
        password: (!s.password.is_empty()).then(|| ferrolb_common::Secret::new(s.password)),
        ebgp_multihop: s.ebgp_multihop,
        graceful_restart: s.graceful_restart,
        bfd: s.bfd.map(|b| bfd_profile(&b)).transpose()?,
        name: s.name,
    })
}

fn bfd_profile(b: &pb::BfdProfile) -> Result<crate::bfd::Profile, String> {
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    let byte = |what: &str, v: u32| {
        u8::try_from(v)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("BFD {what} {v} out of range"))
    };
    Ok(crate::bfd::Profile {
        config: crate::bfd::session::Config {
            desired_min_tx: ms(b.transmit_interval_ms.max(10)),
            required_min_rx: ms(b.receive_interval_ms.max(10)),
            detect_mult: byte("detect multiplier", b.detect_multiplier)?,
            passive: b.passive_mode,
        },
        minimum_ttl: byte("minimum TTL", b.minimum_ttl)?,
    })
}

/// A prefix's route to each of its peers.
fn routes(r: pb::BgpRoute) -> Option<(Prefix, BTreeMap<String, Route>)> {
    let p = prefix(&r.prefix)?;
    let peers = r
        .peers
        .into_iter()
        .map(|pr| {
            let route = Route {
                communities: pr.communities,
                large_communities: pr
                    .large_communities
                    .iter()
                    .map(|l| (l.global_admin, l.local_data1, l.local_data2))
                    .collect(),
                local_pref: (pr.local_pref != 0).then_some(pr.local_pref),
            };
            (pr.peer, route)
        })
        .collect();
    Some((p, peers))
}

/// Connects, says hello with what the node announces now, and reads the first assignments
/// (they carry the timing).
async fn open(
    settings: &Settings,
    target: &str,
    status: &mut watch::Receiver<Status>,
) -> Result<
    (
        mpsc::Sender<pb::AnnouncerMessage>,
        tonic::Streaming<pb::AllocatorMessage>,
        pb::Assignments,
    ),
    String,
> {
    let endpoint =
        transport::endpoint(target, &settings.security)?.connect_timeout(settings.connect_timeout);
    let channel = transport::connect(endpoint, &settings.security)
        .await
        .map_err(|e| format!("connect: {}", error_chain(&e)))?;
    let mut client = AnnouncerServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let now = status.borrow_and_update().clone();
    let hello = pb::AnnouncerMessage {
        kind: Some(Up::Hello(pb::Hello {
            cluster: settings.cluster.clone(),
            node: settings.node.clone(),
            interfaces: interfaces(&now),
            capabilities: vec!["l2".into(), "bgp".into()],
            version: now.version,
            announcing: now.announcing.iter().map(IpAddr::to_string).collect(),
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| "stream closed".to_string())?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let ClientSecurity::DevPlaintext = settings.security {
        let caller = format!("cluster/{}/node/{}", settings.cluster, settings.node)
            .parse()
            .map_err(|_| format!("node {:?} is not a valid header value", settings.node))?;
        req.metadata_mut().insert("x-ferrolb-caller", caller);
    }
    let mut inbound = tokio::time::timeout(settings.connect_timeout * 2, client.announce(req))
        .await
        .map_err(|_| "no answer to the hello".to_string())?
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let first = tokio::time::timeout(settings.connect_timeout * 2, inbound.message())
        .await
        .map_err(|_| "no assignments after the hello".to_string())?
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    let Some(pb::AllocatorMessage {
        kind: Some(Down::Assignments(first)),
    }) = first
    else {
        return Err("the allocator did not open with assignments".into());
    };
    Ok((tx, inbound, first))
}

/// One connection: returns why it ended (Ok) or why it could not start (Err).
async fn session(
    settings: &Settings,
    target: &str,
    updates: &Dispatch,
    status: &mut watch::Receiver<Status>,
    metrics: &Metrics,
) -> Result<&'static str, String> {
    let (tx, mut inbound, first) = open(settings, target, status).await?;
    let heartbeat = Duration::from_millis(u64::from(first.heartbeat_interval_ms.max(10)));
    let silence = Duration::from_millis(u64::from(first.allocator_timeout_ms.max(100)));
    tracing::info!(
        allocator = target,
        version = first.version,
        snapshot = first.snapshot,
        addresses = first.set.len(),
        "stream open"
    );
    metrics.stream_connected.set(1);
    if !updates.send(first, true).await {
        return Ok("stopping");
    }
    let mut tick = tokio::time::interval(heartbeat);
    loop {
        tokio::select! {
            msg = tokio::time::timeout(silence, inbound.message()) => match msg {
                Err(_) => return Ok("allocator silent"),
                Ok(Err(s)) => {
                    tracing::debug!(code = ?s.code(), message = s.message(), "stream error");
                    return Ok("stream broken");
                }
                Ok(Ok(None)) => return Ok("allocator closed the stream"),
                Ok(Ok(Some(m))) => match m.kind {
                    Some(Down::Assignments(a)) => {
                        if !updates.send(a, false).await {
                            return Ok("stopping");
                        }
                    }
                    Some(Down::Ping(_)) | None => {}
                },
            },
            _ = tick.tick() => {
                let msg = status_message(&status.borrow_and_update());
                if tx.send(msg).await.is_err() {
                    return Ok("stream closed");
                }
            }
            r = status.changed() => {
                if r.is_err() {
                    return Ok("stopping");
                }
                // Readiness and what is announced travel at once, not at the next beat.
                let msg = status_message(&status.borrow_and_update());
                if tx.send(msg).await.is_err() {
                    return Ok("stream closed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str, peer: &str) -> pb::BgpSession {
        pb::BgpSession {
            name: name.into(),
            peer_address: peer.into(),
            peer_port: 179,
            my_asn: 64512,
            peer_asn: 64513,
            hold_time: 90,
            ..pb::BgpSession::default()
        }
    }

    #[test]
    fn a_message_splits_into_its_layer_2_and_bgp_parts_and_drops_what_does_not_parse() {
        let a = pb::Assignments {
            version: 7,
            set: vec![
                pb::L2Assignment {
                    ip: "192.168.1.240".into(),
                    interfaces: vec!["eth0".into()],
                    services: vec!["default/web".into()],
                },
                pb::L2Assignment {
                    ip: "not-an-address".into(),
                    ..pb::L2Assignment::default()
                },
            ],
            unset: vec!["192.168.1.241".into(), "nope".into()],
            sessions_set: vec![session("tor", "10.0.0.1"), session("bad", "10.0.0")],
            routes_set: vec![
                pb::BgpRoute {
                    prefix: "203.0.113.10/32".into(),
                    peers: vec![pb::BgpPeerRoute {
                        peer: "tor".into(),
                        communities: vec![0xFDE8_0001],
                        local_pref: 0,
                        ..pb::BgpPeerRoute::default()
                    }],
                },
                pb::BgpRoute {
                    prefix: "203.0.113.10/33".into(),
                    peers: vec![],
                },
            ],
            ..pb::Assignments::default()
        };
        let (l2, bgp) = update(a, true);
        assert!(l2.fresh_session && !l2.snapshot);
        assert_eq!(l2.version, 7);
        assert_eq!(
            l2.set,
            [("192.168.1.240".parse().unwrap(), vec!["eth0".to_string()])]
        );
        assert_eq!(l2.unset, ["192.168.1.241".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            l2.services,
            [(
                "192.168.1.240".parse().unwrap(),
                vec!["default/web".to_string()]
            )]
            .into()
        );
        let bgp = bgp.expect("a BGP part");
        let names: Vec<&str> = bgp
            .changes
            .sessions_set
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["tor"]);
        assert_eq!(bgp.changes.routes_set.len(), 1);
        let (prefix, peers) = &bgp.changes.routes_set[0];
        assert_eq!(prefix.to_string(), "203.0.113.10/32");
        assert_eq!(peers["tor"].communities, [0xFDE8_0001]);
        assert_eq!(peers["tor"].local_pref, None);
    }

    #[test]
    fn the_bgp_speakers_hear_only_of_bgp_changes_and_snapshots() {
        let changes_l2_only = pb::Assignments {
            set: vec![pb::L2Assignment {
                ip: "192.168.1.240".into(),
                ..pb::L2Assignment::default()
            }],
            ..pb::Assignments::default()
        };
        assert!(update(changes_l2_only, false).1.is_none());
        let snapshot = pb::Assignments {
            snapshot: true,
            ..pb::Assignments::default()
        };
        let (_, bgp) = update(snapshot, false);
        assert!(bgp.is_some_and(|b| b.snapshot && b.changes.is_empty()));
    }
}
