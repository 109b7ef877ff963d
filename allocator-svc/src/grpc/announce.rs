//! `ferrolb.v1.AnnouncerService`: each node's announcer stream. The hello (a node's certificate
//! opens that node's stream only), then the node's assignments and BGP sessions as diffs of the
//! replica's view; a newer stream of the node, on any replica, ends the older one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_proto::v1 as pb;
use ferrolb_proto::v1::allocator_message::Kind as Down;
use ferrolb_proto::v1::announcer_message::Kind as Up;
use ferrolb_proto::v1::announcer_service_server::AnnouncerService;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::bgp;
use super::convert;
use crate::assignments::{NodeView, View};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pool::validate_name;
use crate::store::SqlStore;
use ferrolb_common::Principal;

/// Liveness settings of the announcer streams.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// An announcer not heard from for this long is taken for dead.
    pub heartbeat_timeout: Duration,
    /// How long a session outlives its replica's last refresh.
    pub session_ttl: Duration,
}

/// The announcer stream API.
pub struct Announcers {
    store: Arc<SqlStore>,
    view: watch::Receiver<Arc<View>>,
    metrics: Arc<Metrics>,
    replica: Arc<str>,
    liveness: Liveness,
    /// The stream this replica serves for each node: a newer one ends it.
    streams: std::sync::Mutex<BTreeMap<(String, String), Serving>>,
    /// Addresses whose announcer this replica lost, by cluster and address: when, why, and
    /// the node.
    lost: std::sync::Mutex<BTreeMap<(String, String), Lost>>,
    /// The failovers this replica timed.
    pub failovers: Arc<FailoverLog>,
}

/// When an address lost its announcer, why, and which node that was.
type Lost = (Instant, &'static str, String);

/// One failover this replica timed.
#[derive(Debug, Clone)]
pub struct Failover {
    pub cluster: String,
    pub ip: String,
    pub from: String,
    pub to: String,
    pub reason: &'static str,
    /// When the new node reported it announces the address.
    pub at: std::time::SystemTime,
    pub took: Duration,
}

/// The last failovers this replica timed, oldest first (`ferrolbctl history`).
#[derive(Debug, Default)]
pub struct FailoverLog(std::sync::Mutex<std::collections::VecDeque<Failover>>);

impl FailoverLog {
    /// Failovers kept, across clusters.
    const KEEP: usize = 1000;

    pub fn push(&self, f: Failover) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == Self::KEEP {
            log.pop_front();
        }
        log.push_back(f);
    }

    pub fn of(&self, cluster: &str) -> Vec<Failover> {
        let log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.iter()
            .filter(|f| f.cluster == cluster)
            .cloned()
            .collect()
    }
}

/// How long a lost address waits for a new announcer to be timed as a failover.
const FAILOVER_WINDOW: Duration = Duration::from_secs(60);

/// A node's stream on this replica: its session id, and what ends it.
type Serving = (i64, tokio::sync::oneshot::Sender<()>);

impl Announcers {
    pub fn new(
        store: Arc<SqlStore>,
        view: watch::Receiver<Arc<View>>,
        metrics: Arc<Metrics>,
        replica: Arc<str>,
        liveness: Liveness,
    ) -> Announcers {
        Announcers {
            store,
            view,
            metrics,
            replica,
            liveness,
            streams: std::sync::Mutex::default(),
            lost: std::sync::Mutex::default(),
            failovers: Arc::default(),
        }
    }

    /// Registers a node's new stream; the previous one, if this replica serves it, is told to
    /// end. Returns what ends this one.
    fn take_over(&self, s: &Session) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = streams.insert((s.cluster.clone(), s.node.clone()), (s.id, tx)) {
            let _ = old.send(());
        }
        rx
    }

    /// Forgets a stream that ended, unless a newer one of its node has taken its place.
    fn release(&self, s: &Session) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let key = (s.cluster.clone(), s.node.clone());
        if streams.get(&key).is_some_and(|(id, _)| *id == s.id) {
            streams.remove(&key);
        }
    }
}

