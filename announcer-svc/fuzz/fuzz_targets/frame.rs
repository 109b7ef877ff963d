//! Any frame off the wire: the ARP and NDP decoders and the responder's decision must return,
//! never panic, whatever the bytes.
#![no_main]

use std::collections::BTreeSet;
use std::net::IpAddr;

use ferrolb_announcer::l2::{Addresses, Counters, answer};
use ferrolb_announcer::packet::Mac;
use ferrolb_announcer::packet::arp::Arp;
use ferrolb_announcer::packet::ndp::Ndp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let _ = Arp::decode(frame);
    let _ = Ndp::decode(frame);
    let owned: BTreeSet<IpAddr> = ["192.168.1.240", "fd00:250::240"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let owned = Addresses {
        answer: owned.clone(),
        served: owned,
    };
    let _ = answer(frame, Mac([2, 0xfa, 0, 0, 0, 0x11]), &owned, &Counters::default());
});
