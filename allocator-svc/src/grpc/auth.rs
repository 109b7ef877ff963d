//! Who may call what: the verified identity of the connection (the certificate's SPIFFE ID)
//! against one table, before any handler runs. The handlers add the object checks (a cluster's
//! own state, a client's own leases, a node's own stream).
//!
//! | identity | may call |
//! |---|---|
//! | `admin/<name>` | every IpamService and ClusterStateService method, on every cluster |
//! | `cluster/<c>/adapter` | IpamService (c's leases; pools open to c) and ClusterStateService (c only) |
//! | `cluster/<c>/node/<n>` | AnnouncerService.Announce, as node n of cluster c only |
//! | `client/<x>` | IpamService (x's leases; pools open to x) |
//! | `allocator` | nothing: it is the server's identity |
//!
//! Every identity may ask for health and reflection. Metadata never names the caller: a
//! request whose `x-ferrolb-caller` disagrees with its certificate is refused.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use ferrolb_common::Principal;
use ferrolb_common::transport::Peer;
use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::metrics::{MethodLabels, Metrics, TenantLabels};

/// The metadata key that named the caller before identities were verified; only the
/// development plaintext mode still reads it.
pub const CALLER_HEADER: &str = "x-ferrolb-caller";

/// The table: may `who` call `path` (`/package.Service/Method`)?
pub fn allowed(who: &Principal, path: &str) -> bool {
    let service = path
        .trim_start_matches('/')
        .split_once('/')
        .map_or("", |(s, _)| s);
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => true,
        "ferrolb.v1.IpamService" => matches!(
            who,
            Principal::Admin(_) | Principal::Adapter { .. } | Principal::Client(_)
        ),
        "ferrolb.v1.ClusterStateService" => {
            matches!(who, Principal::Admin(_) | Principal::Adapter { .. })
        }
        "ferrolb.v1.AnnouncerService" => matches!(who, Principal::Node { .. }),
        _ => false,
    }
}

/// The development plaintext mode's caller, from metadata: `admin`, `cluster/<c>`,
/// `cluster/<c>/node/<n>` or `client/<x>`.
pub fn dev_principal(raw: &str) -> Option<Principal> {
    match raw {
        "admin" => Some(Principal::Admin("dev".into())),
        _ => match raw.split('/').collect::<Vec<_>>().as_slice() {
            ["cluster", c] => Principal::from_path(&format!("cluster/{c}/adapter")).ok(),
            _ => Principal::from_path(raw).ok(),
        },
    }
}

