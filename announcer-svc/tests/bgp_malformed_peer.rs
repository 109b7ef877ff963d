//! A BGP peer on 127.0.0.1 that misbehaves. For each malformed or out-of-place message the
//! speaker answers with the NOTIFICATION RFC 4271 (and RFC 6608) names, closes the connection,
//! counts the message, and comes back with a clean session that carries its routes again. A
//! peer that falls silent is dropped when the hold timer expires.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ferrolb_announcer::bgp::rib::Route;
use ferrolb_announcer::bgp::speaker::{self, Command, Common, PeerSpec};
use ferrolb_announcer::bgp::wire::{self, Capability, Message, Open};
use ferrolb_announcer::l2::Counters;
use ferrolb_announcer::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const PEER_AS: u32 = 64512;

/// Reads one whole message; None when the speaker closed the connection.
async fn read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 19];
    s.read_exact(&mut head).await.ok()?;
    let len = usize::from(u16::from_be_bytes([head[16], head[17]]));
    let mut msg = head.to_vec();
    msg.resize(len, 0);
    s.read_exact(&mut msg[19..]).await.ok()?;
    Some(msg)
}

async fn next(s: &mut TcpStream) -> Option<Message> {
    let msg = timeout(WAIT, read_message(s))
        .await
        .expect("the speaker went silent")?;
    Some(wire::decode(&msg, true).expect("the speaker's messages decode"))
}

fn peer_open() -> Message {
    peer_open_with_hold(90)
}

fn peer_open_with_hold(hold_time: u16) -> Message {
    Message::Open(Open {
        version: 4,
        my_as: PEER_AS as u16,
        hold_time,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::FourOctetAs(PEER_AS),
        ],
    })
}

/// Accepts the speaker's next connection and brings the session up; returns the connection
/// once the speaker's routes and End-of-RIB have arrived, with how many prefixes came.
async fn establish(listener: &TcpListener) -> (TcpStream, usize) {
    establish_with(listener, peer_open()).await
}

async fn establish_with(listener: &TcpListener, open: Message) -> (TcpStream, usize) {
    let (mut s, _) = timeout(WAIT, listener.accept())
        .await
        .expect("the speaker did not come back")
        .unwrap();
    assert!(matches!(next(&mut s).await, Some(Message::Open(_))));
    s.write_all(&wire::encode(&open, true)).await.unwrap();
    s.write_all(&wire::encode(&Message::Keepalive, true))
        .await
        .unwrap();
    let mut prefixes = 0;
    loop {
        match next(&mut s).await.expect("closed while establishing") {
            Message::Keepalive => {}
            Message::Update(u) if u.announced.is_empty() && u.attributes.is_none() => {
                return (s, prefixes);
            }
            Message::Update(u) => prefixes += u.announced.len(),
            other => panic!("unexpected while establishing: {other:?}"),
        }
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![0xff; 16];
    b.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    b.push(kind);
    b.extend_from_slice(body);
    b
}

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    frame(2, &b)
}

/// A listening peer and a speaker session towards it, holding one route.
async fn speaker_for_a_peer() -> (TcpListener, u16, Metrics, speaker::Session) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let metrics = Metrics::new(&Arc::new(Counters::default()));
    let session = speaker::spawn(
        PeerSpec {
            name: "malformed".into(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            source: None,
            my_as: 64513,
            peer_as: PEER_AS,
            router_id: None,
            hold_time: 90,
            keepalive: None,
            password: None,
            ebgp_multihop: false,
            graceful_restart: false,
            bfd: None,
        },
        &Common {
            fallback_id: Ipv4Addr::new(10, 0, 0, 2),
            restart_time: 120,
            started: std::time::Instant::now(),
            max_backoff: Duration::from_secs(2),
        },
        Arc::clone(&metrics.bgp),
    );
    let route: wire::Prefix = "10.100.50.1/32".parse().unwrap();
    session
        .commands
        .send(Command::Routes {
            set: vec![(route, Route::default())],
            unset: vec![],
            origin: Default::default(),
        })
        .unwrap();

    (listener, port, metrics, session)
}

