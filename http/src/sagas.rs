//! `/api/sagas`: list, view, start, cancel, operator actions.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use skald_engine::{ListFilter, OperatorAction, SagaId, SagaStatus, StartOptions, TraceParent};

use crate::error::{page_limit, ApiError};
use skald_engine::access::{BulkAction, Permission};

/// Sagas a list page holds at most.
pub const PAGE_MAX: usize = 1_000;

/// `GET /api/sagas` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    definition: Option<String>,
    status: Option<String>,
    /// The previous page's `next_after`.
    after: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn list(
    State(state): State<crate::State>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded(&headers)?;
    let Query(query) = query?;
    let status = query.status.as_deref().map(parse_status).transpose()?;
    let after = query.after.as_deref().map(parse_id).transpose()?;
    let limit = page_limit(query.limit, 100, PAGE_MAX)?;
    let filter = ListFilter {
        definition: query.definition,
        status,
        after,
        limit,
    };
    let page = guarded.list(filter).await?;
    Ok(Json(serde_json::to_value(page).expect("a page encodes")))
}

/// `GET /api/sagas/by-key/{key}`: the saga a deduplication key started.
pub(crate) async fn by_key(
    State(state): State<crate::State>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(key) = key?;
    let guarded = state.guarded(&headers)?;
    crate::error::require(&guarded, Permission::View)?;
    let found = guarded.engine().saga_by_key(&key).await?;
    let Some(id) = found else {
        let message = format!("no saga was started with key {key:?}");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            message,
        ));
    };
    match guarded.view(id).await? {
        Some(view) => Ok(Json(serde_json::to_value(view).expect("a view encodes"))),
        None => Err(no_saga(id)),
    }
}

pub(crate) async fn view(
    State(state): State<crate::State>,
    headers: HeaderMap,
    id: Result<SagaPath, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded(&headers)?;
    let SagaPath(id) = id?;
    match guarded.view(id).await? {
        Some(view) => Ok(Json(serde_json::to_value(view).expect("a view encodes"))),
        None => Err(no_saga(id)),
    }
}

/// `POST /api/sagas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    definition: String,
    input: Value,
    /// Deduplication key.
    key: Option<String>,
    /// The caller's W3C traceparent.
    traceparent: Option<String>,
}

pub(crate) async fn start(
    State(state): State<crate::State>,
    headers: HeaderMap,
    body: Result<Json<StartBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let guarded = state.guarded_for(&headers, Permission::Start).await?;
    let Json(body) = body?;
    let mut options = StartOptions::default();
    if let Some(key) = body.key {
        options = options.key(key);
    }
    if let Some(text) = body.traceparent {
        let parent: TraceParent =
            text.parse()
                .map_err(|e: skald_engine::ParseTraceParentError| {
                    ApiError::bad_request("bad_traceparent", e.to_string())
                })?;
        options = options.trace_parent(parent);
    }
    let id = guarded
        .start(&body.definition, &body.input, options)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}

/// `POST /api/sagas/{id}/cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelBody {
    reason: String,
}

pub(crate) async fn cancel(
    State(state): State<crate::State>,
    headers: HeaderMap,
    id: Result<SagaPath, ApiError>,
    body: Result<Json<CancelBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded_for(&headers, Permission::Cancel).await?;
    let SagaPath(id) = id?;
    let Json(body) = body?;
    let reason = required_reason(&body.reason)?;
    let outcome = guarded.cancel(id, reason).await?;
    Ok(Json(json!({ "outcome": outcome })))
}

/// `POST /api/sagas/{id}/actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    /// `retry_compensation`, `resume_step`, `mark_resolved` or
    /// `turn_back`.
    action: String,
    /// The step, for `resume_step` and `turn_back` (its index).
    step: Option<u16>,
    /// Why (required: it is recorded with the action).
    reason: String,
}

pub(crate) async fn act(
    State(state): State<crate::State>,
    headers: HeaderMap,
    id: Result<SagaPath, ApiError>,
    body: Result<Json<ActionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded_for(&headers, Permission::Act).await?;
    let SagaPath(id) = id?;
    let Json(body) = body?;
    let reason = required_reason(&body.reason)?;
    let action = parse_action(&body.action, body.step)?;
    guarded.operate(id, action, reason).await?;
    // The outcome, also for a role that may act but not view.
    let view = guarded.engine().view(id).await?;
    Ok(Json(json!({ "status": view.map(|v| v.status) })))
}

