//! `--metrics ADDR`: the engine's Prometheus metrics served over HTTP at
//! `/metrics` (axum), for a Prometheus server to scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics text prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `registry` at `http://ADDR/metrics` until the runtime stops;
/// returns the address bound (ADDR may name port 0).
pub async fn serve(address: SocketAddr, registry: Arc<Mutex<Registry>>) -> Result<SocketAddr> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let text = skald_engine::metrics::render(&registry.lock());
                ([("content-type", OPENMETRICS)], text)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("--metrics {address}: cannot listen there"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("metrics server stopped: {error}");
        }
    });
    Ok(bound)
}
