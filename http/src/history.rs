//! A saga's history from its partition's log: `GET /api/sagas/{id}/events`
//! (paginated) and its state at any position, `GET /api/sagas/{id}/at/{lsn}`
//! (time travel). The log is read read-only, beside the running engine.
//! Events the log no longer holds (folded into a snapshot and cut off)
//! are not shown; a state before them is `410 history_truncated`.

use std::path::PathBuf;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use skald_engine::inspect::model::{apply, SagaState};
use skald_engine::inspect::partition_dir;
use skald_engine::{Event, SagaId};
use skald_log::{Log, LogOptions};

use crate::error::{page_limit, ApiError};
use crate::sagas::{no_saga, parse_id, SagaPath};

/// Events a page holds at most.
pub const EVENTS_PAGE_MAX: usize = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Only events after this LSN (the previous page's `next_after`).
    after: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn events(
    State(state): State<crate::State>,
    headers: HeaderMap,
    id: Result<SagaPath, ApiError>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded(&headers)?;
    let SagaPath(id) = id?;
    let Query(query) = query?;
    let limit = page_limit(query.limit, 200, EVENTS_PAGE_MAX)?;
    if guarded.view(id).await?.is_none() {
        return Err(no_saga(id));
    }
    let path = log_of(&state, id);
    let from = crate::error::after(query.after)?;
    let _turn = state
        .history
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let found = off_thread(move || scan(&path, id, from, |_, _| true, limit + 1)).await?;
    let more = found.len() > limit;
    let page: Vec<Value> = found.iter().take(limit).map(event_json).collect();
    let next_after = more.then(|| found[limit - 1].0);
    Ok(Json(json!({ "events": page, "next_after": next_after })))
}

pub(crate) async fn at(
    State(state): State<crate::State>,
    headers: HeaderMap,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let guarded = state.guarded(&headers)?;
    let Path((id, lsn)) = path?;
    let id = parse_id(&id)?;
    if guarded.view(id).await?.is_none() {
        return Err(no_saga(id));
    }
    let path = log_of(&state, id);
    let _turn = state
        .history
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let found = off_thread(move || scan(&path, id, 0, |at, _| at <= lsn, usize::MAX)).await?;
    let mut folded: Option<SagaState> = None;
    for (at_lsn, event) in &found {
        match apply(folded.as_ref(), event) {
            Ok(next) => folded = Some(next),
            Err(_) if folded.is_none() => {
                return Err(ApiError::new(
                    StatusCode::GONE,
                    "history_truncated",
                    format!(
                        "{id}'s start is no longer in the log (folded into a snapshot); its state at LSN {lsn} cannot be rebuilt"
                    ),
                ))
            }
            Err(error) => {
                let message = format!("the event at LSN {at_lsn} does not fold: {error}");
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", message));
            }
        }
    }
    let Some(state) = folded else {
        let message = format!("{id} had not started at LSN {lsn}");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_started_yet",
            message,
        ));
    };
    Ok(Json(json!({ "lsn": lsn, "state": state })))
}

fn log_of(state: &crate::State, id: SagaId) -> PathBuf {
    let engine = &state.engine;
    let partition = (id.0 % engine.partitions() as u64) as usize;
    partition_dir(engine.dir(), partition)
}

fn event_json((lsn, event): &(u64, Event)) -> Value {
    json!({
        "lsn": lsn,
        "at": event.at,
        "type": event.kind.name(),
        "event": serde_json::to_value(&event.kind).expect("an event encodes"),
    })
}

/// Up to `limit` of `saga`'s events from `from` on that `keep` accepts,
/// stopping at the first it refuses.
fn scan(
    path: &std::path::Path,
    saga: SagaId,
    from: u64,
    keep: impl Fn(u64, &Event) -> bool,
    limit: usize,
) -> Result<Vec<(u64, Event)>, ApiError> {
    let internal = |e: &dyn std::fmt::Display| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "log", e.to_string())
    };
    let log = Log::open(path, LogOptions::default().read_only(true)).map_err(|e| internal(&e))?;
    let mut reader = log
        .read_from(from.max(log.first_lsn()))
        .map_err(|e| internal(&e))?;
    let mut found = Vec::new();
    while found.len() < limit {
        let Some(record) = reader.read_next().map_err(|e| internal(&e))? else {
            break;
        };
        let lsn = record.lsn;
        let event = Event::decode(record.payload)
            .map_err(|e| internal(&format!("{}: LSN {lsn}: {e}", path.display())))?;
        if event.saga != saga {
            continue;
        }
        if !keep(lsn, &event) {
            break;
        }
        found.push((lsn, event));
    }
    Ok(found)
}

async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}