fn parse_action(name: &str, step: Option<u16>) -> Result<OperatorAction, ApiError> {
    let needs_step = || {
        step.ok_or_else(|| {
            ApiError::bad_request(
                "missing_step",
                format!("action {name:?} needs \"step\" (the step's index)"),
            )
        })
    };
    Ok(match name {
        "retry_compensation" => OperatorAction::RetryCompensation,
        "mark_resolved" => OperatorAction::MarkResolved,
        "resume_step" => OperatorAction::ResumeStep { step: needs_step()? },
        "turn_back" => OperatorAction::TurnBack { step: needs_step()? },
        other => {
            return Err(ApiError::bad_request(
                "unknown_action",
                format!(
                    "no action {other:?} (one of retry_compensation, resume_step, mark_resolved, turn_back)"
                ),
            ))
        }
    })
}

/// Bytes a reason holds at most: it is recorded in the saga's log and
/// the audit trail.
pub const REASON_BYTES_MAX: usize = 1_024;

pub(crate) fn required_reason(reason: &str) -> Result<&str, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ApiError::bad_request(
            "missing_reason",
            "a reason is required: it is recorded with the action",
        ));
    }
    if reason.len() > REASON_BYTES_MAX {
        let message = format!(
            "the reason is {} bytes; at most {REASON_BYTES_MAX}",
            reason.len()
        );
        return Err(ApiError::bad_request("reason_too_long", message));
    }
    Ok(reason)
}

/// A saga id as a route's only path parameter (`saga-42` or `42`).
pub(crate) struct SagaPath(pub(crate) SagaId);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for SagaPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<SagaPath, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state).await?;
        parse_id(&text).map(SagaPath)
    }
}

pub(crate) fn parse_id(text: &str) -> Result<SagaId, ApiError> {
    text.parse().map_err(|e: skald_engine::ParseSagaIdError| {
        ApiError::bad_request("bad_saga_id", e.to_string())
    })
}

pub(crate) fn no_saga(id: SagaId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "saga_not_found",
        format!("no saga {id}"),
    )
}

fn parse_status(text: &str) -> Result<SagaStatus, ApiError> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "running" => SagaStatus::Running,
        "compensating" => SagaStatus::Compensating,
        "completed" => SagaStatus::Completed,
        "compensated" => SagaStatus::Compensated,
        "failed" => SagaStatus::Failed,
        "resolved" => SagaStatus::Resolved,
        other => {
            return Err(ApiError::bad_request(
                "bad_status",
                format!(
                    "no status {other:?} (one of running, compensating, completed, compensated, failed, resolved)"
                ),
            ))
        }
    })
}

/// `POST /api/sagas/bulk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkBody {
    definition: Option<String>,
    status: Option<String>,
    /// `cancel`, `retry_compensation` or `mark_resolved`.
    action: String,
    reason: String,
    /// Only count the matching sagas (the default: acting needs an
    /// explicit `false`).
    #[serde(default = "yes")]
    dry_run: bool,
}

fn yes() -> bool {
    true
}

pub(crate) async fn bulk(
    State(state): State<crate::State>,
    headers: HeaderMap,
    body: Result<Json<BulkBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = state.guarded(&headers)?; // who asks, before what they sent
    let Json(body) = body?;
    let reason = required_reason(&body.reason)?;
    let action = match body.action.as_str() {
        "cancel" => BulkAction::Cancel,
        "retry_compensation" => BulkAction::Operator(OperatorAction::RetryCompensation),
        "mark_resolved" => BulkAction::Operator(OperatorAction::MarkResolved),
        other => {
            let message = format!(
                "no bulk action {other:?} (one of cancel, retry_compensation, mark_resolved)"
            );
            return Err(ApiError::bad_request("unknown_action", message));
        }
    };
    let guarded = match body.dry_run {
        true => caller,
        false => {
            // The action itself may be switched off here, too.
            state.guarded_for(&headers, action.permission()).await?;
            state.guarded_for(&headers, Permission::Bulk).await?
        }
    };
    let filter = ListFilter {
        definition: body.definition,
        status: body.status.as_deref().map(parse_status).transpose()?,
        after: None,
        limit: PAGE_MAX,
    };
    let outcome = guarded.bulk(filter, action, reason, body.dry_run).await?;
    Ok(Json(json!({
        "dry_run": body.dry_run,
        "matching": outcome.matching,
        "done": outcome.done,
        "refused": outcome.refused.iter().map(|(id, why)| json!({"id": id, "error": why})).collect::<Vec<_>>(),
    })))
}