/// Why a stream's end moves its addresses, as the failover metrics name it; None when it does
/// not (the node's newer stream took over, or this replica stops).
fn failover_reason(why: &str) -> Option<&'static str> {
    match why {
        "heartbeats stopped" => Some("heartbeats_stopped"),
        "stream closed" | "stream broken" => Some("stream_ended"),
        "protocol error" => Some("protocol_error"),
        _ => None,
    }
}

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new stream waits for a view of the announcements that knows its session.
const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The message that brings an announcer from `had` to `want`.
fn changes(version: u64, had: &NodeView, want: &NodeView) -> pb::Assignments {
    let (had_l2, want_l2) = (&had.l2, &want.l2);
    let mut out = pb::Assignments {
        version,
        snapshot: false,
        set: want_l2
            .iter()
            .filter(|(ip, duty)| had_l2.get(ip) != Some(duty))
            .map(|(ip, duty)| pb::L2Assignment {
                ip: ip.to_string(),
                interfaces: duty.interfaces.clone(),
                services: duty.services.clone(),
            })
            .collect(),
        unset: had_l2
            .keys()
            .filter(|ip| !want_l2.contains_key(ip))
            .map(IpAddr::to_string)
            .collect(),
        ..pb::Assignments::default()
    };
    bgp::changes(&had.bgp, &want.bgp, &mut out);
    out
}

type Outbound = mpsc::Sender<Result<pb::AllocatorMessage, Status>>;

fn down(a: pb::Assignments) -> Result<pb::AllocatorMessage, Status> {
    Ok(pb::AllocatorMessage {
        kind: Some(Down::Assignments(a)),
    })
}

struct Session {
    cluster: String,
    node: String,
    id: i64,
    /// What the announcer last said it announces.
    announcing: std::sync::Mutex<BTreeSet<String>>,
    /// The cluster revision read after the session was stored: views read at it or later
    /// know of the session (or of a newer one).
    opened_at: u64,
}

impl Announcers {
    /// Serves one announcer until its stream ends or its heartbeats stop.
    async fn serve(
        self: Arc<Self>,
        hello: pb::Hello,
        mut inbound: Streaming<pb::AnnouncerMessage>,
        out: Outbound,
    ) {
        let mut s = Session {
            cluster: hello.cluster.clone(),
            node: hello.node.clone(),
            // Tells this stream's session from a newer one of the same node.
            id: (crate::cluster::random_u64() >> 1) as i64,
            announcing: std::sync::Mutex::new(hello.announcing.iter().cloned().collect()),
            opened_at: u64::MAX,
        };
        let ttl = self.liveness.session_ttl.as_millis() as i64;
        let opened = self
            .store
            .open_session(&s.cluster, &s.node, s.id, &self.replica, ttl)
            .await;
        if let Err(e) = opened {
            let _ = out.send(Err(Status::from(e))).await;
            return;
        }
        // Without the revision no view is trusted to say the session was replaced.
        s.opened_at = self.store.cluster_revision().await.unwrap_or(u64::MAX);
        let interfaces: Vec<&str> = hello
            .interfaces
            .iter()
            .filter(|i| i.eligible)
            .map(|i| i.name.as_str())
            .collect();
        tracing::info!(
            cluster = s.cluster,
            node = s.node,
            ?interfaces,
            "announcer connected"
        );
        self.metrics.announcer_streams.inc();
        let replaced = self.take_over(&s);
        let why = tokio::select! {
            why = self.run(&s, &hello, &mut inbound, &out) => why,
            _ = replaced => {
                let _ = out.send(Err(Error::Aborted("a newer stream of this node took over".into()).into())).await;
                "replaced by a newer stream of the node"
            }
        };
        self.release(&s);
        self.metrics.announcer_streams.dec();
        // The loss starts a trace of its own: the decision that moves the node's addresses
        // and the new owner's announcements follow from it.
        let gone = tracing::info_span!(
            parent: None,
            "announcer gone",
            cluster = s.cluster,
            node = s.node,
            reason = why
        );
        if let Some(reason) = failover_reason(why) {
            let announcing = s
                .announcing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.lost_all(&s, &announcing, reason);
        }
        tracing::info!(
            cluster = s.cluster,
            node = s.node,
            reason = why,
            "announcer gone"
        );
        let closed = self.store.close_session(&s.cluster, &s.node, s.id);
        if let Err(e) = closed.instrument(gone).await {
            tracing::warn!(error = %e, node = s.node, "cannot end the session; it will expire");
        }
    }

