//! The state machine, path by path, as RFC 4271 and RFC 6608 name them.

use super::*;

fn config() -> Config {
    Config {
        my_as: 64513,
        peer_as: 64512,
        router_id: None,
        fallback_id: Ipv4Addr::new(1, 2, 3, 4),
        hold_time: 9,
        keepalive: None,
        graceful_restart: Some(120),
        restarting: false,
        max_backoff: Duration::from_secs(30),
    }
}

fn peer_open(asn: u32, hold: u16) -> Open {
    Open {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: hold,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: 1,
            },
            Capability::FourOctetAs(asn),
        ],
    }
}

fn local() -> Event {
    Event::TcpCrAcked {
        local: "10.0.0.11".parse().expect("ip"),
    }
}

fn sent(out: &[Output]) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn established(f: &mut Fsm) -> Negotiated {
    f.process(Event::ManualStart);
    f.process(local());
    f.process(Event::BgpOpen(peer_open(64512, 90)));
    let out = f.process(Event::KeepAliveMsg);
    match out.last() {
        Some(Output::Established(n)) => n.clone(),
        other => panic!("not established: {other:?}"),
    }
}

#[test]
fn reaches_established_and_negotiates() {
    let mut f = Fsm::new(config());
    assert_eq!(
        f.process(Event::ManualStart),
        [
            Output::StartTimer(Timer::ConnectRetry, CONNECT_TIMEOUT),
            Output::Connect
        ]
    );
    let out = f.process(local());
    let [Message::Open(o)] = &sent(&out)[..] else {
        panic!("no open: {out:?}")
    };
    // The router ID is the connection's IPv4 source address.
    assert_eq!(o.router_id, Ipv4Addr::new(10, 0, 0, 11));
    assert_eq!(o.hold_time, 9);
    assert!(o.graceful_restart().is_some());
    let n = established(&mut Fsm::new(config()));
    assert_eq!((n.hold_time, n.keepalive), (9, 3));
    assert!(n.ipv4 && !n.ipv6 && !n.ibgp && n.four_octet && !n.graceful_restart);
}

#[test]
fn four_octet_as_goes_as_trans() {
    let mut f = Fsm::new(Config {
        my_as: 4_200_000_001,
        ..config()
    });
    f.process(Event::ManualStart);
    let [Message::Open(o)] = &sent(&f.process(local()))[..] else {
        panic!("no open")
    };
    assert_eq!((o.my_as, o.asn()), (AS_TRANS, 4_200_000_001));
}

#[test]
fn bad_opens_get_their_notifications() {
    let cases = [
        (peer_open(64999, 90), code::BAD_PEER_AS),
        (peer_open(64512, 2), code::UNACCEPTABLE_HOLD_TIME),
        (
            Open {
                router_id: Ipv4Addr::UNSPECIFIED,
                ..peer_open(64512, 90)
            },
            code::BAD_BGP_IDENTIFIER,
        ),
    ];
    for (open, sub) in cases {
        let mut f = Fsm::new(config());
        f.process(Event::ManualStart);
        f.process(local());
        let out = f.process(Event::BgpOpen(open));
        assert_eq!(sent(&out), [notification(code::OPEN, sub)]);
        assert!(out.contains(&Output::Disconnect));
        assert_eq!(f.state(), State::Idle);
    }
}

#[test]
fn hold_timer_is_enforced_and_restarted_by_traffic() {
    let mut f = Fsm::new(config());
    established(&mut f);
    let hold = Output::StartTimer(Timer::Hold, Duration::from_secs(9));
    assert_eq!(f.process(Event::KeepAliveMsg), std::slice::from_ref(&hold));
    assert_eq!(
        f.process(Event::UpdateMsg(Update::default())),
        std::slice::from_ref(&hold)
    );
    let out = f.process(Event::HoldTimerExpires);
    assert_eq!(sent(&out), [notification(code::HOLD_TIMER_EXPIRED, 0)]);
    assert_eq!(f.state(), State::Idle);
    assert!(out.iter().any(|o| matches!(o, Output::Down(_))));
}

