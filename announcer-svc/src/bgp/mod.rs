//! BGP mode: one session per BGPPeer that selects this node, each advertising the prefixes the
//! allocator assigned to it for that peer.

pub mod fsm;
pub mod rib;
pub mod socket;
pub mod speaker;
pub mod wire;

use crate::bfd;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::bind::Binder;
use crate::defense;

use crate::metrics::BgpMetrics;
use rib::Route;
use speaker::{Command, Common, PeerSpec, Session};
use wire::Prefix;

/// A router ID for sessions that have no IPv4 address to take it from: a 32-bit FNV-1a hash of
/// the node name, so that it stays the same across restarts.
pub fn fallback_router_id(node: &str) -> std::net::Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in node.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    std::net::Ipv4Addr::from(h.max(1))
}

/// The BGP part of a change from the allocator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub sessions_set: Vec<PeerSpec>,
    pub sessions_unset: Vec<String>,
    /// Each replaces what was held for its prefix: peer name → route.
    pub routes_set: Vec<(Prefix, BTreeMap<String, Route>)>,
    pub routes_unset: Vec<Prefix>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// Routes to set and prefixes to unset for one session.
type RouteDiff = (Vec<(Prefix, Route)>, Vec<Prefix>);

/// A change of the node's BGP assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub changes: Changes,
    /// `changes` holds everything: what it lacks goes.
    pub snapshot: bool,
    /// The allocator's decision this carries out (traces).
    pub origin: ferrolb_common::telemetry::Origin,
}

/// Runs the node's sessions and hands each its routes.
pub struct Manager {
    common: Common,
    metrics: Arc<BgpMetrics>,
    sessions: BTreeMap<String, Session>,
    routes: BTreeMap<Prefix, BTreeMap<String, Route>>,
    bfd: Bfd,
}

/// The node's BFD sessions, one per BGP session with a profile: started with the first.
struct Bfd {
    running: Option<mpsc::UnboundedSender<bfd::runner::Command>>,
    changes: mpsc::UnboundedReceiver<bfd::runner::Change>,
    report: mpsc::UnboundedSender<bfd::runner::Change>,
    metrics: Arc<bfd::runner::Metrics>,
    /// Where the runner listens: single hop and multihop, IPv4.
    listen: Vec<std::net::SocketAddr>,
}

impl Bfd {
    fn new(metrics: Arc<bfd::runner::Metrics>) -> Bfd {
        let (report, changes) = mpsc::unbounded_channel();
        let any = std::net::Ipv4Addr::UNSPECIFIED.into();
        Bfd {
            running: None,
            changes,
            report,
            metrics,
            listen: vec![
                std::net::SocketAddr::new(any, bfd::SINGLE_HOP_PORT),
                std::net::SocketAddr::new(any, bfd::MULTIHOP_PORT),
            ],
        }
    }

    /// Runs (or changes) the BFD session of `spec`, or ends it when the peer has no profile.
    fn follow(&mut self, spec: &PeerSpec) {
        let Some(profile) = spec.bfd else {
            self.end(&spec.name);
            return;
        };
        let peer = bfd::runner::Peer {
            address: spec.address,
            port: if spec.ebgp_multihop {
                bfd::MULTIHOP_PORT
            } else {
                bfd::SINGLE_HOP_PORT
            },
            source: spec.source,
            config: profile.config,
            multihop: spec.ebgp_multihop,
            minimum_ttl: profile.minimum_ttl,
        };
        let commands = self.running.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let (listen, report, metrics) = (
                self.listen.clone(),
                self.report.clone(),
                Arc::clone(&self.metrics),
            );
            tokio::spawn(async move {
                if let Err(e) = bfd::runner::run(listen, rx, report, metrics).await {
                    tracing::error!(error = %e, "BFD cannot run: its sessions stay down");
                }
            });
            tx
        });
        let _ = commands.send(bfd::runner::Command::Set(spec.name.clone(), peer));
    }

    fn end(&self, name: &str) {
        if let Some(commands) = &self.running {
            let _ = commands.send(bfd::runner::Command::Remove(name.to_string()));
        }
    }
}

