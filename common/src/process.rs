//! What every ferrolb binary does the same way around its work: logs to standard error under a
//! tracing filter, a plaintext HTTP server for `/metrics` (and probes), and stopping on SIGTERM
//! or Ctrl-C.

use std::net::SocketAddr;

/// Logs to standard error, filtered by `filter` (tracing's env-filter syntax; a filter that does
/// not parse gives `info`).
pub fn init_logging(filter: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// A router that answers `GET /metrics` with what `encode` writes (the Prometheus text format).
pub fn metrics_router<F>(encode: F) -> axum::Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let encode = encode.clone();
            async move { encode() }
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
