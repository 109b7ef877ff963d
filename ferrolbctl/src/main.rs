//! `ferrolbctl`: the operator's command line. Tables for people, `-o json` for scripts.

mod certs;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferrolb_common::Principal;
use ferrolb_common::args::TlsArgs;
use ferrolb_common::tls::TlsFiles;
use ferrolb_common::transport::{self, CallerHeader, Intercepted};
use ferrolb_metallb::convert::{self, Message};
use ferrolb_metallb::{Rejection, kind, validate, yaml};
use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;
use ferrolb_proto::v1::ipam_service_client::IpamServiceClient;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "ferrolbctl",
    version,
    about = "Operate ferrolb: pools, leases, nodes, announcements"
)]
struct Cli {
    /// Allocator gRPC endpoint.
    #[arg(
        long,
        env = "FERROLB_SERVER",
        default_value = "https://127.0.0.1:7470",
        global = true
    )]
    server: String,
    /// Where the credential is found when --tls-cert is not given: `admin.pem`,
    /// `admin-key.pem` and `ca.pem`, as the allocator writes them in its data directory.
    #[arg(
        long,
        env = "FERROLB_PKI_DIR",
        default_value = "ferrolb-pki",
        global = true
    )]
    pki_dir: PathBuf,
    #[command(flatten)]
    tls: TlsArgs,
    /// Development plaintext mode only: who to call as (admin, cluster/<name> or
    /// client/<name>). With TLS the certificate says who calls.
    #[arg(long = "as", env = "FERROLB_CALLER", global = true)]
    caller: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Certificates for ferrolb's identities (works without an allocator).
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Apply a MetalLB YAML file: its IPAddressPools, L2Advertisements, BGPPeers,
    /// BGPAdvertisements and Communities.
    Apply {
        #[arg(short, long)]
        file: PathBuf,
        /// The cluster the advertisements and peers belong to (default: the cluster of --as).
        #[arg(long, default_value = "")]
        cluster: String,
        /// MetalLB's namespace: where objects without one are, and the only one whose objects
        /// are taken (as the adapter's --namespace).
        #[arg(long, default_value = "metallb-system")]
        namespace: String,
    },
    /// A cluster's nodes, as its adapter reports them.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Which nodes serve a Service's endpoints.
    #[command(subcommand)]
    Endpoints(EndpointsCmd),
    /// A cluster's L2Advertisements.
    #[command(subcommand)]
    L2(L2Cmd),
    /// Which node announces each layer-2 address of a cluster.
    Announcements {
        #[arg(long)]
        cluster: String,
    },
    /// Which nodes advertise each address of a cluster over BGP, and to which peers.
    BgpAnnouncements {
        #[arg(long)]
        cluster: String,
    },
    /// Address pools.
    #[command(subcommand)]
    Pools(PoolsCmd),
    /// Leases.
    #[command(subcommand)]
    Leases(LeasesCmd),
    /// Allocate addresses for an owner (or show what it holds).
    Allocate(AllocateArgs),
    /// Release an owner's addresses.
    Release(OwnerArgs),
    /// Extend an external lease.
    Renew {
        #[command(flatten)]
        owner: OwnerArgs,
        #[arg(long)]
        ttl: u32,
    },
    /// A cluster's allowance: the ranges inside which it may declare pools of its own.
    #[command(subcommand)]
    Allowances(AllowancesCmd),
    /// Capacity and use per pool and family.
    Stats {
        #[arg(long, default_value = "")]
        pool: String,
    },
    /// Print lease changes as they happen.
    Watch {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value = "")]
        pool: String,
    },
}

