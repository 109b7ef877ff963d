//! An OpenTelemetry collector's trace receiver, for tests and benchmarks: the OTLP
//! `TraceService` from the OpenTelemetry proto definitions, served by tonic, keeping every span
//! it receives (and writing each as a JSON line, when given a file).

use std::io::Write;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as Any};
use serde::{Deserialize, Serialize};

/// One span as received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Received {
    /// The sender's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's root.
    pub parent: String,
    pub name: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Links to other spans: (trace id, span id).
    pub links: Vec<(String, String)>,
}

/// What the receiver holds.
#[derive(Clone, Default)]
pub struct Spans {
    all: Arc<Mutex<Vec<Received>>>,
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl Spans {
    /// Also appends each span to `file` as a JSON line.
    pub fn writing_to(file: std::fs::File) -> Spans {
        Spans {
            all: Arc::default(),
            file: Some(Arc::new(Mutex::new(file))),
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.all.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn count(&self) -> usize {
        self.all.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The spans a file written by [`Spans::writing_to`] holds (a torn last line is left out).
    pub fn read(path: &std::path::Path) -> Vec<Received> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kv: &[KeyValue]) -> std::collections::BTreeMap<String, String> {
    kv.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Spans {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in req.into_inner().resource_spans {
            let resource = rs.resource.map(|r| attributes(&r.attributes));
            let service = resource
                .and_then(|r| r.get("service.name").cloned())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Received {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        attributes: attributes(&s.attributes),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            for s in &got {
                let line =
                    serde_json::to_string(s).map_err(|e| tonic::Status::internal(e.to_string()))?;
                writeln!(f, "{line}").map_err(|e| tonic::Status::internal(e.to_string()))?;
            }
        }
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves the receiver on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, spans: Spans) -> Result<(), String> {
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(spans))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
        .map_err(|e| e.to_string())
}
