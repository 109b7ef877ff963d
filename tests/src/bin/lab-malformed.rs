//! Sends malformed ARP and NDP frames on an interface of the lab, for the announcer to drop and
//! count: `lab-malformed IFACE`. Prints how many it sent.

use ferrolb_announcer::l2::Link;
use ferrolb_announcer::packet::Mac;
use ferrolb_announcer::packet::arp::{Arp, Operation};
use ferrolb_announcer::packet::ndp::{Message, Ndp};

fn main() {
    let Some(iface) = std::env::args().nth(1) else {
        eprintln!("usage: lab-malformed IFACE");
        std::process::exit(2);
    };
    let link = Link::by_name(&iface).unwrap_or_else(|e| {
        eprintln!("lab-malformed: {e}");
        std::process::exit(1)
    });
    let who_has = Arp {
        eth_dst: Mac::BROADCAST,
        eth_src: link.mac,
        operation: Operation::Request,
        sender_mac: link.mac,
        sender_ip: [10, 250, 0, 100].into(),
        target_mac: Mac::ZERO,
        target_ip: [192, 168, 1, 240].into(),
    }
    .encode();
    let mut bad_op = who_has.clone();
    bad_op[21] = 9; // no such ARP operation
    let short = who_has[..24].to_vec(); // cut inside the ARP header
    let mut bad_len = who_has.clone();
    bad_len[18] = 8; // a hardware address length ARP over Ethernet never has
    let mut bad_sum = Ndp {
        eth_dst: Mac::BROADCAST,
        eth_src: link.mac,
        src: "fe80::1".parse().expect("literal"),
        dst: "ff02::1".parse().expect("literal"),
        message: Message::Solicitation {
            target: "fd00:250::240".parse().expect("literal"),
            source_lla: Some(link.mac),
        },
    }
    .encode();
    let last = bad_sum.len() - 1;
    bad_sum[last] ^= 0xff; // the ICMPv6 checksum no longer matches
    let frames = [bad_op, short, bad_len, bad_sum];
    match link.send_raw(&frames) {
        Ok(()) => println!("{}", frames.len()),
        Err(e) => {
            eprintln!("lab-malformed: {e}");
            std::process::exit(1);
        }
    }
}
