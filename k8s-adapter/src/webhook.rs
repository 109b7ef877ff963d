//! The validating webhook: the API server asks it, over HTTPS, about every create, update and
//! delete of MetalLB's configuration objects, and it answers with MetalLB's rules
//! ([`ferrolb_metallb::admission`]) applied to the objects as they are stored, so a bad object
//! is refused at `kubectl apply` time with the message its `Valid` condition would show. Every
//! replica serves it (leader or not); the certificate is the adapter's own ([`cert`]).
//!
//! What admission cannot know (a Secret or an alias created later, another cluster's pools at
//! the allocator) stays reported in the objects' conditions and events.

pub mod cert;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use ferrolb_metallb::admission::{self, Item};
use ferrolb_metallb::crd::{self, IPAddressPool, L2Advertisement};
use ferrolb_metallb::{Config, Object};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::metrics::Metrics;

/// The path the webhook configuration names.
pub const PATH: &str = "/validate-metallb-io";

/// What the webhook needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where MetalLB's configuration objects live.
    pub namespace: String,
    pub cert: cert::Place,
}

struct Reviewer {
    client: Client,
    namespace: String,
    metrics: Arc<Metrics>,
}

/// Serves the webhook until the process ends; an error only when it cannot listen.
pub async fn serve(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("the webhook cannot listen on {}: {e}", settings.listen))?;
    let keeper = cert::Keeper::new(client.clone(), settings.cert.clone());
    // Nothing is served before there is a certificate the API server can trust.
    while let Err(e) = keeper.keep().await {
        tracing::warn!(error = %e, "no webhook certificate yet; trying again");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(Arc::clone(&keeper.served) as Arc<_>);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(keeper.period()).await;
            if let Err(e) = keeper.keep().await {
                tracing::warn!(error = %e, "cannot renew or publish the webhook certificate");
            }
        }
    });
    let reviewer = Arc::new(Reviewer {
        client,
        namespace: settings.namespace,
        metrics,
    });
    let app = axum::Router::new()
        .route(PATH, post(review))
        .with_state(reviewer);
    tracing::info!(listen = %settings.listen, "serving the validating webhook");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "webhook accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

/// One AdmissionReview (admission.k8s.io/v1).
async fn review(State(r): State<Arc<Reviewer>>, body: Bytes) -> axum::response::Response {
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "not an AdmissionReview",
        )
            .into_response();
    };
    let request = &review["request"];
    let kind = request["kind"]["kind"].as_str().unwrap_or_default();
    let (verdict, label) = match r.judge(request).await {
        Ok(()) => (json!({"allowed": true}), "allowed"),
        Err(Denial::Refused(message)) => (
            json!({"allowed": false,
                   "status": {"code": 403, "reason": "Forbidden", "message": message}}),
            "refused",
        ),
        Err(Denial::Error(message)) => (
            json!({"allowed": false,
                   "status": {"code": 500, "reason": "InternalError", "message": message}}),
            "error",
        ),
    };
    r.metrics.webhook_reviewed(kind, label);
    let mut response = verdict;
    response["uid"] = request["uid"].clone();
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "response": response});
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

use axum::response::IntoResponse;

enum Denial {
    /// MetalLB's rules refuse it.
    Refused(String),
    /// The configuration could not be read: refused, to be tried again.
    Error(String),
}

impl Reviewer {
    async fn judge(&self, request: &Value) -> Result<(), Denial> {
        let operation = request["operation"].as_str().unwrap_or_default();
        let cfg = self
            .current()
            .await
            .map_err(|e| Denial::Error(format!("cannot read the configuration: {e}")))?;
        match operation {
            "DELETE" => {
                let kind = request["kind"]["kind"].as_str().unwrap_or_default();
                let name = request["name"].as_str().unwrap_or_default();
                admission::review_delete(&cfg, kind, name).map_err(Denial::Refused)
            }
            "CREATE" | "UPDATE" => {
                let item = Item::from_json(&request["object"]).map_err(Denial::Refused)?;
                admission::review_write(&cfg, &self.namespace, &item).map_err(Denial::Refused)
            }
            _ => Ok(()),
        }
    }

    /// The configuration as stored, with the nodes' labels (advertisements' node sets).
    async fn current(&self) -> Result<Config, kube::Error> {
        async fn all<K>(client: &Client, ns: &str) -> Result<Vec<Object<K::Spec>>, kube::Error>
        where
            K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
                + kube::core::object::HasSpec
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug,
            K::Spec: Clone,
        {
            let list = Api::<K>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await?;
            Ok(list.items.iter().map(Object::of).collect())
        }
        let (c, ns) = (&self.client, self.namespace.as_str());
        let nodes = Api::<Node>::all(c.clone())
            .list(&ListParams::default())
            .await?;
        Ok(Config {
            pools: all::<IPAddressPool>(c, ns).await?,
            l2: all::<L2Advertisement>(c, ns).await?,
            bgp: all::<crd::BGPAdvertisement>(c, ns).await?,
            peers: all::<crd::v1beta2::BGPPeer>(c, ns).await?,
            communities: all::<crd::Community>(c, ns).await?,
            bfd_profiles: all::<crd::BFDProfile>(c, ns).await?,
            secrets: Default::default(),
            nodes: nodes.items.iter().map(|n| n.labels().clone()).collect(),
        })
    }
}