#[test]
fn failures_back_off_and_restart_on_their_own() {
    let mut f = Fsm::new(config());
    f.process(Event::ManualStart);
    let mut delays = vec![];
    for _ in 0..8 {
        let out = f.process(Event::TcpConnectionFails);
        for o in &out {
            if let Output::StartTimer(Timer::IdleHold, d) = o {
                delays.push(d.as_millis());
            }
        }
        assert_eq!(f.state(), State::Idle);
        assert!(
            f.process(Event::IdleHoldTimerExpires)
                .contains(&Output::Connect)
        );
    }
    assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    // Established resets the count.
    f.process(local());
    f.process(Event::BgpOpen(peer_open(64512, 90)));
    f.process(Event::KeepAliveMsg);
    let out = f.process(Event::TcpConnectionFails);
    assert!(out.contains(&Output::StartTimer(Timer::IdleHold, FIRST_BACKOFF)));
}

#[test]
fn stop_sends_cease_unless_graceful() {
    let mut f = Fsm::new(config());
    established(&mut f);
    let out = f.process(Event::ManualStop { graceful: false });
    assert_eq!(
        sent(&out),
        [notification(code::CEASE, code::ADMINISTRATIVE_SHUTDOWN)]
    );
    // A stopped session does not come back by itself.
    assert!(f.process(Event::IdleHoldTimerExpires).is_empty());
    let mut f = Fsm::new(config());
    established(&mut f);
    assert!(sent(&f.process(Event::ManualStop { graceful: true })).is_empty());
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let mut f = Fsm::new(config());
    f.process(Event::ManualStart);
    f.process(local());
    let out = f.process(Event::KeepAliveMsg);
    assert_eq!(sent(&out), [notification(code::FSM, 1)]);
    let mut f = Fsm::new(config());
    established(&mut f);
    let out = f.process(Event::BgpOpen(peer_open(64512, 90)));
    assert_eq!(sent(&out), [notification(code::FSM, 3)]);
    let mut f = Fsm::new(config());
    established(&mut f);
    let out = f.process(Event::UpdateMsgErr(DecodeError::MalformedAttributeList));
    assert_eq!(sent(&out), [notification(3, 1)]);
}

#[test]
fn ibgp_and_route_refresh() {
    let mut f = Fsm::new(Config {
        peer_as: 64513,
        ..config()
    });
    f.process(Event::ManualStart);
    f.process(local());
    f.process(Event::BgpOpen(peer_open(64513, 0)));
    let out = f.process(Event::KeepAliveMsg);
    let Some(Output::Established(n)) = out.last() else {
        panic!("not established")
    };
    // Hold time 0: no keepalives, no hold timer.
    assert!(n.ibgp && n.hold_time == 0);
    assert_eq!(
        f.process(Event::RouteRefreshMsg { afi: 2, safi: 1 }),
        [Output::Resend { afi: 2 }]
    );
}

#[test]
fn restart_state_bit_only_until_the_first_established() {
    let mut f = Fsm::new(Config {
        restarting: true,
        ..config()
    });
    let restarting = |f: &mut Fsm| {
        f.process(Event::ManualStart);
        let out = f.process(local());
        let [Message::Open(o)] = &sent(&out)[..] else {
            panic!("no open: {out:?}")
        };
        o.graceful_restart().map(|g| g.restarting)
    };
    assert_eq!(restarting(&mut f), Some(true));
    f.process(Event::BgpOpen(peer_open(64512, 90)));
    f.process(Event::KeepAliveMsg);
    assert_eq!(f.state(), State::Established);
    f.process(Event::TcpConnectionFails);
    f.process(Event::ManualStop { graceful: false });
    assert_eq!(restarting(&mut f), Some(false));
}
