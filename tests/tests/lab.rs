//! The network lab (`scripts/lab`): built in namespaces of its own, hosts reach each other over
//! IPv4 and IPv6 with the fixed MACs, a second `up` is refused, and `down` leaves nothing behind,
//! even with processes still running inside.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn lab(args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab");
    Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run scripts/lab")
}

fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

#[test]
fn lab_comes_up_and_goes_away() {
    let name = format!("lt{}", std::process::id() % 100_000);
    let up = lab(&["up", &name]);
    assert!(
        up.status.success(),
        "scripts/lab up needs root and iproute2: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let guard = Down(name.clone());
    assert_eq!(namespaces(&format!("{name}-")).len(), 6);
    for target in ["10.250.0.11", "fd00:250::13"] {
        let ping = lab(&["exec", &name, "client", "ping", "-c1", "-W2", target]);
        assert!(
            ping.status.success(),
            "ping {target}: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }
    let neigh = lab(&[
        "exec",
        &name,
        "client",
        "ip",
        "neigh",
        "show",
        "10.250.0.11",
    ]);
    assert!(String::from_utf8_lossy(&neigh.stdout).contains("02:fa:00:00:00:11"));
    let again = lab(&["up", &name]);
    assert!(!again.status.success(), "a second up must be refused");
    // A process left running inside must not keep the lab alive.
    let sleeper = Command::new("ip")
        .args(["netns", "exec", &format!("{name}-n1"), "sleep", "300"])
        .spawn()
        .unwrap();
    drop(guard);
    assert!(
        namespaces(&format!("{name}-")).is_empty(),
        "namespaces left behind"
    );
    let mut sleeper = sleeper;
    assert!(sleeper.wait().is_ok());
}

/// Takes the lab down when the test ends, passed or failed.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let out = lab(&["down", &self.0]);
        assert!(out.status.success() || std::thread::panicking());
    }
}
