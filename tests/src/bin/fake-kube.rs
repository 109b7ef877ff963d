//! The fake Kubernetes API server as a process, for labs whose namespaces the test cannot reach
//! over TCP: `fake-kube ADDR [--empty]` serves on ADDR (with MetalLB's CRDs installed, unless
//! `--empty`: then an install file brings them) and takes commands on standard input, one per
//! line, answering each with one line of JSON:
//!   put COLLECTION JSON         create or replace an object → the stored object
//!   get COLLECTION NS NAME      → the object, or null
//!   delete COLLECTION NS NAME   → true or false
//!   list COLLECTION             → an array of the objects

use std::io::BufRead;

use ferrolb_e2e::fakekube::FakeKube;
use serde_json::Value;

#[tokio::main]
async fn main() {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: fake-kube ADDR [--empty]");
        std::process::exit(2);
    };
    let kube = FakeKube::start_on(&addr).await;
    if std::env::args().nth(2).as_deref() != Some("--empty") {
        kube.install_crds();
    }
    let lines = tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { return };
            let mut words = line.splitn(3, ' ');
            let (cmd, collection, rest) = (
                words.next().unwrap_or_default(),
                words.next().unwrap_or_default(),
                words.next().unwrap_or_default(),
            );
            let answer = match cmd {
                "put" => match serde_json::from_str::<Value>(rest) {
                    Ok(obj) => kube.put(collection, obj),
                    Err(e) => Value::String(format!("error: {e}")),
                },
                "get" | "delete" => {
                    let (ns, name) = rest.split_once(' ').unwrap_or(("", rest));
                    if cmd == "get" {
                        kube.get(collection, ns, name).unwrap_or(Value::Null)
                    } else {
                        Value::Bool(kube.delete(collection, ns, name))
                    }
                }
                "list" => Value::Array(kube.list(collection)),
                other => Value::String(format!("error: unknown command {other:?}")),
            };
            println!("{answer}");
        }
    });
    let _ = lines.await;
}
