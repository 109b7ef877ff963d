//! The announcer's control loop: holds the assignments the allocator sent, keeps one responder
//! per eligible interface, binds addresses to interfaces when the kernel answers, and sends the
//! gratuitous announcements on MetalLB's schedule.
//!
//! The loop owns all state; the stream client feeds it updates and reads back what is really
//! announced. Nothing survives a restart except kernel bindings, which carry ferrolb's mark and
//! are reconciled against the first snapshot.

use ferrolb_common::telemetry::Origin;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, UdpSocket};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tracing::Instrument;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::bind::Binder;
use crate::defense;
use crate::l2::{self, Command, Counters, Link};
use crate::links::{self, Pattern};
use crate::packet::{Mac, ndp};
use crate::plan;

/// Who answers ARP and neighbor solicitations for announced addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answerer {
    /// The kernel: addresses are bound to the interface (fast, and the node accepts their
    /// traffic without kube-proxy).
    Kernel,
    /// ferrolb's own responder, as MetalLB does; nothing on the node changes.
    Userspace,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub answerer: Answerer,
    pub exclude: Vec<Pattern>,
    /// Gratuitous announcements: every `interval` for `period` after gaining an address.
    pub gratuitous_interval: Duration,
    pub gratuitous_period: Duration,
    /// How often interfaces are looked at again.
    pub scan_interval: Duration,
}

/// A change of the node's layer-2 assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The first message of a stream: whatever it assigns is announced again, since others may
    /// have answered for it while this node was out of touch.
    pub fresh_session: bool,
    pub version: u64,
    /// Replaces everything held.
    pub snapshot: bool,
    pub set: Vec<(IpAddr, Vec<String>)>,
    pub unset: Vec<IpAddr>,
    /// The Services on the addresses set (`namespace/name`), for the metrics.
    pub services: BTreeMap<IpAddr, Vec<String>>,
    /// The allocator's decision this carries out (traces).
    pub origin: Origin,
}

/// What the announcer really does, for heartbeats and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub version: u64,
    /// Addresses served on at least one interface.
    pub announcing: Vec<IpAddr>,
    /// The Services on each of them (`namespace/name`).
    pub services: BTreeMap<IpAddr, Vec<String>>,
    /// Some interface can announce.
    pub ready: bool,
    /// (name, MAC, eligible)
    pub interfaces: Vec<(String, String, bool)>,
}

struct Responder {
    link: Link,
    commands: std_mpsc::Sender<Command>,
    /// Holds the interface's memberships of the solicited-node groups of the IPv6 addresses the
    /// responder answers for, so that the interface lets their solicitations in.
    groups: Option<UdpSocket>,
    joined: BTreeSet<Ipv6Addr>,
}

impl Responder {
    /// Joins the groups `addrs` need and leaves the others.
    fn set_groups(&mut self, addrs: &BTreeSet<IpAddr>) {
        let Some(socket) = &self.groups else { return };
        let want: BTreeSet<Ipv6Addr> = addrs
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(v6) => Some(ndp::solicited_node(*v6)),
                IpAddr::V4(_) => None,
            })
            .collect();
        for g in self.joined.difference(&want) {
            if let Err(e) = socket.leave_multicast_v6(g, self.link.index) {
                tracing::warn!(group = %g, interface = self.link.name, error = %e, "cannot leave group");
            }
        }
        for g in want.difference(&self.joined) {
            if let Err(e) = socket.join_multicast_v6(g, self.link.index) {
                tracing::warn!(group = %g, interface = self.link.name, error = %e,
                    "cannot join group; solicitations for it may not arrive");
            }
        }
        self.joined = want;
    }
}

pub struct Agent {
    settings: Settings,
    counters: Arc<Counters>,
    binder: Option<Binder>,
    assigned: BTreeMap<IpAddr, Vec<String>>,
    /// The Services on each assigned address.
    services: BTreeMap<IpAddr, Vec<String>>,
    version: u64,
    /// The allocator has sent a snapshot since the start.
    synced: bool,
    links: Vec<(Link, Option<&'static str>)>,
    responders: BTreeMap<u32, Responder>,
    /// Where each address is served: interface indexes.
    serving: BTreeMap<IpAddr, BTreeSet<u32>>,
    /// Kernel bindings made by ferrolb (also by an earlier run).
    bound: BTreeSet<(u32, IpAddr)>,
    /// Addresses in their gratuitous period: next send, end of the period.
    gratuitous: BTreeMap<IpAddr, (Instant, Instant)>,
    /// Announce everything served at the next reconcile, not only what is new.
    reannounce: bool,
    status: watch::Sender<Status>,
    guard: defense::Guard,
}

impl Agent {
    /// `guard` is what this node refuses to announce whatever the allocator says.
    pub async fn new(
        settings: Settings,
        guard: defense::Guard,
    ) -> Result<(Agent, watch::Receiver<Status>), String> {
        let counters = Arc::clone(&guard.counters);
        let binder = match settings.answerer {
            Answerer::Kernel => Some(Binder::new().map_err(|e| format!("netlink: {e}"))?),
            Answerer::Userspace => None,
        };
        let mut bound = BTreeSet::new();
        if let Some(b) = &binder {
            let left = b
                .bound()
                .await
                .map_err(|e| format!("reading addresses over netlink: {e}"))?;
            if !left.is_empty() {
                tracing::info!(
                    addresses = left.len(),
                    "found addresses an earlier run bound; keeping them until the allocator answers"
                );
            }
            bound.extend(left);
        }
        let (status, rx) = watch::channel(Status::default());
        let mut agent = Agent {
            settings,
            counters,
            binder,
            assigned: BTreeMap::new(),
            services: BTreeMap::new(),
            version: 0,
            synced: false,
            links: vec![],
            responders: BTreeMap::new(),
            serving: BTreeMap::new(),
            bound,
            gratuitous: BTreeMap::new(),
            reannounce: false,
            status,
            guard,
        };
        agent.scan();
        agent.reconcile().await;
        Ok((agent, rx))
    }

