//! `ferrolb-allocator`: with no flags it serves on 127.0.0.1 with the embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferrolb_allocator::server::{self, Config, Limits, Transport};
use ferrolb_allocator::store::{DbTimeouts, StoreOptions};
use ferrolb_common::args::TlsArgs;

#[derive(Parser, Debug)]
#[command(
    name = "ferrolb-allocator",
    version,
    about = "ferrolb's allocator: pools, leases and the IPAM gRPC API"
)]
struct Args {
    /// gRPC address.
    #[arg(long, env = "FERROLB_LISTEN", default_value = "127.0.0.1:7470")]
    listen: SocketAddr,
    /// Prometheus metrics address (`/metrics`); `off` disables it.
    #[arg(long, env = "FERROLB_METRICS_LISTEN", default_value = "127.0.0.1:7471")]
    metrics_listen: String,
    /// PostgreSQL URL (`postgres://user@host/db`). Without it the embedded SQLite store is used,
    /// which serves a single replica.
    #[arg(long, env = "FERROLB_DATABASE_URL")]
    database_url: Option<String>,
    /// Directory of the embedded store's file, when no database URL is given.
    #[arg(long, env = "FERROLB_DATA_DIR", default_value = ".")]
    data_dir: PathBuf,
    /// Database connections per replica.
    #[arg(long, env = "FERROLB_DB_MAX_CONNECTIONS", default_value_t = 16)]
    db_max_connections: u32,
    /// Calls in flight at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "FERROLB_MAX_IN_FLIGHT", default_value_t = 256)]
    max_in_flight: usize,
    /// Calls in flight at once per identity, so that one caller cannot starve the others.
    #[arg(long, env = "FERROLB_MAX_IN_FLIGHT_PER_IDENTITY", default_value_t = 64)]
    max_in_flight_per_identity: usize,
    /// Leases one external client may hold at once; more are RESOURCE_EXHAUSTED.
    #[arg(long, env = "FERROLB_MAX_LEASES_PER_CLIENT", default_value_t = 4096)]
    max_leases_per_client: usize,
    /// The longest time to live of an external lease, in seconds; a lease asked for without one
    /// gets this.
    #[arg(long, env = "FERROLB_MAX_LEASE_TTL_SECONDS", default_value_t = 30 * 24 * 3600)]
    max_lease_ttl_seconds: u32,
    /// WatchLeases streams one identity may hold open at once.
    #[arg(long, env = "FERROLB_MAX_WATCHES_PER_IDENTITY", default_value_t = 16)]
    max_watches_per_identity: usize,
    /// HTTP/2 streams one connection may hold open (watches and calls in flight).
    #[arg(
        long,
        env = "FERROLB_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 512
    )]
    max_streams_per_connection: u32,
    /// Largest request message, in bytes.
    #[arg(long, env = "FERROLB_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    max_message_bytes: usize,
    /// Seconds after which a connection takes no new calls (its open streams go on) and the
    /// client connects again with a fresh handshake.
    #[arg(
        long,
        env = "FERROLB_MAX_CONNECTION_AGE_SECONDS",
        default_value_t = 3600
    )]
    max_connection_age_seconds: u64,
    #[command(flatten)]
    tls: TlsArgs,
    /// Serve the ServiceAccount token exchange (IdentityService) on this address: TLS without
    /// client certificates, nothing else served. Needs --token-issuers.
    #[arg(long, env = "FERROLB_BOOTSTRAP_LISTEN")]
    bootstrap_listen: Option<SocketAddr>,
    /// The clusters whose tokens are traded for certificates: a YAML file of their issuers,
    /// signing keys (JWKS) and ServiceAccounts (docs/security.md).
    #[arg(long, env = "FERROLB_TOKEN_ISSUERS")]
    token_issuers: Option<PathBuf>,
    /// The CA that signs certificates issued for tokens (`ca.pem`, `ca-key.pem`). Default: the
    /// CA the allocator made in its data directory.
    #[arg(long, env = "FERROLB_ISSUING_CA_DIR")]
    issuing_ca_dir: Option<PathBuf>,
    /// Lifetime of a certificate issued for a token, in seconds; clients renew at two thirds.
    #[arg(long, env = "FERROLB_ISSUED_CERT_SECONDS", default_value_t = 3600)]
    issued_cert_seconds: u64,
    /// The key BGP passwords are sealed with at rest (32 bytes; every replica of one database
    /// needs the same file). Default: `<data-dir>/ferrolb-pki/secrets.key`, made on first start.
    #[arg(long, env = "FERROLB_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// Extra DNS names or addresses for the server certificate the allocator makes itself
    /// (without --tls-cert), for clients that check host names.
    #[arg(long = "tls-san", env = "FERROLB_TLS_SANS", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Longest time a call may take, in milliseconds; a shorter client deadline wins.
    #[arg(long, env = "FERROLB_MAX_DEADLINE_MS", default_value_t = 10_000)]
    max_deadline_ms: u64,
    /// How long a connection to the database may be waited for, in milliseconds, before a call
    /// fails with UNAVAILABLE.
    #[arg(long, env = "FERROLB_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2_000)]
    db_acquire_timeout_ms: u64,
    /// PostgreSQL's lock_timeout for the allocator's sessions, in milliseconds: the longest
    /// wait for the writer lock.
    #[arg(long, env = "FERROLB_DB_LOCK_TIMEOUT_MS", default_value_t = 8_000)]
    db_lock_timeout_ms: u64,
    /// PostgreSQL's statement_timeout, in milliseconds; the writer also gives up on a server
    /// that has not answered after this.
    #[arg(
        long,
        env = "FERROLB_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    db_statement_timeout_ms: u64,
    /// PostgreSQL's idle_in_transaction_session_timeout, in milliseconds: a replica stalled or
    /// cut off inside its transaction loses its session (and the writer lock) after this.
    #[arg(
        long,
        env = "FERROLB_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    db_idle_in_transaction_timeout_ms: u64,
    /// Seconds of silence after which PostgreSQL probes the connection (TCP keepalive); it
    /// drops the connection after three unanswered probes a third of this apart.
    #[arg(long, env = "FERROLB_DB_KEEPALIVE_SECONDS", default_value_t = 10)]
    db_keepalive_seconds: u64,
    /// Seconds during which a released address is offered back to its last owner first.
    #[arg(long, env = "FERROLB_RELEASE_GRACE_SECONDS", default_value_t = 3600)]
    release_grace_seconds: u64,
    /// Seconds between looks for expired external leases.
    #[arg(long, env = "FERROLB_EXPIRY_INTERVAL_SECONDS", default_value_t = 1)]
    expiry_interval_seconds: u64,
    /// Hours lease events are kept for WatchLeases; a watcher further behind lists again.
    #[arg(long, env = "FERROLB_EVENT_RETENTION_HOURS", default_value_t = 168)]
    event_retention_hours: u64,
    /// Milliseconds without a heartbeat after which an announcer is taken for dead and its
    /// layer-2 addresses move. Announcers send a heartbeat every third of this.
    #[arg(long, env = "FERROLB_HEARTBEAT_TIMEOUT_MS", default_value_t = 300)]
    heartbeat_timeout_ms: u64,
    /// Let nodes labelled node.kubernetes.io/exclude-from-external-load-balancers announce
    /// anyway (MetalLB's --ignore-exclude-lb).
    #[arg(long, env = "FERROLB_IGNORE_EXCLUDE_LB")]
    ignore_exclude_lb: bool,
    /// Log filter (tracing's env-filter syntax).
    #[arg(long, env = "FERROLB_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    trace: ferrolb_common::telemetry::TraceArgs,
}

