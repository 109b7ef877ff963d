//! What the adapter asks of the allocator, as a trait: the gRPC client is one implementation,
//! and the reconcile tests use a fake. Every answer comes as the adapter's own [`Error`], mapped
//! from the gRPC status in one place.

use std::collections::{BTreeMap, BTreeSet};

use ferrolb_metallb::convert::Message;
use ferrolb_metallb::kind;
use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;
use ferrolb_proto::v1::ipam_service_client::IpamServiceClient;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::time::Duration;
use tonic::{Code, Status};

use ferrolb_common::transport::Intercepted;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The allocator cannot be reached or did not answer in time: try again soon.
    #[error("allocator unavailable: {0}")]
    AllocatorUnavailable(String),
    /// The allocator refused the call; its message says why.
    #[error("allocator refused ({code:?}): {message}")]
    Refused { code: Code, message: String },
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// The metric label of the error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::AllocatorUnavailable(_) => "allocator_unavailable",
            Error::Refused { .. } => "allocator_refused",
            Error::Kube(_) => "kubernetes",
        }
    }

    /// How soon a Service that failed this way is tried again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Error::AllocatorUnavailable(_) | Error::Kube(_) => Duration::from_secs(1),
            // A refusal holds until something changes (which reconciles the Service anyway).
            Error::Refused { .. } => Duration::from_secs(5),
        }
    }
}

/// Whether the allocator said it is busy or away (try again soon), not that the request cannot
/// be met: UNAVAILABLE, a deadline, or RESOURCE_EXHAUSTED with a `retry-after-ms` (its limits
/// for load; a full pool or a quota has none).
fn retry_soon(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    ) || (s.code() == Code::ResourceExhausted && s.metadata().contains_key("retry-after-ms"))
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        match s.code() {
            _ if retry_soon(&s) => Error::AllocatorUnavailable(s.message().to_string()),
            code => Error::Refused {
                code,
                message: s.message().to_string(),
            },
        }
    }
}

/// The configuration objects of one cluster the allocator holds, by MetalLB kind.
pub type Declared = BTreeMap<&'static str, BTreeSet<String>>;

/// The calls the adapter makes.
#[tonic::async_trait]
pub trait Allocator: Send + Sync {
    async fn allocate(&self, req: pb::AllocateRequest) -> Result<pb::AllocateResponse, Error>;
    /// Releases an owner's lease; false when it held none.
    async fn release(&self, owner: pb::Owner) -> Result<bool, Error>;
    /// Every lease of the cluster, all pages.
    async fn leases(&self, cluster: &str) -> Result<Vec<pb::Lease>, Error>;
    /// Yields whenever a lease of the cluster changes, from now on.
    async fn lease_changes(
        &self,
        cluster: &str,
    ) -> Result<BoxStream<'static, Result<(), Error>>, Error>;
    async fn stats(&self) -> Result<Vec<pb::PoolStats>, Error>;

    async fn set_endpoints(&self, e: pb::ServiceEndpoints) -> Result<(), Error>;
    async fn delete_endpoints(&self, cluster: &str, ns: &str, name: &str) -> Result<(), Error>;
    async fn apply_node(&self, n: pb::Node) -> Result<(), Error>;
    async fn delete_node(&self, cluster: &str, name: &str) -> Result<(), Error>;

    /// Applies one configuration object.
    async fn apply(&self, m: Message) -> Result<(), Error>;
    /// What the cluster declared at the allocator (pools: those it declared itself).
    async fn declared(&self, cluster: &str) -> Result<Declared, Error>;
    /// Removes a configuration object of `kind` (a MetalLB kind) the cluster declared.
    async fn remove(&self, cluster: &str, kind: &'static str, name: &str) -> Result<(), Error>;

    /// The cluster's announcements, on every change.
    async fn watch_announcements(
        &self,
        cluster: &str,
    ) -> Result<BoxStream<'static, Result<pb::AnnouncementsUpdate, Error>>, Error>;

    /// The last failovers of the cluster's layer-2 addresses the allocator replica timed.
    async fn failovers(&self, cluster: &str) -> Result<Vec<pb::Failover>, Error>;
}

/// The allocator over gRPC.
#[derive(Clone)]
pub struct Grpc {
    pub ipam: IpamServiceClient<Intercepted>,
    pub cluster: ClusterStateServiceClient<Intercepted>,
}

#[tonic::async_trait]
impl Allocator for Grpc {
    async fn allocate(&self, req: pb::AllocateRequest) -> Result<pb::AllocateResponse, Error> {
        Ok(self.ipam.clone().allocate(req).await?.into_inner())
    }

