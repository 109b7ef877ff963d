//! `ferrolbctl`: the operator's command line. Tables for people, `-o json` for scripts.

mod apply;
mod certs;
mod cli;
mod cluster;
mod ipam;
mod output;

use clap::Parser;
use ferrolb_common::Principal;
use ferrolb_common::tls::TlsFiles;
use ferrolb_common::transport::{self, CallerHeader, Intercepted};
use ferrolb_proto::v1::cluster_state_service_client::ClusterStateServiceClient;
use ferrolb_proto::v1::ipam_service_client::IpamServiceClient;

use cli::{Cli, Command};

pub(crate) type Client = IpamServiceClient<Intercepted>;
pub(crate) type ClusterClient = ClusterStateServiceClient<Intercepted>;

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

pub(crate) fn status_text(s: tonic::Status) -> String {
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
            let target = apply::Target {
                cluster: &cluster,
                namespace: &namespace,
                pools_only: false,
            };
            apply::apply(&mut client, &mut cluster_client, &file, target, out).await
        }
        Command::Nodes(cmd) => cluster::nodes(&mut cluster_client, cmd, out).await,
        Command::Endpoints(cmd) => cluster::endpoints(&mut cluster_client, cmd).await,
        Command::L2(cmd) => cluster::l2(&mut cluster_client, cmd, out).await,
        Command::Announcements { cluster, watch } => {
            if watch {
                cluster::watch_announcements(&mut cluster_client, cluster, out).await
            } else {
                cluster::announcements(&mut cluster_client, cluster, out).await
            }
        }
        Command::History { cluster } => cluster::history(&mut cluster_client, cluster, out).await,
        Command::BgpAnnouncements { cluster } => {
            cluster::bgp_announcements(&mut cluster_client, cluster, out).await
        }
        Command::Pools(cmd) => ipam::pools(&mut client, &mut cluster_client, cmd, out).await,
        Command::Leases(cmd) => ipam::leases(&mut client, cmd, out).await,
        Command::Allocate(a) => ipam::allocate(&mut client, a, out).await,
        Command::Release(o) => ipam::release(&mut client, o, out).await,
        Command::Renew { owner, ttl } => ipam::renew(&mut client, owner, ttl, out).await,
        Command::Stats { pool } => ipam::stats(&mut client, pool, out).await,
        Command::Watch { from, pool } => ipam::watch(&mut client, from, pool, out).await,
        Command::Allowances(cmd) => ipam::allowances(&mut client, cmd, out).await,
        Command::Certs(_) => Err("certs needs no allocator".into()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    /// Whatever text a user types into ferrolbctl's flags is read or refused with a message,
    /// never a panic.
    #[test]
    fn any_text_on_the_command_line_is_read_or_refused_without_a_panic() {
        for t in ferrolb_metallb::testing::strings(5, 1000) {
            let _ = crate::ipam::parse_port(&t);
            let _ = crate::cluster::parse_label(&t);
            let _ = ferrolb_common::Principal::from_path(&t);
            let t = t.as_str();
            let lines: [&[&str]; 8] = [
                &["allocate", "--cluster", t, "--port", t, "--ip", t],
                &["allocate", "--ttl", t, "--family", t],
                &["allocate", "--policy", t, "--as", t],
                &["release", "--client", t, "--key", t],
                &["leases", "list", "-o", t],
                &["allowances", "set", "--cluster", t, "--range", t],
                &["--server", t, "stats"],
                &[t, t],
            ];
            for line in lines {
                let args = std::iter::once("ferrolbctl").chain(line.iter().copied());
                if let Ok(cli) = Cli::try_parse_from(args)
                    && let crate::cli::Command::Allocate(a) = cli.command
                {
                    for p in &a.ports {
                        let _ = crate::ipam::parse_port(p);
                    }
                }
            }
        }
    }
}