#[derive(Subcommand)]
enum PoolsCmd {
    List,
    Get {
        name: String,
    },
    /// Apply the IPAddressPools of a MetalLB YAML file (other kinds are skipped).
    Apply {
        #[arg(short, long)]
        file: PathBuf,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum NodesCmd {
    List {
        #[arg(long)]
        cluster: String,
    },
    /// Create or replace a node.
    Apply {
        name: String,
        #[arg(long)]
        cluster: String,
        /// A label as key=value (repeat for more).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// The node's NetworkUnavailable condition is True.
        #[arg(long)]
        network_unavailable: bool,
    },
    Delete {
        name: String,
        #[arg(long)]
        cluster: String,
    },
}

#[derive(Subcommand)]
enum EndpointsCmd {
    /// Replace what is known of a Service's serving endpoints.
    Set {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        name: String,
        /// A node hosting a serving endpoint (repeat for more).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// externalTrafficPolicy: Local.
        #[arg(long)]
        local: bool,
    },
    Delete {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum L2Cmd {
    List {
        #[arg(long)]
        cluster: String,
    },
    Delete {
        name: String,
        #[arg(long)]
        cluster: String,
    },
}

#[derive(Subcommand)]
enum LeasesCmd {
    List {
        #[arg(long, default_value = "")]
        pool: String,
        #[arg(long, default_value = "")]
        cluster: String,
        #[arg(long, default_value = "")]
        namespace: String,
        #[arg(long, default_value = "")]
        client: String,
        /// Only leases their pool no longer covers.
        #[arg(long)]
        stranded: bool,
    },
    Get(OwnerArgs),
    /// Move a stranded lease to an address its pools cover now.
    Move(OwnerArgs),
}

#[derive(Args, Clone)]
struct OwnerArgs {
    #[arg(long, default_value = "")]
    cluster: String,
    #[arg(long, default_value = "")]
    namespace: String,
    #[arg(long, default_value = "")]
    name: String,
    #[arg(long, default_value = "")]
    client: String,
    #[arg(long, default_value = "")]
    key: String,
}

impl OwnerArgs {
    fn owner(&self) -> pb::Owner {
        pb::Owner {
            cluster: self.cluster.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            client: self.client.clone(),
            key: self.key.clone(),
        }
    }
}

#[derive(Args)]
struct AllocateArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    /// Draw only from this pool.
    #[arg(long, default_value = "")]
    pool: String,
    /// A specific address (twice for dual-stack).
    #[arg(long = "ip")]
    ips: Vec<String>,
    #[arg(long, default_value = "")]
    sharing_key: String,
    /// Ports as tcp/80, udp/53.
    #[arg(long = "port")]
    ports: Vec<String>,
    #[arg(long, value_enum, default_value_t = Fam::Ipv4)]
    family: Fam,
    #[arg(long, value_enum, default_value_t = Policy::Single)]
    policy: Policy,
    /// Seconds until an external lease expires.
    #[arg(long, default_value_t = 0)]
    ttl: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fam {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Copy, ValueEnum)]
enum Policy {
    #[value(name = "single-stack")]
    Single,
    #[value(name = "prefer-dual-stack")]
    PreferDual,
    #[value(name = "require-dual-stack")]
    RequireDual,
}

#[derive(Subcommand)]
enum AllowancesCmd {
    /// Sets the ranges (CIDRs or start-end); none removes the allowance.
    Set {
        #[arg(long)]
        cluster: String,
        #[arg(long = "range")]
        ranges: Vec<String>,
    },
    Get {
        #[arg(long)]
        cluster: String,
    },
}

type Client = IpamServiceClient<Intercepted>;
type ClusterClient = ClusterStateServiceClient<Intercepted>;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(cmd) => certs::run(cmd, &cli.tls.trust_domain),
        _ => run(cli).await,
    };
    if let Err(e) = result {
        eprintln!("ferrolbctl: {e}");
        std::process::exit(1);
    }
}

fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Who calls and how: the certificate (or, in the development plaintext mode, `--as`).
fn security(
    cli: &Cli,
) -> Result<(transport::ClientSecurity, CallerHeader, Option<String>), String> {
    if cli.tls.dev_plaintext {
        let caller = cli.caller.clone().unwrap_or_else(|| "admin".into());
        let header = CallerHeader::always(&caller).map_err(|e| format!("--as {e}"))?;
        let cluster = caller.strip_prefix("cluster/").map(str::to_string);
        let (security, _) = cli.tls.client(None)?;
        return Ok((security, header, cluster));
    }
    if cli.caller.is_some() {
        return Err(
            "--as is for the development plaintext mode; with TLS the certificate says who calls"
                .into(),
        );
    }
    let fallback = TlsFiles {
        cert: cli.pki_dir.join("admin.pem"),
        key: cli.pki_dir.join("admin-key.pem"),
        ca: cli.pki_dir.join("ca.pem"),
    };
    let (security, me) = cli.tls.client(Some(fallback)).map_err(|e| {
        format!("{e} (ferrolbctl reads admin.pem, admin-key.pem and ca.pem from --pki-dir, default ./ferrolb-pki, which the allocator writes in its data directory)")
    })?;
    let cluster = match me {
        Some(Principal::Adapter { cluster }) => Some(cluster),
        _ => None,
    };
    Ok((security, CallerHeader::default(), cluster))
}

async fn run(cli: Cli) -> Result<(), String> {
    let (security, caller, own_cluster) = security(&cli)?;
    let endpoint =
        transport::endpoint(&cli.server, &security).map_err(|e| format!("--server {e}"))?;
    let channel = transport::connect(endpoint, &security).await.map_err(|e| {
        format!(
            "cannot reach the allocator at {}: {}",
            cli.server,
            transport::error_chain(&e)
        )
    })?;
    let mut cluster_client: ClusterClient =
        ClusterStateServiceClient::with_interceptor(channel.clone(), caller.clone());
    let mut client: Client = IpamServiceClient::with_interceptor(channel, caller);
    let out = cli.output;
    match cli.command {
        Command::Apply {
            file,
            cluster,
            namespace,
        } => {
            let cluster = match (cluster.as_str(), own_cluster) {
                ("", Some(c)) => c,
                _ => cluster,
            };
            let target = Target {
                cluster: &cluster,
                namespace: &namespace,
                pools_only: false,
            };
            apply(&mut client, &mut cluster_client, &file, target, out).await
        }
        Command::Nodes(cmd) => nodes(&mut cluster_client, cmd, out).await,
        Command::Endpoints(cmd) => endpoints(&mut cluster_client, cmd).await,
        Command::L2(cmd) => l2(&mut cluster_client, cmd, out).await,
        Command::Announcements { cluster } => {
            announcements(&mut cluster_client, cluster, out).await
        }
        Command::BgpAnnouncements { cluster } => {
            bgp_announcements(&mut cluster_client, cluster, out).await
        }
        Command::Pools(cmd) => pools(&mut client, &mut cluster_client, cmd, out).await,
        Command::Leases(cmd) => leases(&mut client, cmd, out).await,
        Command::Allocate(a) => allocate(&mut client, a, out).await,
        Command::Release(o) => {
            let r = client
                .release(pb::ReleaseRequest {
                    owner: Some(o.owner()),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            emit(out, json!({ "released": r.ips }), || {
                format!("released {}", r.ips.join(", "))
            });
            Ok(())
        }
        Command::Renew { owner, ttl } => {
            let l = client
                .renew(pb::RenewRequest {
                    owner: Some(owner.owner()),
                    ttl_seconds: ttl,
                })
                .await
                .map_err(status_text)?
                .into_inner();
            print_leases(out, &[l]);
            Ok(())
        }
        Command::Stats { pool } => {
            let r = client
                .get_stats(pb::GetStatsRequest { pool })
                .await
                .map_err(status_text)?
                .into_inner();
            let rows: Vec<Vec<String>> = r
                .stats
                .iter()
                .map(|s| {
                    vec![
                        s.pool.clone(),
                        family_name(s.family).into(),
                        s.capacity.clone(),
                        s.in_use.clone(),
                        s.available.clone(),
                        s.leases.to_string(),
                        s.stranded_leases.to_string(),
                    ]
                })
                .collect();
            let j: Vec<Value> = r
                .stats
                .iter()
                .map(|s| {
                    json!({"pool": s.pool, "family": family_name(s.family), "capacity": s.capacity,
                        "in_use": s.in_use, "available": s.available, "leases": s.leases,
                        "stranded_leases": s.stranded_leases})
                })
                .collect();
            emit(out, Value::Array(j), || {
                table(
                    &[
                        "POOL",
                        "FAMILY",
                        "CAPACITY",
                        "IN USE",
                        "AVAILABLE",
                        "LEASES",
                        "STRANDED",
                    ],
                    &rows,
                )
            });
            Ok(())
        }
        Command::Watch { from, pool } => {
            let mut stream = client
                .watch_leases(pb::WatchLeasesRequest {
                    from_revision: from,
                    pool,
                })
                .await
                .map_err(status_text)?
                .into_inner();
            while let Some(ev) = stream.message().await.map_err(status_text)? {
                let kind = pb::LeaseEventType::try_from(ev.r#type)
                    .map(|k| {
                        k.as_str_name()
                            .trim_start_matches("LEASE_EVENT_TYPE_")
                            .to_string()
                    })
                    .unwrap_or_default();
                let lease = ev.lease.unwrap_or_default();
                let j = json!({"revision": ev.revision, "type": kind, "lease": lease_json(&lease)});
                emit(out, j, || {
                    format!(
                        "{} {} {} {}",
                        ev.revision,
                        kind,
                        owner_name(lease.owner.as_ref()),
                        lease.ips.join(",")
                    )
                });
            }
            Ok(())
        }
        Command::Allowances(cmd) => {
            let a = match cmd {
                AllowancesCmd::Set { cluster, ranges } => client
                    .set_allowance(pb::Allowance { cluster, ranges })
                    .await
                    .map_err(status_text)?
                    .into_inner(),
                AllowancesCmd::Get { cluster } => client
                    .get_allowance(pb::GetAllowanceRequest { cluster })
                    .await
                    .map_err(status_text)?
                    .into_inner(),
            };
            emit(
                out,
                json!({"cluster": a.cluster, "ranges": a.ranges}),
                || {
                    if a.ranges.is_empty() {
                        format!(
                            "cluster {}: no allowance (it may declare any pool)",
                            a.cluster
                        )
                    } else {
                        format!("cluster {}: {}", a.cluster, a.ranges.join(", "))
                    }
                },
            );
            Ok(())
        }
        Command::Certs(_) => Err("certs needs no allocator".into()),
    }
}

async fn pools(
    client: &mut Client,
    cluster_client: &mut ClusterClient,
    cmd: PoolsCmd,
    out: Output,
) -> Result<(), String> {
    match cmd {
        PoolsCmd::List => {
            let r = client
                .list_pools(pb::ListPoolsRequest {})
                .await
                .map_err(status_text)?
                .into_inner();
            print_pools(out, &r.pools);
        }
        PoolsCmd::Get { name } => {
            let p = client
                .get_pool(pb::GetPoolRequest { name })
                .await
                .map_err(status_text)?
                .into_inner();
            print_pools(out, &[p]);
        }
        PoolsCmd::Apply { file } => {
            let target = Target {
                cluster: "",
                namespace: "metallb-system",
                pools_only: true,
            };
            apply(client, cluster_client, &file, target, out).await?;
        }
        PoolsCmd::Delete { name } => {
            let r = client
                .delete_pool(pb::DeletePoolRequest { name: name.clone() })
                .await
                .map_err(status_text)?
                .into_inner();
            emit(
                out,
                json!({"pool": name, "stranded_leases": r.stranded_leases}),
                || {
                    format!(
                        "ipaddresspool/{name} deleted ({} leases stranded)",
                        r.stranded_leases
                    )
                },
            );
        }
    }
    Ok(())
}

/// Where `ferrolbctl apply` puts a file's objects.
#[derive(Clone, Copy)]
struct Target<'a> {
    cluster: &'a str,
    namespace: &'a str,
    /// `pools apply`: the file's other kinds are ignored.
    pools_only: bool,
}

/// Applies a MetalLB YAML file as the Kubernetes adapter applies the same objects: MetalLB's
/// rules (the `ferrolb-metallb` model) judge each object, the good ones go to the allocator in
/// the adapter's order, each rejected object is printed with its verdict — the text the adapter
/// writes in its `Valid` condition — and the command fails if any was rejected.
async fn apply(
    client: &mut Client,
    cluster_client: &mut ClusterClient,
    file: &std::path::Path,
    to: Target<'_>,
    out: Output,
) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut parsed =
        yaml::read(&text, to.namespace).map_err(|e| format!("{}: {e}", file.display()))?;
    let cfg = &mut parsed.config;
    if to.pools_only {
        let others = cfg.l2.drain(..).map(|o| (kind::L2, o.name));
        let others = others
            .chain(cfg.peers.drain(..).map(|o| (kind::PEER, o.name)))
            .chain(cfg.bgp.drain(..).map(|o| (kind::BGP_ADVERTISEMENT, o.name)))
            .chain(cfg.communities.drain(..).map(|o| (kind::COMMUNITY, o.name)));
        for (kind, name) in others {
            eprintln!("ignoring {kind}/{name}: use ferrolbctl apply --cluster");
        }
    }
    let cluster_objects = cfg.l2.len() + cfg.peers.len() + cfg.bgp.len() + cfg.communities.len();
    if cluster_objects > 0 && to.cluster.is_empty() {
        return Err(format!(
            "{}: advertisements, peers and communities belong to a cluster: say which with --cluster",
            file.display()
        ));
    }
    for s in &parsed.skipped {
        eprintln!("ignoring {s}: not a kind the allocator takes");
    }
    // The cluster's nodes, for the advertisements' node sets (as the adapter has them).
    if !to.cluster.is_empty() && !cfg.bgp.is_empty() {
        let nodes = cluster_client
            .list_nodes(pb::ListNodesRequest {
                cluster: to.cluster.to_string(),
            })
            .await
            .map_err(status_text)?
            .into_inner()
            .nodes;
        cfg.nodes = nodes
            .into_iter()
            .filter_map(|n| n.node)
            .map(|n| n.labels.into_iter().collect())
            .collect();
    }
    let cfg = &parsed.config;
    let mut rejected = parsed.unreadable;
    rejected.extend(validate::check(cfg, to.namespace));
    let mut results = Vec::new();
    let mut done = |kind: &'static str,
                    name: &str,
                    r: Result<(bool, u64), tonic::Status>,
                    rejected: &mut Vec<Rejection>| {
        match r {
            Ok((created, stranded)) => {
                let verb = if created { "created" } else { "configured" };
                results.push(json!({"kind": kind, "name": name, "result": verb, "stranded_leases": stranded}));
                if out == Output::Table {
                    let note = if stranded > 0 {
                        format!(" ({stranded} leases stranded)")
                    } else {
                        String::new()
                    };
                    println!("{}/{name} {verb}{note}", kind.to_lowercase());
                }
                Ok(())
            }
            Err(s) if s.code() == tonic::Code::Unavailable => Err(status_text(s)),
            Err(s) => {
                rejected.push(Rejection::by_allocator(kind, name, s.message()));
                Ok(())
            }
        }
    };
    // A cluster's MetalLB YAML: its pools are that cluster's to draw from (unless their
    // ferrolb.io/clusters annotation says who).
    let clusters: Vec<String> = [to.cluster.to_string()]
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect();
    for (kind, name, m) in
        convert::messages(cfg, to.namespace, to.cluster, &clusters, &mut rejected)
    {
        let r = match m {
            Message::Pool(p) => client
                .apply_pool(pb::ApplyPoolRequest {
                    pool: Some(p),
                    create_only: false,
                })
                .await
                .map(|r| (r.get_ref().created, r.get_ref().stranded_leases)),
            Message::L2Advertisement(a) => cluster_client
                .apply_l2_advertisement(a)
                .await
                .map(|r| (r.get_ref().created, 0)),
            Message::Community(c) => cluster_client
                .apply_community(c)
                .await
                .map(|r| (r.get_ref().created, 0)),
            Message::BgpPeer(p) => cluster_client
                .apply_bgp_peer(p)
                .await
                .map(|r| (r.get_ref().created, 0)),
            Message::BgpAdvertisement(a) => cluster_client
                .apply_bgp_advertisement(a)
                .await
                .map(|r| (r.get_ref().created, 0)),
        };
        done(kind, &name, r, &mut rejected)?;
    }
    if out == Output::Json {
        println!("{}", Value::Array(results));
    }
    let verdicts = ferrolb_metallb::verdicts(&rejected);
    for v in &verdicts {
        eprintln!("error: {v}");
    }
    match verdicts.len() {
        0 => Ok(()),
        n => Err(format!("{}: {n} objects rejected", file.display())),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--label {s:?}: write key=value"))?;
    Ok((k.to_string(), v.to_string()))
}

async fn nodes(client: &mut ClusterClient, cmd: NodesCmd, out: Output) -> Result<(), String> {
    match cmd {
        NodesCmd::List { cluster } => {
            let r = client
                .list_nodes(pb::ListNodesRequest { cluster })
                .await
                .map_err(status_text)?
                .into_inner();
            let mut rows = Vec::new();
            let mut j = Vec::new();
            for st in r.nodes {
                let n = st.node.unwrap_or_default();
                let mut labels: Vec<String> =
                    n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                rows.push(vec![
                    n.name.clone(),
                    if st.announcer_live { "live" } else { "-" }.into(),
                    n.network_unavailable.to_string(),
                    labels.join(","),
                ]);
                j.push(json!({"name": n.name, "announcer_live": st.announcer_live,
                    "network_unavailable": n.network_unavailable, "labels": n.labels}));
            }
            emit(out, Value::Array(j), || {
                table(
                    &["NODE", "ANNOUNCER", "NETWORK UNAVAILABLE", "LABELS"],
                    &rows,
                )
            });
        }
        NodesCmd::Apply {
            name,
            cluster,
            labels,
            network_unavailable,
        } => {
            let labels = labels
                .iter()
                .map(|l| parse_label(l))
                .collect::<Result<_, _>>()?;
            let r = client
                .apply_node(pb::Node {
                    cluster,
                    name: name.clone(),
                    labels,
                    network_unavailable,
                })
                .await
                .map_err(status_text)?
                .into_inner();
            let verb = if r.created { "created" } else { "configured" };
            emit(out, json!({"node": name, "result": verb}), || {
                format!("node/{name} {verb}")
            });
        }
        NodesCmd::Delete { name, cluster } => {
            client
                .delete_node(pb::DeleteNodeRequest {
                    cluster,
                    name: name.clone(),
                })
                .await
                .map_err(status_text)?;
            emit(out, json!({"node": name, "result": "deleted"}), || {
                format!("node/{name} deleted")
            });
        }
    }
    Ok(())
}

async fn endpoints(client: &mut ClusterClient, cmd: EndpointsCmd) -> Result<(), String> {
    match cmd {
        EndpointsCmd::Set {
            cluster,
            namespace,
            name,
            nodes,
            local,
        } => {
            client
                .set_endpoints(pb::ServiceEndpoints {
                    cluster,
                    namespace,
                    name,
                    any_serving: !nodes.is_empty(),
                    serving_nodes: nodes,
                    traffic_policy_local: local,
                })
                .await
                .map_err(status_text)?;
        }
        EndpointsCmd::Delete {
            cluster,
            namespace,
            name,
        } => {
            client
                .delete_endpoints(pb::DeleteEndpointsRequest {
                    cluster,
                    namespace,
                    name,
                })
                .await
                .map_err(status_text)?;
        }
    }
    Ok(())
}

async fn l2(client: &mut ClusterClient, cmd: L2Cmd, out: Output) -> Result<(), String> {
    match cmd {
        L2Cmd::List { cluster } => {
            let r = client
                .list_l2_advertisements(pb::ListL2AdvertisementsRequest { cluster })
                .await
                .map_err(status_text)?
                .into_inner();
            let rows: Vec<Vec<String>> = r
                .advertisements
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.ip_address_pools.join(","),
                        a.interfaces.join(","),
                        a.node_selectors.len().to_string(),
                    ]
                })
                .collect();
            let j: Vec<Value> = r
                .advertisements
                .iter()
                .map(|a| {
                    json!({"name": a.name, "ip_address_pools": a.ip_address_pools,
                    "interfaces": a.interfaces})
                })
                .collect();
            emit(out, Value::Array(j), || {
                table(&["NAME", "POOLS", "INTERFACES", "NODE SELECTORS"], &rows)
            });
        }
        L2Cmd::Delete { name, cluster } => {
            client
                .delete_l2_advertisement(pb::DeleteL2AdvertisementRequest {
                    cluster,
                    name: name.clone(),
                })
                .await
                .map_err(status_text)?;
            emit(
                out,
                json!({"l2advertisement": name, "result": "deleted"}),
                || format!("l2advertisement/{name} deleted"),
            );
        }
    }
    Ok(())
}