impl Manager {
    pub fn new(
        common: Common,
        metrics: Arc<BgpMetrics>,
        bfd_metrics: Arc<bfd::runner::Metrics>,
    ) -> Manager {
        Manager {
            common,
            metrics,
            sessions: BTreeMap::new(),
            routes: BTreeMap::new(),
            bfd: Bfd::new(bfd_metrics),
        }
    }

    /// A BFD session changed: its BGP session goes down with it, and up again after it.
    fn bfd_changed(&self, c: bfd::runner::Change) {
        let up = match (c.from, c.to) {
            (_, bfd::packet::State::Up) => true,
            (bfd::packet::State::Up, _) => false,
            _ => return,
        };
        if let Some(s) = self.sessions.get(&c.name) {
            let _ = s.commands.send(Command::Bfd { up });
        }
    }

    /// Runs until `updates` closes, then ends every session. A route the node's policy refuses
    /// (`guard`) is dropped first; what ferrolb bound itself (`binder`, with the kernel
    /// answering) is not the node's own address.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<Update>,
        guard: defense::Guard,
        binder: Option<Binder>,
    ) {
        loop {
            let mut u = tokio::select! {
                u = updates.recv() => match u {
                    Some(u) => u,
                    None => break,
                },
                Some(c) = self.bfd.changes.recv() => {
                    self.bfd_changed(c);
                    continue;
                }
            };
            let ours: BTreeSet<IpAddr> = match &binder {
                Some(b) => match b.bound().await {
                    Ok(bound) => bound.into_iter().map(|(_, ip)| ip).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read ferrolb's bindings; routes kept as they were");
                        continue;
                    }
                },
                None => BTreeSet::new(),
            };
            let own = guard.own_addresses(&ours);
            u.changes
                .routes_set
                .retain(|(p, _)| !guard.refused("prefix", guard.policy.check_prefix(p, &own), p));
            let span = u
                .origin
                .child(|| tracing::info_span!("bgp", snapshot = u.snapshot));
            span.in_scope(|| self.apply(u.changes, u.snapshot));
        }
        self.stop().await;
        tracing::info!("every BGP session ended");
    }

    /// Sessions running now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Applies a change; `snapshot` means it holds everything (what it lacks goes).
    pub fn apply(&mut self, c: Changes, snapshot: bool) {
        let mut unset_sessions: BTreeSet<String> = c.sessions_unset.into_iter().collect();
        let mut routes_unset = c.routes_unset;
        if snapshot {
            let keep: BTreeSet<&String> = c.sessions_set.iter().map(|s| &s.name).collect();
            unset_sessions.extend(self.sessions.keys().filter(|n| !keep.contains(n)).cloned());
            let keep: BTreeSet<&Prefix> = c.routes_set.iter().map(|(p, _)| p).collect();
            routes_unset.extend(self.routes.keys().filter(|p| !keep.contains(p)).copied());
        }
        for name in &unset_sessions {
            if let Some(s) = self.sessions.remove(name) {
                tracing::info!(peer = name, "BGP peer no longer selects this node");
                let _ = s.commands.send(Command::Stop { graceful: false });
                self.bfd.end(name);
            }
        }
        // Per existing session: what to set and unset.
        let mut per_peer: BTreeMap<String, RouteDiff> = BTreeMap::new();
        for p in routes_unset {
            if let Some(old) = self.routes.remove(&p) {
                for peer in old.into_keys() {
                    per_peer.entry(peer).or_default().1.push(p);
                }
            }
        }
        for (p, want) in c.routes_set {
            let old = self.routes.remove(&p).unwrap_or_default();
            for peer in old.keys().filter(|peer| !want.contains_key(*peer)) {
                per_peer.entry(peer.clone()).or_default().1.push(p);
            }
            for (peer, r) in &want {
                if old.get(peer) != Some(r) {
                    per_peer
                        .entry(peer.clone())
                        .or_default()
                        .0
                        .push((p, r.clone()));
                }
            }
            self.routes.insert(p, want);
        }
        let mut fresh = BTreeSet::new();
        for spec in c.sessions_set {
            self.bfd.follow(&spec);
            if let Some(s) = self.sessions.get_mut(&spec.name)
                && s.spec.same_session(&spec)
            {
                // Only the BFD profile changed, if anything: renegotiated, the BGP session kept.
                s.spec = spec;
                continue;
            }
            if let Some(old) = self.sessions.remove(&spec.name) {
                tracing::info!(
                    peer = spec.name,
                    "BGP peer changed; starting its session again"
                );
                let _ = old.commands.send(Command::Stop { graceful: false });
            }
            fresh.insert(spec.name.clone());
            let s = speaker::spawn(spec, &self.common, Arc::clone(&self.metrics));
            self.sessions.insert(s.spec.name.clone(), s);
        }
        let origin = ferrolb_common::telemetry::Origin::of(&tracing::Span::current());
        for name in &fresh {
            let set: Vec<(Prefix, Route)> = self
                .routes
                .iter()
                .filter_map(|(p, peers)| peers.get(name).map(|r| (*p, r.clone())))
                .collect();
            if let Some(s) = self.sessions.get(name) {
                let _ = s.commands.send(Command::Routes {
                    set,
                    unset: vec![],
                    origin: origin.clone(),
                });
            }
        }
        for (peer, (set, unset)) in per_peer {
            if fresh.contains(&peer) {
                continue;
            }
            if let Some(s) = self.sessions.get(&peer) {
                let _ = s.commands.send(Command::Routes {
                    set,
                    unset,
                    origin: origin.clone(),
                });
            }
        }
    }

    /// Ends every session: peers with graceful restart keep the routes (the announcer is
    /// expected back); the others withdraw them at once.
    pub async fn stop(&mut self) {
        let sessions = std::mem::take(&mut self.sessions);
        for s in sessions.values() {
            let _ = s.commands.send(Command::Stop {
                graceful: s.spec.graceful_restart,
            });
        }
        for (_, s) in sessions {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.task).await;
        }
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;
    use crate::l2::Counters;
    use std::time::Duration;

    #[tokio::test]
    async fn routes_the_policy_refuses_are_dropped_and_counted() {
        let counters = Arc::new(Counters::default());
        let guard = defense::Guard {
            policy: defense::Policy::parse("203.0.113.0/24").expect("a policy"),
            exclude: vec![],
            counters: Arc::clone(&counters),
        };
        let common = Common {
            fallback_id: std::net::Ipv4Addr::new(192, 0, 2, 1),
            restart_time: 120,
            started: std::time::Instant::now(),
            max_backoff: Duration::from_secs(1),
        };
        let manager = Manager::new(common, Arc::default(), Arc::default());
        let (tx, rx) = mpsc::channel(4);
        let running = tokio::spawn(manager.run(rx, guard, None));
        let route = |p: &str| (p.parse::<Prefix>().expect("a prefix"), BTreeMap::new());
        let changes = Changes {
            routes_set: vec![
                route("203.0.113.10/32"),
                route("127.0.0.1/32"),
                route("198.51.100.7/32"),
            ],
            ..Changes::default()
        };
        let update = Update {
            changes,
            snapshot: true,
            origin: Default::default(),
        };
        tx.send(update).await.expect("running");
        drop(tx);
        running.await.expect("ended");
        let refused = |reason: &str| {
            let labels = crate::l2::RefusalLabels {
                reason: reason.into(),
            };
            counters.refused.get_or_create(&labels).get()
        };
        assert_eq!(refused("loopback"), 1);
        assert_eq!(refused("outside_allowed_cidrs"), 1);
    }
}
