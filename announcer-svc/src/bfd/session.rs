//! One BFD session in Asynchronous mode (RFC 5880 §6), without I/O: events in (a received
//! Control packet, a timer that expired, a profile change), what the shell must do out (send a
//! packet, arm or stop a timer, report a state change). The names are the RFC's. Demand mode and
//! the Echo function are not used; authentication is refused by the decoder.

use std::time::Duration;

use super::packet::{Control, Diag, State};

/// A BFDProfile's timers, as this session runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// bfd.DesiredMinTxInterval once Up (MetalLB's `transmitInterval`).
    pub desired_min_tx: Duration,
    /// bfd.RequiredMinRxInterval (MetalLB's `receiveInterval`).
    pub required_min_rx: Duration,
    /// bfd.DetectMult.
    pub detect_mult: u8,
    /// The passive role (§6.1): nothing is sent until the peer is heard.
    pub passive: bool,
}

/// What happened to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A Control packet that passed the decoder's checks, for this session (the shell selects
    /// the session by Your Discriminator, or by the peer's address when it is zero).
    Received(Control),
    /// The detection timer expired.
    DetectionTimeExpired,
    /// The periodic transmission timer expired.
    TransmitTimerExpired,
    /// The profile changed: the new timers are negotiated with a Poll Sequence (§6.8.3).
    Configure(Config),
    /// Administratively down, and up again.
    AdminDown,
    AdminUp,
}

/// What the shell does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send(Control),
    /// (Re)arm the periodic transmission timer: the shell jitters each interval (§6.8.7).
    TransmitEvery(Duration),
    StopTransmit,
    /// (Re)arm the detection timer.
    Detect(Duration),
    StopDetect,
    StateChanged {
        from: State,
        to: State,
        diag: Diag,
    },
}

/// Why a packet for the session was discarded (§6.8.6), as a metric label can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Your Discriminator is not this session's.
    WrongDiscriminator,
    /// Your Discriminator is zero, and the session is neither Down nor AdminDown.
    ZeroDiscriminator,
    /// The session is AdminDown.
    AdminDown,
}

impl Discard {
    pub fn label(self) -> &'static str {
        match self {
            Discard::WrongDiscriminator => "wrong_discriminator",
            Discard::ZeroDiscriminator => "zero_discriminator",
            Discard::AdminDown => "admin_down",
        }
    }
}

/// While not Up, packets go at most once a second (§6.8.3).
const SLOW: Duration = Duration::from_secs(1);

/// The two timers a Control packet advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timers {
    desired_min_tx: Duration,
    required_min_rx: Duration,
}

#[derive(Debug, Clone)]
pub struct Session {
    config: Config,
    state: State,
    diag: Diag,
    local_discr: u32,
    remote_discr: u32,
    remote_state: State,
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    remote_detect_mult: u8,
    /// What the packets say.
    advertised: Timers,
    /// What this side's timers use: a change that would make either side too eager waits for
    /// the Poll Sequence to end (§6.8.3).
    in_use: Timers,
    polling: bool,
    /// Periodic transmission runs (not before the peer is heard in the passive role).
    transmitting: bool,
}

impl Session {
    /// A new session, Down; `local_discr` is nonzero and unique on the node.
    pub fn new(local_discr: u32, config: Config) -> (Session, Vec<Output>) {
        let advertised = Timers {
            desired_min_tx: config.desired_min_tx.max(SLOW),
            required_min_rx: config.required_min_rx,
        };
        let mut s = Session {
            config,
            state: State::Down,
            diag: Diag::None,
            local_discr,
            remote_discr: 0,
            remote_state: State::Down,
            // bfd.RemoteMinRxInterval starts at 1 µs (§6.8.1).
            remote_min_rx: Duration::from_micros(1),
            remote_desired_min_tx: Duration::ZERO,
            remote_detect_mult: 0,
            advertised,
            in_use: advertised,
            polling: false,
            transmitting: false,
        };
        let mut out = Vec::new();
        if !config.passive {
            s.start_transmitting(&mut out);
        }
        (s, out)
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn local_discriminator(&self) -> u32 {
        self.local_discr
    }

    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discr
    }

    /// The detection time as negotiated (§6.8.4); zero before the peer is heard.
    pub fn detection_time(&self) -> Duration {
        self.in_use.required_min_rx.max(self.remote_desired_min_tx)
            * u32::from(self.remote_detect_mult)
    }

    /// The interval between periodic packets before jitter (§6.8.7).
    pub fn transmit_interval(&self) -> Duration {
        self.in_use.desired_min_tx.max(self.remote_min_rx)
    }