async fn announcements(
    client: &mut ClusterClient,
    cluster: String,
    out: Output,
) -> Result<(), String> {
    let r = client
        .list_announcements(pb::ListAnnouncementsRequest { cluster })
        .await
        .map_err(status_text)?
        .into_inner();
    let rows: Vec<Vec<String>> = r
        .announcements
        .iter()
        .map(|a| {
            vec![
                a.ip.clone(),
                if a.node.is_empty() {
                    "-".into()
                } else {
                    a.node.clone()
                },
                if a.interfaces.is_empty() {
                    "*".into()
                } else {
                    a.interfaces.join(",")
                },
                a.services.join(","),
                a.reason.clone(),
            ]
        })
        .collect();
    let j: Vec<Value> = r
        .announcements
        .iter()
        .map(|a| {
            json!({"ip": a.ip, "node": a.node, "interfaces": a.interfaces,
            "services": a.services, "reason": a.reason})
        })
        .collect();
    emit(
        out,
        json!({"version": r.version, "announcements": j}),
        || {
            table(
                &["ADDRESS", "NODE", "INTERFACES", "SERVICES", "REASON"],
                &rows,
            )
        },
    );
    Ok(())
}

async fn bgp_announcements(
    client: &mut ClusterClient,
    cluster: String,
    out: Output,
) -> Result<(), String> {
    let r = client
        .list_bgp_announcements(pb::ListAnnouncementsRequest { cluster })
        .await
        .map_err(status_text)?
        .into_inner();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for a in &r.announcements {
        if a.nodes.is_empty() {
            rows.push(vec![
                a.ip.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                a.services.join(","),
                a.reason.clone(),
            ]);
        }
        for n in &a.nodes {
            rows.push(vec![
                a.ip.clone(),
                n.node.clone(),
                n.prefix.clone(),
                n.peers.join(","),
                a.services.join(","),
                String::new(),
            ]);
        }
    }
    let j: Vec<Value> = r
        .announcements
        .iter()
        .map(|a| {
            let nodes: Vec<Value> = a
                .nodes
                .iter()
                .map(|n| json!({"node": n.node, "prefix": n.prefix, "peers": n.peers}))
                .collect();
            json!({"ip": a.ip, "services": a.services, "nodes": nodes, "reason": a.reason})
        })
        .collect();
    emit(
        out,
        json!({"version": r.version, "announcements": j}),
        || {
            table(
                &["ADDRESS", "NODE", "PREFIX", "PEERS", "SERVICES", "REASON"],
                &rows,
            )
        },
    );
    Ok(())
}

