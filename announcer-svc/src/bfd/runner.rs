//! The node's BFD sessions on UDP: one task runs them all, with one receiving socket per
//! listening address and one sending socket per session. Each datagram is checked (decoder,
//! TTL, source, discriminator) before its session sees it; what fails a check is dropped and
//! counted by reason. State changes are reported to the caller (the BGP speakers).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::packet::{Control, Diag, State};
use super::session::{Config, Event, Output, Session};
use super::socket;

/// A session to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    /// The peer's BFD port: 3784 single hop, 4784 multihop.
    pub port: u16,
    /// The local address packets leave from (the BGP session's source), or the kernel's choice.
    pub source: Option<IpAddr>,
    pub config: Config,
    /// Multihop (RFC 5883): packets are accepted with a TTL of at least `minimum_ttl`; single
    /// hop accepts 255 only.
    pub multihop: bool,
    pub minimum_ttl: u8,
}

pub enum Command {
    /// Runs a session by this name, or changes its timers (a new address starts it over).
    Set(String, Peer),
    Remove(String),
}

/// A session's state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub from: State,
    pub to: State,
    pub diag: Diag,
}

type Labels = Vec<(&'static str, String)>;

/// The sessions' figures, by `peer` (the peer's address, as MetalLB labels them) and, for
/// drops, by `reason`.
#[derive(Default)]
pub struct Metrics {
    /// 1 while Up.
    pub session_up: Family<Labels, Gauge>,
    pub up_events: Family<Labels, Counter>,
    pub down_events: Family<Labels, Counter>,
    /// Up sessions that went down because the peer fell silent.
    pub detections: Family<Labels, Counter>,
    pub packets_received: Family<Labels, Counter>,
    pub packets_sent: Family<Labels, Counter>,
    /// Datagrams dropped before or by a session, by reason.
    pub dropped: Family<Labels, Counter>,
}

impl Metrics {
    fn peer(address: IpAddr) -> Labels {
        vec![("peer", address.to_string())]
    }

    fn dropped_for(&self, reason: &'static str) {
        self.dropped
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    fn forget(&self, address: IpAddr) {
        let l = Self::peer(address);
        self.session_up.remove(&l);
        self.up_events.remove(&l);
        self.down_events.remove(&l);
        self.detections.remove(&l);
        self.packets_received.remove(&l);
        self.packets_sent.remove(&l);
    }

    /// Under ferrolb's names (`ferrolb_announcer_bfd_*`).
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "session_up",
            "1 while the BFD session is Up",
            self.session_up.clone(),
        );
        r.register(
            "session_up_events",
            "BFD sessions that came up",
            self.up_events.clone(),
        );
        r.register(
            "session_down_events",
            "BFD sessions that went down",
            self.down_events.clone(),
        );
        r.register(
            "detections",
            "Up BFD sessions that went down because the peer fell silent for the detection time",
            self.detections.clone(),
        );
        r.register(
            "control_packets_received",
            "BFD control packets a session took",
            self.packets_received.clone(),
        );
        r.register(
            "control_packets_sent",
            "BFD control packets sent",
            self.packets_sent.clone(),
        );
        r.register(
            "packets_dropped",
            "BFD datagrams dropped, by reason (malformed, TTL, source, discriminator)",
            self.dropped.clone(),
        );
    }

    /// MetalLB's FRR-mode names (`metallb_bfd_*`), sharing the series above.
    pub fn register_metallb(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "session_up",
            "BFD session state (1 is up, 0 is down)",
            self.session_up.clone(),
        );
        r.register(
            "session_up_events",
            "Number of BFD session up events",
            self.up_events.clone(),
        );
        r.register(
            "session_down_events",
            "Number of BFD session down events",
            self.down_events.clone(),
        );
        r.register(
            "control_packet_input",
            "Number of received BFD control packets",
            self.packets_received.clone(),
        );
        r.register(
            "control_packet_output",
            "Number of sent BFD control packets",
            self.packets_sent.clone(),
        );
    }
}

struct Running {
    peer: Peer,
    session: Session,
    tx: UdpSocket,
    every: Option<Duration>,
    next_tx: Option<Instant>,
    detect_at: Option<Instant>,
}