    pub fn process(&mut self, event: Event) -> Result<Vec<Output>, Discard> {
        let mut out = Vec::new();
        match event {
            Event::Received(p) => self.received(p, &mut out)?,
            Event::DetectionTimeExpired => {
                if matches!(self.state, State::Init | State::Up) {
                    self.change(State::Down, Diag::ControlDetectionTimeExpired, &mut out);
                }
                // The peer is gone: the next one it sends starts over (§6.8.1).
                self.remote_discr = 0;
                self.remote_state = State::Down;
                out.push(Output::StopDetect);
            }
            Event::TransmitTimerExpired => {
                if self.transmitting {
                    out.push(Output::Send(self.packet(false)));
                }
            }
            Event::Configure(c) => {
                self.config = c;
                self.retime(&mut out);
            }
            Event::AdminDown => {
                if self.state != State::AdminDown {
                    self.change(State::AdminDown, Diag::AdministrativelyDown, &mut out);
                    out.push(Output::StopDetect);
                    if self.transmitting {
                        out.push(Output::Send(self.packet(false)));
                    }
                }
            }
            Event::AdminUp => {
                if self.state == State::AdminDown {
                    self.change(State::Down, Diag::None, &mut out);
                }
            }
        }
        Ok(out)
    }

    /// §6.8.6, from "If the Your Discriminator field is nonzero" on.
    fn received(&mut self, p: Control, out: &mut Vec<Output>) -> Result<(), Discard> {
        if p.your_discriminator != 0 && p.your_discriminator != self.local_discr {
            return Err(Discard::WrongDiscriminator);
        }
        if p.your_discriminator == 0 && !matches!(self.state, State::Down | State::AdminDown) {
            return Err(Discard::ZeroDiscriminator);
        }
        let interval = (self.transmit_interval(), self.remote_min_rx.is_zero());
        self.remote_discr = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_min_rx = p.required_min_rx;
        self.remote_desired_min_tx = p.desired_min_tx;
        self.remote_detect_mult = p.detect_mult;
        if p.fin && self.polling {
            self.polling = false;
            self.in_use = self.advertised;
        }
        if self.state == State::AdminDown {
            return Err(Discard::AdminDown);
        }
        match (self.state, p.state) {
            (State::Down, State::AdminDown) => {}
            (_, State::AdminDown) => {
                self.change(State::Down, Diag::NeighborSignaledSessionDown, out)
            }
            (State::Down, State::Down) => self.change(State::Init, Diag::None, out),
            (State::Down, State::Init) => self.change(State::Up, Diag::None, out),
            (State::Init, State::Init | State::Up) => self.change(State::Up, Diag::None, out),
            (State::Up, State::Down) => {
                self.change(State::Down, Diag::NeighborSignaledSessionDown, out)
            }
            _ => {}
        }
        if p.poll {
            // A Final answers at once, never with Poll beside it.
            out.push(Output::Send(self.packet(true)));
        }
        if !self.transmitting {
            self.start_transmitting(out);
        } else if (self.transmit_interval(), self.remote_min_rx.is_zero()) != interval {
            self.transmit_timer(out);
        }
        out.push(Output::Detect(self.detection_time()));
        Ok(())
    }

    fn change(&mut self, to: State, diag: Diag, out: &mut Vec<Output>) {
        let from = self.state;
        self.state = to;
        self.diag = diag;
        out.push(Output::StateChanged { from, to, diag });
        // Up and not Up advertise other transmission intervals.
        if (from == State::Up) != (to == State::Up) {
            self.retime(out);
        }
    }

    /// Advertises the timers the configuration and the state call for; a change goes out with
    /// a Poll Sequence, and takes effect here as §6.8.3 allows: at once where it makes this
    /// side slower or more patient, after the peer's Final otherwise.
    fn retime(&mut self, out: &mut Vec<Output>) {
        let want = Timers {
            desired_min_tx: if self.state == State::Up {
                self.config.desired_min_tx
            } else {
                self.config.desired_min_tx.max(SLOW)
            },
            required_min_rx: self.config.required_min_rx,
        };
        if want == self.advertised {
            return;
        }
        let interval = self.transmit_interval();
        self.advertised = want;
        if self.remote_discr == 0 {
            // Nobody to negotiate with.
            self.in_use = want;
        } else {
            self.polling = true;
            self.in_use = Timers {
                desired_min_tx: self.in_use.desired_min_tx.min(want.desired_min_tx),
                required_min_rx: self.in_use.required_min_rx.max(want.required_min_rx),
            };
            if self.transmitting {
                out.push(Output::Send(self.packet(false)));
            }
        }
        if self.transmitting && self.transmit_interval() != interval {
            self.transmit_timer(out);
        }
    }

    fn start_transmitting(&mut self, out: &mut Vec<Output>) {
        self.transmitting = true;
        out.push(Output::Send(self.packet(false)));
        self.transmit_timer(out);
    }

    /// §6.8.7: no periodic packets while the peer asks for none.
    fn transmit_timer(&self, out: &mut Vec<Output>) {
        if self.remote_min_rx.is_zero() {
            out.push(Output::StopTransmit);
        } else {
            out.push(Output::TransmitEvery(self.transmit_interval()));
        }
    }

    fn packet(&self, fin: bool) -> Control {
        Control {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !fin,
            fin,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.config.detect_mult,
            my_discriminator: self.local_discr,
            your_discriminator: self.remote_discr,
            desired_min_tx: self.advertised.desired_min_tx,
            required_min_rx: self.advertised.required_min_rx,
            required_min_echo_rx: Duration::ZERO,
        }
    }
}