/// Puts the caller's [`Principal`] into every request, or refuses the call.
#[derive(Clone)]
pub struct AuthLayer {
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub fn new(metrics: Arc<Metrics>) -> AuthLayer {
        AuthLayer { metrics }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Who calls, or why the call is refused.
fn identify<B>(req: &http::Request<B>) -> Result<Principal, Status> {
    let header = match req.headers().get(CALLER_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            Status::unauthenticated(format!("metadata {CALLER_HEADER} is not text"))
        })?),
    };
    let peer = req.extensions().get::<Peer>();
    match peer.and_then(|p| p.principal.clone()) {
        Some(p) => match header {
            Some(h) if h != p.caller_name() && h != p.to_string() => {
                Err(Status::permission_denied(format!(
                    "metadata {CALLER_HEADER}={h:?} disagrees with the certificate's identity {p}: the caller is who the certificate says"
                )))
            }
            _ => Ok(p),
        },
        // Only the development plaintext listener has connections without an identity.
        None => {
            let h = header.ok_or_else(|| {
                Status::unauthenticated(format!(
                    "development plaintext mode: name the caller in metadata {CALLER_HEADER} (admin, cluster/<c>, cluster/<c>/node/<n> or client/<x>)"
                ))
            })?;
            dev_principal(h).ok_or_else(|| {
                Status::unauthenticated(format!(
                    "metadata {CALLER_HEADER}={h:?} is not admin, cluster/<c>, cluster/<c>/node/<n> or client/<x>"
                ))
            })
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for Auth<S>
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

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let who = identify(&req);
        let labels = TenantLabels {
            tenant: who.as_ref().map_or("unauthenticated".into(), tenant),
            method,
        };
        self.metrics.tenant_calls.get_or_create(&labels).inc();
        let verdict = who.and_then(|who| {
            if allowed(&who, req.uri().path()) {
                Ok(who)
            } else {
                Err(Status::permission_denied(format!(
                    "{who} may not call {}",
                    req.uri().path()
                )))
            }
        });
        let metrics = Arc::clone(&self.metrics);
        match verdict {
            Ok(who) => {
                req.extensions_mut().insert(who);
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let res = inner.call(req).await?;
                    // A handler's refusal (an object not the caller's) ends the call at once,
                    // its status in the headers.
                    let code = res.headers().get("grpc-status").map(|v| v.as_bytes());
                    if matches!(code, Some(b"7" | b"16")) {
                        metrics.tenant_refusals.get_or_create(&labels).inc();
                    }
                    Ok(res)
                })
            }
            Err(status) => {
                tracing::warn!(
                    path = req.uri().path(),
                    reason = status.message(),
                    "call refused"
                );
                metrics.tenant_refusals.get_or_create(&labels).inc();
                metrics
                    .denied
                    .get_or_create(&MethodLabels {
                        method: labels.method.clone(),
                    })
                    .inc();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// A call's method as metrics label it: its name when the server has it, else `unknown`, so
/// that made-up paths cannot grow the label sets.
fn method_label(path: &str) -> String {
    static KNOWN: LazyLock<HashSet<String>> = LazyLock::new(|| {
        use prost::Message;
        let mut known: HashSet<String> = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let set = prost_types::FileDescriptorSet::decode(ferrolb_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        for file in &set.file {
            for service in &file.service {
                for m in &service.method {
                    known.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        m.name()
                    ));
                }
            }
        }
        known
    });
    match path.rsplit_once('/') {
        Some((_, name)) if KNOWN.contains(path) => name.to_string(),
        _ => "unknown".to_string(),
    }
}

/// The tenant a caller belongs to, for the per-tenant metrics: its cluster for an adapter or a
/// node.
fn tenant(p: &Principal) -> String {
    match p {
        Principal::Admin(_) => "admin".into(),
        Principal::Adapter { cluster } | Principal::Node { cluster, .. } => {
            format!("cluster/{cluster}")
        }
        Principal::Client(c) => format!("client/{c}"),
        Principal::Allocator => "allocator".into(),
    }
}

/// Semaphores per identity, created on first use.
#[derive(Default)]
pub struct PerIdentity {
    limit: usize,
    map: Mutex<HashMap<Principal, Arc<tokio::sync::Semaphore>>>,
}

impl PerIdentity {
    pub fn new(limit: usize) -> PerIdentity {
        PerIdentity {
            limit,
            map: Mutex::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A watch permit of `who`'s, or RESOURCE_EXHAUSTED naming the limit.
    pub fn watch_permit(
        &self,
        who: &Principal,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, crate::error::Error> {
        self.try_acquire(who).ok_or_else(|| {
            crate::error::Error::Exhausted(format!(
                "{who} has {} watches open, its limit; close one first",
                self.limit
            ))
        })
    }

    /// A permit of `who`'s, if one is free.
    pub fn try_acquire(&self, who: &Principal) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(who) {
                Some(sem) => Arc::clone(sem),
                None => {
                    let sem = Arc::new(tokio::sync::Semaphore::new(self.limit));
                    map.insert(who.clone(), Arc::clone(&sem));
                    sem
                }
            }
        };
        sem.try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_name_only_methods_the_server_has() {
        assert_eq!(
            super::method_label("/ferrolb.v1.IpamService/Allocate"),
            "Allocate"
        );
        assert_eq!(super::method_label("/grpc.health.v1.Health/Check"), "Check");
        assert_eq!(
            super::method_label("/ferrolb.v1.IpamService/Made-up"),
            "unknown"
        );
        assert_eq!(super::method_label("/x/y"), "unknown");
        assert_eq!(super::method_label(""), "unknown");
    }

    use super::*;

    fn p(path: &str) -> Principal {
        Principal::from_path(path).expect(path)
    }

    #[test]
    fn the_table() {
        let ipam = "/ferrolb.v1.IpamService/Allocate";
        let state = "/ferrolb.v1.ClusterStateService/ApplyNode";
        let announce = "/ferrolb.v1.AnnouncerService/Announce";
        let health = "/grpc.health.v1.Health/Check";
        let cases = [
            ("admin/ops", [true, true, false, true]),
            ("cluster/a/adapter", [true, true, false, true]),
            ("cluster/a/node/n1", [false, false, true, true]),
            ("client/netbox", [true, false, false, true]),
            ("allocator", [false, false, false, true]),
        ];
        for (who, want) in cases {
            let got = [ipam, state, announce, health].map(|path| allowed(&p(who), path));
            assert_eq!(got, want, "{who}");
        }
        assert!(!allowed(&p("admin/ops"), "/ferrolb.v1.Unknown/X"));
        assert!(!allowed(&p("admin/ops"), "garbage"));
    }

    #[test]
    fn dev_callers() {
        assert_eq!(dev_principal("admin"), Some(Principal::Admin("dev".into())));
        assert_eq!(
            dev_principal("cluster/home"),
            Some(p("cluster/home/adapter"))
        );
        assert_eq!(
            dev_principal("cluster/home/node/n1"),
            Some(p("cluster/home/node/n1"))
        );
        assert_eq!(dev_principal("client/x"), Some(p("client/x")));
        assert_eq!(dev_principal("root"), None);
    }

    #[test]
    fn a_header_that_disagrees_is_refused() {
        let req = |header: Option<&str>| {
            let mut r = http::Request::new(());
            if let Some(h) = header {
                r.headers_mut()
                    .insert(CALLER_HEADER, h.parse().expect("ascii"));
            }
            r.extensions_mut().insert(Peer {
                remote: "127.0.0.1:1".parse().expect("addr"),
                principal: Some(p("cluster/a/adapter")),
            });
            r
        };
        assert_eq!(identify(&req(None)).ok(), Some(p("cluster/a/adapter")));
        assert_eq!(
            identify(&req(Some("cluster/a"))).ok(),
            Some(p("cluster/a/adapter"))
        );
        let e = identify(&req(Some("admin"))).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let mut plain = http::Request::new(());
        assert_eq!(
            identify(&plain).expect_err("no caller").code(),
            tonic::Code::Unauthenticated
        );
        plain
            .headers_mut()
            .insert(CALLER_HEADER, "admin".parse().expect("ascii"));
        assert_eq!(identify(&plain).ok(), Some(Principal::Admin("dev".into())));
    }
}
