//! The TLS flags every ferrolb binary takes, checked once.

use std::path::PathBuf;

use crate::bootstrap::{Exchange, TokenArgs};
use crate::identity::{self, Principal};
use crate::tls::{self, Credentials, TlsFiles};
use crate::transport::ClientSecurity;

/// The trust domain ferrolb's identities live in unless told otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "ferrolb.local";

#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// This party's certificate (PEM; the leaf first, then any intermediates). Reloaded when it
    /// changes.
    #[arg(long = "tls-cert", env = "FERROLB_TLS_CERT")]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long = "tls-key", env = "FERROLB_TLS_KEY")]
    pub key: Option<PathBuf>,
    /// The CA bundle peers are checked against (PEM; several CAs are all trusted).
    #[arg(long = "tls-ca", env = "FERROLB_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// The SPIFFE trust domain of ferrolb's identities.
    #[arg(long = "trust-domain", env = "FERROLB_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Development only: no TLS and no authentication, the caller named in the
    /// `x-ferrolb-caller` metadata. Refused on anything but loopback.
    #[arg(long = "dev-plaintext", env = "FERROLB_DEV_PLAINTEXT")]
    pub dev_plaintext: bool,
}

impl TlsArgs {
    /// The three files, when all are given; an error when only some are.
    pub fn files(&self) -> Result<Option<TlsFiles>, String> {
        identity::check_domain(&self.trust_domain).map_err(|e| format!("--trust-domain: {e}"))?;
        match (&self.cert, &self.key, &self.ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => Err("--tls-cert, --tls-key and --tls-ca go together".into()),
        }
    }

    /// The client security of `who`, from a token or certificate files; a certificate that
    /// names anybody else is refused (the allocator would act on nothing of theirs).
    pub async fn client_as(
        &self,
        token: &TokenArgs,
        who: Principal,
    ) -> Result<ClientSecurity, String> {
        let (security, me) = self.client_with_token(token, who.clone()).await?;
        match me {
            Some(me) if me != who => Err(format!(
                "the certificate is {me}'s, not {who}'s: give each its own certificate"
            )),
            _ => Ok(security),
        }
    }

    /// A part that may get its certificate for a ServiceAccount token (`token`) as `who`:
    /// the exchange made and its renewal started, or the flags' files.
    async fn client_with_token(
        &self,
        token: &TokenArgs,
        who: Principal,
    ) -> Result<(ClientSecurity, Option<Principal>), String> {
        let Some(token_file) = &token.token_file else {
            return self.client(None);
        };
        if self.cert.is_some() || self.key.is_some() {
            return Err(
                "--token-file replaces --tls-cert and --tls-key; give one or the other".into(),
            );
        }
        let exchange = Exchange {
            bootstrap: token
                .bootstrap
                .clone()
                .ok_or("--token-file needs --bootstrap, the allocator's bootstrap endpoint")?,
            token_file: token_file.clone(),
            ca: self.ca.clone().ok_or(
                "--token-file needs --tls-ca, the CA the allocator's certificate chains to",
            )?,
            dir: token.dir.clone(),
            domain: self.trust_domain.clone(),
            who,
        };
        // The first exchange is tried until it works: the allocator may start after us.
        let mut wait = std::time::Duration::from_millis(200);
        let (files, expires) = loop {
            match exchange.run().await {
                Ok(got) => break got,
                Err(e) => {
                    tracing::warn!(error = e, retry_in = ?wait, "no certificate yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(10));
                }
            }
        };
        exchange.spawn_renewal(expires);
        self.secure(files)
    }

    /// A client's security: mutual TLS with `files` (or the flags' files), accepting only the
    /// allocator's identity. Returns our own identity too.
    pub fn client(
        &self,
        fallback: Option<TlsFiles>,
    ) -> Result<(ClientSecurity, Option<Principal>), String> {
        if self.dev_plaintext {
            tracing::warn!("development plaintext mode: nothing is encrypted or authenticated");
            return Ok((ClientSecurity::DevPlaintext, None));
        }
        let files = self.files()?.or(fallback).ok_or(
            "no TLS credentials: give --tls-cert, --tls-key and --tls-ca (ferrolbctl certs issues them), or --token-file in Kubernetes",
        )?;
        self.secure(files)
    }

    /// Mutual TLS with `files`, accepting only the allocator; our own identity beside it.
    fn secure(&self, files: TlsFiles) -> Result<(ClientSecurity, Option<Principal>), String> {
        let creds = Credentials::load(files).map_err(|e| e.to_string())?;
        let me = creds
            .own_identity(&self.trust_domain)
            .map_err(|e| e.to_string())?;
        creds.spawn_reload();
        let config = tls::client_config(&creds, &self.trust_domain, Principal::Allocator)
            .map_err(|e| e.to_string())?;
        Ok((ClientSecurity::Mtls(config), Some(me)))
    }
}
