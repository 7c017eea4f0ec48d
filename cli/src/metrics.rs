//! `--metrics ADDR`: the engine's Prometheus metrics at `/metrics` and its
//! health at `/api/health` (`/live`, `/ready`: 200 or 503 with the reasons
//! as JSON), served over HTTP by axum.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use skald_engine::{Engine, Health};

/// The content type of the OpenMetrics text prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// 200 if `up`, else 503, with the health as JSON.
fn answer(health: Health, up: bool) -> (StatusCode, Json<Health>) {
    let status = match up {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(health))
}

/// Serves `registry` and `engine`'s health until the runtime stops;
/// returns the address bound (ADDR may name port 0).
pub async fn serve(
    address: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    engine: Engine,
) -> Result<SocketAddr> {
    let (live, ready) = (engine.clone(), engine.clone());
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = skald_engine::metrics::render(&registry.lock());
                async move { ([("content-type", OPENMETRICS)], text) }
            }),
        )
        .route(
            "/api/health",
            get(move || {
                let health = engine.health();
                async move { answer(health.clone(), health.ready) }
            }),
        )
        .route(
            "/api/health/live",
            get(move || {
                let health = live.health();
                async move { answer(health.clone(), health.live) }
            }),
        )
        .route(
            "/api/health/ready",
            get(move || {
                let health = ready.health();
                async move { answer(health.clone(), health.ready) }
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
