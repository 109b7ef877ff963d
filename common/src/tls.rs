//! Mutual TLS 1.3 for ferrolb's gRPC connections (rustls with ring).
//!
//! Both sides read a certificate, its key and a CA bundle from files and follow them when they
//! change ([`Credentials`]): new handshakes use the new files, open connections (and their
//! long-lived streams) are untouched, and a bundle holding an old and a new CA trusts both.
//!
//! A peer is trusted when its chain leads to the bundle *and* its one URI SAN is a ferrolb
//! identity of the trust domain ([`Principal`]); the server refuses anything else during the
//! handshake, and a client accepts only the identity it expects (the allocator's).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::identity::{IdentityError, Principal};

/// How often the files are looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Where a party's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One consistent reading of the files.
struct Material {
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl Material {
    fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Material, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| file_err(&files.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(&files.cert, e))?;
        if chain.is_empty() {
            return Err(file_err(&files.cert, "holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| file_err(&files.key, format!("no usable private key ({e})")))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| file_err(&files.key, e))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|_| {
            file_err(
                &files.key,
                format!("is not the key of {}", files.cert.display()),
            )
        })?;
        let roots = Arc::new(roots_in(&files.ca)?);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
                .build()
                .map_err(|e| file_err(&files.ca, e))?;
        Ok(Material {
            certified: Arc::new(certified),
            roots,
            client_verifier,
        })
    }
}

/// What a change of a file is recognised by.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A certificate, its key and a CA bundle, followed on disk.
pub struct Credentials {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Material>>,
    stamps: std::sync::Mutex<[Stamp; 3]>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the files once; fails if any is missing or unusable.
    pub fn load(files: TlsFiles) -> Result<Arc<Credentials>, TlsError> {
        let provider = provider();
        let stamps = Self::stamps_of(&files);
        let material = Material::load(&files, &provider)?;
        Ok(Arc::new(Credentials {
            files,
            provider,
            current: RwLock::new(Arc::new(material)),
            stamps: std::sync::Mutex::new(stamps),
        }))
    }

    fn stamps_of(files: &TlsFiles) -> [Stamp; 3] {
        [stamp(&files.cert), stamp(&files.key), stamp(&files.ca)]
    }

    fn material(&self) -> Arc<Material> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the files again if they changed. A set that does not load (a certificate written
    /// before its key, say) leaves the current one in use and is tried again next time.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = Self::stamps_of(&self.files);
        {
            let seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
        }
        let material = Material::load(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(true)
    }

    /// Follows the files for as long as the runtime runs.
    pub fn spawn_reload(self: &Arc<Self>) {
        let creds = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            let mut failing = false;
            loop {
                tick.tick().await;
                let Some(c) = creds.upgrade() else { return };
                match c.reload_if_changed() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(cert = %c.files.cert.display(), "TLS certificate, key and CA bundle reloaded");
                    }
                    Ok(false) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "TLS files changed but do not load; the previous ones stay in use");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// The identity our own certificate carries (checked once at start: a party must know who
    /// it is).
    pub fn own_identity(&self, domain: &str) -> Result<Principal, TlsError> {
        let m = self.material();
        let leaf = m
            .certified
            .cert
            .first()
            .ok_or_else(|| file_err(&self.files.cert, "holds no certificate"))?;
        principal_of(leaf, domain).map_err(|e| file_err(&self.files.cert, e))
    }
}

/// The identity in a certificate (its chain is checked elsewhere).
pub fn principal_of(cert: &CertificateDer<'_>, domain: &str) -> Result<Principal, IdentityError> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| IdentityError::NoUri)?;
    Principal::from_uris(parsed.valid_uri_names(), domain)
}

fn identity_refusal(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn algorithms(provider: &CryptoProvider) -> WebPkiSupportedAlgorithms {
    provider.signature_verification_algorithms
}

/// The server's view of a client: a chain to the current bundle and an identity of the domain.
#[derive(Debug)]
struct IdentityVerifier {
    creds: Arc<Credentials>,
    domain: String,
}

impl ClientCertVerifier for IdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle can change under us; clients hold one certificate each and need no hint.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.creds
            .material()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        principal_of(end_entity, &self.domain).map_err(identity_refusal)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = algorithms(&self.creds.provider);
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = algorithms(&self.creds.provider);
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(&self.creds.provider).supported_schemes()
    }
}

/// Where a client's trust anchors come from.
#[derive(Debug)]
enum Roots {
    /// The CA bundle of our own credentials, followed on disk.
    Followed(Arc<Credentials>),
    /// A bundle read once (a client that has no certificate yet).
    Fixed(Arc<RootCertStore>, Arc<CryptoProvider>),
}

impl Roots {
    fn current(&self) -> Arc<RootCertStore> {
        match self {
            Roots::Followed(c) => Arc::clone(&c.material().roots),
            Roots::Fixed(r, _) => Arc::clone(r),
        }
    }

