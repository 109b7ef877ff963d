//! ferrolb's node agent: it makes the network deliver the service addresses the allocator
//! assigns to its node.

pub mod agent;
pub mod bfd;
pub mod bgp;
pub mod bind;
pub mod defense;
pub mod l2;
pub mod links;
pub mod metrics;
pub mod packet;
pub mod plan;
pub mod stream;

/// Sleeps until `at`, or forever when there is nothing to wait for (a timer not armed).
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
