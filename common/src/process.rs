//! What every ferrolb binary does the same way around its work: a plaintext HTTP server for
//! `/metrics` (and probes), stopping on SIGTERM or Ctrl-C, and the tasks it cannot live without
//! (logs and traces: [`crate::telemetry`]).

use std::net::SocketAddr;

/// The exposition format's content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A router that answers `GET /metrics` with what `encode` writes (OpenMetrics text).
pub fn metrics_router<F>(encode: F) -> axum::Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let encode = encode.clone();
            // What prometheus-client writes is OpenMetrics (`# EOF`, `unknown` types): said so,
            // Prometheus parses it as such rather than as its older text format.
            async move { ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], encode()) }
        }),
    )
}

/// Binds `addr` and serves `app` in the background; the error names the address.
pub async fn serve_http(addr: SocketAddr, app: axum::Router) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (Ctrl-C only, with a warning, where SIGTERM cannot be watched).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The background tasks a process cannot work without. When one of them ends or panics,
/// [`Critical::failed`] completes with its name and what happened, so that the process stops
/// saying it serves and exits non-zero (to be restarted) instead of running half alive.
#[derive(Clone, Default)]
pub struct Critical {
    failed: std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl std::fmt::Debug for Critical {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Critical")
            .field("failed", &*self.failed.borrow())
            .finish()
    }
}

impl Critical {
    pub fn new() -> Critical {
        Critical::default()
    }

    /// Runs `task` in the background, watched.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let running = tokio::spawn(task);
        let failed = std::sync::Arc::clone(&self.failed);
        tokio::spawn(async move {
            let what = match running.await {
                Ok(()) => "ended".to_string(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                Err(_) => "was cancelled".to_string(),
            };
            tracing::error!(task = name, "a background task {what}");
            failed.send_if_modified(|f| {
                let first = f.is_none();
                if first {
                    *f = Some(format!("{name} {what}"));
                }
                first
            });
        });
    }

    /// Completes when a watched task has ended, with what happened to the first one.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(f) => f.clone().unwrap_or_default(),
            // The sender lives in `self`: this cannot happen while we wait.
            Err(_) => "the task watcher is gone".to_string(),
        }
    }

    /// Whether a watched task has ended.
    pub fn has_failed(&self) -> bool {
        self.failed.borrow().is_some()
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast::<&'static str>()
            .map(|s| (*s).to_string())
            .unwrap_or_else(|_| "a panic without a message".to_string()),
    }
}

/// A failure injected where a test asks for it: panics when `FERROLB_FAULTS` (a comma-separated
/// list, read once) names `point`. Tests use it to check that a process that loses a part of
/// itself says so; unset, it costs one load of a cached flag.
pub fn fault(point: &str) {
    static FAULTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let faults = FAULTS.get_or_init(|| {
        std::env::var("FERROLB_FAULTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    });
    if faults.iter().any(|f| f == point) {
        panic!("fault injected at {point} (FERROLB_FAULTS)");
    }
}

#[cfg(test)]
mod critical_tests {
    use super::Critical;

    #[tokio::test]
    async fn a_task_that_panics_or_ends_is_reported_by_name() {
        let critical = Critical::new();
        critical.spawn("forever", std::future::pending());
        assert!(!critical.has_failed());
        critical.spawn("worker", async { panic!("boom") });
        let why = tokio::time::timeout(std::time::Duration::from_secs(2), critical.failed())
            .await
            .expect("reported");
        assert_eq!(why, "worker panicked: boom");
        critical.spawn("sync", async {});
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The first failure is the one reported.
        assert_eq!(critical.failed().await, "worker panicked: boom");
        assert!(critical.has_failed());
    }
}
