//! Connections for tonic: the server's accept loop (TLS handshakes off the accept path, bounded
//! in time, refusals logged and counted) and the clients' connector.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::codegen::http::Uri;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::identity::Principal;
use crate::tls::{self, refusal_reason};

/// What the server knows of the peer of a connection; tonic puts it in every request's
/// extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The verified identity; `None` only on the development plaintext listener.
    pub principal: Option<Principal>,
}

enum Io {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

/// An accepted connection.
pub struct Conn {
    io: Io,
    peer: Peer,
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    // HTTP/2 writes a frame's head and its payload as separate buffers: written together they
    // make one TLS record and one system call, not two.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tls(s) => s.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How the server's listener treats new connections.
#[derive(Clone)]
pub enum Security {
    /// Mutual TLS; `domain` is the trust domain of the identities.
    Mtls {
        config: Arc<rustls::ServerConfig>,
        domain: String,
    },
    /// TLS with no client certificate: the bootstrap port, where callers come for their first.
    ServerOnly(Arc<rustls::ServerConfig>),
    /// No TLS and no identity (development only, loopback only).
    DevPlaintext,
}

/// Called for every refused handshake with the reason label and the error.
pub type OnRefused = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many handshakes run at once; more connections wait in the kernel's backlog.
const CONCURRENT_HANDSHAKES: usize = 256;

/// Accepts connections on `listener` and yields the ones whose handshake succeeded.
pub fn incoming(
    listener: TcpListener,
    security: Security,
    on_refused: OnRefused,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                return;
            };
            let (tx, security, on_refused) =
                (tx.clone(), security.clone(), Arc::clone(&on_refused));
            tokio::spawn(async move {
                let _permit = permit;
                let conn = match security {
                    Security::DevPlaintext => Conn {
                        io: Io::Plain(tcp),
                        peer: Peer {
                            remote,
                            principal: None,
                        },
                    },
                    Security::Mtls { config, domain } => {
                        match handshake(tcp, remote, config, Some(&domain)).await {
                            Ok(c) => c,
                            Err(e) => return refuse(remote, &e, &on_refused),
                        }
                    }
                    Security::ServerOnly(config) => {
                        match handshake(tcp, remote, config, None).await {
                            Ok(c) => c,
                            Err(e) => return refuse(remote, &e, &on_refused),
                        }
                    }
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Logs and counts a refused handshake.
fn refuse(remote: SocketAddr, e: &io::Error, on_refused: &OnRefused) {
    // A TCP probe (a load balancer's, Kubernetes') says nothing at all.
    if e.kind() == io::ErrorKind::UnexpectedEof {
        tracing::debug!(%remote, "connection closed before a TLS hello");
        return;
    }
    let reason = refusal_reason(e);
    tracing::warn!(%remote, reason, error = %e, "TLS handshake refused");
    on_refused(reason);
}

/// The TLS handshake; with `domain`, the client's identity in it is required.
async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    domain: Option<&str>,
) -> io::Result<Conn> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    let principal = match domain {
        // The verifier has already refused any certificate without an identity of the domain.
        Some(domain) => Some(
            tls.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| tls::principal_of(leaf, domain).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "no identity"))?,
        ),
        None => None,
    };
    Ok(Conn {
        io: Io::Tls(Box::new(tls)),
        peer: Peer { remote, principal },
    })
}

/// Opens TLS connections to the URI's host and port for tonic.
#[derive(Clone)]
pub struct Connector(Arc<rustls::ClientConfig>);

type ConnectFuture = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> ConnectFuture {
        let config = Arc::clone(&self.0);
        Box::pin(async move {
            let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {m}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // ferrolb checks the SPIFFE ID, not the name; rustls still wants one for SNI.
            let name = ServerName::try_from(host).map_err(|_| bad("not a host name"))?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// How a client reaches the allocator.
#[derive(Clone, Debug)]
pub enum ClientSecurity {
    Mtls(Arc<rustls::ClientConfig>),
    /// Development only: no TLS, the caller named in metadata.
    DevPlaintext,
}

/// An endpoint for `url` (`https://host:port`; `http://` only in the development plaintext
/// mode), with the settings every ferrolb client shares.
pub fn endpoint(url: &str, security: &ClientSecurity) -> Result<Endpoint, String> {
    let scheme_ok = match security {
        ClientSecurity::Mtls(_) => url.starts_with("https://"),
        ClientSecurity::DevPlaintext => url.starts_with("http://"),
    };
    if !scheme_ok {
        return Err(match security {
            ClientSecurity::Mtls(_) => format!("{url:?}: the allocator speaks TLS: use https://"),
            ClientSecurity::DevPlaintext => {
                format!("{url:?}: the development plaintext mode needs http://")
            }
        });
    }
    Endpoint::from_shared(url.to_string())
        .map(|e| e.tcp_nodelay(true))
        .map_err(|e| format!("{url:?}: {e}"))
}

/// Connects now.
pub async fn connect(
    endpoint: Endpoint,
    security: &ClientSecurity,
) -> Result<Channel, tonic::transport::Error> {
    match security {
        ClientSecurity::Mtls(c) => {
            endpoint
                .connect_with_connector(Connector(Arc::clone(c)))
                .await
        }
        ClientSecurity::DevPlaintext => endpoint.connect().await,
    }
}

/// Connects at the first call, and again after a connection breaks.
pub fn connect_lazy(endpoint: Endpoint, security: &ClientSecurity) -> Channel {
    match security {
        ClientSecurity::Mtls(c) => endpoint.connect_with_connector_lazy(Connector(Arc::clone(c))),
        ClientSecurity::DevPlaintext => endpoint.connect_lazy(),
    }
}

/// An error with its causes, for messages: tonic's transport errors say only "transport
/// error" at the top; the TLS reason is further down.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The metadata key that names the caller in the development plaintext mode.
pub const CALLER_HEADER: &str = "x-ferrolb-caller";

/// The interceptor of every ferrolb client: it names the caller in the development plaintext
/// mode (with TLS the certificate says who calls) and carries the calling span's trace context.
#[derive(Clone, Default)]
pub struct CallerHeader(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl CallerHeader {
    /// `caller` (`admin/x`, `cluster/c/adapter`, ...) when `security` is the plaintext mode.
    pub fn new(security: &ClientSecurity, caller: &str) -> Result<Self, String> {
        match security {
            ClientSecurity::DevPlaintext => Self::always(caller),
            ClientSecurity::Mtls(_) => Ok(CallerHeader(None)),
        }
    }

    /// `caller` whatever the transport (for tests of the header's own checks).
    pub fn always(caller: &str) -> Result<Self, String> {
        caller
            .parse()
            .map(|h| CallerHeader(Some(h)))
            .map_err(|_| format!("{caller:?} is not a valid header value"))
    }
}

impl tonic::service::Interceptor for CallerHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.0 {
            req.metadata_mut().insert(CALLER_HEADER, h.clone());
        }
        crate::telemetry::inject_current(req.metadata_mut());
        Ok(req)
    }
}

/// A gRPC client's service: a channel with the caller's header.
pub type Intercepted = tonic::service::interceptor::InterceptedService<Channel, CallerHeader>;
