//! Any datagram on a BFD port: decoding must return, never panic, and a session must take
//! whatever decodes in every state it can be in.
#![no_main]

use std::time::Duration;

use ferrolb_announcer::bfd::packet::Control;
use ferrolb_announcer::bfd::session::{Config, Event, Session};
use libfuzzer_sys::fuzz_target;

fn session() -> Session {
    let config = Config {
        desired_min_tx: Duration::from_millis(300),
        required_min_rx: Duration::from_millis(300),
        detect_mult: 3,
        passive: false,
    };
    Session::new(0x1111, config).0
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Control::decode(data) {
        let mut s = session();
        for _ in 0..3 {
            // Down, then whatever the packet moved it to, then once more.
            let _ = s.process(Event::Received(p.clone()));
        }
        let _ = s.process(Event::AdminDown);
        let _ = s.process(Event::Received(p));
    }
});
