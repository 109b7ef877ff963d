//! Secure with no set-up: an allocator started without certificate options makes its own CA,
//! its server certificate and an admin credential in its data directory on first start (as
//! `kubeadm init` writes `admin.conf`); `ferrolbctl` finds the credential there by default.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ferrolb_common::Principal;
use ferrolb_common::pki::{self, Issued, LeafSpec, Validity};
use ferrolb_common::tls::TlsFiles;

/// The directory, inside the data directory, that holds the generated files.
pub const PKI_DIR: &str = "ferrolb-pki";

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The server certificate is issued anew at every start, so it never runs out on a server
/// that restarts now and then; a quarter of a year covers one that does not.
const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
const ADMIN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Makes sure `dir` holds a CA, a fresh server certificate and an admin credential; returns
/// the server's files.
pub fn ensure(
    dir: &Path,
    domain: &str,
    names: &[String],
    ips: &[IpAddr],
) -> Result<TlsFiles, String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let (ca_cert, ca_key) = pki::paths(dir, "ca");
    let ca = if ca_cert.exists() {
        Issued {
            cert: read(&ca_cert)?,
            key: ferrolb_common::Secret::new(read(&ca_key)?),
        }
    } else {
        let ca = pki::new_authority(domain, Validity::for_next(CA_LIFETIME))
            .map_err(|e| e.to_string())?;
        pki::write(dir, "ca", &ca).map_err(|e| e.to_string())?;
        tracing::info!(dir = %dir.display(), trust_domain = domain, "created a CA for this allocator");
        ca
    };
    let leaf = |principal: &Principal, names: &[String], ips: &[IpAddr], lifetime| {
        pki::issue(
            &ca,
            &LeafSpec {
                principal,
                domain,
                dns_names: names,
                ips,
                validity: Validity::for_next(lifetime),
            },
        )
        .map_err(|e| e.to_string())
    };
    let server = leaf(&Principal::Allocator, names, ips, SERVER_LIFETIME)?;
    pki::write(dir, "allocator", &server).map_err(|e| e.to_string())?;
    let (admin, _) = pki::paths(dir, "admin");
    if !admin.exists() {
        let cred = leaf(&Principal::Admin("admin".into()), &[], &[], ADMIN_LIFETIME)?;
        pki::write(dir, "admin", &cred).map_err(|e| e.to_string())?;
        tracing::info!(credential = %admin.display(), "wrote an admin credential; ferrolbctl uses it by default");
    }
    let (cert, key) = pki::paths(dir, "allocator");
    Ok(TlsFiles {
        cert,
        key,
        ca: ca_cert,
    })
}
