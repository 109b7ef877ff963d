//! The command line's arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferrolb_common::args::TlsArgs;
use ferrolb_proto::v1 as pb;

use crate::certs;

#[derive(Parser)]
#[command(
    name = "ferrolbctl",
    version,
    about = "Operate ferrolb: pools, leases, nodes, announcements"
)]
pub struct Cli {
    /// Allocator gRPC endpoint.
    #[arg(
        long,
        env = "FERROLB_SERVER",
        default_value = "https://127.0.0.1:7470",
        global = true
    )]
    pub server: String,
    /// Where the credential is found when --tls-cert is not given: `admin.pem`,
    /// `admin-key.pem` and `ca.pem`, as the allocator writes them in its data directory.
    #[arg(
        long,
        env = "FERROLB_PKI_DIR",
        default_value = "ferrolb-pki",
        global = true
    )]
    pub pki_dir: PathBuf,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Development plaintext mode only: who to call as (admin, cluster/<name> or
    /// client/<name>). With TLS the certificate says who calls.
    #[arg(long = "as", env = "FERROLB_CALLER", global = true)]
    pub caller: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Show the list, then each change as it happens (until interrupted).
        #[arg(long)]
        watch: bool,
    },
    /// The last failovers of a cluster's layer-2 addresses that the allocator replica timed:
    /// when, from which node to which, why, and how long the address was without an announcer.
    History {
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
pub enum PoolsCmd {
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
pub enum NodesCmd {
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
pub enum EndpointsCmd {
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
        /// A label of the Service as key=value (repeat for more), for service selectors.
        #[arg(long = "label")]
        labels: Vec<String>,
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
pub enum L2Cmd {
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
pub enum LeasesCmd {
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
pub struct OwnerArgs {
    #[arg(long, default_value = "")]
    pub cluster: String,
    #[arg(long, default_value = "")]
    pub namespace: String,
    #[arg(long, default_value = "")]
    pub name: String,
    #[arg(long, default_value = "")]
    pub client: String,
    #[arg(long, default_value = "")]
    pub key: String,
}

impl OwnerArgs {
    pub fn owner(&self) -> pb::Owner {
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
pub struct AllocateArgs {
    #[command(flatten)]
    pub owner: OwnerArgs,
    /// Draw only from this pool.
    #[arg(long, default_value = "")]
    pub pool: String,
    /// A specific address (twice for dual-stack).
    #[arg(long = "ip")]
    pub ips: Vec<String>,
    #[arg(long, default_value = "")]
    pub sharing_key: String,
    /// Ports as tcp/80, udp/53.
    #[arg(long = "port")]
    pub ports: Vec<String>,
    #[arg(long, value_enum, default_value_t = Fam::Ipv4)]
    pub family: Fam,
    #[arg(long, value_enum, default_value_t = Policy::Single)]
    pub policy: Policy,
    /// Seconds until an external lease expires.
    #[arg(long, default_value_t = 0)]
    pub ttl: u32,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Fam {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Policy {
    #[value(name = "single-stack")]
    Single,
    #[value(name = "prefer-dual-stack")]
    PreferDual,
    #[value(name = "require-dual-stack")]
    RequireDual,
}

#[derive(Subcommand)]
pub enum AllowancesCmd {
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