    fn provider(&self) -> &Arc<CryptoProvider> {
        match self {
            Roots::Followed(c) => &c.provider,
            Roots::Fixed(_, p) => p,
        }
    }
}

/// A client's view of the server: a chain to the current bundle and exactly the expected
/// identity. Host names are not what ferrolb trusts; the SPIFFE ID is.
#[derive(Debug)]
struct ExpectedServer {
    roots: Roots,
    domain: String,
    expect: Principal,
}

impl ServerCertVerifier for ExpectedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = self.roots.current();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            algorithms(self.roots.provider()).all,
        )?;
        let who = principal_of(end_entity, &self.domain).map_err(identity_refusal)?;
        if who != self.expect {
            return Err(identity_refusal(IdentityError::UnknownPath(format!(
                "{} (expected {})",
                who.spiffe_id(&self.domain),
                self.expect.spiffe_id(&self.domain)
            ))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = algorithms(self.roots.provider());
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = algorithms(self.roots.provider());
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms(self.roots.provider()).supported_schemes()
    }
}

/// Our own certificate, whichever is current at the handshake.
#[derive(Debug)]
struct CurrentCert(Arc<Credentials>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.material().certified))
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.material().certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The allocator's TLS: TLS 1.3 only, a client certificate required, HTTP/2.
pub fn server_config(
    creds: &Arc<Credentials>,
    domain: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&creds.provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(IdentityVerifier {
            creds: Arc::clone(creds),
            domain: domain.to_string(),
        }))
        .with_cert_resolver(Arc::new(CurrentCert(Arc::clone(creds))));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS: TLS 1.3 only, our certificate offered, the server accepted only as `expect`.
pub fn client_config(
    creds: &Arc<Credentials>,
    domain: &str,
    expect: Principal,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&creds.provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectedServer {
            roots: Roots::Followed(Arc::clone(creds)),
            domain: domain.to_string(),
            expect,
        }))
        .with_client_cert_resolver(Arc::new(CurrentCert(Arc::clone(creds))));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// TLS for the allocator's bootstrap port: TLS 1.3, HTTP/2, no client certificate (its
/// callers come to get their first one).
pub fn bootstrap_server_config(creds: &Arc<Credentials>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&creds.provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CurrentCert(Arc::clone(creds))));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client with no certificate of its own yet: it checks the server against the CA bundle in
/// `ca` and accepts only `expect`.
pub fn anonymous_client_config(
    ca: &Path,
    domain: &str,
    expect: Principal,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectedServer {
            roots: Roots::Fixed(Arc::new(roots_in(ca)?), provider),
            domain: domain.to_string(),
            expect,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client of a server outside ferrolb (an OpenTelemetry collector): its certificate checked
/// against the CA bundle in `ca` and for the host name dialed, TLS 1.2 or 1.3, no certificate
/// of ours.
pub fn server_name_client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots_in(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn roots_in(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
        roots
            .add(c.map_err(|e| file_err(ca, e))?)
            .map_err(|e| file_err(ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_err(ca, "holds no CA certificate"));
    }
    Ok(roots)
}

/// Why a handshake failed, in words a metric label can carry.
pub fn refusal_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_issuer",
            // Signed in the name of a trusted CA, but not by it.
            CertificateError::BadSignature => "bad_signature",
            CertificateError::Other(_) => "identity",
            _ => "bad_certificate",
        },
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => "incompatible",
        _ => "protocol",
    }
}
