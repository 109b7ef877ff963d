//! The shell around one session's state machine: the TCP connection, the timers, the reader
//! that turns bytes into events, and the Adj-RIB-Out that turns route changes into UPDATEs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::fsm::{self, Event, Fsm, Output, State, Timer};
use super::rib::{Context, Rib, Route};
use super::socket;
use super::wire::{self, AFI_IPV4, AFI_IPV6, Message, Prefix, Update};
use crate::metrics::BgpMetrics;

/// One BGPPeer as this node runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub source: Option<IpAddr>,
    pub my_as: u32,
    pub peer_as: u32,
    pub router_id: Option<Ipv4Addr>,
    /// Seconds.
    pub hold_time: u16,
    pub keepalive: Option<u16>,
    /// TCP MD5 key; prints as `<redacted>`.
    pub password: Option<ferrolb_common::Secret>,
    pub ebgp_multihop: bool,
    pub graceful_restart: bool,
    /// A BFD session beside this one: while it is down, so is this session.
    pub bfd: Option<crate::bfd::Profile>,
}

impl PeerSpec {
    /// Whether `other` is the same BGP session (its BFD profile aside, which changes without
    /// starting the session over).
    pub fn same_session(&self, other: &PeerSpec) -> bool {
        PeerSpec {
            bfd: None,
            ..self.clone()
        } == PeerSpec {
            bfd: None,
            ..other.clone()
        }
    }

    /// The label this peer carries in metrics and logs (MetalLB's `addr:port`).
    pub fn label(&self) -> String {
        SocketAddr::new(self.address, self.port).to_string()
    }
}

#[derive(Debug)]
pub enum Command {
    Routes {
        set: Vec<(Prefix, Route)>,
        unset: Vec<Prefix>,
        /// The allocator's decision these carry out (traces).
        origin: ferrolb_common::telemetry::Origin,
    },
    /// End the session; `graceful` leaves without a NOTIFICATION (see `Event::ManualStop`).
    Stop { graceful: bool },
    /// The peer's BFD session went down (the session stops at once, with a NOTIFICATION) or
    /// came up again (it starts).
    Bfd { up: bool },
}

/// Settings shared by every session of the node.
#[derive(Debug, Clone)]
pub struct Common {
    /// Router ID when the peer has none configured and the session is not over IPv4.
    pub fallback_id: Ipv4Addr,
    /// Seconds a peer keeps this node's routes while the announcer restarts.
    pub restart_time: u16,
    /// When the announcer started: sessions that begin within the restart time of it set the
    /// Restart State bit in their first graceful-restart OPEN.
    pub started: std::time::Instant,
    pub max_backoff: Duration,
}

/// A running session.
pub struct Session {
    pub spec: PeerSpec,
    pub commands: mpsc::UnboundedSender<Command>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn spawn(spec: PeerSpec, common: &Common, metrics: Arc<BgpMetrics>) -> Session {
    let (tx, rx) = mpsc::unbounded_channel();
    let fsm = Fsm::new(fsm::Config {
        my_as: spec.my_as,
        peer_as: spec.peer_as,
        router_id: spec.router_id,
        fallback_id: common.fallback_id,
        hold_time: spec.hold_time,
        keepalive: spec.keepalive,
        graceful_restart: spec.graceful_restart.then_some(common.restart_time),
        restarting: common.started.elapsed() < Duration::from_secs(common.restart_time.into()),
        max_backoff: common.max_backoff,
    });
    let shell = Shell {
        label: spec.label(),
        spec: spec.clone(),
        fsm,
        rib: Rib::default(),
        ctx: None,
        conn: None,
        connecting: None,
        timers: BTreeMap::new(),
        metrics,
        buf: Vec::with_capacity(wire::MAX_LEN * 2),
        bfd_down: false,
    };
    let task = tokio::spawn(shell.run(rx));
    Session {
        spec,
        commands: tx,
        task,
    }
}

type Connecting = std::pin::Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

struct Shell {
    spec: PeerSpec,
    label: String,
    fsm: Fsm,
    rib: Rib,
    /// How the established session speaks.
    ctx: Option<Context>,
    conn: Option<(OwnedReadHalf, OwnedWriteHalf)>,
    connecting: Option<Connecting>,
    timers: BTreeMap<Timer, Instant>,
    metrics: Arc<BgpMetrics>,
    buf: Vec<u8>,
    /// Stopped by its BFD session, until that is up again.
    bfd_down: bool,
}

/// How long a write may wait for the peer to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn read_some(conn: &mut Option<(OwnedReadHalf, OwnedWriteHalf)>, buf: &mut Vec<u8>) -> usize {
    match conn {
        Some((r, _)) => {
            let mut chunk = [0u8; 16384];
            match r.read(&mut chunk).await {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    n
                }
                Err(_) => 0,
            }
        }
        None => std::future::pending().await,
    }
}

