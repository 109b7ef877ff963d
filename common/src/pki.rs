//! Certificates for ferrolb's identities: a CA, and leaf certificates whose one URI SAN is the
//! identity's SPIFFE ID. Keys are ECDSA P-256, written as PKCS#8 PEM with mode 0600.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::identity::Principal;
use crate::secret::Secret;

/// How far back a new certificate's validity starts, so that a peer whose clock is a little
/// behind still accepts it.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: String,
    pub key: Secret,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a little before now (clock skew) for `lifetime`.
    pub fn for_next(lifetime: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + lifetime,
        }
    }
}

/// A new self-signed CA for `domain`.
pub fn new_authority(domain: &str, validity: Validity) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ferrolb CA {domain}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ferrolb");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert: cert.pem(),
        key: Secret::new(key.serialize_pem()),
    })
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct LeafSpec<'a> {
    pub principal: &'a Principal,
    pub domain: &'a str,
    /// Extra DNS names and addresses, for clients that check host names (grpcurl, curl).
    pub dns_names: &'a [String],
    pub ips: &'a [IpAddr],
    pub validity: Validity,
}

/// Issues a leaf certificate with a new key, signed by `ca`.
pub fn issue(ca: &Issued, spec: &LeafSpec<'_>) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let cert = issue_for_key(ca, spec, &key)?;
    Ok(Issued {
        cert,
        key: Secret::new(key.serialize_pem()),
    })
}

/// Issues a leaf certificate for a public key the subject keeps (the private key never leaves
/// it); returns the PEM certificate.
pub fn issue_for_key(
    ca: &Issued,
    spec: &LeafSpec<'_>,
    public_key: &impl rcgen::PublicKeyData,
) -> Result<String, PkiError> {
    let ca_key = KeyPair::from_pem(ca.key.expose())?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.principal.to_string());
    let mut sans = vec![SanType::URI(
        spec.principal.spiffe_id(spec.domain).try_into()?,
    )];
    for d in spec.dns_names {
        sans.push(SanType::DnsName(d.clone().try_into()?));
    }
    sans.extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match spec.principal {
        // The allocator serves; its replicas may also be clients of each other's tools.
        Principal::Allocator => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = spec.validity.not_before.into();
    params.not_after = spec.validity.not_after.into();
    params.serial_number = Some(serial());
    Ok(params.signed_by(public_key, &issuer)?.pem())
}

/// Issues a server certificate for DNS names (a Kubernetes webhook's Service names), with a new
/// key, signed by `ca`.
pub fn issue_server(
    ca: &Issued,
    dns_names: &[String],
    validity: Validity,
) -> Result<Issued, PkiError> {
    let ca_key = KeyPair::from_pem(ca.key.expose())?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = dns_names.first() {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(serial());
    Ok(Issued {
        cert: params.signed_by(&key, &issuer)?.pem(),
        key: Secret::new(key.serialize_pem()),
    })
}

fn serial() -> rcgen::SerialNumber {
    let mut bytes = [0u8; 16];
    // A random positive serial (RFC 5280 §4.1.2.2: unique per CA, at most 20 octets).
    let _ = ring_fill(&mut bytes);
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn ring_fill(bytes: &mut [u8]) -> Result<(), ()> {
    use rustls::crypto::ring::default_provider;
    default_provider().secure_random.fill(bytes).map_err(|_| ())
}

/// The file names of an identity's certificate and key in a directory: `<stem>.pem` and
/// `<stem>-key.pem`.
pub fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    )
}

/// Writes `issued` as `<stem>.pem` and `<stem>-key.pem` (mode 0600) into `dir`. Each file is
/// written beside its place and renamed over it, so a process that reloads them never reads
/// half a file.
pub fn write(dir: &Path, stem: &str, issued: &Issued) -> Result<(), PkiError> {
    let (cert, key) = paths(dir, stem);
    write_file(&key, issued.key.expose(), 0o600)?;
    write_file(&cert, &issued.cert, 0o644)
}

/// Writes `contents` to `path` atomically with `mode`.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
