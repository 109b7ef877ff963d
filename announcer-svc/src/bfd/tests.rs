use std::time::Duration;

use super::packet::{Control, DecodeError, Diag, LEN, State};
use super::session::{Config, Discard, Event, Output, Session};

const MS: Duration = Duration::from_millis(1);

fn profile() -> Config {
    // MetalLB's BFDProfile defaults: 300 ms each way, 3 packets.
    Config {
        desired_min_tx: 300 * MS,
        required_min_rx: 300 * MS,
        detect_mult: 3,
        passive: false,
    }
}

fn sent(out: &[Output]) -> Vec<Control> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// Delivers every packet each side sends to the other, with a periodic packet from each when
/// nothing is in flight; packets crossing a state change may be discarded, as on a network.
fn talk(a: &mut Session, b: &mut Session, mut to_b: Vec<Control>) -> Vec<Output> {
    let mut all = Vec::new();
    let mut to_a = Vec::new();
    for _ in 0..20 {
        for p in std::mem::take(&mut to_b) {
            let out = b.process(Event::Received(p)).unwrap_or_default();
            to_a.extend(sent(&out));
            all.extend(out);
        }
        for p in std::mem::take(&mut to_a) {
            let out = a.process(Event::Received(p)).unwrap_or_default();
            to_b.extend(sent(&out));
            all.extend(out);
        }
        if to_b.is_empty() {
            // A periodic packet from each, as their timers would send.
            let out = a.process(Event::TransmitTimerExpired).unwrap();
            to_b.extend(sent(&out));
            let out = b.process(Event::TransmitTimerExpired).unwrap();
            to_a.extend(sent(&out));
        }
    }
    all
}

fn up_pair() -> (Session, Session) {
    let (mut a, out) = Session::new(0x1111, profile());
    let (mut b, _) = Session::new(0x2222, profile());
    talk(&mut a, &mut b, sent(&out));
    (a, b)
}

#[test]
fn a_control_packet_round_trips_and_each_discard_rule_holds() {
    let p = Control {
        diag: Diag::ControlDetectionTimeExpired,
        state: State::Up,
        poll: true,
        fin: false,
        control_plane_independent: false,
        demand: false,
        detect_mult: 3,
        my_discriminator: 7,
        your_discriminator: 9,
        desired_min_tx: 300 * MS,
        required_min_rx: 100 * MS,
        required_min_echo_rx: Duration::ZERO,
    };
    let wire = p.encode();
    assert_eq!(wire[0], 0x21, "version 1, diag 1");
    assert_eq!(wire[1], 0xE0, "state Up, poll");
    assert_eq!(&wire[12..16], &300_000u32.to_be_bytes());
    assert_eq!(Control::decode(&wire), Ok(p));

    let bad = |f: fn(&mut [u8; LEN])| {
        let mut w = wire;
        f(&mut w);
        Control::decode(&w)
    };
    assert_eq!(Control::decode(&wire[..23]), Err(DecodeError::Short));
    assert_eq!(bad(|w| w[0] = 0x41), Err(DecodeError::Version(2)));
    assert_eq!(bad(|w| w[3] = 23), Err(DecodeError::Length(23)));
    assert_eq!(bad(|w| w[3] = 25), Err(DecodeError::Length(25)));
    assert_eq!(bad(|w| w[2] = 0), Err(DecodeError::ZeroDetectMult));
    assert_eq!(bad(|w| w[1] |= 0x01), Err(DecodeError::Multipoint));
    assert_eq!(bad(|w| w[1] |= 0x04), Err(DecodeError::Authentication));
    assert_eq!(
        bad(|w| w[4..8].copy_from_slice(&[0; 4])),
        Err(DecodeError::ZeroMyDiscriminator)
    );
    // A longer datagram whose length field says 24 is one packet and trailing bytes.
    let mut longer = wire.to_vec();
    longer.extend([0; 8]);
    assert!(Control::decode(&longer).is_ok());
}

