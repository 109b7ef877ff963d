//! Projected ServiceAccount tokens traded for identities. Per cluster (`--token-issuers`), a
//! token is checked either offline against the issuer keys an admin registered (the JWKS the
//! cluster's API server publishes at `/openid/v1/jwks`), or by asking that API server
//! (TokenReview, when the allocator can reach it).
//!
//! Offline, a token proves an identity when its signature is one of the cluster's keys (ES256 or
//! RS256), its issuer is the cluster's, its audience holds `ferrolb`, and it is valid now and for
//! at most [`MAX_TOKEN_LIFETIME`]. Either way its subject must be the adapter's or the
//! announcers' ServiceAccount. An announcer's node comes from the token's node claim, which the
//! API server signs for the node the pod is bound to: a pod on n1 never obtains n2's identity.

use std::collections::BTreeMap;

use ferrolb_common::Principal;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde::Deserialize;

/// The audience a token must carry.
pub const AUDIENCE: &str = "ferrolb";
/// Tokens valid for longer are refused: Kubernetes projects tokens of an hour by default, and
/// a long-lived token (a legacy Secret token has no expiry at all) is not what proves a pod.
pub const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;
/// Clock skew allowed between the API server and the allocator.
const SKEW: u64 = 60;

/// The file of `--token-issuers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuersFile {
    pub clusters: Vec<ClusterIssuer>,
}

/// One cluster's API server as a token issuer: `issuer` and `jwks`, or `tokenReview`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterIssuer {
    /// The cluster's name at the allocator.
    pub name: String,
    /// The `iss` its tokens carry (`kubectl get --raw /.well-known/openid-configuration`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Its signing keys (`kubectl get --raw /openid/v1/jwks`).
    #[serde(default)]
    pub jwks: Option<Jwks>,
    /// Ask the cluster's API server instead (TokenReview).
    #[serde(default)]
    pub token_review: Option<TokenReviewConfig>,
    /// `namespace/name` of the adapter's ServiceAccount.
    pub adapter_service_account: String,
    /// `namespace/name` of the announcers' ServiceAccount.
    pub announcer_service_account: String,
}

/// How to reach the API server for TokenReview.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReviewConfig {
    /// A kubeconfig for it; none: the cluster the allocator runs in (or `KUBECONFIG`). Its
    /// identity needs `create` on `tokenreviews.authentication.k8s.io`.
    #[serde(default)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// A JSON Web Key: EC P-256 (`x`, `y`) or RSA (`n`, `e`).
#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
}

/// Why a token proves nothing; the text goes back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token issuer is registered for cluster {0:?}")]
    UnknownCluster(String),
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token's algorithm {0:?} is not ES256 or RS256")]
    Algorithm(String),
    #[error("the token's signature is not one of cluster {0:?}'s keys")]
    Signature(String),
    #[error("the token was issued by {got:?}, not {want:?}")]
    Issuer { got: String, want: String },
    #[error("the token's audience is not {AUDIENCE:?}")]
    Audience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is valid for {0} s; at most {MAX_TOKEN_LIFETIME} s is accepted")]
    TooLong(u64),
    #[error(
        "the token's subject {0:?} is neither the adapter's nor the announcers' ServiceAccount"
    )]
    ServiceAccount(String),
    #[error("the token carries no node claim: an announcer's token must be bound to its pod")]
    NoNode,
    #[error("the token is for node {claim:?}, not {asked:?}")]
    NodeMismatch { claim: String, asked: String },
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    #[error("cannot ask the API server about the token: {0}")]
    ReviewFailed(String),
}

impl TokenError {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::UnknownCluster(_) => "unknown_cluster",
            TokenError::Malformed => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::Signature(_) => "signature",
            TokenError::Issuer { .. } => "issuer",
            TokenError::Audience => "audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::TooLong(_) => "too_long",
            TokenError::ServiceAccount(_) => "service_account",
            TokenError::NoNode => "no_node",
            TokenError::NodeMismatch { .. } => "node_mismatch",
            TokenError::NotAuthenticated(_) => "not_authenticated",
            TokenError::ReviewFailed(_) => "review_failed",
        }
    }
}

