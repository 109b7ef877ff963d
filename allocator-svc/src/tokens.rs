//! Projected ServiceAccount tokens traded for identities, checked offline against the issuer
//! keys an admin registered for each cluster (`--token-issuers`, the JWKS the cluster's API
//! server publishes at `/openid/v1/jwks`).
//!
//! A token proves an identity when its signature is one of the cluster's keys (ES256 or RS256),
//! its issuer is the cluster's, its audience holds `ferrolb`, it is valid now and for at most
//! [`MAX_TOKEN_LIFETIME`], and its subject is the adapter's or the announcer's ServiceAccount.
//! An announcer's node comes from the token's `kubernetes.io.node.name` claim, which the API
//! server signs for the pod it is bound to: a pod on n1 never obtains n2's identity.

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

/// One cluster's API server as a token issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterIssuer {
    /// The cluster's name at the allocator.
    pub name: String,
    /// The `iss` its tokens carry (`kubectl get --raw /.well-known/openid-configuration`).
    pub issuer: String,
    /// Its signing keys (`kubectl get --raw /openid/v1/jwks`).
    pub jwks: Jwks,
    /// `namespace/name` of the adapter's ServiceAccount.
    pub adapter_service_account: String,
    /// `namespace/name` of the announcers' ServiceAccount.
    pub announcer_service_account: String,
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

/// The registered issuers, by cluster.
#[derive(Debug, Clone, Default)]
pub struct Issuers(BTreeMap<String, ClusterIssuer>);

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
            if c.jwks.keys.is_empty() {
                return Err(format!("cluster {:?}: no keys", c.name));
            }
            if map.insert(c.name.clone(), c).is_some() {
                return Err("a cluster is named twice".into());
            }
        }
        Ok(Issuers(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The identity `token` proves for `cluster` at `now` (seconds since the epoch); `node` is
    /// what the caller says it is (empty: whatever the token says).
    pub fn verify(
        &self,
        token: &str,
        cluster: &str,
        node: &str,
        now: u64,
    ) -> Result<Principal, TokenError> {
        let c = self
            .0
            .get(cluster)
            .ok_or_else(|| TokenError::UnknownCluster(cluster.to_string()))?;
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
        let signed = c
            .jwks
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
        if claims.iss != c.issuer {
            return Err(TokenError::Issuer {
                got: claims.iss,
                want: c.issuer.clone(),
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
        let account = format!(
            "{}/{}",
            claims.kube.namespace, claims.kube.serviceaccount.name
        );
        let subject_ok = claims.sub
            == format!(
                "system:serviceaccount:{}:{}",
                claims.kube.namespace, claims.kube.serviceaccount.name
            );
        if !subject_ok {
            return Err(TokenError::ServiceAccount(claims.sub));
        }
        if account == c.adapter_service_account {
            return Ok(Principal::Adapter {
                cluster: cluster.to_string(),
            });
        }
        if account != c.announcer_service_account {
            return Err(TokenError::ServiceAccount(claims.sub));
        }
        let claim = claims
            .kube
            .node
            .map(|n| n.name)
            .filter(|n| !n.is_empty())
            .ok_or(TokenError::NoNode)?;
        if !node.is_empty() && node != claim {
            return Err(TokenError::NodeMismatch {
                claim,
                asked: node.to_string(),
            });
        }
        Principal::from_path(&format!("cluster/{cluster}/node/{claim}"))
            .map_err(|_| TokenError::ServiceAccount(claims.sub))
    }
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