    async fn release(&self, owner: pb::Owner) -> Result<bool, Error> {
        let req = pb::ReleaseRequest { owner: Some(owner) };
        match self.ipam.clone().release(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(s.into()),
        }
    }

    async fn leases(&self, cluster: &str) -> Result<Vec<pb::Lease>, Error> {
        let mut token = String::new();
        let mut leases = vec![];
        loop {
            let req = pb::ListLeasesRequest {
                cluster: cluster.to_string(),
                page_size: 1000,
                page_token: token,
                ..pb::ListLeasesRequest::default()
            };
            let page = self.ipam.clone().list_leases(req).await?.into_inner();
            leases.extend(page.leases);
            if page.next_page_token.is_empty() {
                return Ok(leases);
            }
            token = page.next_page_token;
        }
    }

    async fn lease_changes(
        &self,
        cluster: &str,
    ) -> Result<BoxStream<'static, Result<(), Error>>, Error> {
        let req = pb::ListLeasesRequest {
            cluster: cluster.to_string(),
            page_size: 1,
            ..pb::ListLeasesRequest::default()
        };
        let from_revision = self
            .ipam
            .clone()
            .list_leases(req)
            .await?
            .into_inner()
            .revision;
        let req = pb::WatchLeasesRequest {
            from_revision,
            pool: String::new(),
        };
        let events = self.ipam.clone().watch_leases(req).await?.into_inner();
        Ok(events.map(|e| e.map(drop).map_err(Error::from)).boxed())
    }

    async fn stats(&self) -> Result<Vec<pb::PoolStats>, Error> {
        let req = pb::GetStatsRequest::default();
        Ok(self.ipam.clone().get_stats(req).await?.into_inner().stats)
    }

    async fn set_endpoints(&self, e: pb::ServiceEndpoints) -> Result<(), Error> {
        self.cluster.clone().set_endpoints(e).await?;
        Ok(())
    }

