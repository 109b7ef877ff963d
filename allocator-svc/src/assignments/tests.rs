//! The view's caching on a source in memory: what is read when, and when nothing is decided.

use std::sync::Mutex;

use super::*;
use crate::cluster::{Endpoints, L2Ad, NodeInfo};

/// Cluster state, pool labels and leases with their change log, counting what is read.
#[derive(Default)]
struct Mem {
    rows: Mutex<ClusterRows>,
    leases: Mutex<Vec<Lease>>,
    events: Mutex<Vec<LeaseEvent>>,
    reads: Mutex<Vec<&'static str>>,
}

impl Mem {
    fn read(&self, what: &'static str) {
        self.reads.lock().expect("reads").push(what);
    }

    fn reads(&self, what: &str) -> usize {
        self.reads
            .lock()
            .expect("reads")
            .iter()
            .filter(|r| **r == what)
            .count()
    }

    fn revision(&self) -> u64 {
        self.events
            .lock()
            .expect("events")
            .last()
            .map_or(0, |e| e.revision)
    }

    /// A lease change, as a committed batch records it.
    fn change(&self, kind: EventKind, lease: Lease) {
        let revision = self.revision() + 1;
        let mut leases = self.leases.lock().expect("leases");
        leases.retain(|l| l.owner != lease.owner);
        if !matches!(kind, EventKind::Released | EventKind::Expired) {
            leases.push(lease.clone());
        }
        let e = LeaseEvent {
            revision,
            kind,
            lease,
        };
        self.events.lock().expect("events").push(e);
    }
}

impl ViewSource for Mem {
    async fn cluster_revision(&self) -> Result<u64> {
        Ok(self.rows.lock().expect("rows").revision)
    }
    async fn live_announcers(&self) -> Result<(BTreeMap<String, BTreeSet<String>>, Sessions)> {
        let rows = self.rows.lock().expect("rows");
        Ok((rows.live.clone(), rows.sessions.clone()))
    }
    async fn cluster_rows_after(&self, _previous: Option<ClusterRows>) -> Result<ClusterRows> {
        self.read("cluster_rows");
        Ok(self.rows.lock().expect("rows").clone())
    }
    async fn pool_labels(&self) -> Result<BTreeMap<String, Labels>> {
        Ok(BTreeMap::from([("lan".to_string(), Labels::new())]))
    }
    async fn service_leases(&self) -> Result<(u64, Vec<Lease>)> {
        self.read("service_leases");
        Ok((self.revision(), self.leases.lock().expect("leases").clone()))
    }
    async fn lease_events(&self, revision: u64, limit: u32) -> Result<Vec<LeaseEvent>> {
        self.read("lease_events");
        let events = self.events.lock().expect("events");
        Ok(events
            .iter()
            .filter(|e| e.revision > revision)
            .take(limit as usize)
            .cloned()
            .collect())
    }
}

fn lease(name: &str, ip: &str) -> Lease {
    crate::lease::service_lease("home", name, "lan", &[ip])
}

/// One node, n1, with a live announcer and the endpoints of `services`, and an L2Advertisement
/// of every pool when `advertised`.
fn home(advertised: bool, services: &[&str]) -> ClusterRows {
    let serving = Endpoints {
        nodes: BTreeSet::from(["n1".to_string()]),
        any_serving: true,
        local: false,
        labels: Default::default(),
    };
    let endpoints = services
        .iter()
        .map(|s| (("default".to_string(), s.to_string()), serving.clone()))
        .collect();
    ClusterRows {
        revision: 1,
        nodes: vec![NodeInfo {
            cluster: "home".into(),
            name: "n1".into(),
            labels: Labels::new(),
            network_unavailable: false,
        }],
        ads: if advertised {
            vec![L2Ad {
                cluster: "home".into(),
                name: "all".into(),
                ..L2Ad::default()
            }]
        } else {
            vec![]
        },
        endpoints: BTreeMap::from([("home".to_string(), endpoints)]),
        live: BTreeMap::from([("home".to_string(), BTreeSet::from(["n1".to_string()]))]),
        ..ClusterRows::default()
    }
}

