//! The IPAddressPools' usage counts (MetalLB's status fields): recounted when the cluster's
//! leases change, as the allocator's lease watch tells, and every so often regardless (another
//! cluster's leases in a shared pool, or while the watch is down).

use std::time::Duration;

use ferrolb_metallb::crd::{self, IPAddressPool};
use ferrolb_proto::v1 as pb;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::ResourceExt;
use kube::api::{Api, Patch};
use kube::runtime::reflector::Store;
use serde_json::json;
use tokio::time::Instant;

use crate::allocator::{Allocator, Error};
use crate::controller::{Ctx, apply_as, apply_config, manager};

/// How often the IPAddressPools' usage counts are recounted without a change of this cluster's
/// leases (another cluster's leases in a shared pool, or while the lease watch is down).
const POOL_STATUS_RESYNC: Duration = Duration::from_secs(15);
/// A burst of lease changes is counted once, this long after its first change.
const LEASE_CHANGES_SETTLE: Duration = Duration::from_millis(250);

/// The allocator's watch on this cluster's leases, opened again when it fails.
#[derive(Default)]
struct LeaseChanges {
    stream: Option<BoxStream<'static, Result<(), Error>>>,
    /// A change has come and is not yet returned (kept when a wait is cancelled).
    pending: bool,
}

