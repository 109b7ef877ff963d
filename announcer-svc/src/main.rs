//! `ferrolb-announcer`: the node agent. It streams its node's layer-2 assignments from the
//! allocator and makes the LAN deliver them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ferrolb_announcer::agent::{self, Agent, Answerer};
use ferrolb_announcer::defense::{Guard, Policy};
use ferrolb_announcer::l2::Counters;
use ferrolb_announcer::links::{DEFAULT_EXCLUDE, Pattern};
use ferrolb_announcer::metrics::Metrics;
use ferrolb_announcer::stream;
use tokio::sync::mpsc;

#[derive(Clone, Copy, ValueEnum, Debug)]
enum AnswererArg {
    /// Bind announced addresses to the interface; the kernel answers ARP/NDP and accepts their
    /// traffic (no kube-proxy needed).
    Kernel,
    /// Answer from ferrolb's own responder and change nothing on the node (MetalLB's way).
    Userspace,
}

#[derive(Parser, Debug)]
#[command(name = "ferrolb-announcer", version, about = "ferrolb's node agent")]
struct Args {
    /// Allocator replicas (comma separated); the announcer uses one and moves on when it fails.
    #[arg(
        long,
        env = "FERROLB_ALLOCATOR",
        default_value = "https://127.0.0.1:7470",
        value_delimiter = ','
    )]
    allocator: Vec<String>,
    #[command(flatten)]
    tls: ferrolb_common::args::TlsArgs,
    #[command(flatten)]
    token: ferrolb_common::bootstrap::TokenArgs,
    /// Only addresses inside these prefixes are announced (comma separated; empty: any address
    /// that is not loopback, multicast, link-local, unspecified or the node's own).
    #[arg(long, env = "FERROLB_ALLOWED_CIDRS", default_value = "")]
    allowed_cidrs: String,
    /// The cluster this node belongs to.
    #[arg(long, env = "FERROLB_CLUSTER")]
    cluster: String,
    /// This node's name (as in Kubernetes); defaults to the host name.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Who answers ARP and neighbor solicitations.
    #[arg(long, env = "FERROLB_ANSWERER", value_enum, default_value_t = AnswererArg::Kernel)]
    answerer: AnswererArg,
    /// Interfaces never announced on: names, or prefixes followed by * (MetalLB's list).
    #[arg(long, env = "FERROLB_EXCLUDE_INTERFACES", default_value = DEFAULT_EXCLUDE)]
    exclude_interfaces: String,
    /// Milliseconds between gratuitous announcements after gaining an address.
    #[arg(long, env = "FERROLB_GRATUITOUS_INTERVAL_MS", default_value_t = 1100)]
    gratuitous_interval_ms: u64,
    /// Milliseconds during which they are repeated.
    #[arg(long, env = "FERROLB_GRATUITOUS_PERIOD_MS", default_value_t = 5000)]
    gratuitous_period_ms: u64,
    /// Milliseconds between looks at the interfaces.
    #[arg(long, env = "FERROLB_SCAN_INTERVAL_MS", default_value_t = 500)]
    scan_interval_ms: u64,
    /// Longest wait between reconnection attempts, in milliseconds.
    #[arg(long, env = "FERROLB_MAX_BACKOFF_MS", default_value_t = 2000)]
    max_backoff_ms: u64,
    /// Seconds a BGP peer with graceful restart keeps this node's routes while the announcer
    /// restarts (RFC 4724 restart time, at most 4095).
    #[arg(long, env = "FERROLB_BGP_RESTART_TIME", default_value_t = 120)]
    bgp_restart_time: u16,
    /// Longest wait before a failed BGP session tries again, in milliseconds.
    #[arg(long, env = "FERROLB_BGP_MAX_BACKOFF_MS", default_value_t = 30000)]
    bgp_max_backoff_ms: u64,
    /// Prometheus metrics address (`/metrics`); `off` disables it.
    #[arg(long, env = "FERROLB_METRICS_LISTEN", default_value = "127.0.0.1:7472")]
    metrics_listen: String,
    /// Log filter (tracing's env-filter syntax).
    #[arg(long, env = "FERROLB_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    trace: ferrolb_common::telemetry::TraceArgs,
}

fn fail(msg: String) -> ! {
    eprintln!("ferrolb-announcer: {msg}");
    std::process::exit(2)
}

