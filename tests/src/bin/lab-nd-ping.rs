//! The IPv6 counterpart of arping for the lab: `lab-nd-ping IFACE SOURCE TARGET COUNT` sends
//! neighbor solicitations for TARGET from SOURCE and prints each round trip to the matching
//! advertisement as "time=<µs> usec", timed in userspace around the raw socket as arping does.
//! Exit code 1 if nothing answered.

use std::time::{Duration, Instant};

use ferrolb_announcer::l2::Link;
use ferrolb_announcer::packet::ndp::{self, Message, Ndp};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [iface, source, target, count] = &args[..] else {
        eprintln!("usage: lab-nd-ping IFACE SOURCE TARGET COUNT");
        std::process::exit(2);
    };
    let (Ok(source), Ok(target), Ok(count)) =
        (source.parse(), target.parse(), count.parse::<usize>())
    else {
        eprintln!("lab-nd-ping: SOURCE and TARGET are IPv6 addresses, COUNT a number");
        std::process::exit(2);
    };
    let link = Link::by_name(iface).unwrap_or_else(|e| {
        eprintln!("lab-nd-ping: {e}");
        std::process::exit(1)
    });
    let (mut tx, mut rx) = link
        .channel(false, Duration::from_millis(5))
        .unwrap_or_else(|e| {
            eprintln!("lab-nd-ping: {e}");
            std::process::exit(1)
        });
    let group = ndp::solicited_node(target);
    let ns = Ndp {
        eth_dst: ndp::multicast_mac(group),
        eth_src: link.mac,
        src: source,
        dst: group,
        message: Message::Solicitation {
            target,
            source_lla: Some(link.mac),
        },
    }
    .encode();
    let mut answered = 0;
    for _ in 0..count {
        let start = Instant::now();
        if let Some(Err(e)) = tx.send_to(&ns, None) {
            eprintln!("lab-nd-ping: {e}");
            std::process::exit(1);
        }
        while start.elapsed() < Duration::from_millis(100) {
            let Ok(frame) = rx.next() else { continue };
            let Ok(na) = Ndp::decode(frame) else { continue };
            if let Message::Advertisement { target: t, .. } = na.message
                && t == target
                && na.eth_dst == link.mac
            {
                println!("time={:.3} usec", start.elapsed().as_secs_f64() * 1e6);
                answered += 1;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if answered == 0 {
        std::process::exit(1);
    }
}
