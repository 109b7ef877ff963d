//! Wires the allocator together: store, gRPC server with health, reflection and overload
//! protection, the metrics endpoint, and the background tasks (expiry, pool gauges, health).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferrolb_common::process::Critical;
use ferrolb_common::tls::{Credentials, TlsFiles};
use ferrolb_common::transport::{self, Security};

use ferrolb_proto::v1::announcer_service_server::AnnouncerServiceServer;
use ferrolb_proto::v1::cluster_state_service_server::ClusterStateServiceServer;
use ferrolb_proto::v1::ipam_service_server::IpamServiceServer;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::grpc::Ipam;
use crate::grpc::announce::{AnnouncerApi, Announcers, Liveness};
use crate::grpc::auth::AuthLayer;
use crate::grpc::cluster::ClusterState;
use crate::grpc::guard::GuardLayer;
use crate::metrics::Metrics;
use crate::store::{LeaseStore, SqlStore, StoreOptions};

/// Everything the allocator needs to start, checked once.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub store: StoreOptions,
    pub transport: Transport,
    pub bootstrap: Option<Bootstrap>,
    pub limits: Limits,
    pub max_deadline: Duration,
    /// How often expired external leases are looked for.
    pub expiry_interval: Duration,
    /// How long lease events are kept for WatchLeases.
    pub event_retention: Duration,
    /// An announcer not heard from for this long is taken for dead.
    pub heartbeat_timeout: Duration,
    /// MetalLB's `--ignore-exclude-lb`.
    pub ignore_exclude_label: bool,
}

/// How connections are secured.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Mutual TLS: every caller shows a certificate of `trust_domain`'s CA.
    Mtls {
        files: TlsFiles,
        trust_domain: String,
    },
    /// Development only: plaintext on loopback, the caller named in metadata.
    DevPlaintext,
}

/// The bootstrap port: ServiceAccount tokens traded for certificates.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub listen: SocketAddr,
    pub issuers: crate::tokens::Issuers,
    /// The CA the certificates are signed with (its key included).
    pub ca: ferrolb_common::pki::Issued,
    pub lifetime: Duration,
}

/// What one connection and one caller may take of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Calls in flight at once, in all.
    pub max_in_flight: usize,
    /// Calls in flight at once per identity.
    pub max_in_flight_per_identity: usize,
    /// WatchLeases streams open at once per identity.
    pub max_watches_per_identity: usize,
    /// HTTP/2 streams one connection may hold open.
    pub max_streams_per_connection: u32,
    /// Largest message a caller may send.
    pub max_message_bytes: usize,
    /// A connection takes no new calls after this long (its open streams go on); the client
    /// connects again, with a fresh handshake against the current certificates.
    pub max_connection_age: Duration,
}

/// HTTP/2 keepalive: a ping this often finds a dead peer that TCP has not noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an announcer session outlives the last refresh by the replica holding it: the
/// sessions of a replica that died without ending them expire after this.
const SESSION_TTL: Duration = Duration::from_secs(5);

/// How often pool gauges and the database health are refreshed.
const REFRESH: Duration = Duration::from_secs(2);