    async fn delete_endpoints(&self, cluster: &str, ns: &str, name: &str) -> Result<(), Error> {
        let req = pb::DeleteEndpointsRequest {
            cluster: cluster.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        self.cluster.clone().delete_endpoints(req).await?;
        Ok(())
    }

    async fn apply_node(&self, n: pb::Node) -> Result<(), Error> {
        self.cluster.clone().apply_node(n).await?;
        Ok(())
    }

    async fn delete_node(&self, cluster: &str, name: &str) -> Result<(), Error> {
        let req = pb::DeleteNodeRequest {
            cluster: cluster.to_string(),
            name: name.to_string(),
        };
        self.cluster.clone().delete_node(req).await?;
        Ok(())
    }

    async fn apply(&self, m: Message) -> Result<(), Error> {
        let mut cs = self.cluster.clone();
        match m {
            Message::Pool(p) => {
                let req = pb::ApplyPoolRequest {
                    pool: Some(p),
                    create_only: false,
                };
                self.ipam.clone().apply_pool(req).await.map(drop)
            }
            Message::L2Advertisement(a) => cs.apply_l2_advertisement(a).await.map(drop),
            Message::Community(c) => cs.apply_community(c).await.map(drop),
            Message::BgpPeer(p) => cs.apply_bgp_peer(p).await.map(drop),
            Message::BgpAdvertisement(a) => cs.apply_bgp_advertisement(a).await.map(drop),
        }
        .map_err(Error::from)
    }

    async fn declared(&self, cluster: &str) -> Result<Declared, Error> {
        let mine = format!("cluster/{cluster}");
        let mut ipam = self.ipam.clone();
        let pools = ipam.list_pools(pb::ListPoolsRequest {}).await?;
        let pools = pools.into_inner().pools;
        let mut cs = self.cluster.clone();
        let req = pb::ListL2AdvertisementsRequest {
            cluster: cluster.to_string(),
        };
        let l2 = cs.list_l2_advertisements(req).await?.into_inner();
        let req = pb::ListBgpConfigRequest {
            cluster: cluster.to_string(),
        };
        let bgp = cs.list_bgp_config(req).await?.into_inner();
        let mine = pools.into_iter().filter(|p| p.declared_by == mine);
        Ok(BTreeMap::from([
            (kind::POOL, mine.map(|p| p.name).collect()),
            (
                kind::L2,
                l2.advertisements.into_iter().map(|a| a.name).collect(),
            ),
            (
                kind::BGP_ADVERTISEMENT,
                bgp.advertisements.into_iter().map(|a| a.name).collect(),
            ),
            (kind::PEER, bgp.peers.into_iter().map(|p| p.name).collect()),
            (
                kind::COMMUNITY,
                bgp.communities.into_iter().map(|c| c.name).collect(),
            ),
        ]))
    }

    async fn remove(&self, cluster: &str, kind: &'static str, name: &str) -> Result<(), Error> {
        let (cluster, name) = (cluster.to_string(), name.to_string());
        let mut cs = self.cluster.clone();
        let bgp = |kind: pb::BgpKind| pb::DeleteBgpObjectRequest {
            cluster: cluster.clone(),
            kind: kind as i32,
            name: name.clone(),
        };
        match kind {
            kind::POOL => {
                let req = pb::DeletePoolRequest { name };
                self.ipam.clone().delete_pool(req).await.map(drop)
            }
            kind::L2 => {
                let req = pb::DeleteL2AdvertisementRequest { cluster, name };
                cs.delete_l2_advertisement(req).await.map(drop)
            }
            kind::BGP_ADVERTISEMENT => cs
                .delete_bgp_object(bgp(pb::BgpKind::Advertisement))
                .await
                .map(drop),
            kind::PEER => cs.delete_bgp_object(bgp(pb::BgpKind::Peer)).await.map(drop),
            kind::COMMUNITY => cs
                .delete_bgp_object(bgp(pb::BgpKind::Community))
                .await
                .map(drop),
            other => Err(Status::invalid_argument(format!(
                "the allocator keeps no {other} objects"
            ))),
        }
        .map_err(Error::from)
    }

    async fn watch_announcements(
        &self,
        cluster: &str,
    ) -> Result<BoxStream<'static, Result<pb::AnnouncementsUpdate, Error>>, Error> {
        let req = pb::ListAnnouncementsRequest {
            cluster: cluster.to_string(),
        };
        let updates = self.cluster.clone().watch_announcements(req).await?;
        Ok(updates.into_inner().map(|u| u.map_err(Error::from)).boxed())
    }

    async fn failovers(&self, cluster: &str) -> Result<Vec<pb::Failover>, Error> {
        let req = pb::ListAnnouncementsRequest {
            cluster: cluster.to_string(),
        };
        Ok(self
            .cluster
            .clone()
            .list_failovers(req)
            .await?
            .into_inner()
            .failovers)
    }
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_statuses_map_to_typed_errors() {
        let e = Error::from(Status::unavailable("no database"));
        assert_eq!(
            (e.kind(), e.retry_after()),
            ("allocator_unavailable", Duration::from_secs(1))
        );
        let e = Error::from(Status::deadline_exceeded("slow"));
        assert_eq!(e.kind(), "allocator_unavailable");
        let mut busy = Status::resource_exhausted("64 calls in flight");
        busy.metadata_mut()
            .insert("retry-after-ms", "100".parse().unwrap());
        assert_eq!(Error::from(busy).kind(), "allocator_unavailable");
        assert_eq!(
            Error::from(Status::resource_exhausted("pool full")).kind(),
            "allocator_refused"
        );
        let e = Error::from(Status::permission_denied("not yours"));
        assert_eq!(
            (e.kind(), e.retry_after()),
            ("allocator_refused", Duration::from_secs(5))
        );
        assert_eq!(
            e.to_string(),
            "allocator refused (PermissionDenied): not yours"
        );
    }
}
