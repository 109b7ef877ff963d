//! Measures failover from the client's side: `lab-probe ADDR:PORT OLD_NODE DEADLINE_MS` prints
//! "ready", then asks `ADDR:PORT` over HTTP again and again until a node other than OLD_NODE
//! answers, and prints the Unix time of that answer in microseconds and the node's name. Exit
//! code 1 if the deadline passes first.
//!
//! `lab-probe --timeline ADDR:PORT` asks until it is killed and prints a line at every change
//! of who answers: the Unix time in microseconds, and the node's name or `-` for no answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The node that answered, if one did within the timeouts.
fn ask(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(50)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let node = text.split("served by ").nth(1)?.trim().to_string();
    Some(node)
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

fn timeline(addr: SocketAddr) -> ! {
    let mut last: Option<Option<String>> = None;
    loop {
        let answer = ask(addr);
        if last.as_ref() != Some(&answer) {
            println!("{} {}", now_micros(), answer.as_deref().unwrap_or("-"));
            last = Some(answer);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, addr] = &args[..]
        && flag == "--timeline"
    {
        match addr.parse() {
            Ok(addr) => timeline(addr),
            Err(_) => {
                eprintln!("lab-probe: {addr:?} is not ADDR:PORT");
                std::process::exit(2)
            }
        }
    }
    let [addr, old, deadline] = &args[..] else {
        eprintln!("usage: lab-probe ADDR:PORT OLD_NODE DEADLINE_MS");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| {
        eprintln!("lab-probe: {addr:?} is not ADDR:PORT");
        std::process::exit(2)
    });
    let deadline = Duration::from_millis(deadline.parse().unwrap_or(5000));
    println!("ready");
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Some(node) = ask(addr)
            && &node != old
        {
            println!("{} {node}", now_micros());
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    println!("timeout");
    std::process::exit(1);
}
