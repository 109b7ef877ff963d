//! In Kubernetes: a pod trades its projected ServiceAccount token for a short-lived certificate
//! at the allocator's bootstrap port, keeps the key to itself, and renews before expiry. The
//! certificate files are then followed like any others (`tls::Credentials`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::identity_service_client::IdentityServiceClient;
use rcgen::PublicKeyData;

use crate::identity::Principal;
use crate::pki::{self, Issued};
use crate::secret::Secret;
use crate::tls::{self, TlsFiles};
use crate::transport::{self, ClientSecurity};

/// The flags of a part that gets its certificate for a token.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// A projected ServiceAccount token (audience `ferrolb`) to trade for a certificate at
    /// --bootstrap, instead of --tls-cert and --tls-key. Read again at every renewal.
    #[arg(long = "token-file", env = "FERROLB_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The allocator's bootstrap endpoint (`https://host:7473`).
    #[arg(long = "bootstrap", env = "FERROLB_BOOTSTRAP")]
    pub bootstrap: Option<String>,
    /// Where the obtained key and certificate are kept (best a memory-backed directory).
    #[arg(
        long = "tls-dir",
        env = "FERROLB_TLS_DIR",
        default_value = "/run/ferrolb"
    )]
    pub dir: PathBuf,
}

/// Everything an exchange needs.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub bootstrap: String,
    pub token_file: PathBuf,
    pub ca: PathBuf,
    pub dir: PathBuf,
    pub domain: String,
    pub who: Principal,
}

impl Exchange {
    /// One exchange: a new key, the token, a certificate; the files written (key first).
    /// Returns them and when the certificate expires.
    pub async fn run(&self) -> Result<(TlsFiles, SystemTime), String> {
        let (cluster, node) = match &self.who {
            Principal::Adapter { cluster } => (cluster.clone(), String::new()),
            Principal::Node { cluster, node } => (cluster.clone(), node.clone()),
            other => return Err(format!("{other} does not get its certificate for a token")),
        };
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("--token-file {}: {e}", self.token_file.display()))?;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let config = tls::anonymous_client_config(&self.ca, &self.domain, Principal::Allocator)
            .map_err(|e| e.to_string())?;
        let security = ClientSecurity::Mtls(config);
        let endpoint = transport::endpoint(&self.bootstrap, &security)?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10));
        let channel = transport::connect(endpoint, &security).await.map_err(|e| {
            format!(
                "bootstrap {}: {}",
                self.bootstrap,
                transport::error_chain(&e)
            )
        })?;
        let r = IdentityServiceClient::new(channel)
            .issue_certificate(pb::IssueCertificateRequest {
                token: token.trim().to_string(),
                cluster,
                node,
                public_key: key.subject_public_key_info(),
            })
            .await
            .map_err(|s| {
                format!(
                    "bootstrap refused the token: {:?}: {}",
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
        let want = self.who.spiffe_id(&self.domain);
        if r.identity != want {
            return Err(format!("bootstrap issued {} instead of {want}", r.identity));
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("--tls-dir {}: {e}", self.dir.display()))?;
        let issued = Issued {
            cert: r.certificate_pem,
            key: Secret::new(key.serialize_pem()),
        };
        pki::write(&self.dir, "identity", &issued).map_err(|e| e.to_string())?;
        let (cert, key) = pki::paths(&self.dir, "identity");
        let expires = r
            .expires_at
            .map(|t| UNIX_EPOCH + Duration::from_secs(t.seconds.max(0) as u64))
            .unwrap_or_else(SystemTime::now);
        tracing::info!(
            identity = want,
            "certificate obtained for the ServiceAccount token"
        );
        Ok((
            TlsFiles {
                cert,
                key,
                ca: self.ca.clone(),
            },
            expires,
        ))
    }

    /// Renews at two thirds of each certificate's remaining life, and sooner again after a
    /// failure; the files' new contents are picked up by whoever follows them.
    pub fn spawn_renewal(self, mut expires: SystemTime) {
        tokio::spawn(async move {
            loop {
                let left = expires
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep((left * 2 / 3).max(Duration::from_secs(5))).await;
                match self.run().await {
                    Ok((_, e)) => expires = e,
                    Err(e) => {
                        tracing::warn!(error = e, "renewing the certificate failed; trying again")
                    }
                }
            }
        });
    }
}