    async fn run(
        &self,
        s: &Session,
        hello: &pb::Hello,
        inbound: &mut Streaming<pb::AnnouncerMessage>,
        out: &Outbound,
    ) -> &'static str {
        let timeout = self.liveness.heartbeat_timeout;
        let interval = (timeout / 3).max(Duration::from_millis(10));
        let mut view = self.view.clone();
        let current = match first_view(&mut view, s, out).await {
            Ok(v) => v,
            Err(why) => return why,
        };
        let speaks_bgp = hello.capabilities.iter().any(|c| c == "bgp");
        let sent = node_view(&current, s, speaks_bgp);
        let first = pb::Assignments {
            heartbeat_interval_ms: interval.as_millis() as u32,
            allocator_timeout_ms: (timeout * 10).as_millis() as u32,
            ..first_assignments(hello, current.version, &sent)
        };
        if out.send(down(first)).await.is_err() {
            return "stream closed";
        }
        let mut follow = Follow {
            session: s,
            speaks_bgp,
            sent,
            ready: true,
        };
        let mut heard = Instant::now();
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(pb::AnnouncerMessage { kind: Some(Up::Status(st)) })) => {
                        heard = Instant::now();
                        self.status(&mut follow, &st).await;
                    }
                    Ok(Some(_)) => {
                        let _ = out.send(Err(Error::invalid("message", "only status messages may follow the hello").into())).await;
                        return "protocol error";
                    }
                    Ok(None) => return "stream closed",
                    Err(_) => return "stream broken",
                },
                changed = view.changed() => {
                    if changed.is_err() {
                        return "shutting down";
                    }
                    let v = view.borrow_and_update().clone();
                    if let Err(why) = follow.view_changed(&v, out).await {
                        return why;
                    }
                }
                _ = tokio::time::sleep_until((heard + timeout).into()) => {
                    return "heartbeats stopped";
                }
                _ = tick.tick() => {
                    let ping = pb::AllocatorMessage { kind: Some(Down::Ping(pb::Ping {})) };
                    if out.send(Ok(ping)).await.is_err() {
                        return "stream closed";
                    }
                }
            }
        }
    }

    /// Its announcer is gone (or no longer ready): the addresses it announced wait for another.
    fn lost_all(&self, s: &Session, ips: &BTreeSet<String>, reason: &'static str) {
        let now = Instant::now();
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.retain(|_, (at, ..)| now.duration_since(*at) < FAILOVER_WINDOW);
        for ip in ips {
            lost.insert(
                (s.cluster.clone(), ip.clone()),
                (now, reason, s.node.clone()),
            );
        }
    }

    /// A node says it announces addresses it did not before: those whose announcer this replica
    /// lost have failed over, in the time since.
    fn announced(&self, s: &Session, now_announcing: &[String]) {
        let mut mine = s.announcing.lock().unwrap_or_else(|p| p.into_inner());
        let new: Vec<String> = now_announcing
            .iter()
            .filter(|ip| !mine.contains(*ip))
            .cloned()
            .collect();
        *mine = now_announcing.iter().cloned().collect();
        drop(mine);
        if new.is_empty() {
            return;
        }
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        for ip in new {
            if let Some((at, reason, from)) = lost.remove(&(s.cluster.clone(), ip.clone())) {
                let took = at.elapsed();
                if took < FAILOVER_WINDOW && from != s.node {
                    tracing::info!(
                        cluster = s.cluster,
                        node = s.node,
                        address = ip,
                        reason,
                        took_ms = took.as_millis() as u64,
                        "failed over"
                    );
                    self.metrics.failed_over(reason, took);
                    self.failovers.push(Failover {
                        cluster: s.cluster.clone(),
                        ip,
                        from,
                        to: s.node.clone(),
                        reason,
                        at: std::time::SystemTime::now(),
                        took,
                    });
                }
            }
        }
    }

    /// A status message: what the node announces, and readiness changes, recorded with the
    /// session.
    async fn status(&self, f: &mut Follow<'_>, st: &pb::AnnouncerStatus) {
        self.announced(f.session, &st.announcing);
        if st.ready == f.ready {
            return;
        }
        let s = f.session;
        f.ready = st.ready;
        if !f.ready {
            let announcing = s
                .announcing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.lost_all(s, &announcing, "not_ready");
        }
        tracing::info!(
            node = s.node,
            ready = f.ready,
            "announcer readiness changed"
        );
        let stored = self
            .store
            .set_session_ready(&s.cluster, &s.node, s.id, f.ready);
        let span = tracing::info_span!(
            parent: None,
            "announcer readiness",
            cluster = s.cluster,
            node = s.node,
            ready = f.ready
        );
        if let Err(e) = stored.instrument(span).await {
            tracing::warn!(error = %e, "cannot record readiness");
        }
    }
}

/// The first view the stream may speak from. It is only as good as its decision: one decided
/// before this node's session was stored (a replica that just started, a decision still
/// running) would tell the announcer to drop what it announces. So it waits for a view that
/// knows the session; a replica that cannot decide in time sends the announcer elsewhere.
async fn first_view(
    view: &mut watch::Receiver<Arc<View>>,
    s: &Session,
    out: &Outbound,
) -> Result<Arc<View>, &'static str> {
    let knows_session = |v: &Arc<View>| v.sessions_revision >= s.opened_at;
    let waited = tokio::time::timeout(VIEW_TIMEOUT, view.wait_for(knows_session))
        .await
        .map(|r| r.map(|v| Arc::clone(&v)));
    match waited {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err("shutting down"),
        Err(_) => {
            let why = "this replica has not decided the announcements yet";
            let _ = out.send(Err(Error::Unavailable(why.into()).into())).await;
            Err("no view of its session in time")
        }
    }
}

