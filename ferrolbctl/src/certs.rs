//! `ferrolbctl certs`: a CA and a certificate for each identity, for running ferrolb outside
//! Kubernetes (or for trusting an operator's own PKI: any CA in the bundle works).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use ferrolb_common::Principal;
use ferrolb_common::pki::{self, Issued, LeafSpec, Validity};

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Create a CA (`ca.pem`, `ca-key.pem`) in a directory.
    Ca {
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Issue a certificate for an identity, signed by the CA in --ca-dir: writes
    /// `<name>.pem` and `<name>-key.pem` (mode 0600) into --out.
    Issue {
        /// The identity: admin/<name>, cluster/<c>/adapter, cluster/<c>/node/<n>,
        /// client/<name> or allocator.
        identity: String,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// File name stem (default: the identity's last part, `allocator` or `admin`).
        #[arg(long)]
        name: Option<String>,
        /// Days the certificate is valid; short lives and renewal beat revocation.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// DNS names or addresses for clients that check host names (the allocator's).
        #[arg(long = "san", value_delimiter = ',')]
        sans: Vec<String>,
    },
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 24 * 3600)
}

fn read_ca(dir: &Path) -> Result<Issued, String> {
    let (cert, key) = pki::paths(dir, "ca");
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    Ok(Issued {
        cert: read(&cert)?,
        key: ferrolb_common::Secret::new(read(&key)?),
    })
}

pub fn run(cmd: CertsCmd, domain: &str) -> Result<(), String> {
    match cmd {
        CertsCmd::Ca { dir, days: d } => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if pki::paths(&dir, "ca").0.exists() {
                return Err(format!("{} already holds a CA", dir.display()));
            }
            let ca = pki::new_authority(domain, Validity::for_next(days(d)))
                .map_err(|e| e.to_string())?;
            pki::write(&dir, "ca", &ca).map_err(|e| e.to_string())?;
            println!("CA for trust domain {domain} in {}", dir.display());
        }
        CertsCmd::Issue {
            identity,
            ca_dir,
            out,
            name,
            days: d,
            sans,
        } => {
            let principal = Principal::from_path(&identity).map_err(|e| e.to_string())?;
            let ca = read_ca(&ca_dir)?;
            let (mut names, mut ips) = (Vec::new(), Vec::<IpAddr>::new());
            for s in sans {
                match s.parse() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => names.push(s),
                }
            }
            let issued = pki::issue(
                &ca,
                &LeafSpec {
                    principal: &principal,
                    domain,
                    dns_names: &names,
                    ips: &ips,
                    validity: Validity::for_next(days(d)),
                },
            )
            .map_err(|e| e.to_string())?;
            let stem = name.unwrap_or_else(|| {
                identity
                    .rsplit('/')
                    .next()
                    .unwrap_or("identity")
                    .to_string()
            });
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            pki::write(&out, &stem, &issued).map_err(|e| e.to_string())?;
            let (cert, key) = pki::paths(&out, &stem);
            println!(
                "{} valid {d} days: {} and {}",
                principal.spiffe_id(domain),
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}
