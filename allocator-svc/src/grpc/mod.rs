//! The `ferrolb.v1.IpamService` server, generic over the lease store.

pub mod announce;
pub mod auth;
pub mod bgp;
pub mod cluster;
pub mod convert;
pub mod guard;
pub mod identity;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::ipam_service_server::IpamService;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::Error;
use crate::lease::LeaseFilter;
use crate::metrics::Metrics;
use crate::pool::Caller;
use crate::store::LeaseStore;
use convert::caller;

/// How many events one read of the store returns to a watcher.
const WATCH_BATCH: u32 = 500;
/// A watcher re-reads at least this often, even if no notification arrived.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// The IPAM API over a store.
pub struct Ipam<S> {
    store: Arc<S>,
    metrics: Arc<Metrics>,
    /// Open WatchLeases streams per identity.
    watchers: Arc<auth::PerIdentity>,
}

impl<S: LeaseStore> Ipam<S> {
    pub fn new(store: Arc<S>, metrics: Arc<Metrics>, max_watches_per_identity: usize) -> Ipam<S> {
        Ipam {
            store,
            metrics,
            watchers: Arc::new(auth::PerIdentity::new(max_watches_per_identity)),
        }
    }

    /// Times a call and counts its outcome.
    async fn observe<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        // The lease's owner, pool and addresses are filled in by the calls that know them: on
        // the call's gRPC span when traces are exported, else on a span of the call's own (for
        // the logs).
        let span = if ferrolb_common::telemetry::exporting() {
            tracing::Span::current()
        } else {
            tracing::info_span!(
                "ipam",
                method,
                service = tracing::field::Empty,
                pool = tracing::field::Empty,
                address = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        };
        let result = call.instrument(span.clone()).await;
        self.metrics
            .observe(method, start.elapsed(), result.as_ref().err());
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            tracing::debug!(method, code = e.code_name(), error = %e, "call failed");
        }
        result.map(Response::new).map_err(Status::from)
    }
}