    /// Runs until `updates` closes, then takes every binding off.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Update>) {
        let mut scan = tokio::time::interval(self.settings.scan_interval);
        loop {
            let next_gratuitous = self.gratuitous.values().map(|(next, _)| *next).min();
            tokio::select! {
                u = updates.recv() => match u {
                    Some(u) => {
                        ferrolb_common::process::fault("l2-agent");
                        let span = u.origin.child(|| {
                            tracing::info_span!("layer 2", set = u.set.len(), unset = u.unset.len())
                        });
                        self.apply(u);
                        self.reconcile().instrument(span).await;
                    }
                    None => break,
                },
                _ = scan.tick() => {
                    if self.scan() {
                        self.reconcile().await;
                    }
                }
                _ = crate::sleep_until(next_gratuitous) => self.send_gratuitous(),
            }
        }
        self.assigned.clear();
        self.synced = true;
        self.reconcile().await;
        tracing::info!("stopped; every binding removed");
    }

    /// Drops what the node's policy refuses from an update: the node's own addresses are
    /// those on its interfaces that ferrolb did not bind.
    fn defend(&self, u: &mut Update) {
        let ours: BTreeSet<IpAddr> = self.bound.iter().map(|(_, ip)| *ip).collect();
        let own = self.guard.own_addresses(&ours);
        let policy = &self.guard.policy;
        u.set
            .retain(|(ip, _)| !self.guard.refused("address", policy.check(*ip, &own), ip));
    }

    /// The binder, for the BGP speakers' own view of what ferrolb bound (kernel answerer).
    pub fn binder(&self) -> Option<Binder> {
        self.binder.clone()
    }

    fn apply(&mut self, mut u: Update) {
        self.defend(&mut u);
        // A session opens with a snapshot, or with word that we are in step: either way what
        // we hold is now the allocator's truth.
        self.synced = true;
        self.reannounce |= u.fresh_session;
        if u.snapshot {
            self.assigned.clear();
            self.services.clear();
        }
        for ip in &u.unset {
            self.assigned.remove(ip);
            self.services.remove(ip);
        }
        self.services.extend(u.services);
        for (ip, ifs) in u.set {
            self.assigned.insert(ip, ifs);
        }
        self.version = u.version;
        tracing::debug!(
            version = u.version,
            addresses = self.assigned.len(),
            "assignments updated"
        );
    }

