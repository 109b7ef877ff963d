//! The tests' PKI: one CA per test process, and a certificate for each identity a test calls
//! as, made on first use. Everything a test starts gets its flags from here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ferrolb_common::Principal;
use ferrolb_common::pki::{self, Issued, LeafSpec, Validity};
use ferrolb_common::tls::{self, Credentials, TlsFiles};
use ferrolb_common::transport::ClientSecurity;

use crate::TempDir;

pub const DOMAIN: &str = ferrolb_common::args::DEFAULT_TRUST_DOMAIN;

/// Names the directory of the test's PKI to the programs a test starts (benchmark helpers in
/// the lab), so that they call with certificates of the same CA.
pub const PKI_ENV: &str = "FERROLB_TEST_PKI_DIR";

/// A CA and the certificates issued from it, in a directory of their own.
pub struct Pki {
    pub dir: PathBuf,
    _owned: Option<TempDir>,
    pub ca: Issued,
    issued: Mutex<HashMap<String, TlsFiles>>,
    clients: Mutex<HashMap<String, ClientSecurity>>,
}

/// The identity a test's caller name stands for: `admin` is admin/admin, `cluster/x` the
/// adapter of x; the rest are identity paths.
pub fn identity(caller: &str) -> Principal {
    match caller {
        "admin" => Principal::Admin("admin".into()),
        _ => match caller.split('/').collect::<Vec<_>>().as_slice() {
            ["cluster", c] => Principal::Adapter {
                cluster: c.to_string(),
            },
            _ => Principal::from_path(caller)
                .unwrap_or_else(|e| panic!("{caller:?} is no identity: {e}")),
        },
    }
}

/// The test process's PKI.
pub fn test_pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| match std::env::var_os(PKI_ENV) {
        Some(dir) => Pki::open(PathBuf::from(dir)),
        None => Pki::new("ferrolb-pki"),
    })
}

impl Pki {
    /// A new CA in a new directory.
    pub fn new(prefix: &str) -> Pki {
        Pki::named(prefix, DOMAIN)
    }

    /// A new CA whose name says `ca_domain` (the identities it signs may say another).
    pub fn named(prefix: &str, ca_domain: &str) -> Pki {
        let dir = TempDir::new(prefix);
        let ca = pki::new_authority(ca_domain, Validity::for_next(Duration::from_secs(86400)))
            .expect("a test CA");
        pki::write(&dir.0, "ca", &ca).expect("write the test CA");
        // The secrets key every allocator replica of the test shares.
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng(),
            &mut key,
        );
        std::fs::write(dir.0.join("secrets.key"), key).expect("write the test secrets key");
        Pki {
            dir: dir.0.clone(),
            _owned: Some(dir),
            ca,
            issued: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    /// The CA another process of the test made.
    fn open(dir: PathBuf) -> Pki {
        let (cert, key) = pki::paths(&dir, "ca");
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let ca = Issued {
            cert: read(&cert),
            key: ferrolb_common::Secret::new(read(&key)),
        };
        Pki {
            dir,
            _owned: None,
            ca,
            issued: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    /// The secrets key BGP passwords are sealed with, shared by the test's allocators.
    pub fn secrets_key(&self) -> PathBuf {
        self.dir.join("secrets.key")
    }

    /// The flags of an allocator replica of the test: its certificate and the shared key.
    pub fn allocator_args(&self) -> Vec<String> {
        let mut args = self.args("allocator");
        args.push("--secrets-key-file".into());
        args.push(self.secrets_key().display().to_string());
        args
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate and key for `caller`, valid for a day.
    pub fn files(&self, caller: &str) -> TlsFiles {
        let mut issued = self.issued.lock().unwrap();
        if let Some(f) = issued.get(caller) {
            return f.clone();
        }
        // Each process its own files: a process never rewrites what another has loaded.
        let stem = format!("{}-{}", std::process::id(), caller.replace('/', "_"));
        let files = self.issue_with(
            &stem,
            &identity(caller),
            Validity::for_next(Duration::from_secs(86400)),
        );
        issued.insert(caller.to_string(), files.clone());
        files
    }

    /// A certificate of this CA with the given identity and validity, written as `stem`.
    pub fn issue_with(&self, stem: &str, who: &Principal, validity: Validity) -> TlsFiles {
        let cert = pki::issue(
            &self.ca,
            &LeafSpec {
                principal: who,
                domain: DOMAIN,
                dns_names: &["localhost".to_string()],
                ips: &["127.0.0.1".parse().unwrap()],
                validity,
            },
        )
        .expect("issue a test certificate");
        pki::write(&self.dir, stem, &cert).expect("write a test certificate");
        let (cert, key) = pki::paths(&self.dir, stem);
        TlsFiles {
            cert,
            key,
            ca: self.ca_path(),
        }
    }

    /// The flags that give a process `caller`'s identity.
    pub fn args(&self, caller: &str) -> Vec<String> {
        args_for(&self.files(caller))
    }

    /// Mutual TLS as `caller`, accepting only the allocator.
    pub fn client_security(&self, caller: &str) -> ClientSecurity {
        let mut clients = self.clients.lock().unwrap();
        if let Some(c) = clients.get(caller) {
            return c.clone();
        }
        let c = security_for(self.files(caller));
        clients.insert(caller.to_string(), c.clone());
        c
    }
}

/// The flags for a set of files.
pub fn args_for(f: &TlsFiles) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        f.cert.display().to_string(),
        "--tls-key".into(),
        f.key.display().to_string(),
        "--tls-ca".into(),
        f.ca.display().to_string(),
    ]
}

/// Mutual TLS with `files`, accepting only the allocator.
pub fn security_for(files: TlsFiles) -> ClientSecurity {
    let creds: Arc<Credentials> = Credentials::load(files).expect("test credentials load");
    ClientSecurity::Mtls(
        tls::client_config(&creds, DOMAIN, Principal::Allocator).expect("client TLS config"),
    )
}