/// Runs the allocator until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let critical = config.store.critical.clone();
    let store = Arc::new(connect_with_retry(&config.store).await);
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let security = security(&config, &metrics).await?;
    let refused = refusal_counter(&metrics);
    let incoming = transport::incoming(listener, security, refused);
    let serving = Arc::new(AtomicBool::new(false));

    if let Some(addr) = config.metrics_listen {
        serve_metrics(addr, Arc::clone(&metrics), Arc::clone(&serving)).await?;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    spawn_background(
        Arc::clone(&store),
        Arc::clone(&metrics),
        health.clone(),
        Arc::clone(&serving),
        &config,
    );

    let (reflection_v1, reflection_v1alpha) = reflection()?;

    let view =
        crate::assignments::spawn(Arc::clone(&store), config.ignore_exclude_label, &critical);
    let announcers = announcers(&store, &view, &metrics, &config);

    let limits = &config.limits;
    let max = limits.max_message_bytes;
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_connection_age(limits.max_connection_age)
        .trace_fn(ferrolb_common::telemetry::grpc_server_span)
        .layer(AuthLayer::new(Arc::clone(&metrics)))
        .layer(GuardLayer::new(
            limits.max_in_flight,
            limits.max_in_flight_per_identity,
            config.max_deadline,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ClusterStateServiceServer::new(
                ClusterState::new(Arc::clone(&store), view, limits.max_watches_per_identity)
                    .with_failovers(Arc::clone(&announcers.failovers)),
            )
            .max_decoding_message_size(max),
        )
        .add_service(
            AnnouncerServiceServer::new(AnnouncerApi(Arc::new(announcers)))
                .max_decoding_message_size(max),
        )
        .add_service(
            IpamServiceServer::new(Ipam::new(store, metrics, limits.max_watches_per_identity))
                .max_decoding_message_size(max),
        )
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::select! {
        served = server => served.map_err(|e| format!("gRPC server failed: {e}"))?,
        // A replica without one of its parts must not go on saying it serves.
        why = critical.failed() => {
            serving.store(false, Ordering::Relaxed);
            set_health(&health, false).await;
            return Err(format!("stopping: {why}"));
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The announcer streams' service, under a name of this replica's own (its sessions are
/// refreshed in the background).
fn announcers(
    store: &Arc<SqlStore>,
    view: &tokio::sync::watch::Receiver<Arc<crate::assignments::View>>,
    metrics: &Arc<Metrics>,
    config: &Config,
) -> Announcers {
    let replica: Arc<str> = format!(
        "{}-{:016x}",
        std::process::id(),
        crate::cluster::random_u64()
    )
    .into();
    spawn_session_refresh(
        Arc::clone(store),
        Arc::clone(&replica),
        &config.store.critical,
    );
    Announcers::new(
        Arc::clone(store),
        view.clone(),
        Arc::clone(metrics),
        replica,
        Liveness {
            heartbeat_timeout: config.heartbeat_timeout,
            session_ttl: SESSION_TTL,
        },
    )
}

/// The transport the gRPC port serves: mutual TLS (with the bootstrap port, when configured),
/// or the development mode's plaintext.
async fn security(config: &Config, metrics: &Arc<Metrics>) -> Result<Security, String> {
    match &config.transport {
        Transport::Mtls {
            files,
            trust_domain,
        } => {
            let creds = Credentials::load(files.clone()).map_err(|e| e.to_string())?;
            creds.spawn_reload();
            if let Some(b) = &config.bootstrap {
                serve_bootstrap(b.clone(), &creds, trust_domain, Arc::clone(metrics)).await?;
            }
            tracing::info!(addr = %config.listen, trust_domain, cert = %files.cert.display(), "serving gRPC over mutual TLS");
            Ok(Security::Mtls {
                config: ferrolb_common::tls::server_config(&creds, trust_domain)
                    .map_err(|e| e.to_string())?,
                domain: trust_domain.clone(),
            })
        }
        Transport::DevPlaintext => {
            tracing::warn!(addr = %config.listen, "DEVELOPMENT PLAINTEXT MODE: no TLS, no authentication; callers name themselves in metadata. Never use this on a network.");
            Ok(Security::DevPlaintext)
        }
    }
}

/// `/metrics`, and `/healthz` for Kubernetes' probes, which speak plaintext without a
/// certificate: they get the serving state here and nothing else.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    serving: Arc<AtomicBool>,
) -> Result<(), String> {
    let app = ferrolb_common::process::metrics_router(move || metrics.encode()).route(
        "/healthz",
        axum::routing::get(move || {
            let up = serving.load(Ordering::Relaxed);
            async move {
                if up {
                    (axum::http::StatusCode::OK, "SERVING\n")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
                }
            }
        }),
    );
    ferrolb_common::process::serve_http(addr, app).await?;
    tracing::info!(%addr, "serving metrics");
    Ok(())
}

/// gRPC reflection, in both versions grpcurl and other tools ask for.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    String,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferrolb_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferrolb_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| e.to_string())?;
    Ok((v1, v1alpha))
}

/// Serves IdentityService alone on the bootstrap port, TLS without client certificates.
async fn serve_bootstrap(
    b: Bootstrap,
    creds: &Arc<Credentials>,
    domain: &str,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let listener = TcpListener::bind(b.listen)
        .await
        .map_err(|e| format!("cannot listen on {} for bootstrap: {e}", b.listen))?;
    let config = ferrolb_common::tls::bootstrap_server_config(creds).map_err(|e| e.to_string())?;
    let refused = refusal_counter(&metrics);
    let incoming = transport::incoming(listener, Security::ServerOnly(config), refused);
    let api = crate::grpc::identity::IdentityApi {
        issuers: b.issuers,
        ca: b.ca,
        domain: domain.to_string(),
        lifetime: b.lifetime,
        metrics,
    };
    tracing::info!(addr = %b.listen, "serving ServiceAccount token exchange");
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(GuardLayer::new(
                BOOTSTRAP_IN_FLIGHT,
                BOOTSTRAP_IN_FLIGHT,
                BOOTSTRAP_DEADLINE,
            ))
            .add_service(
                ferrolb_proto::v1::identity_service_server::IdentityServiceServer::new(api)
                    .max_decoding_message_size(64 * 1024),
            )
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "bootstrap server stopped");
        }
    });
    Ok(())
}

