//! Which interfaces may announce, by MetalLB's rules: up and running, broadcast-capable, ARP
//! enabled, not enslaved to a bond or bridge, and not matched by an exclude pattern.

use std::path::Path;

use crate::l2::Link;

const IFF_UP: u32 = 0x1;
const IFF_BROADCAST: u32 = 0x2;
const IFF_RUNNING: u32 = 0x40;
const IFF_NOARP: u32 = 0x80;

/// MetalLB's default exclude list (`announcedInterfacesToExclude`), as name patterns.
pub const DEFAULT_EXCLUDE: &str = "docker*,cbr*,dummy*,virbr*,lxcbr*,veth*,lo,cali*,tunl*,\
                                   flannel*,kube-ipvs*,cni*,nodelocaldns*,lxc*";

/// An interface name pattern: an exact name, or a prefix followed by `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Parses a comma-separated list; empty entries are skipped.
    pub fn list(s: &str) -> Result<Vec<Pattern>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let body = p.strip_suffix('*').unwrap_or(p);
                if body.contains(['*', '/', ' ']) {
                    Err(format!(
                        "interface pattern {p:?}: use a name or a prefix followed by *"
                    ))
                } else {
                    Ok(Pattern(p.to_string()))
                }
            })
            .collect()
    }

    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.0,
        }
    }
}

/// Why an interface may not announce, or `None` if it may.
pub fn ineligible(link: &Link, exclude: &[Pattern]) -> Option<&'static str> {
    let flags = link.flags();
    if exclude.iter().any(|p| p.matches(&link.name)) {
        Some("excluded by name")
    } else if flags & IFF_UP == 0 || flags & IFF_RUNNING == 0 {
        Some("down")
    } else if flags & IFF_BROADCAST == 0 {
        Some("no broadcast")
    } else if flags & IFF_NOARP != 0 {
        Some("NOARP")
    } else if Path::new("/sys/class/net")
        .join(&link.name)
        .join("master")
        .exists()
    {
        Some("enslaved to a bond or bridge")
    } else {
        None
    }
}

/// Every interface with a MAC address, and whether it may announce.
pub fn scan(exclude: &[Pattern]) -> Vec<(Link, Option<&'static str>)> {
    pnet_datalink::interfaces()
        .into_iter()
        .filter_map(Link::new)
        .map(|l| {
            let why = ineligible(&l, exclude);
            (l, why)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Pattern::list(DEFAULT_EXCLUDE).expect("the default list parses");
        let hit = |n: &str| p.iter().any(|x| x.matches(n));
        assert!(hit("lo") && hit("docker0") && hit("veth1234") && hit("kube-ipvs0"));
        assert!(!hit("eth0") && !hit("lo0") && !hit("ens3") && !hit("bond0"));
        assert!(Pattern::list("e*th").is_err());
        assert_eq!(Pattern::list(" , eth1").expect("valid").len(), 1);
    }
}