#[test]
fn two_sessions_come_up_by_the_three_way_handshake_then_speed_up_by_a_poll_sequence() {
    let (mut a, first) = Session::new(0x1111, profile());
    // Not Up: at most one packet a second, whatever the profile says.
    assert_eq!(sent(&first)[0].desired_min_tx, Duration::from_secs(1));
    assert!(first.contains(&Output::TransmitEvery(Duration::from_secs(1))));
    let (mut b, _) = Session::new(0x2222, profile());
    let out = talk(&mut a, &mut b, sent(&first));
    let changes: Vec<(State, State)> = out
        .iter()
        .filter_map(|o| match o {
            Output::StateChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert!(changes.contains(&(State::Down, State::Init)), "{changes:?}");
    assert_eq!(a.state(), State::Up);
    assert_eq!(b.state(), State::Up);
    assert_eq!(a.remote_discriminator(), 0x2222);
    // Once Up, the profile's timers are negotiated and in use on both sides.
    for s in [&a, &b] {
        assert_eq!(s.transmit_interval(), 300 * MS);
        assert_eq!(s.detection_time(), 900 * MS);
    }
    assert!(sent(&out).iter().any(|p| p.poll), "a poll sequence ran");
    assert!(sent(&out).iter().any(|p| p.fin), "and was answered");
    assert!(sent(&out).iter().all(|p| !(p.poll && p.fin)));
}

#[test]
fn a_silent_peer_is_detected_and_the_sessions_come_back_together() {
    let (mut a, mut b) = up_pair();
    let out = a.process(Event::DetectionTimeExpired).unwrap();
    assert!(out.contains(&Output::StateChanged {
        from: State::Up,
        to: State::Down,
        diag: Diag::ControlDetectionTimeExpired
    }));
    // a forgets b's discriminator (§6.8.1), so b, still Up, discards what a sends now and
    // finds out by its own detection time.
    assert_eq!(a.remote_discriminator(), 0);
    let p = sent(&a.process(Event::TransmitTimerExpired).unwrap()).remove(0);
    assert_eq!(
        (p.state, p.diag),
        (State::Down, Diag::ControlDetectionTimeExpired)
    );
    assert_eq!(
        b.process(Event::Received(p.clone())),
        Err(Discard::ZeroDiscriminator)
    );
    b.process(Event::DetectionTimeExpired).unwrap();
    assert_eq!(b.state(), State::Down);
    talk(&mut a, &mut b, vec![p]);
    assert_eq!((a.state(), b.state()), (State::Up, State::Up));
}

#[test]
fn a_peer_that_says_down_is_believed() {
    let (mut a, mut b) = up_pair();
    let mut p = sent(&a.process(Event::TransmitTimerExpired).unwrap()).remove(0);
    p.state = State::Down;
    p.diag = Diag::PathDown;
    let out = b.process(Event::Received(p)).unwrap();
    assert!(out.contains(&Output::StateChanged {
        from: State::Up,
        to: State::Down,
        diag: Diag::NeighborSignaledSessionDown
    }));
}

#[test]
fn spoofed_packets_are_discarded() {
    let (mut a, b) = up_pair();
    let mut p = Control {
        diag: Diag::None,
        state: State::Up,
        poll: false,
        fin: false,
        control_plane_independent: false,
        demand: false,
        detect_mult: 3,
        my_discriminator: b.local_discriminator(),
        your_discriminator: 0xdead,
        desired_min_tx: 300 * MS,
        required_min_rx: 300 * MS,
        required_min_echo_rx: Duration::ZERO,
    };
    assert_eq!(
        a.process(Event::Received(p.clone())),
        Err(Discard::WrongDiscriminator)
    );
    p.your_discriminator = 0;
    assert_eq!(
        a.process(Event::Received(p)),
        Err(Discard::ZeroDiscriminator)
    );
    assert_eq!(a.state(), State::Up);
}

#[test]
fn a_passive_session_waits_for_the_peer() {
    let (mut passive, out) = Session::new(
        0x3333,
        Config {
            passive: true,
            ..profile()
        },
    );
    assert!(sent(&out).is_empty());
    assert!(sent(&passive.process(Event::TransmitTimerExpired).unwrap()).is_empty());
    let (mut active, out) = Session::new(0x4444, profile());
    talk(&mut active, &mut passive, sent(&out));
    assert_eq!(passive.state(), State::Up);
    assert_eq!(active.state(), State::Up);
}

#[test]
fn a_profile_change_renegotiates_without_dropping_the_session() {
    let (mut a, mut b) = up_pair();
    // Slower: a keeps its 300 ms until b has answered the poll.
    let slower = Config {
        desired_min_tx: 500 * MS,
        ..profile()
    };
    let out = a.process(Event::Configure(slower)).unwrap();
    let poll = sent(&out);
    assert!(poll.iter().all(|p| p.poll && p.desired_min_tx == 500 * MS));
    assert_eq!(a.transmit_interval(), 300 * MS);
    let out = talk(&mut a, &mut b, poll);
    assert!(
        !out.iter().any(|o| matches!(o, Output::StateChanged { .. })),
        "{out:?}"
    );
    assert_eq!(a.transmit_interval(), 500 * MS);
    assert_eq!(b.detection_time(), 1500 * MS);
    assert_eq!((a.state(), b.state()), (State::Up, State::Up));
}

#[test]
fn a_peer_that_wants_no_packets_gets_none() {
    let (mut a, mut b) = up_pair();
    let mut p = sent(&b.process(Event::TransmitTimerExpired).unwrap()).remove(0);
    p.required_min_rx = Duration::ZERO;
    let out = a.process(Event::Received(p)).unwrap();
    assert!(out.contains(&Output::StopTransmit), "{out:?}");
}

#[test]
fn admin_down_is_said_and_ends_the_peer_session() {
    let (mut a, mut b) = up_pair();
    let p = sent(&a.process(Event::AdminDown).unwrap()).remove(0);
    assert_eq!(
        (p.state, p.diag),
        (State::AdminDown, Diag::AdministrativelyDown)
    );
    let out = b.process(Event::Received(p)).unwrap();
    assert!(out.contains(&Output::StateChanged {
        from: State::Up,
        to: State::Down,
        diag: Diag::NeighborSignaledSessionDown
    }));
    a.process(Event::AdminUp).unwrap();
    assert_eq!(a.state(), State::Down);
}