impl Args {
    fn db_timeouts(&self) -> Result<DbTimeouts, String> {
        let ms = |v: u64, flag: &str| {
            if v == 0 {
                Err(format!("--{flag} must be at least 1"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        Ok(DbTimeouts {
            lock: ms(self.db_lock_timeout_ms, "db-lock-timeout-ms")?,
            statement: ms(self.db_statement_timeout_ms, "db-statement-timeout-ms")?,
            idle_in_transaction: ms(
                self.db_idle_in_transaction_timeout_ms,
                "db-idle-in-transaction-timeout-ms",
            )?,
            keepalive: ms(self.db_keepalive_seconds, "db-keepalive-seconds")? * 1000,
        })
    }

    fn config(self) -> Result<Config, String> {
        let transport = self.transport()?;
        let bootstrap = self.bootstrap()?;
        let sealer = std::sync::Arc::new(self.sealer()?);
        let timeouts = self.db_timeouts()?;
        let url = match self.database_url {
            Some(url) => url,
            None => {
                std::fs::create_dir_all(&self.data_dir)
                    .map_err(|e| format!("--data-dir {}: {e}", self.data_dir.display()))?;
                format!(
                    "sqlite://{}?mode=rwc",
                    self.data_dir.join("ferrolb-allocator.db").display()
                )
            }
        };
        let metrics_listen = match self.metrics_listen.as_str() {
            "off" => None,
            s => Some(
                s.parse()
                    .map_err(|_| format!("--metrics-listen {s:?} is not an address or off"))?,
            ),
        };
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".into());
        }
        if self.expiry_interval_seconds == 0 {
            return Err("--expiry-interval-seconds must be at least 1".into());
        }
        if !(30..=60_000).contains(&self.heartbeat_timeout_ms) {
            return Err("--heartbeat-timeout-ms must be between 30 and 60000".into());
        }
        let mut store = StoreOptions::new(url);
        store.max_connections = self.db_max_connections.max(1);
        store.acquire_timeout = Duration::from_millis(self.db_acquire_timeout_ms);
        store.timeouts = timeouts;
        store.release_grace = Duration::from_secs(self.release_grace_seconds);
        store.sealer = sealer;
        store.client_limits = ferrolb_allocator::state::ClientLimits {
            max_leases: self.max_leases_per_client,
            max_ttl_seconds: self.max_lease_ttl_seconds.max(1),
        };
        if self.max_in_flight_per_identity == 0 || self.max_streams_per_connection == 0 {
            return Err(
                "--max-in-flight-per-identity and --max-streams-per-connection must be at least 1"
                    .into(),
            );
        }
        Ok(Config {
            listen: self.listen,
            metrics_listen,
            store,
            transport,
            bootstrap,
            limits: Limits {
                max_in_flight: self.max_in_flight,
                max_in_flight_per_identity: self.max_in_flight_per_identity,
                max_watches_per_identity: self.max_watches_per_identity.max(1),
                max_streams_per_connection: self.max_streams_per_connection,
                max_message_bytes: self.max_message_bytes.max(1024),
                max_connection_age: Duration::from_secs(self.max_connection_age_seconds.max(1)),
            },
            max_deadline: Duration::from_millis(self.max_deadline_ms),
            expiry_interval: Duration::from_secs(self.expiry_interval_seconds),
            event_retention: Duration::from_secs(self.event_retention_hours * 3600),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            ignore_exclude_label: self.ignore_exclude_lb,
        })
    }
}

impl Args {
    fn bootstrap(&self) -> Result<Option<ferrolb_allocator::server::Bootstrap>, String> {
        let Some(listen) = self.bootstrap_listen else {
            return Ok(None);
        };
        if self.tls.dev_plaintext {
            return Err("--bootstrap-listen needs TLS; it cannot run with --dev-plaintext".into());
        }
        let path = self
            .token_issuers
            .as_ref()
            .ok_or("--bootstrap-listen needs --token-issuers")?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: ferrolb_allocator::tokens::IssuersFile = serde_yaml::from_str(&text)
            .map_err(|e| format!("--token-issuers {}: {e}", path.display()))?;
        let issuers = ferrolb_allocator::tokens::Issuers::new(file)
            .map_err(|e| format!("--token-issuers {}: {e}", path.display()))?;
        let dir = self
            .issuing_ca_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join(ferrolb_allocator::pki::PKI_DIR));
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| {
                format!(
                    "{} (the CA that signs certificates for tokens, --issuing-ca-dir): {e}",
                    p.display()
                )
            })
        };
        let ca = ferrolb_common::pki::Issued {
            cert: read("ca.pem")?,
            key: ferrolb_common::Secret::new(read("ca-key.pem")?),
        };
        Ok(Some(ferrolb_allocator::server::Bootstrap {
            listen,
            issuers,
            ca,
            lifetime: Duration::from_secs(self.issued_cert_seconds.clamp(300, 30 * 24 * 3600)),
        }))
    }

