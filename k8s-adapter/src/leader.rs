//! Leader election on a Kubernetes Lease (`coordination.k8s.io/v1`), so that two adapter
//! replicas never write the same statuses: one holds the lease and renews it; the other waits
//! until it expires. A leader that cannot renew in time, or sees another replica holding the
//! lease, is told so through [`Leadership::lost`]; its caller stops, so that it never acts on an
//! expired lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Error};

/// The lease's name in the adapter's namespace.
pub const LEASE: &str = "ferrolb-k8s-adapter";

/// What this candidate does with the lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Hold,
    Wait,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Whether `spec` lets `me` take or keep the lease at `at`.
fn turn(spec: &LeaseSpec, me: &str, at: Timestamp) -> Turn {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return Turn::Hold;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    match renewed {
        Some(r) if r.as_second() + duration > at.as_second() => Turn::Wait,
        _ => Turn::Hold,
    }
}

/// One attempt to take or renew the lease; true if `me` holds it afterwards.
async fn try_hold(api: &Api<Lease>, me: &str, duration: Duration) -> Result<bool, Error> {
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    match api.get_opt(LEASE).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.into()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if turn(&spec, me, Timestamp::now()) == Turn::Wait {
                return Ok(false);
            }
            let taking = spec.holder_identity.as_deref() != Some(me);
            let mut next = spec;
            if taking {
                next.acquire_time = Some(now());
                next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
            }
            next.holder_identity = Some(me.into());
            next.lease_duration_seconds = Some(seconds);
            next.renew_time = Some(now());
            lease.spec = Some(next);
            // The resourceVersion we read makes this a compare-and-swap: one winner.
            match api.replace(LEASE, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Why a leader is no longer one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeadershipLost {
    #[error("another replica took the leader lease")]
    TakenOver,
    #[error("the leader lease expired before it could be renewed")]
    Expired,
}

/// The leader lease, held and renewed in the background.
pub struct Leadership(tokio::sync::oneshot::Receiver<LeadershipLost>);

impl Leadership {
    /// Completes when the lease is lost, with the reason. A leadership whose renewing task is
    /// gone counts as expired.
    pub async fn lost(self) -> LeadershipLost {
        self.0.await.unwrap_or(LeadershipLost::Expired)
    }
}

/// Waits until `me` holds the lease, then keeps renewing it in the background.
pub async fn lead(client: Client, namespace: &str, me: &str, duration: Duration) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let retry = (duration / 3).max(Duration::from_millis(200));
    loop {
        match try_hold(&api, me, duration).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
        }
        tokio::time::sleep(retry).await;
    }
    tracing::info!(identity = me, "leading");
    let me = me.to_string();
    let (tell, told) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut held = tokio::time::Instant::now();
        let lost = loop {
            tokio::time::sleep(retry).await;
            match try_hold(&api, &me, duration).await {
                Ok(true) => held = tokio::time::Instant::now(),
                Ok(false) => break LeadershipLost::TakenOver,
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
            }
            if held.elapsed() >= duration {
                break LeadershipLost::Expired;
            }
        };
        let _ = tell.send(lost);
    });
    Leadership(told)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        let at = Timestamp::from_second(Timestamp::now().as_second() - renewed_secs_ago)
            .expect("a valid time");
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn turns() {
        let now = Timestamp::now();
        assert_eq!(turn(&spec("a", 1), "a", now), Turn::Hold, "mine");
        assert_eq!(
            turn(&spec("a", 1), "b", now),
            Turn::Wait,
            "fresh, someone else's"
        );
        assert_eq!(turn(&spec("a", 20), "b", now), Turn::Hold, "expired");
        assert_eq!(turn(&spec("", 1), "b", now), Turn::Hold, "released");
    }
}