/// Base64url without padding, as JWTs use it.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct Named {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct KubeClaims {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    serviceaccount: Named,
    #[serde(default)]
    node: Option<Named>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(rename = "kubernetes.io", default)]
    kube: KubeClaims,
}

fn verify_with(key: &Jwk, alg: &str, message: &[u8], sig: &[u8]) -> bool {
    let decode = |v: &Option<String>| v.as_deref().and_then(base64url_decode);
    match (alg, key.kty.as_str()) {
        ("ES256", "EC") if key.crv.as_deref() == Some("P-256") => {
            let (Some(x), Some(y)) = (decode(&key.x), decode(&key.y)) else {
                return false;
            };
            let mut point = vec![4u8];
            point.extend(x);
            point.extend(y);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, sig)
                .is_ok()
        }
        ("RS256", "RSA") => {
            let (Some(n), Some(e)) = (decode(&key.n), decode(&key.e)) else {
                return false;
            };
            RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok()
        }
        _ => false,
    }
}

/// Who a token says it is, once its issuer vouched for it.
struct Subject {
    /// `namespace/name` of its ServiceAccount.
    account: String,
    node: Option<String>,
}

/// The offline check: signature, issuer, audience, time; then the subject.
fn offline(
    jwks: &Jwks,
    issuer: &str,
    cluster: &str,
    token: &str,
    now: u64,
) -> Result<Subject, TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = base64url_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if header.alg != "ES256" && header.alg != "RS256" {
        return Err(TokenError::Algorithm(header.alg));
    }
    let sig = base64url_decode(s).ok_or(TokenError::Malformed)?;
    let message = format!("{h}.{p}");
    let signed = jwks
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        .any(|k| verify_with(k, &header.alg, message.as_bytes(), &sig));
    if !signed {
        return Err(TokenError::Signature(cluster.to_string()));
    }
    let claims: Claims = base64url_decode(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if claims.iss != issuer {
        return Err(TokenError::Issuer {
            got: claims.iss,
            want: issuer.to_string(),
        });
    }
    let audience_ok = match &claims.aud {
        Audience::One(a) => a == AUDIENCE,
        Audience::Many(v) => v.iter().any(|a| a == AUDIENCE),
    };
    if !audience_ok {
        return Err(TokenError::Audience);
    }
    if claims.exp + SKEW <= now {
        return Err(TokenError::Expired);
    }
    let start = claims.nbf.or(claims.iat).unwrap_or(now);
    if start > now + SKEW {
        return Err(TokenError::NotYetValid);
    }
    let lifetime = claims.exp.saturating_sub(start);
    if lifetime > MAX_TOKEN_LIFETIME {
        return Err(TokenError::TooLong(lifetime));
    }
    let (ns, name) = (&claims.kube.namespace, &claims.kube.serviceaccount.name);
    if claims.sub != format!("system:serviceaccount:{ns}:{name}") {
        return Err(TokenError::ServiceAccount(claims.sub));
    }
    Ok(Subject {
        account: format!("{ns}/{name}"),
        node: claims.kube.node.map(|n| n.name).filter(|n| !n.is_empty()),
    })
}

/// The node name TokenReview reports for a pod-bound token.
const NODE_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Asks the API server.
async fn review(client: &kube::Client, token: &str) -> Result<Subject, TokenError> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let asked = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.trim().to_string()),
            audiences: Some(vec![AUDIENCE.to_string()]),
        },
        ..TokenReview::default()
    };
    let answer = api
        .create(&kube::api::PostParams::default(), &asked)
        .await
        .map_err(|e| TokenError::ReviewFailed(e.to_string()))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(TokenError::NotAuthenticated(
            status.error.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == AUDIENCE)
    {
        return Err(TokenError::Audience);
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let account = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, name)| format!("{ns}/{name}"))
        .ok_or_else(|| TokenError::ServiceAccount(username.clone()))?;
    let node = user
        .extra
        .and_then(|mut e| e.remove(NODE_EXTRA))
        .and_then(|v| v.into_iter().next())
        .filter(|n| !n.is_empty());
    Ok(Subject { account, node })
}

