//! `ferrolb-k8s-adapter`: watches a cluster's Services, EndpointSlices, Nodes and MetalLB's
//! configuration objects, feeds the allocator, and writes the addresses back into the Services.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferrolb_k8s_adapter::controller::{self, Settings};
use ferrolb_k8s_adapter::metrics::Metrics;
use ferrolb_k8s_adapter::webhook;

#[derive(Parser, Debug)]
#[command(
    name = "ferrolb-k8s-adapter",
    version,
    about = "ferrolb's Kubernetes adapter"
)]
struct Args {
    /// The allocator's gRPC endpoint.
    #[arg(
        long,
        env = "FERROLB_ALLOCATOR",
        default_value = "https://127.0.0.1:7470"
    )]
    allocator: String,
    #[command(flatten)]
    tls: ferrolb_common::args::TlsArgs,
    #[command(flatten)]
    token: ferrolb_common::bootstrap::TokenArgs,
    /// This cluster's name at the allocator (pools say which clusters may draw from them).
    #[arg(long, env = "FERROLB_CLUSTER")]
    cluster: String,
    /// The namespace of MetalLB's configuration objects.
    #[arg(long, env = "FERROLB_NAMESPACE", default_value = "metallb-system")]
    namespace: String,
    /// Handle only Services of this loadBalancerClass (without it: Services without a class).
    #[arg(long, env = "FERROLB_LB_CLASS")]
    lb_class: Option<String>,
    /// Seconds between full passes over every Service and lease.
    #[arg(long, env = "FERROLB_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Seconds a leader's lease lasts without renewal (two replicas elect one leader on the
    /// Lease `ferrolb-k8s-adapter`); 0 runs without leader election.
    #[arg(long, env = "FERROLB_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Prometheus metrics address (`/metrics`); `off` disables it.
    #[arg(long, env = "FERROLB_METRICS_LISTEN", default_value = "127.0.0.1:7473")]
    metrics_listen: String,
    /// The validating webhook's HTTPS address (deploy/ serves it on 0.0.0.0:9443); `off`
    /// disables it, and bad objects are then reported only in their conditions and events.
    #[arg(long, env = "FERROLB_WEBHOOK_LISTEN", default_value = "off")]
    webhook_listen: String,
    /// The webhook Service's DNS name, which its certificate is made for.
    #[arg(
        long,
        env = "FERROLB_WEBHOOK_SERVICE",
        default_value = "ferrolb-webhook.ferrolb-system.svc"
    )]
    webhook_service: String,
    /// The Secret (in --namespace) where the replicas keep the webhook's certificate and CA.
    #[arg(
        long,
        env = "FERROLB_WEBHOOK_SECRET",
        default_value = "ferrolb-webhook-cert"
    )]
    webhook_secret: String,
    /// The ValidatingWebhookConfiguration whose caBundle the adapter keeps current.
    #[arg(
        long,
        env = "FERROLB_WEBHOOK_CONFIGURATION",
        default_value = "ferrolb-webhook-configuration"
    )]
    webhook_configuration: String,
    /// Seconds the webhook's certificate lasts; it is renewed with a third left, and its CA
    /// lasts ten times as long.
    #[arg(long, env = "FERROLB_WEBHOOK_CERT_SECONDS", default_value_t = 90 * 86_400)]
    webhook_cert_seconds: u64,
    /// Log filter (tracing's env-filter syntax).
    #[arg(long, env = "FERROLB_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    trace: ferrolb_common::telemetry::TraceArgs,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("ferrolb-k8s-adapter: {msg}");
    std::process::exit(2)
}

/// A part the adapter cannot work without is gone.
fn stop(why: &str) -> ! {
    eprintln!("ferrolb-k8s-adapter: {why}");
    std::process::exit(1)
}

impl Args {
    /// The client security, with a certificate that must be this cluster's adapter's: the
    /// allocator acts on nothing else.
    async fn security(&self) -> ferrolb_common::transport::ClientSecurity {
        let want = ferrolb_common::Principal::Adapter {
            cluster: self.cluster.clone(),
        };
        self.tls
            .client_as(&self.token, want)
            .await
            .unwrap_or_else(|e| fail(e))
    }

