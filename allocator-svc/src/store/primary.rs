//! Finding and following the writable PostgreSQL server.
//!
//! The database URL may name several hosts, as libpq reads it
//! (`postgres://u@a:5432,b:5432,c/db?target_session_attrs=read-write`): the primary and its
//! standbys, in any order. The allocator needs writes, so it always looks for the server that
//! takes them (`SHOW transaction_read_only` is `off`), whatever `target_session_attrs` says
//! (`any`, `read-write` and `primary` are accepted; a standby-only setting is refused by name).
//! A supervisor checks the server in use a few times a second; when it stops taking writes or
//! answering, it probes every host, points the pool at the writable one and drops the
//! connections to the old one. While none is found the store says it is not writable, which the
//! health service reports as NOT_SERVING.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferrolb_common::Secret;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection};
use tokio::sync::watch;

use super::db::redacted;
use crate::error::{Error, Result};

/// How often the server in use is checked while it serves.
const CHECK: Duration = Duration::from_millis(200);
/// How often the hosts are probed while none takes writes.
const PROBE: Duration = Duration::from_millis(100);
/// How long one check or probe may take before its server counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The hosts of a PostgreSQL URL, each as a URL of its own.
#[derive(Debug, Clone)]
pub(super) struct Hosts {
    /// One URL per host, in the order given; they carry the password.
    urls: Vec<Secret>,
    /// `host:port` of each, fit to show.
    names: Vec<String>,
}

impl Hosts {
    /// Reads `postgres://[userinfo@]host[:port][,host[:port]…][/db][?params]`.
    pub(super) fn parse(url: &str) -> Result<Hosts> {
        let bad = |why: &str| Error::invalid("database-url", format!("{}: {why}", redacted(url)));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) if !u.contains('/') => (Some(u), r),
            _ => (None, rest),
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (hostlist, tail) = rest.split_at(split);
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let mut params = Vec::new();
        let mut sslmode = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if let Some(mode) = pair.strip_prefix("sslmode=") {
                sslmode = Some(mode);
            }
            match pair.split_once('=') {
                Some(("target_session_attrs", v)) => match v {
                    "any" | "read-write" | "primary" => {}
                    other => {
                        return Err(bad(&format!(
                            "target_session_attrs={other} cannot be served: the allocator \
                             writes, so it always connects to the primary (read-write)"
                        )));
                    }
                },
                _ if !pair.is_empty() => params.push(pair),
                _ => {}
            }
        }
        let hostnames = split_hosts(hostlist);
        let remote = hostnames.iter().any(|h| !loopback(h));
        match sslmode {
            // libpq would try TLS and fall back to plaintext, checking nothing: past this
            // machine, the allocator checks the server's certificate unless told otherwise.
            None if remote => params.push("sslmode=verify-full"),
            Some("disable" | "allow" | "prefer") if remote => tracing::warn!(
                url = redacted(url),
                "the database connection is not authenticated (sslmode is not verify-full or \
                 verify-ca): anyone on the path can read or change the leases"
            ),
            _ => {}
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let mut hosts = Hosts {
            urls: Vec::new(),
            names: Vec::new(),
        };
        for host in hostnames {
            if host.is_empty() {
                return Err(bad("an empty host in the host list"));
            }
            hosts
                .urls
                .push(Secret::new(format!("{scheme}://{user}{host}{path}{query}")));
            hosts.names.push(host.to_string());
        }
        if hosts.urls.is_empty() {
            return Err(bad("no host"));
        }
        Ok(hosts)
    }

    pub(super) fn url(&self, i: usize) -> &Secret {
        &self.urls[i]
    }

    pub(super) fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The first host, in URL order, that takes writes now.
    pub(super) async fn find_writable(&self) -> std::result::Result<usize, String> {
        let probes = self.urls.iter().map(|u| writable(u.expose()));
        let answers = futures::future::join_all(probes).await;
        let mut why = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(true) => return Ok(i),
                Ok(false) => why.push(format!("{}: takes no writes (a standby)", self.names[i])),
                Err(e) => why.push(format!("{}: {e}", self.names[i])),
            }
        }
        Err(why.join("; "))
    }
}