/// A registered cluster, with its API client once one was needed.
struct Entry {
    config: ClusterIssuer,
    client: tokio::sync::OnceCell<kube::Client>,
}

/// The registered issuers, by cluster.
#[derive(Clone, Default)]
pub struct Issuers(std::sync::Arc<BTreeMap<String, Entry>>);

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Issuers {
    pub fn new(file: IssuersFile) -> Result<Issuers, String> {
        let mut map = BTreeMap::new();
        for c in file.clusters {
            for sa in [&c.adapter_service_account, &c.announcer_service_account] {
                if sa.split('/').count() != 2 {
                    return Err(format!(
                        "cluster {:?}: {sa:?} is not namespace/name",
                        c.name
                    ));
                }
            }
            match (&c.issuer, &c.jwks, &c.token_review) {
                (Some(_), Some(j), None) if !j.keys.is_empty() => {}
                (None, None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "cluster {:?}: give issuer and jwks (with keys), or tokenReview",
                        c.name
                    ));
                }
            }
            let entry = Entry {
                config: c,
                client: tokio::sync::OnceCell::new(),
            };
            if map.insert(entry.config.name.clone(), entry).is_some() {
                return Err("a cluster is named twice".into());
            }
        }
        Ok(Issuers(std::sync::Arc::new(map)))
    }

    /// The identity `token` proves for `cluster` at `now` (seconds since the epoch); `node` is
    /// what the caller says it is (empty: whatever the token says).
    pub async fn verify(
        &self,
        token: &str,
        cluster: &str,
        node: &str,
        now: u64,
    ) -> Result<Principal, TokenError> {
        let e = self
            .0
            .get(cluster)
            .ok_or_else(|| TokenError::UnknownCluster(cluster.to_string()))?;
        let c = &e.config;
        let subject = match (&c.issuer, &c.jwks, &c.token_review) {
            (Some(issuer), Some(jwks), _) => offline(jwks, issuer, cluster, token, now)?,
            (_, _, Some(tr)) => {
                let client = e
                    .client
                    .get_or_try_init(|| async {
                        let config = match &tr.kubeconfig {
                            Some(path) => {
                                let kc = kube::config::Kubeconfig::read_from(path)
                                    .map_err(|e| TokenError::ReviewFailed(e.to_string()))?;
                                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                                    .await
                                    .map_err(|e| TokenError::ReviewFailed(e.to_string()))?
                            }
                            None => kube::Config::infer()
                                .await
                                .map_err(|e| TokenError::ReviewFailed(e.to_string()))?,
                        };
                        kube::Client::try_from(config)
                            .map_err(|e| TokenError::ReviewFailed(e.to_string()))
                    })
                    .await?;
                review(client, token).await?
            }
            _ => return Err(TokenError::UnknownCluster(cluster.to_string())),
        };
        identity(cluster, c, subject, node)
    }
}

/// The identity a vouched-for subject has in `cluster`.
fn identity(
    cluster: &str,
    c: &ClusterIssuer,
    subject: Subject,
    node: &str,
) -> Result<Principal, TokenError> {
    let sa = || {
        TokenError::ServiceAccount(format!(
            "system:serviceaccount:{}",
            subject.account.replace('/', ":")
        ))
    };
    if subject.account == c.adapter_service_account {
        return Ok(Principal::Adapter {
            cluster: cluster.to_string(),
        });
    }
    if subject.account != c.announcer_service_account {
        return Err(sa());
    }
    let claim = subject.node.clone().ok_or(TokenError::NoNode)?;
    if !node.is_empty() && node != claim {
        return Err(TokenError::NodeMismatch {
            claim,
            asked: node.to_string(),
        });
    }
    Principal::from_path(&format!("cluster/{cluster}/node/{claim}")).map_err(|_| sa())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url() {
        assert_eq!(base64url_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64url_decode("_-8").as_deref(), Some(&[0xff, 0xef][..]));
        assert_eq!(base64url_decode("a+b"), None);
    }
}
