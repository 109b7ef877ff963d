//! Any bytes from a BGP peer: framing and decoding must return, never panic, and the state
//! machine must take whatever decodes (or the error that does not) both while the session opens
//! and once it is established.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ferrolb_announcer::bgp::fsm::{Config, Event, Fsm};
use ferrolb_announcer::bgp::wire::{self, Capability, Open};
use libfuzzer_sys::fuzz_target;

fn opened() -> Fsm {
    let mut f = Fsm::new(Config {
        my_as: 64513,
        peer_as: 64512,
        router_id: None,
        fallback_id: Ipv4Addr::new(10, 0, 0, 2),
        hold_time: 90,
        keepalive: None,
        graceful_restart: Some(120),
        restarting: true,
        max_backoff: Duration::from_secs(30),
    });
    f.process(Event::ManualStart);
    f.process(Event::TcpCrAcked {
        local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 11)),
    });
    f
}

fn established() -> Fsm {
    let mut f = opened();
    f.process(Event::BgpOpen(Open {
        version: 4,
        my_as: 64512,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        capabilities: vec![Capability::FourOctetAs(64512)],
    }));
    f.process(Event::KeepAliveMsg);
    f
}

fuzz_target!(|data: &[u8]| {
    let _ = wire::frame_len(data);
    for four in [false, true] {
        opened().process(Event::received(data, four));
        established().process(Event::received(data, four));
    }
});
