//! The BGP finite state machine of RFC 4271 §8, without I/O: `process(event)` returns what the
//! shell must do (connect, send, close, arm or stop a timer). Events carry the RFC's names and
//! numbers. ferrolb only connects actively (as MetalLB's speaker); a session that fails goes
//! back to Idle and starts again when the IdleHoldTimer expires (event 13), with a delay that
//! doubles with every failure in a row (DampPeerOscillations) and resets once Established.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::wire::{
    self, AFI_IPV4, AFI_IPV6, AS_TRANS, Capability, DecodeError, GracefulRestart, Message,
    Notification, Open, SAFI_UNICAST, Update, code,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }

    /// The number BGP4-MIB gives the state (bgpPeerState), for the metric.
    pub fn number(self) -> i64 {
        match self {
            State::Idle => 1,
            State::Connect => 2,
            State::Active => 3,
            State::OpenSent => 4,
            State::OpenConfirm => 5,
            State::Established => 6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    IdleHold,
}

/// RFC 4271 §8.1 events (the numbers are the RFC's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// 1
    ManualStart,
    /// 2; `graceful`: leave without a NOTIFICATION, so that a peer that supports graceful
    /// restart keeps the routes until this speaker is back.
    ManualStop { graceful: bool },
    /// 9
    ConnectRetryTimerExpires,
    /// 10
    HoldTimerExpires,
    /// 11
    KeepaliveTimerExpires,
    /// 13
    IdleHoldTimerExpires,
    /// 16: the connection this side opened is up; `local` is its source address.
    TcpCrAcked { local: std::net::IpAddr },
    /// 18
    TcpConnectionFails,
    /// 19
    BgpOpen(Open),
    /// 21
    BgpHeaderErr(DecodeError),
    /// 22
    BgpOpenMsgErr(DecodeError),
    /// 25 (and 24, which needs no different handling without DelayOpen)
    NotifMsg(Notification),
    /// 26
    KeepAliveMsg,
    /// 27
    UpdateMsg(Update),
    /// 28
    UpdateMsgErr(DecodeError),
    /// A ROUTE-REFRESH (RFC 2918) for a family.
    RouteRefreshMsg { afi: u16, safi: u8 },
}

impl Event {
    /// The event for one whole message from the peer, decoded or not.
    pub fn received(frame: &[u8], four_octet: bool) -> Event {
        match wire::decode(frame, four_octet) {
            Ok(Message::Open(o)) => Event::BgpOpen(o),
            Ok(Message::Keepalive) => Event::KeepAliveMsg,
            Ok(Message::Update(u)) => Event::UpdateMsg(u),
            Ok(Message::Notification(n)) => Event::NotifMsg(n),
            Ok(Message::RouteRefresh { afi, safi }) => Event::RouteRefreshMsg { afi, safi },
            Err(e) => match e.message_type() {
                1 => Event::BgpOpenMsgErr(e),
                2 => Event::UpdateMsgErr(e),
                _ => Event::BgpHeaderErr(e),
            },
        }
    }
}

/// What the shell does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the connection (after sending what came before).
    Disconnect,
    Send(Message),
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    /// The session is up: send the routes, then End-of-RIB.
    Established(Negotiated),
    /// Send every route of the family again (a ROUTE-REFRESH asked for it).
    Resend {
        afi: u16,
    },
    /// The session left Established or failed to get there.
    Down(String),
}

/// The session parameters this side asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub my_as: u32,
    pub peer_as: u32,
    /// None: the local IPv4 address of the connection (MetalLB's rule), else `fallback_id`.
    pub router_id: Option<Ipv4Addr>,
    pub fallback_id: Ipv4Addr,
    /// Seconds; 0 or at least 3.
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs; None: a third of the negotiated hold time.
    pub keepalive: Option<u16>,
    /// Advertise graceful restart (RFC 4724) with this restart time in seconds.
    pub graceful_restart: Option<u16>,
    /// Set the Restart State bit: this speaker has just restarted.
    pub restarting: bool,
    /// Longest delay before reconnecting.
    pub max_backoff: Duration,
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub hold_time: u16,
    pub keepalive: u16,
    pub four_octet: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    pub ibgp: bool,
    /// The peer keeps this speaker's routes across its restarts.
    pub graceful_restart: bool,
    pub peer_router_id: Ipv4Addr,
    pub router_id: Ipv4Addr,
}

/// The hold time while waiting for the peer's OPEN (RFC 4271 suggests 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// How long a TCP connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

pub struct Fsm {
    config: Config,
    state: State,
    /// Failures since the last Established (DampPeerOscillations).
    failures: u32,
    local_id: Ipv4Addr,
    negotiated: Option<Negotiated>,
    stopped: bool,
}

fn notif(code: u8, subcode: u8) -> Notification {
    Notification {
        code,
        subcode,
        data: vec![],
    }
}