    /// Looks at the interfaces again; says whether anything changed.
    fn scan(&mut self) -> bool {
        let now = links::scan(&self.settings.exclude);
        let key = |v: &[(Link, Option<&'static str>)]| -> Vec<(u32, String, Mac, bool)> {
            v.iter()
                .map(|(l, why)| (l.index, l.name.clone(), l.mac, why.is_none()))
                .collect()
        };
        let changed = key(&now) != key(&self.links);
        if changed {
            for (l, why) in &now {
                tracing::debug!(
                    interface = l.name,
                    ineligible = why.unwrap_or("no"),
                    "interface"
                );
            }
        }
        self.links = now;
        changed
    }

    fn eligible(&self) -> impl Iterator<Item = &Link> {
        self.links
            .iter()
            .filter(|(_, why)| why.is_none())
            .map(|(l, _)| l)
    }

    /// Brings responders, bindings and gratuitous announcements in line with the assignments
    /// and the interfaces: the plan (`plan.rs`) decides, this carries it out.
    async fn reconcile(&mut self) {
        let eligible = self.keep_responders();
        let interfaces: BTreeMap<u32, String> =
            eligible.iter().map(|(i, l)| (*i, l.name.clone())).collect();
        let plan = plan::plan(plan::Inputs {
            assigned: &self.assigned,
            interfaces: &interfaces,
            bound: &self.bound,
            serving: &self.serving,
            kernel_binds: self.binder.is_some(),
            synced: self.synced,
            reannounce: std::mem::take(&mut self.reannounce),
        });
        for (ip, ifs) in &plan.homeless {
            tracing::warn!(%ip, interfaces = ?ifs, "no eligible interface to announce on");
        }
        let mut answer = plan.answer;
        self.bind(plan.unbind, plan.bind, &mut answer).await;
        let served: BTreeSet<IpAddr> = plan.desired.keys().copied().collect();
        for (i, r) in self.responders.iter_mut() {
            let set = answer.remove(i).unwrap_or_default();
            r.set_groups(&set);
            let _ = r.commands.send(Command::Answer(l2::Addresses {
                answer: set,
                served: served.clone(),
            }));
        }
        // Gratuitous announcements for what is new on an interface.
        let now = Instant::now();
        let origin = Origin::of(&tracing::Span::current());
        for (ip, on) in &plan.announce {
            tracing::info!(%ip, "announcing");
            for i in on {
                if let Some(r) = self.responders.get(i) {
                    let _ = r.commands.send(Command::Announce(*ip, origin.clone()));
                }
            }
            self.gratuitous.insert(
                *ip,
                (
                    now + self.settings.gratuitous_interval,
                    now + self.settings.gratuitous_period,
                ),
            );
        }
        for ip in &plan.silenced {
            tracing::info!(%ip, "no longer announcing");
            self.gratuitous.remove(ip);
        }
        self.serving = plan.desired;
        self.publish();
    }

    /// One responder per eligible interface (a new one when its MAC changed); returns the
    /// eligible interfaces by index.
    fn keep_responders(&mut self) -> BTreeMap<u32, Link> {
        let eligible: BTreeMap<u32, Link> = self.eligible().map(|l| (l.index, l.clone())).collect();
        self.responders.retain(|i, r| {
            let keep = eligible.get(i).is_some_and(|l| l.mac == r.link.mac);
            if !keep {
                tracing::info!(interface = r.link.name, "responder stopped");
            }
            keep
        });
        for (i, link) in &eligible {
            if !self.responders.contains_key(i) {
                self.responders
                    .insert(*i, self.start_responder(link.clone()));
            }
        }
        eligible
    }

    /// Unbinds and binds as planned (kernel answerer only); an address that cannot be bound is
    /// answered by the userspace responder instead.
    async fn bind(
        &mut self,
        unbind: Vec<(u32, IpAddr)>,
        bind: Vec<(u32, IpAddr)>,
        answer: &mut BTreeMap<u32, BTreeSet<IpAddr>>,
    ) {
        let Some(binder) = self.binder.clone() else {
            return;
        };
        for (i, ip) in unbind {
            match binder.unbind(i, ip).await {
                Ok(()) => {
                    self.bound.remove(&(i, ip));
                }
                Err(e) => tracing::warn!(%ip, index = i, error = %e, "cannot unbind"),
            }
        }
        for (i, ip) in bind {
            let span = tracing::info_span!("bind", address = %ip, index = i);
            match binder.bind(i, ip).instrument(span).await {
                Ok(()) => {
                    self.bound.insert((i, ip));
                }
                Err(e) => {
                    tracing::warn!(%ip, index = i, error = %e,
                        "cannot bind; the userspace responder answers instead");
                    answer.entry(i).or_default().insert(ip);
                }
            }
        }
    }

    fn start_responder(&self, link: Link) -> Responder {
        let (tx, rx) = std_mpsc::channel();
        let counters = Arc::clone(&self.counters);
        let run = link.clone();
        tracing::info!(interface = link.name, mac = %link.mac, "responder started");
        std::thread::spawn(move || {
            if let Err(e) = l2::serve(&run, false, rx, counters) {
                tracing::error!(interface = run.name, error = %e, "responder failed");
            }
        });
        // Only the userspace answerer needs memberships: the kernel joins the groups of the
        // addresses bound to it.
        let groups = match self.settings.answerer {
            Answerer::Kernel => None,
            Answerer::Userspace => UdpSocket::bind("[::]:0")
                .inspect_err(|e| tracing::warn!(error = %e, "no IPv6 socket for group memberships"))
                .ok(),
        };
        Responder {
            link,
            commands: tx,
            groups,
            joined: BTreeSet::new(),
        }
    }

    fn send_gratuitous(&mut self) {
        let now = Instant::now();
        let interval = self.settings.gratuitous_interval;
        let mut done = vec![];
        for (ip, (next, until)) in self.gratuitous.iter_mut() {
            if *next > now {
                continue;
            }
            for i in self.serving.get(ip).into_iter().flatten() {
                if let Some(r) = self.responders.get(i) {
                    let _ = r.commands.send(Command::Announce(*ip, Origin::default()));
                }
            }
            *next += interval;
            if *next > *until {
                done.push(*ip);
            }
        }
        for ip in done {
            self.gratuitous.remove(&ip);
        }
    }

    fn publish(&self) {
        let status = Status {
            version: self.version,
            announcing: self.serving.keys().copied().collect(),
            services: self
                .serving
                .keys()
                .map(|ip| (*ip, self.services.get(ip).cloned().unwrap_or_default()))
                .collect(),
            ready: self.eligible().next().is_some(),
            interfaces: self
                .links
                .iter()
                .map(|(l, why)| (l.name.clone(), l.mac.to_string(), why.is_none()))
                .collect(),
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}