async fn leases(client: &mut Client, cmd: LeasesCmd, out: Output) -> Result<(), String> {
    match cmd {
        LeasesCmd::List {
            pool,
            cluster,
            namespace,
            client: ext,
            stranded,
        } => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let r = client
                    .list_leases(pb::ListLeasesRequest {
                        pool: pool.clone(),
                        cluster: cluster.clone(),
                        namespace: namespace.clone(),
                        client: ext.clone(),
                        stranded_only: stranded,
                        page_size: 1000,
                        page_token: token,
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner();
                all.extend(r.leases);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            print_leases(out, &all);
        }
        LeasesCmd::Get(o) => {
            let l = client
                .get_lease(pb::GetLeaseRequest {
                    owner: Some(o.owner()),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            print_leases(out, &[l]);
        }
        LeasesCmd::Move(o) => {
            let l = client
                .move_lease(pb::MoveLeaseRequest {
                    owner: Some(o.owner()),
                })
                .await
                .map_err(status_text)?
                .into_inner();
            print_leases(out, &[l]);
        }
    }
    Ok(())
}

fn parse_port(s: &str) -> Result<pb::Port, String> {
    let (proto, port) = s
        .split_once('/')
        .ok_or_else(|| format!("--port {s:?}: write protocol/port, e.g. tcp/80"))?;
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => pb::Protocol::Tcp,
        "udp" => pb::Protocol::Udp,
        "sctp" => pb::Protocol::Sctp,
        _ => return Err(format!("--port {s:?}: protocol is tcp, udp or sctp")),
    };
    let port = port
        .parse()
        .map_err(|_| format!("--port {s:?}: not a port number"))?;
    Ok(pb::Port {
        protocol: protocol as i32,
        port,
    })
}

async fn allocate(client: &mut Client, a: AllocateArgs, out: Output) -> Result<(), String> {
    let ports = a
        .ports
        .iter()
        .map(|p| parse_port(p))
        .collect::<Result<_, _>>()?;
    let r = client
        .allocate(pb::AllocateRequest {
            owner: Some(a.owner.owner()),
            requested_ips: a.ips,
            pool: a.pool,
            sharing_key: a.sharing_key,
            ports,
            backend_key: String::new(),
            family_policy: match a.policy {
                Policy::Single => pb::FamilyPolicy::SingleStack,
                Policy::PreferDual => pb::FamilyPolicy::PreferDualStack,
                Policy::RequireDual => pb::FamilyPolicy::RequireDualStack,
            } as i32,
            primary_family: match a.family {
                Fam::Ipv4 => pb::IpFamily::Ipv4,
                Fam::Ipv6 => pb::IpFamily::Ipv6,
            } as i32,
            namespace_labels: Default::default(),
            service_labels: Default::default(),
            ttl_seconds: a.ttl,
        })
        .await
        .map_err(status_text)?
        .into_inner();
    print_leases(out, &r.lease.into_iter().collect::<Vec<_>>());
    Ok(())
}

fn family_name(code: i32) -> &'static str {
    match pb::IpFamily::try_from(code) {
        Ok(pb::IpFamily::Ipv6) => "IPv6",
        _ => "IPv4",
    }
}

fn owner_name(o: Option<&pb::Owner>) -> String {
    match o {
        Some(o) if !o.client.is_empty() => format!("client/{}/{}", o.client, o.key),
        Some(o) => format!("{}/{}/{}", o.cluster, o.namespace, o.name),
        None => String::new(),
    }
}

fn lease_json(l: &pb::Lease) -> Value {
    json!({
        "owner": owner_name(l.owner.as_ref()),
        "ips": l.ips,
        "pool": l.pool,
        "sharing_key": l.sharing_key,
        "stranded": l.stranded,
        "expires_at": l.expires_at.as_ref().map(|t| t.seconds),
        "revision": l.revision,
    })
}

fn print_leases(out: Output, leases: &[pb::Lease]) {
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            vec![
                owner_name(l.owner.as_ref()),
                l.ips.join(","),
                l.pool.clone(),
                l.sharing_key.clone(),
                if l.stranded { "yes" } else { "" }.into(),
            ]
        })
        .collect();
    emit(
        out,
        Value::Array(leases.iter().map(lease_json).collect()),
        || table(&["OWNER", "IPS", "POOL", "SHARING KEY", "STRANDED"], &rows),
    );
}