/// Randomness for discriminators, ports and jitter: the standard library's per-process random
/// keys, mixed with a counter.
struct Random {
    state: std::collections::hash_map::RandomState,
    n: u64,
}

impl Random {
    fn next(&mut self) -> u64 {
        self.n += 1;
        let mut h = self.state.build_hasher();
        h.write_u64(self.n);
        h.finish()
    }

    /// 75–100% of `d` (at most 90% with a detect multiplier of 1), RFC 5880 §6.8.7.
    fn jitter(&mut self, d: Duration, detect_mult: u8) -> Duration {
        let top = if detect_mult == 1 { 90 } else { 100 };
        let pct = 75 + self.next() % (top - 75 + 1);
        d * pct as u32 / 100
    }
}

/// Runs the sessions until `commands` closes; listens on each of `listen`.
pub async fn run(
    listen: Vec<SocketAddr>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    changes: mpsc::UnboundedSender<Change>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let sockets = listen
        .iter()
        .map(|a| socket::listen(*a))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut sessions: BTreeMap<String, Running> = BTreeMap::new();
    let mut random = Random {
        state: Default::default(),
        n: 0,
    };
    let mut buf = [0u8; 512];
    loop {
        let next = sessions
            .values()
            .flat_map(|r| [r.next_tx, r.detect_at])
            .flatten()
            .min();
        tokio::select! {
            c = commands.recv() => match c {
                None => break,
                Some(Command::Set(name, peer)) => {
                    let same = sessions.get(&name).is_some_and(|r| {
                        (r.peer.address, r.peer.port, r.peer.source) == (peer.address, peer.port, peer.source)
                    });
                    if same {
                        if let Some(r) = sessions.get_mut(&name) {
                            r.peer = peer.clone();
                            if let Ok(out) = r.session.process(Event::Configure(peer.config)) {
                                apply(&name, r, out, &changes, &metrics, &mut random).await;
                            }
                        }
                        continue;
                    }
                    if let Some(old) = sessions.remove(&name) {
                        metrics.forget(old.peer.address);
                    }
                    match start(&name, peer, &sessions, &mut random) {
                        Ok((mut r, out)) => {
                            apply(&name, &mut r, out, &changes, &metrics, &mut random).await;
                            metrics.session_up.get_or_create(&Metrics::peer(r.peer.address)).set(0);
                            sessions.insert(name, r);
                        }
                        Err(e) => tracing::warn!(peer = name, error = %e, "cannot start the BFD session"),
                    }
                }
                Some(Command::Remove(name)) => {
                    if let Some(mut r) = sessions.remove(&name) {
                        // The peer hears AdminDown rather than timing out.
                        if let Ok(out) = r.session.process(Event::AdminDown) {
                            apply(&name, &mut r, out, &changes, &metrics, &mut random).await;
                        }
                        metrics.forget(r.peer.address);
                    }
                }
            },
            got = recv_any(&sockets, &mut buf) => {
                let (n, from, ttl) = match got {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::debug!(error = %e, "BFD receive");
                        continue;
                    }
                };
                let Some((name, p)) = check(&buf[..n], from, ttl, &sessions, &metrics) else {
                    continue;
                };
                if let Some(r) = sessions.get_mut(&name) {
                    metrics.packets_received.get_or_create(&Metrics::peer(r.peer.address)).inc();
                    match r.session.process(Event::Received(p)) {
                        Ok(out) => apply(&name, r, out, &changes, &metrics, &mut random).await,
                        Err(d) => metrics.dropped_for(d.label()),
                    }
                }
            }
            _ = crate::sleep_until(next) => {
                let now = Instant::now();
                for (name, r) in sessions.iter_mut() {
                    if r.detect_at.is_some_and(|at| at <= now) {
                        r.detect_at = None;
                        if r.session.state() == State::Up {
                            metrics.detections.get_or_create(&Metrics::peer(r.peer.address)).inc();
                        }
                        if let Ok(out) = r.session.process(Event::DetectionTimeExpired) {
                            apply(name, r, out, &changes, &metrics, &mut random).await;
                        }
                    }
                    if r.next_tx.is_some_and(|at| at <= now) {
                        r.next_tx = r
                            .every
                            .map(|d| now + random.jitter(d, r.peer.config.detect_mult));
                        if let Ok(out) = r.session.process(Event::TransmitTimerExpired) {
                            apply(name, r, out, &changes, &metrics, &mut random).await;
                        }
                    }
                }
            }
        }
    }
    for (name, mut r) in sessions {
        if let Ok(out) = r.session.process(Event::AdminDown) {
            apply(&name, &mut r, out, &changes, &metrics, &mut random).await;
        }
        metrics.forget(r.peer.address);
    }
    Ok(())
}