impl Args {
    /// This node's name: `--node`, or the host name.
    fn node(&self) -> String {
        let node = self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        });
        if node.is_empty() {
            fail("--node is empty and the host name cannot be read".into());
        }
        node
    }

    /// Checks what clap cannot.
    fn check(&self) {
        if self.cluster.is_empty() || self.allocator.is_empty() {
            fail("--cluster and --allocator must not be empty".into());
        }
        if self.gratuitous_interval_ms == 0 || self.scan_interval_ms == 0 {
            fail("--gratuitous-interval-ms and --scan-interval-ms must be at least 1".into());
        }
        if self.bgp_restart_time > 4095 {
            fail("--bgp-restart-time is at most 4095 seconds (12 bits in the OPEN)".into());
        }
    }

    fn metrics_listen(&self) -> Option<SocketAddr> {
        match self.metrics_listen.as_str() {
            "off" => None,
            s => Some(s.parse().unwrap_or_else(|_| {
                fail(format!("--metrics-listen {s:?} is not an address or off"))
            })),
        }
    }

    fn agent_settings(&self) -> agent::Settings {
        agent::Settings {
            answerer: match self.answerer {
                AnswererArg::Kernel => Answerer::Kernel,
                AnswererArg::Userspace => Answerer::Userspace,
            },
            exclude: self.exclude(),
            gratuitous_interval: Duration::from_millis(self.gratuitous_interval_ms),
            gratuitous_period: Duration::from_millis(self.gratuitous_period_ms),
            scan_interval: Duration::from_millis(self.scan_interval_ms),
        }
    }

    fn exclude(&self) -> Vec<Pattern> {
        Pattern::list(&self.exclude_interfaces)
            .unwrap_or_else(|e| fail(format!("--exclude-interfaces: {e}")))
    }

    /// What the node refuses to announce, for the agent and the BGP speakers alike.
    fn guard(&self, counters: &Arc<Counters>) -> Guard {
        Guard {
            policy: Policy::parse(&self.allowed_cidrs)
                .unwrap_or_else(|e| fail(format!("--allowed-cidrs: {e}"))),
            exclude: self.exclude(),
            counters: Arc::clone(counters),
        }
    }

    fn bgp(&self, node: &str, metrics: &Metrics) -> ferrolb_announcer::bgp::Manager {
        ferrolb_announcer::bgp::Manager::new(
            ferrolb_announcer::bgp::speaker::Common {
                fallback_id: ferrolb_announcer::bgp::fallback_router_id(node),
                restart_time: self.bgp_restart_time,
                started: std::time::Instant::now(),
                max_backoff: Duration::from_millis(self.bgp_max_backoff_ms.max(500)),
            },
            Arc::clone(&metrics.bgp),
            Arc::clone(&metrics.bfd),
        )
    }

    /// The client security, with a certificate that must be this node's: the allocator would
    /// refuse any other stream.
    async fn security(&self, node: &str) -> ferrolb_common::transport::ClientSecurity {
        let want = ferrolb_common::Principal::Node {
            cluster: self.cluster.clone(),
            node: node.to_string(),
        };
        self.tls
            .client_as(&self.token, want)
            .await
            .unwrap_or_else(|e| fail(e))
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let telemetry = ferrolb_common::telemetry::init(&args.log, "ferrolb-announcer", &args.trace)
        .unwrap_or_else(|e| {
            eprintln!("ferrolb-announcer: {e}");
            std::process::exit(2)
        });
    args.check();
    let node = args.node();
    let security = args.security(&node).await;
    let metrics_listen = args.metrics_listen();

    let counters = Arc::new(Counters::default());
    let metrics = Arc::new(Metrics::new(&counters));
    let guard = args.guard(&counters);
    let (agent, status) = Agent::new(args.agent_settings(), guard.clone())
        .await
        .unwrap_or_else(|e| fail(e));
    let (bgp_updates, rx) = mpsc::channel(64);
    let bgp = tokio::spawn(args.bgp(&node, &metrics).run(rx, guard, agent.binder()));

    if let Some(addr) = metrics_listen {
        let m = Arc::clone(&metrics);
        let app = ferrolb_common::process::metrics_router(move || m.encode());
        ferrolb_common::process::serve_http(addr, app)
            .await
            .unwrap_or_else(|e| fail(e));
    }
    {
        let mut status = status.clone();
        let (m, me) = (Arc::clone(&metrics), node.clone());
        tokio::spawn(async move {
            loop {
                m.set_layer2(&me, &status.borrow_and_update().services);
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    let (l2_updates, rx) = mpsc::channel(64);
    let agent = tokio::spawn(agent.run(rx));
    tracing::info!(node, cluster = args.cluster, answerer = ?args.answerer, "announcer started");
    let streaming = tokio::spawn(stream::run(
        stream::Settings {
            allocators: args.allocator,
            cluster: args.cluster,
            node,
            security,
            connect_timeout: Duration::from_secs(1),
            max_backoff: Duration::from_millis(args.max_backoff_ms.max(100)),
        },
        stream::Dispatch {
            l2: l2_updates,
            bgp: bgp_updates,
        },
        status,
        Arc::clone(&metrics),
    ));

    let mut parts = vec![
        ("the allocator stream", streaming),
        ("the layer-2 agent", agent),
        ("the BGP speakers", bgp),
    ];
    // Each part runs until shutdown; one that ends or panics first takes the process down, to
    // be restarted, rather than leave a node that streams but does not announce.
    let mut lost = tokio::select! {
        () = ferrolb_common::process::shutdown_signal() => None,
        (ended, i, _) = futures::future::select_all(parts.iter_mut().map(|(_, h)| h)) => {
            Some((parts.remove(i).0, ended))
        }
    };
    // One part's end can end another (the stream stops when the agent's input closes), and the
    // one that ended in turn may be seen first, while the panicking part still unwinds: a part
    // that panics within half a second is the one to name.
    if let Some((_, Ok(()))) = &lost {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let mut i = 0;
        while i < parts.len() {
            match tokio::time::timeout_at(deadline, &mut parts[i].1).await {
                Ok(Err(e)) => {
                    lost = Some((parts.remove(i).0, Err(e)));
                    break;
                }
                Ok(Ok(())) => {
                    parts.remove(i);
                }
                Err(_) => i += 1,
            }
        }
    }
    if let Some((part, ended)) = &lost {
        let what = match ended {
            Ok(()) => "ended".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(part, what, "a part of the announcer is gone: stopping");
    }
    tracing::info!("stopping: taking every address off");
    // The stream's end closes the agent's and the speakers' inputs: they withdraw and return.
    for (name, handle) in &parts {
        if *name == "the allocator stream" {
            handle.abort();
        }
    }
    for (_, handle) in parts {
        let _ = handle.await;
    }
    drop(telemetry);
    if let Some((part, _)) = lost {
        fail(format!("{part} stopped"));
    }
}