/// Counts refused handshakes by reason.
fn refusal_counter(metrics: &Arc<Metrics>) -> transport::OnRefused {
    let metrics = Arc::clone(metrics);
    Arc::new(move |reason: &'static str| {
        metrics
            .tls_refused
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    })
}

/// Token exchanges at once, and the time one may take: a node asks once an hour or so.
const BOOTSTRAP_IN_FLIGHT: usize = 64;
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(5);

/// Keeps the sessions this replica holds from expiring, and expires those of dead replicas.
fn spawn_session_refresh(store: Arc<SqlStore>, replica: Arc<str>, critical: &Critical) {
    critical.spawn("the announcer session refresh", async move {
        let mut tick = tokio::time::interval(SESSION_TTL / 5);
        loop {
            tick.tick().await;
            match store
                .refresh_sessions(&replica, SESSION_TTL.as_millis() as i64)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "sessions of a vanished replica expired"),
                Err(e) => tracing::warn!(error = %e, "cannot refresh announcer sessions"),
            }
        }
    });
}

/// The database may come up after the allocator: keep trying, and say why not.
async fn connect_with_retry(opts: &StoreOptions) -> SqlStore {
    let mut wait = Duration::from_millis(200);
    loop {
        match SqlStore::connect(opts.clone()).await {
            Ok(store) => return store,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot open the store");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn spawn_background(
    store: Arc<SqlStore>,
    metrics: Arc<Metrics>,
    health: tonic_health::server::HealthReporter,
    serving_flag: Arc<AtomicBool>,
    config: &Config,
) {
    let critical = &config.store.critical;
    let expiring = Arc::clone(&store);
    let (interval, retention) = (config.expiry_interval, config.event_retention);
    critical.spawn("lease expiry", async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if let Err(e) = expiring.expire().await {
                tracing::warn!(error = %e, "expiring leases failed");
            }
            match expiring.prune_events(retention).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(events = n, "old lease events pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning lease events failed"),
            }
        }
    });
    let watched = critical.clone();
    critical.spawn("the health check", async move {
        let mut writable = store.writable();
        let mut tick = tokio::time::interval(REFRESH);
        let mut serving = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = writable.changed() => {}
            }
            let up = !watched.has_failed()
                && *writable.borrow_and_update()
                && store.ping().await.is_ok();
            serving_flag.store(up, Ordering::Relaxed);
            if serving != Some(up) {
                set_health(&health, up).await;
                serving = Some(up);
            }
            if up && let Ok(stats) = store.stats(None).await {
                metrics.set_pools(&stats);
            }
        }
    });
}

/// Every service's health: SERVING while the store takes writes.
async fn set_health(health: &tonic_health::server::HealthReporter, up: bool) {
    let status = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in [
        "",
        "ferrolb.v1.IpamService",
        "ferrolb.v1.ClusterStateService",
        "ferrolb.v1.AnnouncerService",
    ] {
        health.set_service_status(service, status).await;
    }
    if up {
        tracing::info!("database reachable and writable");
    } else {
        tracing::warn!("database unreachable or not writable: calls fail with UNAVAILABLE");
    }
}