#[tokio::test]
async fn a_silent_peer_is_dropped_when_the_hold_timer_expires() {
    let (listener, _port, _metrics, _session) = speaker_for_a_peer().await;
    // Hold time 3 s: the speaker sends KEEPALIVEs every second and expects one within 3 s.
    let (mut s, _) = establish_with(&listener, peer_open_with_hold(3)).await;
    let silent = std::time::Instant::now();
    let n = loop {
        match next(&mut s).await {
            Some(Message::Notification(n)) => break n,
            Some(Message::Keepalive) => {}
            other => panic!("{other:?} instead of a NOTIFICATION"),
        }
    };
    let after = silent.elapsed();
    assert_eq!((n.code, n.subcode), (4, 0), "Hold Timer Expired: {n}");
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(4),
        "dropped after {after:?}"
    );
    assert!(timeout(WAIT, read_message(&mut s)).await.unwrap().is_none());
    // And it tries again.
    establish(&listener).await;
}

#[tokio::test]
async fn malformed_messages_get_their_notifications_and_a_clean_reset() {
    let (listener, port, metrics, session) = speaker_for_a_peer().await;
    let ka = frame(4, &[]);
    let mut unsynced = ka.clone();
    unsynced[0] = 0;
    let mut too_long = ka.clone();
    too_long[16..18].copy_from_slice(&4097u16.to_be_bytes());
    let mut padded = frame(4, &[0]);
    padded[17] = 20;
    let origin = [0x40, 1, 1, 0];
    let as_path = [0x40, 2, 0];
    let nlri = [32, 10, 9, 9, 9];
    // What the peer sends, the NOTIFICATION's code and subcode, and its data (when checked).
    type Case = (&'static str, Vec<u8>, (u8, u8), Vec<u8>);
    let cases: Vec<Case> = vec![
        ("header marker not all ones", unsynced, (1, 1), vec![]),
        ("length over 4096", too_long, (1, 2), vec![0x10, 0x01]),
        ("KEEPALIVE with a body", padded, (1, 2), vec![0, 20]),
        ("unknown type 9", frame(9, &[]), (1, 3), vec![9]),
        (
            "ORIGIN 7",
            update(&[0x40, 1, 1, 7], &nlri),
            (3, 6),
            vec![0x40, 1, 1, 7],
        ),
        (
            "ORIGIN flagged optional",
            update(&[0x80, 1, 1, 0], &nlri),
            (3, 4),
            vec![0x80, 1, 1, 0],
        ),
        (
            "NEXT_HOP missing",
            update(&[origin.as_slice(), &as_path].concat(), &nlri),
            (3, 3),
            vec![3],
        ),
        (
            "attribute longer than the list",
            update(&[0x40, 1, 9, 0], &[]),
            (3, 1),
            vec![],
        ),
        (
            "prefix of 33 bits",
            update(&[], &[33, 1, 2, 3, 4, 5]),
            (3, 10),
            vec![],
        ),
        (
            "OPEN in Established",
            wire::encode(&peer_open(), true),
            (5, 3),
            vec![],
        ),
    ];
    let malformed = cases.iter().filter(|c| c.2.0 != 5).count();
    for (what, bytes, (code, subcode), data) in cases {
        let (mut s, prefixes) = establish(&listener).await;
        assert_eq!(prefixes, 1, "{what}: the route again after the reset");
        s.write_all(&bytes).await.unwrap();
        let n = loop {
            match next(&mut s).await {
                Some(Message::Notification(n)) => break n,
                Some(Message::Keepalive) => {}
                other => panic!("{what}: {other:?} instead of a NOTIFICATION"),
            }
        };
        assert_eq!((n.code, n.subcode), (code, subcode), "{what}: {n}");
        if !data.is_empty() {
            assert_eq!(n.data, data, "{what}: the NOTIFICATION's data");
        }
        // The speaker closes the connection after its NOTIFICATION.
        assert!(
            timeout(WAIT, read_message(&mut s)).await.unwrap().is_none(),
            "{what}: the connection stayed open"
        );
    }
    // And the session comes back once more, the task alive.
    let (_s, prefixes) = establish(&listener).await;
    assert_eq!(prefixes, 1);
    assert!(!session.task.is_finished());
    let text = metrics.encode();
    let label = format!("{{peer=\"127.0.0.1:{port}\"}}");
    for (name, want) in [
        ("bgp_malformed_messages_total", malformed),
        ("bgp_notifications_sent_total", 10),
        ("bgp_session_up", 1),
    ] {
        let line = format!("ferrolb_announcer_{name}{label} {want}");
        assert!(text.contains(&line), "no {line} in\n{text}");
    }
}