/// What the node should hear of a view: its layer-2 assignments, and its BGP part when its
/// announcer speaks BGP.
fn node_view(v: &View, s: &Session, speaks_bgp: bool) -> NodeView {
    let mut n = v.node(&s.cluster, &s.node);
    if !speaks_bgp {
        n.bgp = Default::default();
    }
    n
}

/// The stream's first assignments. An announcer that has been in touch before (any replica)
/// and announces exactly what it should resumes where it is; versions move with every change
/// anywhere, so they are not compared. The announcer does not report its BGP state, so a node
/// with any gets a snapshot (sessions and routes that did not change cause no traffic to the
/// peers).
fn first_assignments(hello: &pb::Hello, version: u64, want: &NodeView) -> pb::Assignments {
    let announcing: BTreeSet<IpAddr> = hello
        .announcing
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let in_step = hello.version != 0
        && announcing.iter().eq(want.l2.keys())
        && want.bgp == Default::default();
    if in_step {
        changes(version, want, want)
    } else {
        pb::Assignments {
            snapshot: true,
            ..changes(version, &NodeView::default(), want)
        }
    }
}

/// What one stream has told its announcer.
struct Follow<'a> {
    session: &'a Session,
    speaks_bgp: bool,
    sent: NodeView,
    ready: bool,
}

impl Follow<'_> {
    /// Sends what changed for the node; ends the stream when a newer stream of the node, on
    /// another replica, holds the session now.
    async fn view_changed(&mut self, v: &View, out: &Outbound) -> Result<(), &'static str> {
        let s = self.session;
        let key = (s.cluster.clone(), s.node.clone());
        if v.sessions_revision >= s.opened_at && v.sessions.get(&key).is_some_and(|id| *id != s.id)
        {
            let why = "a newer stream of this node took over";
            let _ = out.send(Err(Error::Aborted(why.into()).into())).await;
            return Err("replaced by a newer stream of the node");
        }
        let want = node_view(v, s, self.speaks_bgp);
        if want != self.sent {
            let mut message = changes(v.version, &self.sent, &want);
            let push = v.origin.child(|| {
                tracing::info_span!(
                    "push assignments",
                    cluster = s.cluster,
                    node = s.node,
                    version = v.version,
                    set = message.set.len(),
                    unset = message.unset.len(),
                )
            });
            message.traceparent = ferrolb_common::telemetry::traceparent(&push);
            if out.send(down(message)).instrument(push).await.is_err() {
                return Err("stream closed");
            }
            self.sent = want;
        }
        Ok(())
    }
}

/// The announcer service; shares its state with the session tasks it spawns.
pub struct AnnouncerApi(pub Arc<Announcers>);

#[tonic::async_trait]
impl AnnouncerService for AnnouncerApi {
    type AnnounceStream = Pin<Box<dyn Stream<Item = Result<pb::AllocatorMessage, Status>> + Send>>;

    async fn announce(
        &self,
        req: Request<Streaming<pb::AnnouncerMessage>>,
    ) -> Result<Response<Self::AnnounceStream>, Status> {
        // A node's certificate opens that node's stream and no other.
        let (cluster, node) = match convert::principal(&req)? {
            Principal::Node { cluster, node } => (cluster.clone(), node.clone()),
            other => {
                return Err(Error::PermissionDenied(format!(
                    "{other} is not a node: only a node's own identity opens its stream"
                ))
                .into());
            }
        };
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::from(Error::DeadlineExceeded("no hello within 10 s".into())))??;
        let Some(pb::AnnouncerMessage {
            kind: Some(Up::Hello(hello)),
        }) = first
        else {
            return Err(Error::invalid("message", "the first message must be a hello").into());
        };
        validate_name("hello.cluster", &hello.cluster)?;
        validate_name("hello.node", &hello.node)?;
        if (hello.cluster.as_str(), hello.node.as_str()) != (cluster.as_str(), node.as_str()) {
            return Err(Error::PermissionDenied(format!(
                "cluster/{cluster}/node/{node} may not announce as node {:?} of cluster {:?}",
                hello.node, hello.cluster
            ))
            .into());
        }
        if !hello.capabilities.iter().any(|c| c == "l2" || c == "bgp") {
            return Err(Error::invalid(
                "hello.capabilities",
                "this allocator serves layer-2 (\"l2\") and BGP (\"bgp\") announcers",
            )
            .into());
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(Arc::clone(&self.0).serve(hello, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
