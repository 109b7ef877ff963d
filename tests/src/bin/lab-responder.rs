//! Runs the announcer's layer-2 responder on one interface for fixed addresses, for the lab
//! tests: `lab-responder IFACE IP...`. It announces the addresses at start and answers for them
//! until killed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ferrolb_announcer::l2::{Addresses, Command, Counters, Link, serve};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(iface) = args.next() else {
        eprintln!("usage: lab-responder IFACE IP...");
        std::process::exit(2);
    };
    let addrs: BTreeSet<IpAddr> = args
        .map(|a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("lab-responder: {a:?} is not an IP address");
                std::process::exit(2)
            })
        })
        .collect();
    let link = Link::by_name(&iface).unwrap_or_else(|e| {
        eprintln!("lab-responder: {e}");
        std::process::exit(1)
    });
    let (commands, rx) = std::sync::mpsc::channel();
    let mut queued = addrs
        .iter()
        .map(|a| Command::Announce(*a, Default::default()))
        .collect::<Vec<_>>();
    queued.insert(
        0,
        Command::Answer(Addresses {
            answer: addrs.clone(),
            served: addrs.clone(),
        }),
    );
    for c in queued {
        if commands.send(c).is_err() {
            std::process::exit(1);
        }
    }
    // `commands` stays alive for as long as the responder runs.
    let result = serve(&link, true, rx, Arc::new(Counters::default()));
    drop(commands);
    if let Err(e) = result {
        eprintln!("lab-responder: {e}");
        std::process::exit(1);
    }
}