impl LeaseChanges {
    /// Returns when a lease has changed (a burst counts once). While the watch cannot be had it
    /// never returns, and the counts follow the resync alone. Safe to cancel.
    async fn changed(&mut self, allocator: &dyn Allocator, cluster: &str) {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match allocator.lease_changes(cluster).await {
                    Ok(s) => self.stream = Some(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot watch the leases");
                        tokio::time::sleep(POOL_STATUS_RESYNC).await;
                    }
                }
                continue;
            };
            if self.pending {
                tokio::time::sleep(LEASE_CHANGES_SETTLE).await;
                // What came meanwhile is in the count that follows.
                while let Some(Some(Ok(()))) = stream.next().now_or_never() {}
                self.pending = false;
                return;
            }
            match stream.next().await {
                Some(Ok(())) => self.pending = true,
                Some(Err(e)) => tracing::debug!(error = %e, "the lease watch failed"),
                None => tracing::debug!("the lease watch ended"),
            }
            if !self.pending {
                self.stream = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// When the counts are written next, and the lease watch that brings it forward.
#[derive(Default)]
pub(crate) struct PoolUsage {
    leases: LeaseChanges,
    /// None: now.
    next: Option<Instant>,
}

impl PoolUsage {
    /// Counts at the next [`PoolUsage::write_if_due`] (the pools changed).
    pub(crate) fn due_now(&mut self) {
        self.next = None;
    }

    /// Writes the counts if they are due.
    pub(crate) async fn write_if_due(&mut self, ctx: &Ctx, pools: &Store<IPAddressPool>) {
        if self.next.is_none_or(|at| Instant::now() >= at) {
            write(ctx, pools).await;
            self.next = Some(Instant::now() + POOL_STATUS_RESYNC);
        }
    }

    /// Returns when the counts are due: a lease changed, or the resync came. Safe to cancel.
    pub(crate) async fn wait(&mut self, allocator: &dyn Allocator, cluster: &str) {
        let at = self.next.unwrap_or_else(Instant::now);
        tokio::select! {
            _ = self.leases.changed(allocator, cluster) => self.next = None,
            _ = tokio::time::sleep_until(at) => {}
        }
    }
}

/// Writes each pool's assigned and available counts per family (MetalLB's status fields) when
/// they change. Counts beyond i64 (large IPv6 pools) are written as i64::MAX, as MetalLB does.
async fn write(ctx: &Ctx, pools: &Store<IPAddressPool>) {
    let Ok(stats) = ctx.allocator.stats().await else {
        return;
    };
    let count = |s: &str| {
        s.parse::<u128>()
            .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX))
    };
    let api: Api<IPAddressPool> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    for pool in pools.state() {
        let mut want = crd::IPAddressPoolStatus::default();
        for st in stats.iter().filter(|st| st.pool == pool.name_any()) {
            if st.family == pb::IpFamily::Ipv6 as i32 {
                want.assigned_ipv6 = count(&st.in_use);
                want.available_ipv6 = count(&st.available);
            } else {
                want.assigned_ipv4 = count(&st.in_use);
                want.available_ipv4 = count(&st.available);
            }
        }
        let have = pool.status.clone().unwrap_or_default();
        let same = (
            have.assigned_ipv4,
            have.assigned_ipv6,
            have.available_ipv4,
            have.available_ipv6,
        ) == (
            want.assigned_ipv4,
            want.assigned_ipv6,
            want.available_ipv4,
            want.available_ipv6,
        );
        if same {
            continue;
        }
        let patch = json!({"status": {
            "assignedIPv4": want.assigned_ipv4, "assignedIPv6": want.assigned_ipv6,
            "availableIPv4": want.available_ipv4, "availableIPv6": want.available_ipv6,
        }});
        let name = pool.name_any();
        let patch = apply_config::<IPAddressPool>(&name, &ctx.settings.namespace, patch);
        if let Err(e) = api
            .patch_status(&name, &apply_as(manager::POOL_USAGE), &Patch::Apply(&patch))
            .await
        {
            tracing::debug!(error = %e, pool = pool.name_any(), "cannot write the pool's counts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Lab;
    use kube::runtime::watcher;

    fn owner(name: &str) -> pb::Owner {
        pb::Owner {
            cluster: "home".into(),
            namespace: "default".into(),
            name: name.into(),
            ..pb::Owner::default()
        }
    }

    #[tokio::test]
    async fn a_burst_of_lease_changes_is_counted_once_and_none_is_lost() {
        let lab = Lab::start(&[]).await;
        let allocator = &*lab.allocator;
        let mut leases = LeaseChanges::default();
        let quiet = tokio::time::timeout(
            Duration::from_millis(300),
            leases.changed(allocator, "home"),
        );
        assert!(quiet.await.is_err(), "no change, no count");

        allocator.put_lease(owner("a"), &["192.168.1.240"]);
        allocator.put_lease(owner("b"), &["192.168.1.241"]);
        let counted =
            tokio::time::timeout(Duration::from_secs(2), leases.changed(allocator, "home"));
        counted.await.expect("a change is counted");
        let again = tokio::time::timeout(
            Duration::from_millis(500),
            leases.changed(allocator, "home"),
        );
        assert!(again.await.is_err(), "a burst is counted once");

        // A wait cancelled while the burst settles keeps the change for the next one.
        allocator.put_lease(owner("c"), &["192.168.1.242"]);
        let cut = tokio::time::timeout(
            Duration::from_millis(100),
            leases.changed(allocator, "home"),
        );
        assert!(cut.await.is_err());
        let kept = tokio::time::timeout(Duration::from_secs(2), leases.changed(allocator, "home"));
        kept.await.expect("the change is not lost");
    }

    #[tokio::test]
    async fn a_broken_lease_watch_is_opened_again() {
        let lab = Lab::start(&[]).await;
        let allocator = &*lab.allocator;
        let mut leases = LeaseChanges::default();
        let opened = tokio::time::timeout(
            Duration::from_millis(100),
            leases.changed(allocator, "home"),
        );
        assert!(opened.await.is_err());
        allocator.break_watches();
        // The failed watch is dropped, and opened again a second later.
        let waited = tokio::time::timeout(
            Duration::from_millis(1500),
            leases.changed(allocator, "home"),
        );
        assert!(waited.await.is_err());
        assert_eq!(lab.calls("lease_changes").len(), 2);
        allocator.put_lease(owner("a"), &["192.168.1.240"]);
        let counted =
            tokio::time::timeout(Duration::from_secs(2), leases.changed(allocator, "home"));
        counted.await.expect("the new watch sees changes");
    }

    #[tokio::test]
    async fn the_counts_are_written_per_family_and_only_when_they_change() {
        let lab = Lab::start(&["192.168.1.240", "192.168.1.241", "192.168.1.242"]).await;
        let collection = "/apis/metallb.io/v1beta1/ipaddresspools";
        let pool = json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "default", "namespace": "metallb-system"},
            "spec": {"addresses": ["192.168.1.240-192.168.1.242"]},
        });
        lab.kube.put(collection, pool);
        let (store, mut writer) = kube::runtime::reflector::store::<IPAddressPool>();
        let stored = |lab: &Lab| -> IPAddressPool {
            let v = lab
                .kube
                .get(collection, "metallb-system", "default")
                .expect("stored");
            serde_json::from_value(v).expect("a pool")
        };
        writer.apply_watcher_event(&watcher::Event::Apply(stored(&lab)));
        lab.allocator.put_lease(owner("a"), &["192.168.1.240"]);

        write(&lab.ctx, &store).await;
        let status = stored(&lab).status.expect("counts written");
        assert_eq!((status.assigned_ipv4, status.available_ipv4), (1, 2));
        assert_eq!((status.assigned_ipv6, status.available_ipv6), (0, 0));
        let writes = lab.kube.patches().len();
        assert_eq!(lab.kube.patches()[0].manager, manager::POOL_USAGE);

        writer.apply_watcher_event(&watcher::Event::Apply(stored(&lab)));
        write(&lab.ctx, &store).await;
        assert_eq!(
            lab.kube.patches().len(),
            writes,
            "the same counts are not written again"
        );
    }

    #[tokio::test]
    async fn a_lease_change_makes_the_counts_due() {
        let lab = Lab::start(&[]).await;
        let mut usage = PoolUsage::default();
        let (store, _writer) = kube::runtime::reflector::store::<IPAddressPool>();
        usage.write_if_due(&lab.ctx, &store).await;
        assert_eq!(lab.calls("stats").len(), 1);
        let quiet = tokio::time::timeout(
            Duration::from_millis(300),
            usage.wait(&*lab.allocator, "home"),
        );
        assert!(quiet.await.is_err(), "nothing is due before the resync");
        lab.allocator.put_lease(owner("a"), &["192.168.1.240"]);
        let due = tokio::time::timeout(Duration::from_secs(2), usage.wait(&*lab.allocator, "home"));
        due.await.expect("a lease changed");
        usage.write_if_due(&lab.ctx, &store).await;
        assert_eq!(lab.calls("stats").len(), 2);
    }
}
