//! One BFD session of the announcer's runner, for the lab: `lab-bfd LOCAL PEER INTERVAL_MS`
//! listens on LOCAL:3784, runs a single-hop session to PEER with INTERVAL_MS both ways and a
//! multiplier of 3, and prints every state change to standard error as `<state> <diagnostic>`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ferrolb_announcer::bfd::runner::{self, Command, Metrics, Peer};
use ferrolb_announcer::bfd::session::Config;
use ferrolb_announcer::bfd::{self as bfd};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match &args[..] {
        [local, peer, ms] => local
            .parse::<IpAddr>()
            .ok()
            .zip(peer.parse::<IpAddr>().ok())
            .zip(ms.parse::<u64>().ok()),
        _ => None,
    };
    let Some(((local, peer), ms)) = parsed else {
        eprintln!("usage: lab-bfd LOCAL PEER INTERVAL_MS");
        std::process::exit(2);
    };
    let (commands, rx) = tokio::sync::mpsc::unbounded_channel();
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let interval = Duration::from_millis(ms);
    let session = Peer {
        address: peer,
        port: bfd::SINGLE_HOP_PORT,
        source: Some(local),
        config: Config {
            desired_min_tx: interval,
            required_min_rx: interval,
            detect_mult: 3,
            passive: false,
        },
        multihop: false,
        minimum_ttl: 254,
    };
    let _ = commands.send(Command::Set("peer".into(), session));
    let listen = vec![SocketAddr::new(local, bfd::SINGLE_HOP_PORT)];
    let running = tokio::spawn(runner::run(listen, rx, tx, Arc::new(Metrics::default())));
    while let Some(c) = changes.recv().await {
        eprintln!("{} {:?}", c.to.as_str(), c.diag);
    }
    drop(commands);
    if let Ok(Err(e)) = running.await {
        eprintln!("lab-bfd: {e}");
        std::process::exit(1);
    }
}
