//! Logs and traces. Logs go to standard error under a tracing filter; spans go to an
//! OpenTelemetry collector over OTLP/gRPC when an endpoint is set, with W3C trace context carried
//! between ferrolb's parts: in gRPC metadata on calls, in a message field on the announcer stream.
//! Without an endpoint nothing is exported and no context is carried.
//!
//! Configured by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `--otlp-endpoint`),
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` (or `--otlp-ca`), `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_BSP_SCHEDULE_DELAY` and the batch processor's other settings.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::codegen::http;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an endpoint was set).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// The OpenTelemetry collector spans go to, over OTLP/gRPC: `https://collector:4317`
    /// (checked against --otlp-ca), or `http://` unencrypted. None: nothing is exported.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The CA bundle (PEM) the collector's certificate is checked against, for https.
    #[arg(long = "otlp-ca", env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_ca: Option<PathBuf>,
}

/// Exports what is left when dropped.
#[must_use = "spans are flushed when this is dropped"]
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("traces not all exported: {e}");
        }
    }
}

/// Logs to standard error, filtered by `filter` (tracing's env-filter syntax; a filter that
/// does not parse gives `info`), and exports every span at level info or above (with the
/// warnings and errors logged inside it) when `args` names a collector, whatever the log filter. `service` is the service name unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` names one. Inside the Tokio runtime.
pub fn init(filter: &str, service: &str, args: &TraceArgs) -> Result<Telemetry, String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter),
    );
    let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        logs.init();
        return Ok(Telemetry(None));
    };
    let provider = provider(endpoint, args, service)?;
    let tracer = provider.tracer("ferrolb");
    // A span's name and fields say what it is: where in the code it was made, its busy and
    // idle times and its thread are not recorded (each costs every span a few allocations).
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            // Spans at info and above; of the log events, only warnings and errors go along
            // (as span events): a trace does not repeat every log line at the cost of each.
            let least = if m.is_span() {
                tracing::Level::INFO
            } else {
                tracing::Level::WARN
            };
            *m.level() <= least
        }));
    logs.with(spans).init();
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(endpoint, "exporting traces");
    Ok(Telemetry(Some(provider)))
}

fn provider(endpoint: &str, args: &TraceArgs, service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let bad = |m: String| format!("--otlp-endpoint {endpoint:?}: {m}");
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| bad(e.to_string()))?;
    let channel = if endpoint.starts_with("https://") {
        let ca = args.otlp_ca.as_ref().ok_or_else(|| {
            bad(
                "https needs the collector's CA bundle (--otlp-ca, OTEL_EXPORTER_OTLP_CERTIFICATE)"
                    .into(),
            )
        })?;
        let config = crate::tls::server_name_client_config(ca).map_err(|e| bad(e.to_string()))?;
        crate::transport::connect_lazy(channel, &crate::transport::ClientSecurity::Mtls(config))
    } else if endpoint.starts_with("http://") {
        channel.connect_lazy()
    } else {
        return Err(bad("use https:// or http://".into()));
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().build();
    let named = resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|n| !n.as_str().starts_with("unknown_service"));
    let resource = if named {
        resource
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_string())
            .build()
    };
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// One field, `traceparent`, read or written.
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent")
            .then_some(self.0.as_deref())
            .flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Puts the current span's trace context into the metadata of an outgoing call.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    if exporting() {
        TraceContextPropagator::new()
            .inject_context(&Span::current().context(), &mut Metadata(metadata));
    }
}

/// The span of one incoming gRPC call (none when nothing is exported), named as OpenTelemetry
/// names gRPC spans (`ferrolb.v1.IpamService/Allocate`): a child of the caller's span when the
/// call's metadata carries its context. The entity fields are left for the handler to fill in.
pub fn grpc_server_span(req: &http::Request<()>) -> Span {
    if !exporting() {
        return Span::none();
    }
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        service = tracing::field::Empty,
        pool = tracing::field::Empty,
        address = tracing::field::Empty,
    );
    let _ = span.set_parent(TraceContextPropagator::new().extract(&Headers(req.headers())));
    span
}

/// The W3C `traceparent` of `span`, for a message that carries it; empty when nothing is
/// exported.
pub fn traceparent(span: &Span) -> String {
    if !exporting() {
        return String::new();
    }
    let mut out = Traceparent(None);
    TraceContextPropagator::new().inject_context(&span.context(), &mut out);
    out.0.unwrap_or_default()
}

/// Makes `span` (not yet entered) a child of the span `traceparent` names; nothing when it is
/// empty or malformed.
pub fn follow(span: &Span, traceparent: &str) {
    if !exporting() || traceparent.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Traceparent(Some(traceparent.to_string())));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The span `make` makes for work done for several calls at once (a batch): a child of the first
/// call's span, linked to the others' (OpenTelemetry's fan-in); none when nothing is exported.
pub fn fan_in(callers: &[Span], make: impl FnOnce() -> Span) -> Span {
    let Some((first, rest)) = callers.split_first().filter(|_| exporting()) else {
        return Span::none();
    };
    let span = make();
    let _ = span.set_parent(first.context());
    for c in rest {
        if let Origin(Some(cx)) = Origin::of(c) {
            span.add_link(cx);
        }
    }
    span
}

/// A span something else follows from, carried beside data. Equal to every other `Origin`, so
/// that data compared for changes ignores where it came from.
#[derive(Clone, Debug, Default)]
pub struct Origin(Option<SpanContext>);

impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

impl Eq for Origin {}

impl Origin {
    /// `span`'s, when spans are exported.
    pub fn of(span: &Span) -> Origin {
        if !exporting() {
            return Origin(None);
        }
        let cx = span.context().span().span_context().clone();
        Origin(cx.is_valid().then_some(cx))
    }

    /// The span `make` makes, as a child of this origin; none when there is no origin.
    pub fn child(&self, make: impl FnOnce() -> Span) -> Span {
        if self.0.is_none() {
            return Span::none();
        }
        let span = make();
        self.adopt(&span);
        span
    }

    /// Makes `span` (not yet entered) a child of this origin.
    pub fn adopt(&self, span: &Span) {
        if let Some(cx) = &self.0 {
            let _ =
                span.set_parent(opentelemetry::Context::new().with_remote_span_context(cx.clone()));
        }
    }
}

/// The writes a later decision follows from: a decision taken after several is a child of the
/// first and linked to the others.
#[derive(Debug, Default)]
pub struct Causes(Mutex<Vec<SpanContext>>);

impl Causes {
    /// Links kept per decision at most; a burst of writes is linked by its first ones.
    const KEEP: usize = 32;

    /// `span` caused a change (nothing when spans are not exported).
    pub fn record(&self, span: &Span) {
        if let Origin(Some(cx)) = Origin::of(span) {
            let mut causes = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if causes.len() < Self::KEEP {
                causes.push(cx);
            }
        }
    }

    /// The span `make` makes, following from every change recorded since the last call (a
    /// child of the first, linked to the others); none when nothing was recorded.
    pub fn follow(&self, make: impl FnOnce() -> Span) -> Span {
        if !exporting() {
            return Span::none();
        }
        let causes = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        let mut causes = causes.into_iter();
        let Some(first) = causes.next() else {
            return Span::none();
        };
        let span = Origin(Some(first)).child(make);
        for cx in causes {
            span.add_link(cx);
        }
        span
    }
}