fn notification(code: u8, subcode: u8) -> Message {
    Message::Notification(notif(code, subcode))
}

impl Fsm {
    pub fn new(config: Config) -> Fsm {
        Fsm {
            local_id: config.router_id.unwrap_or(config.fallback_id),
            config,
            state: State::Idle,
            failures: 0,
            negotiated: None,
            stopped: true,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The delay before the next attempt: doubles with every failure in a row.
    fn backoff(&self) -> Duration {
        let shift = self.failures.saturating_sub(1).min(16);
        (FIRST_BACKOFF * (1u32 << shift)).min(self.config.max_backoff)
    }

    fn open(&self) -> Message {
        let mut capabilities = vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::Multiprotocol {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
            },
            Capability::RouteRefresh,
        ];
        if let Some(t) = self.config.graceful_restart {
            capabilities.push(Capability::GracefulRestart(GracefulRestart {
                restarting: self.config.restarting,
                restart_time: t.min(4095),
                // The node keeps forwarding while the announcer restarts.
                families: vec![
                    (AFI_IPV4, SAFI_UNICAST, true),
                    (AFI_IPV6, SAFI_UNICAST, true),
                ],
            }));
        }
        capabilities.push(Capability::FourOctetAs(self.config.my_as));
        Message::Open(Open {
            version: 4,
            my_as: u16::try_from(self.config.my_as).unwrap_or(AS_TRANS),
            hold_time: self.config.hold_time,
            router_id: self.local_id,
            capabilities,
        })
    }

    /// Leaves for Idle after a failure: closes, stops the timers and arms the restart.
    fn fail(&mut self, out: &mut Vec<Output>, why: String) {
        out.push(Output::Disconnect);
        for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Output::StopTimer(t));
        }
        self.failures = self.failures.saturating_add(1);
        out.push(Output::StartTimer(Timer::IdleHold, self.backoff()));
        out.push(Output::Down(why));
        self.negotiated = None;
        self.state = State::Idle;
    }

    /// Sends a NOTIFICATION for `err`, then fails.
    fn fail_with(&mut self, out: &mut Vec<Output>, msg: Message) {
        let why = match &msg {
            Message::Notification(n) => format!("sent {n}"),
            _ => String::new(),
        };
        out.push(Output::Send(msg));
        self.fail(out, why);
    }

    fn start(&mut self, out: &mut Vec<Output>) {
        self.state = State::Connect;
        out.push(Output::StartTimer(Timer::ConnectRetry, CONNECT_TIMEOUT));
        out.push(Output::Connect);
    }

    /// Checks the peer's OPEN (RFC 4271 §6.2, RFC 6793) and agrees on the session.
    fn accept_open(&self, o: &Open) -> Result<Negotiated, Notification> {
        if o.asn() != self.config.peer_as {
            return Err(notif(code::OPEN, code::BAD_PEER_AS));
        }
        if o.hold_time == 1 || o.hold_time == 2 {
            return Err(notif(code::OPEN, code::UNACCEPTABLE_HOLD_TIME));
        }
        let ibgp = self.config.my_as == self.config.peer_as;
        if o.router_id.is_unspecified() || (ibgp && o.router_id == self.local_id) {
            return Err(notif(code::OPEN, code::BAD_BGP_IDENTIFIER));
        }
        let hold_time = o.hold_time.min(self.config.hold_time);
        let keepalive = match self.config.keepalive {
            Some(k) if hold_time > 0 => k.min(hold_time / 3).max(1),
            _ => hold_time / 3,
        };
        // Without multiprotocol capabilities a peer speaks IPv4 unicast only (RFC 4760 §8).
        let any_mp = o
            .capabilities
            .iter()
            .any(|c| matches!(c, Capability::Multiprotocol { .. }));
        let mp = |afi| {
            o.has(&Capability::Multiprotocol {
                afi,
                safi: SAFI_UNICAST,
            })
        };
        Ok(Negotiated {
            hold_time,
            keepalive,
            four_octet: o.four_octet(),
            ipv4: !any_mp || mp(AFI_IPV4),
            ipv6: mp(AFI_IPV6),
            ibgp,
            graceful_restart: self.config.graceful_restart.is_some()
                && o.graceful_restart().is_some(),
            peer_router_id: o.router_id,
            router_id: self.local_id,
        })
    }

    pub fn process(&mut self, event: Event) -> Vec<Output> {
        let mut out = Vec::new();
        use Event as E;
        use State as S;
        match (self.state, event) {
            (_, E::ManualStop { graceful }) => {
                self.stopped = true;
                if !graceful && matches!(self.state, S::OpenSent | S::OpenConfirm | S::Established)
                {
                    out.push(Output::Send(notification(
                        code::CEASE,
                        code::ADMINISTRATIVE_SHUTDOWN,
                    )));
                }
                out.push(Output::Disconnect);
                for t in [
                    Timer::ConnectRetry,
                    Timer::Hold,
                    Timer::Keepalive,
                    Timer::IdleHold,
                ] {
                    out.push(Output::StopTimer(t));
                }
                if self.state != S::Idle {
                    out.push(Output::Down("stopped".into()));
                }
                self.state = S::Idle;
                self.negotiated = None;
            }
            (S::Idle, E::ManualStart) => {
                self.stopped = false;
                self.failures = 0;
                self.start(&mut out);
            }
            (S::Idle, E::IdleHoldTimerExpires) if !self.stopped => self.start(&mut out),
            (S::Idle, _) => {}
            (S::Connect | S::Active, E::TcpCrAcked { local }) => {
                if self.config.router_id.is_none()
                    && let std::net::IpAddr::V4(v4) = local
                {
                    self.local_id = v4;
                }
                out.push(Output::StopTimer(Timer::ConnectRetry));
                out.push(Output::Send(self.open()));
                out.push(Output::StartTimer(Timer::Hold, OPEN_HOLD));
                self.state = S::OpenSent;
            }
            (S::Connect | S::Active, E::ConnectRetryTimerExpires) => {
                self.fail(&mut out, "connection attempt timed out".into())
            }
            (S::Connect | S::Active, E::TcpConnectionFails) => {
                self.fail(&mut out, "connection failed".into())
            }
            (S::Connect | S::Active, _) => {}
            (S::OpenSent, E::BgpOpen(o)) => match self.accept_open(&o) {
                Ok(n) => {
                    out.push(Output::Send(Message::Keepalive));
                    if n.hold_time > 0 {
                        out.push(Output::StartTimer(
                            Timer::Keepalive,
                            Duration::from_secs(u64::from(n.keepalive)),
                        ));
                        out.push(Output::StartTimer(
                            Timer::Hold,
                            Duration::from_secs(u64::from(n.hold_time)),
                        ));
                    } else {
                        out.push(Output::StopTimer(Timer::Hold));
                    }
                    self.negotiated = Some(n);
                    self.state = S::OpenConfirm;
                }
                Err(n) => self.fail_with(&mut out, Message::Notification(n)),
            },
            (S::OpenConfirm, E::KeepAliveMsg) => {
                self.restart_hold(&mut out);
                self.failures = 0;
                self.state = S::Established;
                // The restart is over once the peer has had this session's routes; a later
                // reconnection is no restart (RFC 4724 §4.1).
                self.config.restarting = false;
                if let Some(n) = &self.negotiated {
                    out.push(Output::Established(n.clone()));
                }
            }
            (S::Established, E::KeepAliveMsg | E::UpdateMsg(_)) => self.restart_hold(&mut out),
            (S::Established, E::RouteRefreshMsg { afi, safi }) => {
                self.restart_hold(&mut out);
                if safi == SAFI_UNICAST && (afi == AFI_IPV4 || afi == AFI_IPV6) {
                    out.push(Output::Resend { afi });
                }
            }
            (S::OpenConfirm | S::Established, E::KeepaliveTimerExpires) => {
                out.push(Output::Send(Message::Keepalive));
                if let Some(n) = &self.negotiated {
                    out.push(Output::StartTimer(
                        Timer::Keepalive,
                        Duration::from_secs(u64::from(n.keepalive)),
                    ));
                }
            }
            (S::OpenSent | S::OpenConfirm | S::Established, E::HoldTimerExpires) => {
                self.fail_with(&mut out, notification(code::HOLD_TIMER_EXPIRED, 0))
            }
            (S::OpenSent | S::OpenConfirm | S::Established, E::TcpConnectionFails) => {
                self.fail(&mut out, "connection lost".into())
            }
            (S::OpenSent | S::OpenConfirm | S::Established, E::NotifMsg(n)) => {
                self.fail(&mut out, format!("received {n}"))
            }
            (
                S::OpenSent | S::OpenConfirm | S::Established,
                E::BgpHeaderErr(e) | E::BgpOpenMsgErr(e) | E::UpdateMsgErr(e),
            ) => self.fail_with(&mut out, Message::Notification(e.notification())),
            // Anything else is out of place in this state (RFC 6608 subcodes).
            (S::OpenSent, _) => self.fail_with(&mut out, notification(code::FSM, 1)),
            (S::OpenConfirm, _) => self.fail_with(&mut out, notification(code::FSM, 2)),
            (S::Established, _) => self.fail_with(&mut out, notification(code::FSM, 3)),
        }
        out
    }

    fn restart_hold(&self, out: &mut Vec<Output>) {
        if let Some(n) = &self.negotiated
            && n.hold_time > 0
        {
            out.push(Output::StartTimer(
                Timer::Hold,
                Duration::from_secs(u64::from(n.hold_time)),
            ));
        }
    }
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;
