//! Harness for ferrolb's process-level tests: start the real binaries, talk to them over gRPC,
//! and give each test a database of its own. Everything a test needs that is missing (a binary,
//! PostgreSQL, root) fails the test with the reason; nothing is skipped.
#![allow(clippy::unwrap_used)]

pub mod churn;
pub mod fakekube;
pub mod home;
pub mod otlp;
pub mod pg;
pub mod plot;
pub mod routers;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::ipam_service_client::IpamServiceClient;
use tonic::transport::Channel;

pub mod pki;
pub use pg::PrivatePg;
pub use pki::{Pki, identity, test_pki};

/// A binary of the workspace, built by `cargo build --workspace --bins` (scripts/test does it).
/// Found beside the running program: tests live in target/<profile>/deps, benchmarks in
/// target/<profile>.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("the executable's directory");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target/<profile>")
    } else {
        here
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A running `ferrolb-allocator`, killed when dropped.
pub struct Allocator {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    /// Started in the development plaintext mode.
    pub plaintext: bool,
    /// Where its standard error goes, when not to the test's.
    pub stderr: Option<PathBuf>,
    _dir: Option<TempDir>,
    _log_dir: Option<TempDir>,
}

impl Allocator {
    /// Starts an allocator on `database_url` (or its embedded store when `None`) with extra flags,
    /// and waits until it serves.
    pub fn start(database_url: Option<&str>, extra: &[&str]) -> Allocator {
        Allocator::start_with_env(database_url, extra, &[])
    }

    /// As [`Allocator::start`], with environment variables set; with any, standard error goes
    /// to the file [`Allocator::stderr`] names.
    pub fn start_with_env(
        database_url: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Allocator {
        let a = Allocator::launch(database_url, extra, env);
        wait_listening(a.addr, Duration::from_secs(30));
        a
    }

    /// As [`Allocator::start_with_env`], without waiting for it to serve.
    pub fn launch(database_url: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Allocator {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(bin("ferrolb-allocator"));
        let plaintext = extra.contains(&"--dev-plaintext");
        // Every replica of a test shares the test's CA, as replicas of one deployment do.
        if !plaintext && !extra.contains(&"--tls-cert") {
            cmd.args(test_pki().args("allocator"));
        }
        if !extra.contains(&"--secrets-key-file") {
            cmd.arg("--secrets-key-file").arg(test_pki().secrets_key());
        }
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .args(extra)
            .env(
                "FERROLB_LOG",
                std::env::var("FERROLB_E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        let log_dir = (!env.is_empty()).then(|| TempDir::new("ferrolb-alloc-log"));
        let stderr = log_dir.as_ref().map(|d| d.0.join("stderr.log"));
        match &stderr {
            Some(path) => cmd.stderr(std::fs::File::create(path).expect("a log file")),
            None => cmd.stderr(Stdio::inherit()),
        };
        let dir = match database_url {
            Some(url) => {
                cmd.arg("--database-url").arg(url);
                None
            }
            None => {
                let d = TempDir::new("ferrolb-alloc");
                cmd.arg("--data-dir").arg(&d.0);
                Some(d)
            }
        };
        let child = cmd.spawn().expect("start ferrolb-allocator");
        Allocator {
            child,
            addr,
            metrics: Some(metrics),
            plaintext,
            stderr,
            _dir: dir,
            _log_dir: log_dir,
        }
    }

    /// What it has written to standard error so far (started with an environment).
    pub fn stderr_text(&self) -> String {
        let path = self.stderr.as_ref().expect("started with an environment");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        let scheme = if self.plaintext { "http" } else { "https" };
        format!("{scheme}://{}", self.addr)
    }

    pub async fn client(&self, caller: &str) -> Client {
        client(&self.url(), caller).await
    }

    /// What the allocator's `/metrics` says now.
    pub fn metrics_text(&self) -> String {
        let url = format!(
            "http://{}/metrics",
            self.metrics.expect("metrics are served")
        );
        let out = Command::new("curl")
            .args(["-sf", &url])
            .output()
            .expect("curl must be installed (scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_listening(addr: SocketAddr, within: Duration) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < within,
            "nothing listens on {addr} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Names the caller in metadata, for an allocator in the development plaintext mode only; over
/// TLS it sends nothing (the certificate names the caller).
#[derive(Clone)]
pub struct Caller(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Caller {
    pub fn none() -> Caller {
        Caller(None)
    }

    /// What `client` uses for `url`: metadata on `http://` (plaintext), nothing on `https://`.
    pub fn for_url(url: &str, caller: &str) -> Caller {
        Caller(
            url.starts_with("http://")
                .then(|| caller.parse().expect("a caller is ASCII")),
        )
    }
}

impl tonic::service::Interceptor for Caller {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.0 {
            req.metadata_mut().insert("x-ferrolb-caller", h.clone());
        }
        Ok(req)
    }
}

pub type Client =
    IpamServiceClient<tonic::service::interceptor::InterceptedService<Channel, Caller>>;

/// How the harness reaches `url`: mutual TLS as `caller` on `https://`, the development
/// plaintext mode on `http://`.
fn security(url: &str, caller: &str) -> ferrolb_common::transport::ClientSecurity {
    if url.starts_with("http://") {
        ferrolb_common::transport::ClientSecurity::DevPlaintext
    } else {
        test_pki().client_security(caller)
    }
}

/// A channel to `url` over mutual TLS as `caller` (`admin`, `cluster/x` for x's adapter,
/// `cluster/x/node/n`, `client/y`), with a certificate from the test's CA.
pub async fn channel(url: &str, caller: &str) -> Channel {
    let security = security(url, caller);
    let endpoint = ferrolb_common::transport::endpoint(url, &security)
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    ferrolb_common::transport::connect(endpoint, &security)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect to {url} as {caller}: {}",
                ferrolb_common::transport::error_chain(&e)
            )
        })
}

/// A channel as [`channel`] makes, or why not.
pub async fn try_channel(url: &str, caller: &str, within: Duration) -> Result<Channel, String> {
    let security = security(url, caller);
    let endpoint = ferrolb_common::transport::endpoint(url, &security)?.connect_timeout(within);
    ferrolb_common::transport::connect(endpoint, &security)
        .await
        .map_err(|e| ferrolb_common::transport::error_chain(&e))
}

/// Whether the allocator at `url` says SERVING on its gRPC health service.
pub async fn serving(url: &str) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::with_interceptor(
        channel(url, "admin").await,
        Caller::for_url(url, "admin"),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
}

/// An IPAM client that calls as `caller` (see [`channel`]).
pub async fn client(url: &str, caller: &str) -> Client {
    IpamServiceClient::with_interceptor(channel(url, caller).await, Caller::for_url(url, caller))
}

/// A pool every cluster and client may draw from (`*`).
pub fn pool(name: &str, addresses: &[&str]) -> pb::Pool {
    pb::Pool {
        name: name.into(),
        addresses: addresses.iter().map(|s| s.to_string()).collect(),
        clusters: vec!["*".into()],
        clients: vec!["*".into()],
        ..Default::default()
    }
}

pub fn service(cluster: &str, namespace: &str, name: &str) -> pb::Owner {
    pb::Owner {
        cluster: cluster.into(),
        namespace: namespace.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed and reaped with its guard, so a failing test leaves none behind.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shared test PostgreSQL server; `FERROLB_TEST_PG` overrides it.
pub fn pg_base() -> String {
    std::env::var("FERROLB_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database on the shared server, dropped with the guard.
pub struct PgDb {
    pub url: String,
    name: String,
}

impl PgDb {
    pub fn new() -> PgDb {
        let name = format!(
            "ferrolb_e2e_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        psql(&pg_base(), &format!("CREATE DATABASE {name}"));
        PgDb {
            url: format!("{}/{name}", pg_base()),
            name,
        }
    }
}

impl Default for PgDb {
    fn default() -> Self {
        PgDb::new()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &format!("{}/postgres", pg_base()),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Runs one statement on the server's `postgres` database; fails the test with psql's words.
pub fn psql(base: &str, sql: &str) {
    let out = Command::new("psql")
        .args([&format!("{base}/postgres"), "-qc", sql])
        .output()
        .expect("psql must be installed: these tests need PostgreSQL (scripts/test installs it)");
    assert!(
        out.status.success(),
        "psql on {base} failed (is PostgreSQL running? scripts/test starts it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `p`-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Allocates `count` leases with `concurrency` clients; `request(i)` makes the i-th request.
/// Returns each call's latency, sorted.
pub async fn allocate_many(
    url: &str,
    count: usize,
    concurrency: usize,
    request: impl Fn(usize) -> pb::AllocateRequest + Send + Sync + 'static,
) -> Vec<Duration> {
    let request = std::sync::Arc::new(request);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut c = client(url, "admin").await;
        let (request, next) = (
            std::sync::Arc::clone(&request),
            std::sync::Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return lat;
                }
                let start = Instant::now();
                if let Err(s) = c.allocate(request(i)).await {
                    panic!("allocation {i} failed: {s:?}");
                }
                lat.push(start.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.extend(t.await.expect("allocation task"));
    }
    all.sort();
    all
}

/// Resident memory of a process, in MiB, from /proc.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// Runs `scripts/lab` with `args`.
pub fn lab(args: &[&str]) -> std::process::Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab");
    Command::new("bash")
        .arg(script)
        .args(args)
        .env(pki::PKI_ENV, &test_pki().dir)
        .output()
        .expect("run scripts/lab")
}

/// A network lab of the test's own (`scripts/lab`), taken down when dropped.
pub struct Lab(pub String);

impl Lab {
    /// Brings up a lab named `prefix` and this process's id; fails the test if it cannot.
    pub fn up(prefix: &str) -> Lab {
        Lab::named(&format!("{prefix}{}", std::process::id() % 100_000))
    }

    /// Brings up a lab of exactly this name.
    pub fn named(name: &str) -> Lab {
        let name = name.to_string();
        let out = lab(&["up", &name]);
        assert!(
            out.status.success(),
            "scripts/lab up needs root and iproute2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Lab(name)
    }

    /// Runs a command in one of the lab's hosts.
    pub fn run(&self, host: &str, cmd: &[&str]) -> std::process::Output {
        let mut args = vec!["exec", &self.0, host];
        args.extend_from_slice(cmd);
        lab(&args)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        lab(&["down", &self.0]);
    }
}

/// Creates or replaces a pool; fails the test if the allocator refuses it.
pub async fn apply(client: &mut Client, pool: pb::Pool) {
    let name = pool.name.clone();
    client
        .apply_pool(pb::ApplyPoolRequest {
            pool: Some(pool),
            create_only: false,
        })
        .await
        .unwrap_or_else(|s| panic!("apply pool {name}: {s:?}"));
}