fn announced(view: &View, node: &str) -> Vec<String> {
    let l2 = view.node("home", node).l2;
    l2.keys().map(IpAddr::to_string).collect()
}

/// The home cluster (advertised or not), with the endpoints of web and dns, web holding
/// 192.168.1.240, and a first decision made.
async fn started(advertised: bool) -> (Mem, Cache, View, bool) {
    let mem = Mem::default();
    *mem.rows.lock().expect("rows") = home(advertised, &["web", "dns"]);
    mem.change(EventKind::Allocated, lease("web", "192.168.1.240"));
    let mut cache = Cache::default();
    let (view, any) = compute(&mem, &mut cache, true, false)
        .await
        .expect("decided")
        .expect("a view");
    (mem, cache, view, any)
}

#[tokio::test]
async fn without_an_advertisement_no_lease_is_read() {
    let (mem, _, view, advertised) = started(false).await;
    assert!(!advertised);
    assert!(view.clusters.is_empty());
    assert_eq!(mem.reads("service_leases") + mem.reads("lease_events"), 0);
}

#[tokio::test]
async fn leases_follow_the_change_log_and_nothing_is_decided_twice() {
    let (mem, mut cache, view, advertised) = started(true).await;
    assert!(advertised);
    assert_eq!(announced(&view, "n1"), ["192.168.1.240"]);
    assert_eq!(mem.reads("service_leases"), 1);

    // Nothing moved: nothing is read again and nothing decided.
    let again = compute(&mem, &mut cache, false, false)
        .await
        .expect("looked");
    assert!(again.is_none());
    assert_eq!(mem.reads("cluster_rows"), 1);

    // A new lease comes from the change log, not from reading every lease again.
    mem.change(EventKind::Allocated, lease("dns", "192.168.1.241"));
    let (view, _) = compute(&mem, &mut cache, true, false)
        .await
        .expect("decided")
        .expect("a new view");
    assert_eq!(announced(&view, "n1"), ["192.168.1.240", "192.168.1.241"]);
    assert_eq!(mem.reads("service_leases"), 1);
    assert!(mem.reads("lease_events") >= 1);

    // A release takes the address off.
    mem.change(EventKind::Released, lease("web", "192.168.1.240"));
    let (view, _) = compute(&mem, &mut cache, true, false)
        .await
        .expect("decided")
        .expect("a new view");
    assert_eq!(announced(&view, "n1"), ["192.168.1.241"]);
    assert_eq!(view.version, 1 + 3, "cluster revision plus lease revision");
}

#[tokio::test]
async fn a_gap_in_the_change_log_reads_every_lease_again() {
    let (mem, mut cache, ..) = started(true).await;
    // Two changes, of which the log no longer holds the first (pruned).
    mem.change(EventKind::Allocated, lease("dns", "192.168.1.241"));
    mem.change(EventKind::Released, lease("web", "192.168.1.240"));
    mem.events.lock().expect("events").remove(1);
    let (view, _) = compute(&mem, &mut cache, true, false)
        .await
        .expect("decided")
        .expect("a new view");
    assert_eq!(mem.reads("service_leases"), 2);
    assert_eq!(announced(&view, "n1"), ["192.168.1.241"]);
}

#[tokio::test]
async fn a_change_of_cluster_state_is_decided_without_reading_leases() {
    let (mem, mut cache, ..) = started(true).await;
    // The node's announcer goes away.
    {
        let mut rows = mem.rows.lock().expect("rows");
        rows.revision = 2;
        rows.live.clear();
    }
    let (view, _) = compute(&mem, &mut cache, false, false)
        .await
        .expect("decided")
        .expect("a new view");
    assert!(announced(&view, "n1").is_empty());
    assert_eq!(mem.reads("service_leases"), 1);
    assert_eq!(mem.reads("lease_events"), 0);
}