    async fn serve_metrics(&self, metrics: &Arc<Metrics>) {
        if self.metrics_listen == "off" {
            return;
        }
        let addr: std::net::SocketAddr = self.metrics_listen.parse().unwrap_or_else(|_| {
            fail(format!(
                "--metrics-listen {:?} is not an address or off",
                self.metrics_listen
            ))
        });
        let m = Arc::clone(metrics);
        let app = ferrolb_common::process::metrics_router(move || m.encode());
        if let Err(e) = ferrolb_common::process::serve_http(addr, app).await {
            fail(e);
        }
    }

    /// The webhook's settings, unless it is off.
    fn webhook(&self) -> Option<webhook::Settings> {
        if self.webhook_listen == "off" {
            return None;
        }
        let listen = self.webhook_listen.parse().unwrap_or_else(|_| {
            fail(format!(
                "--webhook-listen {:?} is not an address or off",
                self.webhook_listen
            ))
        });
        let service = self.webhook_service.trim_end_matches('.');
        let mut dns_names = vec![service.to_string()];
        if let Some(short) = service.strip_suffix(".svc") {
            dns_names.push(format!("{service}.cluster.local"));
            dns_names.push(short.to_string());
        }
        Some(webhook::Settings {
            listen,
            namespace: self.namespace.clone(),
            cert: webhook::cert::Place {
                namespace: self.namespace.clone(),
                secret: self.webhook_secret.clone(),
                configuration: self.webhook_configuration.clone(),
                dns_names,
                lifetime: Duration::from_secs(self.webhook_cert_seconds.max(3)),
            },
        })
    }

    /// Leadership of the Lease `ferrolb-k8s-adapter`, once held; None without leader election.
    async fn lead(&self, client: &kube::Client) -> Option<ferrolb_k8s_adapter::leader::Leadership> {
        if self.lease_seconds == 0 {
            return None;
        }
        let me = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let lease = Duration::from_secs(self.lease_seconds);
        Some(ferrolb_k8s_adapter::leader::lead(client.clone(), &self.namespace, &me, lease).await)
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _telemetry = ferrolb_common::telemetry::init(&args.log, "ferrolb-k8s-adapter", &args.trace)
        .unwrap_or_else(|e| {
            eprintln!("ferrolb-k8s-adapter: {e}");
            std::process::exit(2)
        });
    if args.cluster.is_empty() || args.cluster.contains('/') {
        fail("--cluster must be a name without '/'");
    }
    let security = args.security().await;
    let metrics = Arc::new(Metrics::new());
    args.serve_metrics(&metrics).await;
    let client = kube::Client::try_default()
        .await
        .unwrap_or_else(|e| fail(format!("no Kubernetes API (in-cluster or KUBECONFIG): {e}")));
    // Every replica serves the webhook, leader or not.
    let critical = ferrolb_common::process::Critical::new();
    if let Some(hook) = args.webhook() {
        let (client, metrics) = (client.clone(), Arc::clone(&metrics));
        critical.spawn("the validating webhook", async move {
            if let Err(e) = webhook::serve(client, hook, metrics).await {
                tracing::error!(error = %e, "the validating webhook stopped");
            }
        });
    }
    let leadership = tokio::select! {
        l = args.lead(&client) => l,
        why = critical.failed() => stop(&why),
    };
    let settings = Settings {
        cluster: args.cluster,
        namespace: args.namespace,
        lb_class: args.lb_class,
        allocator: args.allocator,
        security,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
    };
    tracing::info!(
        cluster = settings.cluster,
        namespace = settings.namespace,
        "adapter started"
    );
    // A leader that loses its lease stops at once: another replica may act from then on.
    let lost = async {
        match leadership {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = controller::run(client, settings, metrics) => {
            if let Err(e) = r {
                eprintln!("ferrolb-k8s-adapter: {e}");
                std::process::exit(1);
            }
        }
        why = critical.failed() => stop(&why),
        why = lost => {
            tracing::error!(reason = %why, "leadership lost: stopping");
            eprintln!("ferrolb-k8s-adapter: leadership lost: {why}");
            std::process::exit(1);
        }
    }
}