fn start(
    name: &str,
    peer: Peer,
    sessions: &BTreeMap<String, Running>,
    random: &mut Random,
) -> std::io::Result<(Running, Vec<Output>)> {
    let tx = socket::sender(
        peer.source,
        SocketAddr::new(peer.address, peer.port),
        random.next(),
    )?;
    // A nonzero discriminator no other session of the node has.
    let discr = loop {
        let d = random.next() as u32;
        if d != 0
            && sessions
                .values()
                .all(|r| r.session.local_discriminator() != d)
        {
            break d;
        }
    };
    let (session, out) = Session::new(discr, peer.config);
    tracing::info!(peer = name, address = %peer.address, discriminator = discr, "BFD session started");
    Ok((
        Running {
            peer,
            session,
            tx,
            every: None,
            next_tx: None,
            detect_at: None,
        },
        out,
    ))
}

/// The session a datagram is for, when it passes the checks that come before the session's.
fn check(
    data: &[u8],
    from: SocketAddr,
    ttl: Option<u8>,
    sessions: &BTreeMap<String, Running>,
    metrics: &Metrics,
) -> Option<(String, Control)> {
    let p = match Control::decode(data) {
        Ok(p) => p,
        Err(e) => {
            metrics.dropped_for(e.label());
            return None;
        }
    };
    let found = if p.your_discriminator != 0 {
        sessions
            .iter()
            .find(|(_, r)| r.session.local_discriminator() == p.your_discriminator)
    } else {
        sessions.iter().find(|(_, r)| r.peer.address == from.ip())
    };
    let Some((name, r)) = found else {
        metrics.dropped_for("no_session");
        return None;
    };
    if r.peer.address != from.ip() {
        metrics.dropped_for("wrong_source");
        return None;
    }
    let least = if r.peer.multihop {
        r.peer.minimum_ttl
    } else {
        255
    };
    if ttl.is_none_or(|t| t < least) {
        metrics.dropped_for("ttl");
        return None;
    }
    Some((name.clone(), p))
}

async fn recv_any(
    sockets: &[UdpSocket],
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<u8>)> {
    if sockets.is_empty() {
        return std::future::pending().await;
    }
    let readable = futures::future::select_all(sockets.iter().map(|s| Box::pin(s.readable())));
    let (ready, i, _) = readable.await;
    ready?;
    socket::recv(&sockets[i], buf).await
}

async fn apply(
    name: &str,
    r: &mut Running,
    out: Vec<Output>,
    changes: &mpsc::UnboundedSender<Change>,
    metrics: &Metrics,
    random: &mut Random,
) {
    let label = Metrics::peer(r.peer.address);
    for o in out {
        match o {
            Output::Send(p) => {
                if r.tx.send(&p.encode()).await.is_ok() {
                    metrics.packets_sent.get_or_create(&label).inc();
                }
            }
            Output::TransmitEvery(d) => {
                r.every = Some(d);
                r.next_tx = Some(Instant::now() + random.jitter(d, r.peer.config.detect_mult));
            }
            Output::StopTransmit => {
                r.every = None;
                r.next_tx = None;
            }
            Output::Detect(d) => r.detect_at = (!d.is_zero()).then(|| Instant::now() + d),
            Output::StopDetect => r.detect_at = None,
            Output::StateChanged { from, to, diag } => {
                tracing::info!(
                    peer = name,
                    from = from.as_str(),
                    to = to.as_str(),
                    ?diag,
                    "BFD session"
                );
                if to == State::Up {
                    metrics.up_events.get_or_create(&label).inc();
                } else if from == State::Up {
                    metrics.down_events.get_or_create(&label).inc();
                }
                metrics
                    .session_up
                    .get_or_create(&label)
                    .set(i64::from(to == State::Up));
                let _ = changes.send(Change {
                    name: name.to_string(),
                    from,
                    to,
                    diag,
                });
            }
        }
    }
}
