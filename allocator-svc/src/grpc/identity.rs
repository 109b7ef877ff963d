//! `ferrolb.v1.IdentityService` on the bootstrap port: a projected ServiceAccount token in, a
//! short-lived certificate for the identity it proves out (see `crate::tokens`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolb_common::pki::{self, Issued, LeafSpec, Validity};
use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::identity_service_server::IdentityService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

use crate::metrics::{Metrics, ReasonLabels};
use crate::tokens::Issuers;

/// Issues certificates for verified tokens.
pub struct IdentityApi {
    pub issuers: Issuers,
    /// The CA certificates are signed with.
    pub ca: Issued,
    pub domain: String,
    pub lifetime: Duration,
    pub metrics: Arc<Metrics>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssueCertificateResponse>, Status> {
        let r = req.into_inner();
        let who = self
            .issuers
            .verify(&r.token, &r.cluster, &r.node, now_secs())
            .await
            .map_err(|e| {
                tracing::warn!(cluster = r.cluster, node = r.node, reason = %e, "token refused");
                self.metrics
                    .tokens_refused
                    .get_or_create(&ReasonLabels {
                        reason: e.label().into(),
                    })
                    .inc();
                Status::unauthenticated(e.to_string())
            })?;
        let key = rcgen::SubjectPublicKeyInfo::from_der(&r.public_key)
            .map_err(|_| Status::invalid_argument("public_key: not a DER SubjectPublicKeyInfo"))?;
        let validity = Validity::for_next(self.lifetime);
        let cert = pki::issue_for_key(
            &self.ca,
            &LeafSpec {
                principal: &who,
                domain: &self.domain,
                dns_names: &[],
                ips: &[],
                validity,
            },
            &key,
        )
        .map_err(|e| Status::internal(format!("issuing the certificate: {e}")))?;
        let id = who.spiffe_id(&self.domain);
        tracing::info!(identity = id, lifetime = ?self.lifetime, "certificate issued for a ServiceAccount token");
        let expires = validity
            .not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Response::new(pb::IssueCertificateResponse {
            certificate_pem: cert,
            identity: id,
            expires_at: Some(prost_types::Timestamp {
                seconds: expires.as_secs() as i64,
                nanos: 0,
            }),
        }))
    }
}