/// Whether `host[:port]` is this machine.
fn loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Splits `a:1,[::1]:2,b` at the commas outside brackets.
fn split_hosts(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&list[start..]);
    out
}

/// Whether the server at `url` takes writes, on a connection of its own.
async fn writable(url: &str) -> std::result::Result<bool, String> {
    let probe = async {
        let mut conn = AnyConnection::connect(url).await?;
        let ro = read_only(&mut conn).await;
        let _ = conn.close().await;
        ro.map(|ro| !ro)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

pub(super) async fn read_only(conn: &mut AnyConnection) -> std::result::Result<bool, sqlx::Error> {
    let v: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(&mut *conn)
        .await?;
    Ok(v == "on")
}

/// Which host the pool uses, since when, and whether it takes writes.
pub(super) struct Primary {
    pub(super) hosts: Hosts,
    current: AtomicUsize,
    /// When the pool last moved to another host: connections older than this are dropped.
    switched: Mutex<Instant>,
    writable: watch::Sender<bool>,
    /// Moves on every switch, for the notification listener to reconnect.
    generation: watch::Sender<u64>,
}

impl Primary {
    pub(super) fn new(hosts: Hosts, current: usize) -> Primary {
        Primary {
            hosts,
            current: AtomicUsize::new(current),
            switched: Mutex::new(Instant::now()),
            writable: watch::channel(true).0,
            generation: watch::channel(0).0,
        }
    }

    pub(super) fn current_url(&self) -> &Secret {
        self.hosts.url(self.current.load(Ordering::Relaxed))
    }

    /// Whether a pooled connection of this age was made before the last switch.
    pub(super) fn stale(&self, age: Duration) -> bool {
        self.switched.lock().is_ok_and(|s| age > s.elapsed())
    }

    pub(super) fn writable(&self) -> watch::Receiver<bool> {
        self.writable.subscribe()
    }

    pub(super) fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Points the pool at host `i`; connections to the old one are dropped as they come back.
    fn switch(&self, pool: &sqlx::AnyPool, i: usize) -> Result<()> {
        let opts: AnyConnectOptions = self
            .hosts
            .url(i)
            .expose()
            .parse()
            .map_err(|e: sqlx::Error| Error::Internal(e.to_string()))?;
        pool.set_connect_options(opts);
        self.current.store(i, Ordering::Relaxed);
        if let Ok(mut s) = self.switched.lock() {
            *s = Instant::now();
        }
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    fn set_writable(&self, up: bool) {
        self.writable
            .send_if_modified(|w| std::mem::replace(w, up) != up);
    }
}

/// Follows the writable server until the pool closes.
pub(super) async fn supervise(primary: std::sync::Arc<Primary>, pool: sqlx::AnyPool) {
    loop {
        let serving = *primary.writable.borrow();
        tokio::time::sleep(if serving { CHECK } else { PROBE }).await;
        if pool.is_closed() {
            return;
        }
        if check(&pool).await {
            primary.set_writable(true);
            continue;
        }
        let from = primary.current.load(Ordering::Relaxed);
        match primary.hosts.find_writable().await {
            // Even on the same host, the connections that failed the check are not reused.
            Ok(i) => match primary.switch(&pool, i) {
                Ok(()) => {
                    if i != from {
                        tracing::warn!(
                            from = primary.hosts.name(from),
                            to = primary.hosts.name(i),
                            "the database primary moved; following it"
                        );
                    }
                    primary.set_writable(true);
                }
                Err(e) => tracing::error!(error = %e, "cannot point the store at the new primary"),
            },
            Err(why) => {
                if serving {
                    tracing::warn!(%why, "no database server takes writes: calls fail with UNAVAILABLE");
                }
                primary.set_writable(false);
            }
        }
    }
}

/// Whether the pool's server takes writes now.
async fn check(pool: &sqlx::AnyPool) -> bool {
    let ask = async {
        let mut conn = pool.acquire().await?;
        read_only(&mut conn).await
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, ask).await,
        Ok(Ok(false))
    )
}

/// Says at start what the primary's settings let a crash or a failover lose.
pub(super) async fn warn_if_acknowledged_writes_can_be_lost(pool: &sqlx::AnyPool) {
    let seen: std::result::Result<(String, String, i64), _> = sqlx::query_as(
        "SELECT current_setting('synchronous_commit'), \
         current_setting('synchronous_standby_names'), \
         (SELECT count(*) FROM pg_stat_replication)",
    )
    .fetch_one(pool)
    .await;
    match seen {
        Ok((commit, names, standbys)) => {
            if let Some(why) = replication_risk(&commit, &names, standbys) {
                tracing::warn!(synchronous_commit = commit, standbys, "{why}");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the replication settings"),
    }
}

/// What acknowledged leases the settings put at risk, if any.
fn replication_risk(
    synchronous_commit: &str,
    standby_names: &str,
    standbys: i64,
) -> Option<String> {
    if matches!(synchronous_commit, "off" | "local") {
        return Some(format!(
            "synchronous_commit = {synchronous_commit}: leases acknowledged just before a crash \
             or a failover can be lost; set it to on or remote_apply (docs/allocator.md)"
        ));
    }
    if standbys > 0 && standby_names.trim().is_empty() {
        return Some(
            "the primary replicates asynchronously (synchronous_standby_names is empty): a \
             failover to a standby can lose leases it acknowledged (docs/allocator.md)"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{Hosts, replication_risk};

    #[test]
    fn asynchronous_replication_or_commits_are_called_out() {
        assert!(replication_risk("on", "", 1).is_some_and(|w| w.contains("asynchronously")));
        assert!(replication_risk("local", "*", 1).is_some_and(|w| w.contains("local")));
        assert!(replication_risk("off", "", 0).is_some());
        assert_eq!(replication_risk("on", "*", 1), None);
        assert_eq!(replication_risk("remote_apply", "FIRST 1 (s1)", 2), None);
        // One server with no standby: a failover has nothing to lose to.
        assert_eq!(replication_risk("on", "", 0), None);
    }

    #[test]
    fn a_host_list_becomes_one_url_per_host() {
        let h = Hosts::parse(
            "postgres://ferrolb:pw@a:5432,[2001:db8::1]:5433,c/leases?sslmode=require&target_session_attrs=read-write",
        )
        .expect("parses");
        assert_eq!(h.urls.len(), 3);
        assert_eq!(
            h.url(0).expose(),
            "postgres://ferrolb:pw@a:5432/leases?sslmode=require"
        );
        assert_eq!(
            h.url(1).expose(),
            "postgres://ferrolb:pw@[2001:db8::1]:5433/leases?sslmode=require"
        );
        assert_eq!(h.name(2), "c");
        let one = Hosts::parse("postgres://127.0.0.1:5432/x").expect("one host");
        assert_eq!(one.url(0).expose(), "postgres://127.0.0.1:5432/x");
        assert_eq!(
            Hosts::parse("postgres://u@[::1],localhost")
                .expect("no path")
                .url(1)
                .expose(),
            "postgres://u@localhost"
        );
    }

    #[test]
    fn a_server_past_this_machine_is_verified_unless_told_otherwise() {
        let url = |u: &str| Hosts::parse(u).expect("parses").url(0).expose().to_string();
        assert_eq!(
            url("postgres://db/x"),
            "postgres://db/x?sslmode=verify-full"
        );
        assert_eq!(
            url("postgres://localhost,db:5433/x?application_name=a"),
            "postgres://localhost/x?application_name=a&sslmode=verify-full"
        );
        assert_eq!(
            url("postgres://db/x?sslmode=require"),
            "postgres://db/x?sslmode=require"
        );
        assert_eq!(url("postgres://127.0.0.1/x"), "postgres://127.0.0.1/x");
    }

    #[test]
    fn a_standby_only_session_or_an_empty_host_is_refused_by_name() {
        let e = Hosts::parse("postgres://u:hunter2@a,b/x?target_session_attrs=standby")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("target_session_attrs=standby"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = Hosts::parse("postgres://a,,b/x")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("empty host"), "{e}");
    }
}
