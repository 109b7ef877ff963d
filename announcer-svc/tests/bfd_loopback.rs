//! Two of the announcer's BFD runners talk over loopback (127.0.0.1 and 127.0.0.2, real UDP
//! sockets): they come up, a profile change renegotiates without a flap, forged and malformed
//! datagrams are dropped and counted by reason, and when one side dies the other detects it
//! within the detection time.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_announcer::bfd::packet::{Control, Diag, State};
use ferrolb_announcer::bfd::runner::{self, Change, Command, Metrics, Peer};
use ferrolb_announcer::bfd::session::Config;
use tokio::sync::mpsc;

const MS: Duration = Duration::from_millis(1);

fn profile(interval: Duration) -> Config {
    Config {
        desired_min_tx: interval,
        required_min_rx: interval,
        detect_mult: 3,
        passive: false,
    }
}

struct Side {
    commands: mpsc::UnboundedSender<Command>,
    changes: mpsc::UnboundedReceiver<Change>,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn side(me: &str, peer: &str, port: u16) -> Side {
    let (commands, rx) = mpsc::unbounded_channel();
    let (tx, changes) = mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::default());
    let listen = vec![SocketAddr::new(me.parse().unwrap(), port)];
    let task = tokio::spawn(runner::run(listen, rx, tx, Arc::clone(&metrics)));
    let peer = Peer {
        address: peer.parse().unwrap(),
        port,
        source: Some(me.parse().unwrap()),
        config: profile(100 * MS),
        multihop: false,
        minimum_ttl: 254,
    };
    commands.send(Command::Set("peer".into(), peer)).unwrap();
    Side {
        commands,
        changes,
        metrics,
        task,
    }
}

async fn until(side: &mut Side, to: State, within: Duration) -> Change {
    tokio::time::timeout(within, async {
        loop {
            let c = side.changes.recv().await.expect("the runner reports");
            if c.to == to {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not {to:?} within {within:?}"))
}

fn dropped(m: &Metrics, reason: &str) -> u64 {
    m.dropped
        .get_or_create(&vec![("reason", reason.to_string())])
        .get()
}

fn forged(state: State, your: u32) -> Vec<u8> {
    Control {
        diag: Diag::None,
        state,
        poll: false,
        fin: false,
        control_plane_independent: false,
        demand: false,
        detect_mult: 3,
        my_discriminator: 0x0bad_cafe,
        your_discriminator: your,
        desired_min_tx: 100 * MS,
        required_min_rx: 100 * MS,
        required_min_echo_rx: Duration::ZERO,
    }
    .encode()
    .to_vec()
}

#[tokio::test]
async fn two_runners_come_up_drop_forgeries_and_detect_a_dead_peer() {
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut a = side("127.0.0.1", "127.0.0.2", port);
    let mut b = side("127.0.0.2", "127.0.0.1", port);
    until(&mut a, State::Up, Duration::from_secs(5)).await;
    until(&mut b, State::Up, Duration::from_secs(5)).await;

    // Datagrams to b that claim to be a's, each failing one check.
    let to_b: SocketAddr = SocketAddr::new("127.0.0.2".parse().unwrap(), port);
    let forger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    forger.set_ttl(64).unwrap();
    forger.send_to(&forged(State::Down, 0), to_b).unwrap();
    let forger255 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    forger255.set_ttl(255).unwrap();
    forger255
        .send_to(&forged(State::Up, 0xdead_beef), to_b)
        .unwrap();
    forger255.send_to(&forged(State::Down, 0), to_b).unwrap();
    forger255.send_to(&[0x20, 0xc0, 3], to_b).unwrap();
    let mut bad_version = forged(State::Up, 0);
    bad_version[0] = 0x40;
    forger255.send_to(&bad_version, to_b).unwrap();
    let other = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
    other.set_ttl(255).unwrap();
    let b_discr_unknown = forged(State::Down, 0);
    other.send_to(&b_discr_unknown, to_b).unwrap();
    tokio::time::sleep(300 * MS).await;
    for (reason, n) in [
        ("ttl", 1),
        ("no_session", 2),
        ("zero_discriminator", 1),
        ("short", 1),
        ("version", 1),
    ] {
        assert_eq!(dropped(&b.metrics, reason), n, "{reason}");
    }

    // A slower profile on a: renegotiated with a poll sequence, and nobody goes down.
    let slower = Peer {
        address: "127.0.0.2".parse::<IpAddr>().unwrap(),
        port,
        source: Some("127.0.0.1".parse().unwrap()),
        config: profile(200 * MS),
        multihop: false,
        minimum_ttl: 254,
    };
    a.commands
        .send(Command::Set("peer".into(), slower))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.changes.try_recv().is_err(), "a flapped");
    assert!(b.changes.try_recv().is_err(), "b flapped");

    // a dies without a word: b finds out within its detection time (3 × 200 ms) and a margin.
    a.task.abort();
    let died = Instant::now();
    let c = until(&mut b, State::Down, Duration::from_secs(2)).await;
    let took = died.elapsed();
    assert_eq!(c.diag, Diag::ControlDetectionTimeExpired);
    assert!(took <= 600 * MS + 150 * MS, "detected after {took:?}");
    assert_eq!(
        b.metrics
            .detections
            .get_or_create(&vec![("peer", "127.0.0.1".to_string())])
            .get(),
        1
    );
    drop(b.commands);
    b.task.await.unwrap().unwrap();
}
