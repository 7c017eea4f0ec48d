//! Breakers, metrics, health, the audit trail and the OpenAPI document.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use skald_engine::access::Permission;
use skald_engine::audit::AUDIT_PAGE_MAX;

use crate::error::{page_limit, require_all, ApiError};

/// The OpenAPI document, checked into the repository.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub(crate) async fn breakers(
    State(state): State<crate::State>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded(&headers)?;
    let breakers = guarded.breakers()?;
    Ok(Json(json!({ "breakers": breakers })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetBody {
    reason: String,
}

pub(crate) async fn reset_breaker(
    State(state): State<crate::State>,
    headers: HeaderMap,
    service: Result<Path<String>, PathRejection>,
    body: Result<Json<ResetBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let guarded = state
        .guarded_for(&headers, Permission::ResetBreaker)
        .await?;
    let Path(service) = service?;
    let Json(body) = body?;
    let reason = crate::sagas::required_reason(&body.reason)?;
    if !guarded.reset_breaker(&service, reason).await? {
        let message = format!("no circuit breaker for service {service:?} (none has run yet)");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "breaker_not_found",
            message,
        ));
    }
    Ok(Json(json!({ "service": service, "reset": true })))
}

/// `GET /api/metrics`: what an operator's overview needs, as JSON.
pub(crate) async fn summary(
    State(state): State<crate::State>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded(&headers)?;
    require_all(&guarded, Permission::View)?;
    let breakers = guarded.breakers()?;
    let engine = guarded.engine();
    let versions = engine.versions().await.map_err(ApiError::from)?;
    Ok(Json(json!({
        "partitions": engine.partitions(),
        "health": engine.health(),
        "in_flight_by_version": versions,
        "breakers": breakers,
    })))
}

/// `GET /metrics`: the Prometheus text exposition.
pub(crate) async fn prometheus(
    State(state): State<crate::State>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_all(&state.guarded(&headers)?, Permission::View)?;
    let Some(registry) = &state.config.registry else {
        let message = "this server has no metrics registry (the engine was opened without metrics)";
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_metrics", message));
    };
    let text = skald_engine::metrics::render(&registry.lock());
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

fn health_answer(up: bool, health: skald_engine::Health) -> (StatusCode, Json<Value>) {
    let status = match up {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        status,
        Json(serde_json::to_value(health).expect("health encodes")),
    )
}

pub(crate) async fn health(State(state): State<crate::State>) -> (StatusCode, Json<Value>) {
    let health = state.engine.health();
    health_answer(health.ready, health)
}

pub(crate) async fn live(State(state): State<crate::State>) -> (StatusCode, Json<Value>) {
    let health = state.engine.health();
    health_answer(health.live, health)
}

pub(crate) async fn ready(State(state): State<crate::State>) -> (StatusCode, Json<Value>) {
    let health = state.engine.health();
    health_answer(health.ready, health)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Only entries after this position (the previous page's `next_after`).
    after: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn audit(
    State(state): State<crate::State>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded(&headers)?;
    let Query(query) = query?;
    require_all(&guarded, Permission::Audit)?;
    let limit = page_limit(query.limit, 100, AUDIT_PAGE_MAX)?;
    let from = crate::error::after(query.after)?;
    let list = match (state.config.audit.clone(), state.engine.is_follower()) {
        (Some(log), _) => Box::new(move || log.list(from, limit)) as Box<dyn FnOnce() -> _ + Send>,
        // A follower shows the trail the writing engine keeps.
        (None, true) => {
            let dir = state.engine.dir().to_path_buf();
            Box::new(move || skald_engine::audit::read_audit(&dir, from, limit))
        }
        (None, false) => return Ok(Json(json!({ "entries": [], "next_after": null }))),
    };
    let entries = tokio::task::spawn_blocking(list)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)?;
    let next_after = (entries.len() == limit).then(|| entries[limit - 1].0);
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(position, entry)| json!({ "position": position, "entry": entry }))
        .collect();
    Ok(Json(
        json!({ "entries": entries, "next_after": next_after }),
    ))
}

/// `GET /api/alerts`: every rule that fired, firing or resolved since.
pub(crate) async fn alerts(
    State(state): State<crate::State>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_all(&state.guarded(&headers)?, Permission::View)?;
    let alerts: Vec<_> = state.alerts.current.lock().values().cloned().collect();
    Ok(Json(json!({ "alerts": alerts })))
}

pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route (see /api/openapi.json)",
    )
}
