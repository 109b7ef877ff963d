//! Overload protection for the gRPC server: a bounded number of calls in flight, in all and per
//! identity, so that one caller's flood never starves another's calls (the rest are refused at
//! once with RESOURCE_EXHAUSTED instead of queueing), and a deadline on every call (the
//! client's `grpc-timeout`, capped by the server's maximum), which ends in DEADLINE_EXCEEDED.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ferrolb_common::Principal;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::auth::PerIdentity;

#[derive(Clone)]
pub struct GuardLayer {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    per_identity: Arc<PerIdentity>,
    max_deadline: Duration,
}

impl GuardLayer {
    pub fn new(
        max_in_flight: usize,
        max_in_flight_per_identity: usize,
        max_deadline: Duration,
    ) -> GuardLayer {
        GuardLayer {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            per_identity: Arc::new(PerIdentity::new(max_in_flight_per_identity)),
            max_deadline,
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for Guard<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let deadline = grpc_timeout(req.headers())
            .map_or(self.layer.max_deadline, |d| d.min(self.layer.max_deadline));
        // The authorization layer in front has put the caller here.
        let own = req.extensions().get::<Principal>().map(|who| {
            let permit = self.layer.per_identity.try_acquire(who);
            // The name is needed only to say who is over the limit.
            (permit.is_none().then(|| who.to_string()), permit)
        });
        let permit = Arc::clone(&self.layer.permits).try_acquire_owned();
        let max = self.layer.max_in_flight;
        let max_own = self.layer.per_identity.limit();
        // The clone takes the ready state's place; the ready service handles this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _own = match own {
                Some((Some(who), _)) => {
                    return Ok(busy(format!(
                        "{who} has {max_own} calls in flight, its limit; retry with backoff"
                    )));
                }
                Some((None, permit)) => permit,
                None => None,
            };
            let Ok(_permit) = permit else {
                return Ok(busy(format!(
                    "allocator overloaded: {max} calls in flight; retry with backoff"
                )));
            };
            match tokio::time::timeout(deadline, inner.call(req)).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "no answer within the deadline of {deadline:?}"
                ))
                .into_http()),
            }
        })
    }
}

/// The metadata that tells a refusal for load (retry soon) from one for the request (a pool that
/// is full, a quota): how many milliseconds to wait before trying again.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// RESOURCE_EXHAUSTED for load, with the time to wait before trying again.
fn busy<B: Default>(message: String) -> http::Response<B> {
    let mut status = Status::resource_exhausted(message);
    status.metadata_mut().insert(
        RETRY_AFTER_MS,
        tonic::metadata::MetadataValue::from_static("100"),
    );
    status.into_http()
}

/// Parses gRPC's `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Option<Duration> {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", v.parse().expect("header value"));
        grpc_timeout(&h)
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("123456789S"), None);
    }
}