fn print_pools(out: Output, pools: &[pb::Pool]) {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.auto_assign.unwrap_or(true).to_string(),
                p.avoid_buggy_ips.to_string(),
                p.addresses.join(","),
                p.declared_by.clone(),
            ]
        })
        .collect();
    let j: Vec<Value> = pools
        .iter()
        .map(|p| {
            json!({"name": p.name, "addresses": p.addresses, "auto_assign": p.auto_assign.unwrap_or(true),
                "avoid_buggy_ips": p.avoid_buggy_ips, "excluded_addresses": p.excluded_addresses,
                "clusters": p.clusters, "clients": p.clients, "declared_by": p.declared_by,
                "priority": p.service_allocation.as_ref().map(|s| s.priority)})
        })
        .collect();
    emit(out, Value::Array(j), || {
        table(
            &[
                "NAME",
                "AUTO ASSIGN",
                "AVOID BUGGY IPS",
                "ADDRESSES",
                "DECLARED BY",
            ],
            &rows,
        )
    });
}

fn emit(out: Output, j: Value, text: impl FnOnce() -> String) {
    match out {
        Output::Json => println!("{j}"),
        Output::Table => println!("{}", text()),
    }
}

/// Left-aligned columns, two spaces apart, like kubectl.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut lines = vec![line(headers.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}