    fn sealer(&self) -> Result<ferrolb_allocator::secrets::Sealer, String> {
        use ferrolb_allocator::secrets::Sealer;
        match &self.secrets_key_file {
            Some(path) => Sealer::from_file(path, false),
            None => {
                let dir = self.data_dir.join(ferrolb_allocator::pki::PKI_DIR);
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                Sealer::from_file(&dir.join("secrets.key"), true)
            }
        }
    }

    /// Mutual TLS with the given files, or with the ones made in the data directory; plaintext
    /// only when asked for, and only on loopback.
    fn transport(&self) -> Result<Transport, String> {
        let domain = self.tls.trust_domain.clone();
        if self.tls.dev_plaintext {
            if self.tls.files()?.is_some() {
                return Err("--dev-plaintext and --tls-cert exclude each other".into());
            }
            if !self.listen.ip().is_loopback() {
                return Err(format!(
                    "--dev-plaintext serves loopback only; {} is not loopback",
                    self.listen
                ));
            }
            return Ok(Transport::DevPlaintext);
        }
        let files = match self.tls.files()? {
            Some(files) => files,
            None => {
                let mut names = vec!["localhost".to_string()];
                let mut ips: Vec<std::net::IpAddr> =
                    vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
                if !self.listen.ip().is_unspecified() && !ips.contains(&self.listen.ip()) {
                    ips.push(self.listen.ip());
                }
                for san in &self.tls_sans {
                    match san.parse() {
                        Ok(ip) => ips.push(ip),
                        Err(_) => names.push(san.clone()),
                    }
                }
                std::fs::create_dir_all(&self.data_dir)
                    .map_err(|e| format!("--data-dir {}: {e}", self.data_dir.display()))?;
                ferrolb_allocator::pki::ensure(
                    &self.data_dir.join(ferrolb_allocator::pki::PKI_DIR),
                    &domain,
                    &names,
                    &ips,
                )?
            }
        };
        Ok(Transport::Mtls {
            files,
            trust_domain: domain,
        })
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let telemetry = ferrolb_common::telemetry::init(&args.log, "ferrolb-allocator", &args.trace)
        .unwrap_or_else(|e| {
            eprintln!("ferrolb-allocator: {e}");
            std::process::exit(2)
        });
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferrolb-allocator: {e}");
            std::process::exit(2);
        }
    };
    let shutdown = async {
        ferrolb_common::process::shutdown_signal().await;
        tracing::info!("shutting down");
    };
    let served = server::run(config, shutdown).await;
    drop(telemetry);
    if let Err(e) = served {
        eprintln!("ferrolb-allocator: {e}");
        std::process::exit(1);
    }
}