fn page_size(n: u32) -> u32 {
    if n == 0 { 100 } else { n.min(1000) }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl<S: LeaseStore> IpamService for Ipam<S> {
    async fn apply_pool(
        &self,
        req: Request<pb::ApplyPoolRequest>,
    ) -> Result<Response<pb::ApplyPoolResponse>, Status> {
        let caller = caller(&req)?;
        self.observe("ApplyPool", async {
            let r = req.into_inner();
            let pool = r
                .pool
                .ok_or_else(|| Error::invalid("pool", "is required"))?;
            let applied = self
                .store
                .apply_pool(&caller, convert::pool_spec(pool)?, r.create_only)
                .await?;
            tracing::info!(
                pool = applied.pool.name(),
                caller = caller.name(),
                stranded = applied.stranded,
                "pool applied"
            );
            Ok(pb::ApplyPoolResponse {
                pool: Some(convert::pool_to_pb(&applied.pool.spec)),
                created: applied.created,
                stranded_leases: applied.stranded,
            })
        })
        .await
    }

    async fn get_pool(
        &self,
        req: Request<pb::GetPoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let caller = caller(&req)?;
        self.observe("GetPool", async {
            let pool = self.store.get_pool(&req.into_inner().name).await?;
            if !pool.open_to(&caller) {
                return Err(Error::PermissionDenied(format!(
                    "pool {:?} is not open to {}",
                    pool.name(),
                    caller.name()
                )));
            }
            Ok(convert::pool_to_pb(&pool.spec))
        })
        .await
    }

    async fn list_pools(
        &self,
        req: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let caller = caller(&req)?;
        self.observe("ListPools", async {
            let pools = self.store.list_pools().await?;
            // Callers see the pools they may draw from; operators see all.
            Ok(pb::ListPoolsResponse {
                pools: pools
                    .iter()
                    .filter(|p| p.open_to(&caller))
                    .map(|p| convert::pool_to_pb(&p.spec))
                    .collect(),
            })
        })
        .await
    }

    async fn delete_pool(
        &self,
        req: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let caller = caller(&req)?;
        self.observe("DeletePool", async {
            let name = req.into_inner().name;
            let stranded = self.store.delete_pool(&caller, &name).await?;
            tracing::info!(pool = %name, caller = caller.name(), stranded, "pool deleted");
            Ok(pb::DeletePoolResponse {
                stranded_leases: stranded,
            })
        })
        .await
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let caller = caller(&req)?;
        self.observe("Allocate", async {
            let req = convert::alloc_request(req.into_inner())?;
            let span = tracing::Span::current();
            span.record("service", req.owner.key());
            let (lease, created) = self.store.allocate(&caller, req).await?;
            span.record("pool", lease.pool());
            span.record("address", tracing::field::debug(lease.ips()));
            if created {
                self.metrics.allocations.inc();
                tracing::info!(owner = %lease.owner.key(), ips = ?lease.ips(), pool = lease.pool(), "allocated");
            }
            Ok(pb::AllocateResponse {
                lease: Some(convert::lease_to_pb(&lease)),
                created,
            })
        })
        .await
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = caller(&req)?;
        self.observe("Release", async {
            let owner = convert::owner(req.into_inner().owner)?;
            let lease = self.store.release(&caller, &owner).await?;
            self.metrics.releases.inc();
            tracing::info!(owner = %lease.owner.key(), ips = ?lease.ips(), "released");
            Ok(pb::ReleaseResponse {
                ips: lease.ips().iter().map(ToString::to_string).collect(),
            })
        })
        .await
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::Lease>, Status> {
        let caller = caller(&req)?;
        self.observe("Renew", async {
            let r = req.into_inner();
            let owner = convert::owner(r.owner)?;
            let lease = self.store.renew(&caller, &owner, r.ttl_seconds).await?;
            Ok(convert::lease_to_pb(&lease))
        })
        .await
    }

    async fn get_lease(
        &self,
        req: Request<pb::GetLeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let caller = caller(&req)?;
        self.observe("GetLease", async {
            let owner = convert::owner(req.into_inner().owner)?;
            Ok(convert::lease_to_pb(
                &self.store.get_lease(&caller, &owner).await?,
            ))
        })
        .await
    }

    async fn list_leases(
        &self,
        req: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let caller = caller(&req)?;
        self.observe("ListLeases", async {
            let r = req.into_inner();
            let mut filter = LeaseFilter {
                pool: non_empty(r.pool),
                cluster: non_empty(r.cluster),
                namespace: non_empty(r.namespace),
                client: non_empty(r.client),
                stranded_only: r.stranded_only,
                after: non_empty(r.page_token),
                limit: page_size(r.page_size),
            };
            // Clusters and clients see their own leases only.
            match &caller {
                Caller::Admin => {}
                Caller::Cluster(c) => {
                    if filter.client.is_some() || filter.cluster.as_ref().is_some_and(|f| f != c) {
                        return Err(Error::PermissionDenied(format!(
                            "{} may list only its own leases",
                            caller.name()
                        )));
                    }
                    filter.cluster = Some(c.clone());
                }
                Caller::Client(c) => {
                    if filter.cluster.is_some() || filter.client.as_ref().is_some_and(|f| f != c) {
                        return Err(Error::PermissionDenied(format!(
                            "{} may list only its own leases",
                            caller.name()
                        )));
                    }
                    filter.client = Some(c.clone());
                }
            }
            let page = self.store.list_leases(filter).await?;
            Ok(pb::ListLeasesResponse {
                leases: page.leases.iter().map(convert::lease_to_pb).collect(),
                next_page_token: page.next.unwrap_or_default(),
                revision: page.revision,
            })
        })
        .await
    }

    async fn move_lease(
        &self,
        req: Request<pb::MoveLeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let caller = caller(&req)?;
        self.observe("MoveLease", async {
            let owner = convert::owner(req.into_inner().owner)?;
            let lease = self.store.move_lease(&caller, &owner).await?;
            tracing::info!(owner = %lease.owner.key(), ips = ?lease.ips(), "stranded lease moved");
            Ok(convert::lease_to_pb(&lease))
        })
        .await
    }

    type WatchLeasesStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseEvent, Status>> + Send>>;

    async fn watch_leases(
        &self,
        req: Request<pb::WatchLeasesRequest>,
    ) -> Result<Response<Self::WatchLeasesStream>, Status> {
        let caller = caller(&req)?;
        let who = convert::principal(&req)?;
        let permit = self.watchers.watch_permit(who)?;
        let r = req.into_inner();
        let start = self.store.history_start().await.map_err(Status::from)?;
        if r.from_revision + 1 < start {
            return Err(Error::OutOfRange(format!(
                "history before revision {start} is no longer kept: list the leases again and watch from the revision the list returns"
            ))
            .into());
        }
        let (tx, rx) = mpsc::channel(64);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let _permit = permit;
            let pool = non_empty(r.pool);
            let mut cursor = r.from_revision;
            let mut changes = store.subscribe();
            loop {
                changes.mark_unchanged();
                let events = match store
                    .events_since(cursor, pool.as_deref(), WATCH_BATCH)
                    .await
                {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let full = events.len() == WATCH_BATCH as usize;
                for e in &events {
                    // Operators see every lease, clusters and clients their own.
                    if !e.lease.owner.belongs_to(&caller) {
                        cursor = e.revision;
                        continue;
                    }
                    if tx.send(Ok(convert::event_to_pb(e))).await.is_err() {
                        return;
                    }
                    cursor = e.revision;
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(WATCH_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn set_allowance(
        &self,
        req: Request<pb::Allowance>,
    ) -> Result<Response<pb::Allowance>, Status> {
        let caller = caller(&req)?;
        self.observe("SetAllowance", async {
            let r = req.into_inner();
            let ranges = self
                .store
                .set_allowance(&caller, &r.cluster, r.ranges)
                .await?;
            Ok(pb::Allowance {
                cluster: r.cluster,
                ranges,
            })
        })
        .await
    }

    async fn get_allowance(
        &self,
        req: Request<pb::GetAllowanceRequest>,
    ) -> Result<Response<pb::Allowance>, Status> {
        let caller = caller(&req)?;
        self.observe("GetAllowance", async {
            let cluster = req.into_inner().cluster;
            if !matches!(&caller, Caller::Admin) && caller != Caller::Cluster(cluster.clone()) {
                return Err(Error::PermissionDenied(format!(
                    "{} may not read cluster {cluster:?}'s allowance",
                    caller.name()
                )));
            }
            let ranges = self
                .store
                .get_allowance(&cluster)
                .await?
                .unwrap_or_default();
            Ok(pb::Allowance { cluster, ranges })
        })
        .await
    }

    async fn get_stats(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let caller = caller(&req)?;
        self.observe("GetStats", async {
            let pool = non_empty(req.into_inner().pool);
            let mut stats = self.store.stats(pool.as_deref()).await?;
            if caller != Caller::Admin {
                let open: std::collections::HashSet<String> = self
                    .store
                    .list_pools()
                    .await?
                    .into_iter()
                    .filter(|p| p.open_to(&caller))
                    .map(|p| p.spec.name)
                    .collect();
                stats.retain(|s| open.contains(&s.pool));
            }
            Ok(pb::GetStatsResponse {
                stats: stats.iter().map(convert::stats_to_pb).collect(),
            })
        })
        .await
    }
}
