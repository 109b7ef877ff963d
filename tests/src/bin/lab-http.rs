//! A stand-in for a Service's pods in the lab: `lab-http NODE [PORT]` answers every HTTP request
//! on port 80 (IPv4 and IPv6) with "served by NODE", so a client can tell which node answered.

use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(node) = args.next() else {
        eprintln!("usage: lab-http NODE [PORT]");
        std::process::exit(2);
    };
    let port = args.next().unwrap_or_else(|| "80".into());
    let listener = TcpListener::bind(format!("[::]:{port}")).unwrap_or_else(|e| {
        eprintln!("lab-http: cannot listen on port {port}: {e}");
        std::process::exit(1)
    });
    let body = format!("served by {node}\n");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let body = body.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
    }
}