async fn connecting(c: &mut Option<Connecting>) -> std::io::Result<TcpStream> {
    match c {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Shell {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        tracing::info!(
            peer = self.label,
            name = self.spec.name,
            "BGP session starting"
        );
        self.step(Event::ManualStart).await;
        loop {
            let next = self
                .timers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(t, at)| (*t, *at));
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else {
                        self.step(Event::ManualStop { graceful: false }).await;
                        break;
                    };
                    if self.command(cmd, &mut commands).await {
                        break;
                    }
                }
                r = connecting(&mut self.connecting) => {
                    self.connecting = None;
                    match r {
                        Ok(stream) => {
                            let local = stream.local_addr().map(|a| a.ip());
                            match local {
                                Ok(local) => {
                                    self.tune(&stream);
                                    self.conn = Some(stream.into_split());
                                    self.step(Event::TcpCrAcked { local }).await;
                                }
                                Err(_) => self.step(Event::TcpConnectionFails).await,
                            }
                        }
                        Err(e) => {
                            tracing::debug!(peer = self.label, error = %e, "connect failed");
                            self.step(Event::TcpConnectionFails).await;
                        }
                    }
                }
                n = read_some(&mut self.conn, &mut self.buf) => {
                    if n == 0 {
                        self.step(Event::TcpConnectionFails).await;
                    } else {
                        self.read_messages().await;
                    }
                }
                _ = crate::sleep_until(next.map(|(_, at)| at)) => {
                    if let Some((t, _)) = next {
                        self.timers.remove(&t);
                        let e = match t {
                            Timer::ConnectRetry => Event::ConnectRetryTimerExpires,
                            Timer::Hold => Event::HoldTimerExpires,
                            Timer::Keepalive => Event::KeepaliveTimerExpires,
                            Timer::IdleHold => Event::IdleHoldTimerExpires,
                        };
                        self.step(e).await;
                    }
                }
            }
        }
        self.metrics.forget(&self.label);
        tracing::info!(peer = self.label, "BGP session stopped");
    }

    /// Applies a command and every one queued behind it, then sends one round of UPDATEs.
    /// True when the session is to end.
    async fn command(
        &mut self,
        first: Command,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> bool {
        let mut next = Some(first);
        // The UPDATEs that leave for the peer, in the trace of the first decision they carry.
        let mut span = tracing::Span::none();
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Routes { set, unset, origin } => {
                    if span.is_none() {
                        span = origin.child(|| {
                            tracing::info_span!(
                                "bgp update",
                                peer = self.label,
                                routes = set.len(),
                                withdrawn = unset.len()
                            )
                        });
                    }
                    for p in unset {
                        self.rib.unset(p);
                    }
                    for (p, r) in set {
                        self.rib.set(p, r);
                    }
                }
                Command::Stop { graceful } => {
                    // Withdrawals the allocator asked for go out before a graceful stop.
                    self.flush_or_fail().await;
                    self.step(Event::ManualStop { graceful }).await;
                    return true;
                }
                Command::Bfd { up: false } if !self.bfd_down => {
                    tracing::warn!(peer = self.label, "BFD session down: BGP session stopped");
                    self.bfd_down = true;
                    self.step(Event::ManualStop { graceful: false }).await;
                }
                Command::Bfd { up: true } if self.bfd_down => {
                    tracing::info!(peer = self.label, "BFD session up: BGP session starting");
                    self.bfd_down = false;
                    self.step(Event::ManualStart).await;
                }
                Command::Bfd { .. } => {}
            }
            next = commands.try_recv().ok();
        }
        self.flush_or_fail().instrument(span).await;
        self.report();
        false
    }

    fn tune(&self, stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
        if !self.spec.ebgp_multihop && self.spec.my_as != self.spec.peer_as {
            // A directly connected eBGP peer is one hop away (RFC 4271 §5.1.3 practice).
            let _ = stream.set_ttl(1);
        }
    }

    async fn read_messages(&mut self) {
        loop {
            let four = self.fsm.negotiated().is_some_and(|n| n.four_octet);
            let len = match wire::frame_len(&self.buf) {
                Ok(Some(len)) if self.buf.len() >= len => len,
                Ok(_) => return,
                Err(e) => {
                    self.metrics.malformed(&self.label);
                    self.buf.clear();
                    self.step(Event::BgpHeaderErr(e)).await;
                    return;
                }
            };
            let frame: Vec<u8> = self.buf.drain(..len).collect();
            let event = Event::received(&frame, four);
            match &event {
                Event::UpdateMsg(_) => self.metrics.update_received(&self.label),
                Event::NotifMsg(n) => {
                    self.metrics.notification_received(&self.label);
                    tracing::warn!(peer = self.label, notification = %n, "peer sent a NOTIFICATION");
                }
                Event::BgpHeaderErr(e) | Event::BgpOpenMsgErr(e) | Event::UpdateMsgErr(e) => {
                    self.metrics.malformed(&self.label);
                    tracing::warn!(peer = self.label, error = %e, "malformed message from the peer");
                }
                _ => {}
            }
            self.step(event).await;
            if self.conn.is_none() {
                self.buf.clear();
                return;
            }
        }
    }

    /// Feeds the state machine and carries out what it asks, in order.
    async fn step(&mut self, event: Event) {
        let before = self.fsm.state();
        let outputs = self.fsm.process(event);
        // A write that fails is reported to the state machine once the outputs are carried out.
        let mut ok = true;
        for o in outputs {
            match o {
                Output::Connect => {
                    let spec = self.spec.clone();
                    self.connecting = Some(Box::pin(async move { socket::connect(&spec).await }));
                }
                Output::Disconnect => {
                    self.connecting = None;
                    if let Some((_, mut w)) = self.conn.take() {
                        let _ = w.shutdown().await;
                    }
                    self.buf.clear();
                    self.ctx = None;
                }
                Output::Send(m) => ok &= self.send(&[m]).await,
                Output::StartTimer(t, d) => {
                    self.timers.insert(t, Instant::now() + d);
                }
                Output::StopTimer(t) => {
                    self.timers.remove(&t);
                }
                Output::Established(n) => {
                    let local = self.conn.as_ref().and_then(|(r, _)| r.local_addr().ok());
                    let (v4, v6) = match local.map(|a| a.ip()) {
                        Some(IpAddr::V4(a)) => (Some(a), None),
                        Some(IpAddr::V6(a)) => (None, Some(a)),
                        None => (None, None),
                    };
                    self.ctx = Some(Context {
                        my_as: self.spec.my_as,
                        ibgp: n.ibgp,
                        four_octet: n.four_octet,
                        next_hop_v4: v4.filter(|_| n.ipv4),
                        next_hop_v6: v6.filter(|_| n.ipv6),
                    });
                    tracing::info!(peer = self.label, hold_time = n.hold_time,
                        router_id = %n.router_id, peer_router_id = %n.peer_router_id,
                        graceful_restart = n.graceful_restart, "BGP session established");
                    self.rib.reset();
                    ok &= self.flush().await;
                    // End-of-RIB for each family the peer takes (RFC 4724 §2).
                    let mut eor = Vec::new();
                    if n.ipv4 {
                        eor.push(Message::Update(Update::end_of_rib(AFI_IPV4)));
                    }
                    if n.ipv6 {
                        eor.push(Message::Update(Update::end_of_rib(AFI_IPV6)));
                    }
                    ok &= self.send(&eor).await;
                }
                Output::Resend { afi } => {
                    self.rib.resend(afi);
                    ok &= self.flush().await;
                }
                Output::Down(why) => {
                    tracing::warn!(
                        peer = self.label,
                        from = before.as_str(),
                        reason = why,
                        "BGP session down"
                    );
                }
            }
        }
        let after = self.fsm.state();
        self.report();
        if !ok && after != State::Idle {
            Box::pin(self.step(Event::TcpConnectionFails)).await;
        }
    }

    /// Sends the pending route changes if the session is up; false when the write failed.
    async fn flush(&mut self) -> bool {
        if self.fsm.state() != State::Established || !self.rib.has_changes() {
            return true;
        }
        let Some(ctx) = self.ctx.clone() else {
            return true;
        };
        let updates: Vec<Message> = self
            .rib
            .flush(&ctx)
            .into_iter()
            .map(Message::Update)
            .collect();
        let ok = self.send(&updates).await;
        self.report();
        ok
    }

    /// The session's state and prefix counts, to the metrics.
    fn report(&self) {
        self.metrics.set_state(
            &self.label,
            self.fsm.state(),
            self.rib.advertised(),
            self.rib.wanted(),
        );
    }

    /// Sends the pending route changes and tells the state machine if the connection broke.
    async fn flush_or_fail(&mut self) {
        if !self.flush().await {
            self.step(Event::TcpConnectionFails).await;
        }
    }

    /// Writes messages in one go; false when the connection failed.
    async fn send(&mut self, msgs: &[Message]) -> bool {
        let Some((_, w)) = self.conn.as_mut() else {
            return true;
        };
        let four = self.fsm.negotiated().is_some_and(|n| n.four_octet);
        let mut bytes = Vec::new();
        for m in msgs {
            match m {
                Message::Update(_) => self.metrics.update_sent(&self.label),
                Message::Notification(n) => {
                    tracing::warn!(peer = self.label, notification = %n, "sending a NOTIFICATION");
                    self.metrics.notification_sent(&self.label);
                }
                _ => {}
            }
            bytes.extend_from_slice(&wire::encode(m, four));
        }
        matches!(
            tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&bytes)).await,
            Ok(Ok(()))
        )
    }
}
