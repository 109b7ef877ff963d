//! ServiceAccount tokens traded for certificates at the allocator's bootstrap port, the way a
//! pod in Kubernetes gets its identity. The tokens are signed here as an API server signs them
//! (ES256, its claims), and checked by the allocator against the keys registered for the cluster.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolb_common::Principal;
use ferrolb_common::bootstrap::Exchange;
use ferrolb_e2e::pki::{DOMAIN, security_for};
use ferrolb_e2e::{Allocator, TempDir, free_port, test_pki};
use ferrolb_proto::v1 as pb;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const ANNOUNCER: &str = "ferrolb-announcer";
const ADAPTER: &str = "ferrolb-k8s-adapter";

fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An API server's signing key.
struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer { key, rng }
    }

    fn jwk(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
               "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }

    fn sign(&self, claims: &Value) -> String {
        let head = b64(json!({"alg": "ES256", "kid": "k1"}).to_string().as_bytes());
        let body = b64(claims.to_string().as_bytes());
        let message = format!("{head}.{body}");
        let sig = self.key.sign(&self.rng, message.as_bytes()).unwrap();
        format!("{message}.{}", b64(sig.as_ref()))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a projected token of `account` in metallb-system, bound to a pod on `node`.
fn claims(account: &str, node: Option<&str>) -> Value {
    let t = now();
    let mut kube = json!({
        "namespace": "metallb-system",
        "pod": {"name": "p-1", "uid": "0b7c"},
        "serviceaccount": {"name": account, "uid": "51d2"},
    });
    if let Some(n) = node {
        kube["node"] = json!({"name": n, "uid": "77aa"});
    }
    json!({
        "aud": ["ferrolb"], "iss": ISSUER, "iat": t, "nbf": t, "exp": t + 3600,
        "sub": format!("system:serviceaccount:metallb-system:{account}"),
        "kubernetes.io": kube,
    })
}

struct Bootstrap {
    allocator: Allocator,
    url: String,
    dir: TempDir,
}

/// An allocator whose bootstrap port takes the tokens of cluster `home` as `issuer` says
/// (`issuer` and `jwks`, or `tokenReview`).
fn start_with(dir: TempDir, issuer: Value) -> Bootstrap {
    let issuers = dir.0.join("issuers.yaml");
    let mut cluster = json!({
        "name": "home",
        "adapterServiceAccount": format!("metallb-system/{ADAPTER}"),
        "announcerServiceAccount": format!("metallb-system/{ANNOUNCER}"),
    });
    for (k, v) in issuer.as_object().unwrap() {
        cluster[k] = v.clone();
    }
    // JSON is YAML.
    std::fs::write(&issuers, json!({"clusters": [cluster]}).to_string()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let pki_dir = test_pki().dir.display().to_string();
    let issuers = issuers.display().to_string();
    let allocator = Allocator::start(
        None,
        &[
            "--bootstrap-listen",
            &listen,
            "--token-issuers",
            &issuers,
            "--issuing-ca-dir",
            &pki_dir,
            "--issued-cert-seconds",
            "600",
        ],
    );
    ferrolb_e2e::wait_listening(listen.parse().unwrap(), Duration::from_secs(10));
    Bootstrap {
        allocator,
        url: format!("https://{listen}"),
        dir,
    }
}

fn start(signer: &Signer) -> Bootstrap {
    start_with(
        TempDir::new("ferrolb-tokens"),
        json!({"issuer": ISSUER, "jwks": {"keys": [signer.jwk()]}}),
    )
}

impl Bootstrap {
    /// Trades `token` as `who` would.
    async fn exchange(
        &self,
        token: &str,
        who: Principal,
    ) -> Result<(Principal, std::path::PathBuf), String> {
        let n = who.to_string().replace('/', "_");
        let token_file = self.dir.0.join(format!("token-{n}"));
        std::fs::write(&token_file, token).unwrap();
        let ex = Exchange {
            bootstrap: self.url.clone(),
            token_file,
            ca: test_pki().ca_path(),
            dir: self.dir.0.join(format!("identity-{n}")),
            domain: DOMAIN.into(),
            who,
        };
        let (files, expires) = ex.run().await?;
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(
            left <= Duration::from_secs(600) && left > Duration::from_secs(500),
            "{left:?}"
        );
        let pem = std::fs::read(&files.cert).unwrap();
        let cert: rustls::pki_types::CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
        let got = ferrolb_common::tls::principal_of(&cert, DOMAIN).unwrap();
        Ok((got, files.cert.parent().unwrap().to_path_buf()))
    }
}

fn node(n: &str) -> Principal {
    Principal::Node {
        cluster: "home".into(),
        node: n.into(),
    }
}

#[tokio::test]
async fn tokens_are_traded_for_exactly_their_identity() {
    let signer = Signer::new();
    let b = start(&signer);

    // A node's token: a certificate for that node, which opens that node's stream.
    let (got, dir) = b
        .exchange(&signer.sign(&claims(ANNOUNCER, Some("n1"))), node("n1"))
        .await
        .unwrap();
    assert_eq!(got, node("n1"));
    let files = ferrolb_common::tls::TlsFiles {
        cert: dir.join("identity.pem"),
        key: dir.join("identity-key.pem"),
        ca: test_pki().ca_path(),
    };
    let security = security_for(files);
    let endpoint = ferrolb_common::transport::endpoint(&b.allocator.url(), &security).unwrap();
    let channel = ferrolb_common::transport::connect(endpoint, &security)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(pb::AnnouncerMessage {
        kind: Some(pb::announcer_message::Kind::Hello(pb::Hello {
            cluster: "home".into(),
            node: "n1".into(),
            capabilities: vec!["l2".into()],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = pb::announcer_service_client::AnnouncerServiceClient::new(channel)
        .announce(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(inbound.message().await.unwrap().is_some());

    // The adapter's token: the adapter's identity.
    let adapter = Principal::Adapter {
        cluster: "home".into(),
    };
    let (got, _) = b
        .exchange(&signer.sign(&claims(ADAPTER, None)), adapter.clone())
        .await
        .unwrap();
    assert_eq!(got, adapter);

    // And nothing else.
    let t = now();
    let other = Signer::new();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(ANNOUNCER, Some("n1"));
        f(&mut c);
        signer.sign(&c)
    };
    let cases: Vec<(&str, String, Principal, &str)> = vec![
        (
            "wrong audience",
            with(&|c| c["aud"] = json!(["kubernetes"])),
            node("n1"),
            "audience",
        ),
        (
            "expired",
            with(&|c| {
                c["iat"] = json!(t - 7200);
                c["nbf"] = json!(t - 7200);
                c["exp"] = json!(t - 3600);
            }),
            node("n1"),
            "expired",
        ),
        (
            "foreign issuer's key",
            other.sign(&claims(ANNOUNCER, Some("n1"))),
            node("n1"),
            "signature",
        ),
        (
            "another issuer",
            with(&|c| c["iss"] = json!("https://other.example")),
            node("n1"),
            "issued by",
        ),
        (
            "wrong ServiceAccount",
            signer.sign(&claims("default", Some("n1"))),
            node("n1"),
            "neither the adapter's nor the announcers'",
        ),
        (
            "node claim mismatch",
            signer.sign(&claims(ANNOUNCER, Some("n1"))),
            node("n2"),
            "for node \"n1\", not \"n2\"",
        ),
        (
            "no node claim",
            signer.sign(&claims(ANNOUNCER, None)),
            node("n1"),
            "no node claim",
        ),
        (
            "valid for too long",
            with(&|c| c["exp"] = json!(t + 400 * 86400)),
            node("n1"),
            "at most",
        ),
        ("not a token", "garbage".into(), node("n1"), "not a JWT"),
    ];
    for (what, token, who, reason) in cases {
        let e = b.exchange(&token, who).await.unwrap_err();
        assert!(
            e.contains("Unauthenticated") && e.contains(reason),
            "{what}: {e}"
        );
    }
    let metrics = b.allocator.metrics_text();
    for label in [
        "audience",
        "expired",
        "signature",
        "issuer",
        "service_account",
        "node_mismatch",
        "no_node",
        "too_long",
        "malformed",
    ] {
        assert!(
            metrics.contains(&format!(
                "ferrolb_allocator_tokens_refused_total{{reason=\"{label}\"}} 1"
            )),
            "{label}:\n{metrics}"
        );
    }
}

/// A cluster whose tokens the allocator checks by TokenReview, answered by the lab's
/// Kubernetes API server.
#[tokio::test]
async fn tokens_checked_by_token_review() {
    let kube = ferrolb_e2e::fakekube::FakeKube::start().await;
    let sa = |name: &str| format!("system:serviceaccount:metallb-system:{name}");
    kube.allow_token("tok-n1", &sa(ANNOUNCER), Some("n1"), &["ferrolb"]);
    kube.allow_token("tok-adapter", &sa(ADAPTER), None, &["ferrolb"]);
    kube.allow_token(
        "tok-api",
        &sa(ANNOUNCER),
        Some("n1"),
        &["https://kubernetes.default.svc"],
    );
    kube.allow_token("tok-default", &sa("default"), Some("n1"), &["ferrolb"]);
    let dir = TempDir::new("ferrolb-review");
    let kubeconfig = dir.0.join("kubeconfig");
    kube.kubeconfig(&kubeconfig);
    let b = start_with(dir, json!({"tokenReview": {"kubeconfig": kubeconfig}}));
    let (got, _) = b.exchange("tok-n1", node("n1")).await.unwrap();
    assert_eq!(got, node("n1"));
    let adapter = Principal::Adapter {
        cluster: "home".into(),
    };
    assert_eq!(
        b.exchange("tok-adapter", adapter.clone()).await.unwrap().0,
        adapter
    );
    for (token, who, reason) in [
        ("tok-n1", node("n2"), "for node \"n1\", not \"n2\""),
        ("tok-unknown", node("n1"), "did not authenticate"),
        ("tok-api", node("n1"), "did not authenticate"),
        (
            "tok-default",
            node("n1"),
            "neither the adapter's nor the announcers'",
        ),
    ] {
        let e = b.exchange(token, who).await.unwrap_err();
        assert!(
            e.contains("Unauthenticated") && e.contains(reason),
            "{token}: {e}"
        );
    }
}
