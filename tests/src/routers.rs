//! A real BGP router in a lab's router namespace (BIRD 2), and its tables read back
//! in a form tests can assert on.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::home::HomeLab;

/// One path to a prefix in a router's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path {
    pub prefix: String,
    /// The router's session the path came over (BIRD's protocol name).
    pub from: String,
    pub next_hop: String,
    pub as_path: String,
    pub local_pref: Option<u32>,
    /// As BIRD prints them: `(65535,65281)`, `(65000, 1, 2)`.
    pub communities: String,
    pub large_communities: String,
}

fn need(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: this test needs a real BGP router (apt-get install {package}; scripts/test installs it)"
    );
}

/// BIRD 2 running in the lab's router.
pub struct Bird {
    ctl: String,
    netns: String,
    child: Child,
}

impl Bird {
    /// Starts BIRD with `config` (a complete bird.conf) and waits for its control socket.
    pub fn start(lab: &HomeLab, config: &str) -> Bird {
        need("bird", "bird2");
        let conf = lab.dir.0.join("bird.conf");
        std::fs::write(&conf, config).expect("write bird.conf");
        let ctl = lab.dir.0.join("bird.ctl").to_string_lossy().into_owned();
        let child = lab.spawn(
            "router",
            "bird",
            &["-f", "-c", &conf.to_string_lossy(), "-s", &ctl],
            "bird",
        );
        let bird = Bird {
            ctl,
            netns: format!("{}-router", lab.lab.0),
            child,
        };
        let start = Instant::now();
        while !bird.birdc(&["show", "status"]).contains("Daemon is up") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "BIRD did not start: {}",
                lab.log("bird")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bird
    }

    pub fn birdc(&self, args: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.netns, "birdc", "-s", &self.ctl])
            .args(args)
            .output()
            .expect("run birdc");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Every path in BIRD's IPv4 and IPv6 tables.
    pub fn paths(&self) -> Vec<Path> {
        parse_bird(&self.birdc(&["show", "route", "all"]))
    }

    /// Names of the BGP protocols in state Established.
    pub fn established(&self) -> Vec<String> {
        self.birdc(&["show", "protocols"])
            .lines()
            .filter(|l| l.contains("BGP") && l.contains("Established"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `birdc show route all`: a line naming a prefix starts its first path, an indented
/// `unicast [...]` line another path of the same prefix, and `BGP.*` lines fill the path.
pub fn parse_bird(text: &str) -> Vec<Path> {
    let mut out: Vec<Path> = Vec::new();
    let mut prefix = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if !line.starts_with(char::is_whitespace) && trimmed.contains('/') && trimmed.contains('[')
        {
            prefix = trimmed
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            out.push(Path {
                prefix: prefix.clone(),
                from: protocol(trimmed),
                ..Path::default()
            });
        } else if trimmed.starts_with("unicast [") {
            out.push(Path {
                prefix: prefix.clone(),
                from: protocol(trimmed),
                ..Path::default()
            });
        } else if let Some(p) = out.last_mut()
            && let Some((k, v)) = trimmed.split_once(": ")
        {
            match k {
                "BGP.next_hop" => {
                    p.next_hop = v.split_whitespace().next().unwrap_or_default().into()
                }
                "BGP.as_path" => p.as_path = v.to_string(),
                "BGP.local_pref" => p.local_pref = v.parse().ok(),
                "BGP.community" => p.communities = v.to_string(),
                "BGP.large_community" => p.large_communities = v.to_string(),
                _ => {}
            }
        }
    }
    out
}

/// The protocol in `... unicast [c4_1 12:00:00.000] ...`.
fn protocol(line: &str) -> String {
    line.split_once('[')
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// Waits until `check` holds, polling every 50 ms; panics with `what` and the last value.
pub fn eventually<T: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut read: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        let v = read();
        if check(&v) {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "{what}: not within {within:?}; last seen {v:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
