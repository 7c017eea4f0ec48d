//! `GET /api/events/stream`: saga events as they become durable, as
//! Server-Sent Events (one `event` per saga event, its data a JSON object
//! with partition, lsn, saga, at and type), filterable by saga and type.
//! A client that falls behind the engine's event buffer gets a `lagged`
//! event with how many it missed, and the stream goes on.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::error::{require, ApiError};
use crate::sagas::parse_id;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    /// Only this saga's events.
    saga: Option<String>,
    /// Only events of these types, comma-separated (`Completed,Failed`).
    types: Option<String>,
}

pub(crate) async fn events(
    State(state): State<crate::State>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let guarded = state.guarded(&headers)?;
    let Query(query) = query?;
    require(&guarded, skald_engine::access::Permission::View)?;
    let saga = query.saga.as_deref().map(parse_id).transpose()?;
    // A role scoped to some definitions sees one saga's stream, of a
    // definition it covers, never every saga's.
    let definition = match saga {
        Some(id) => guarded.view(id).await?.map(|view| view.definition),
        None => None,
    };
    guarded
        .check_scope(
            skald_engine::access::Permission::View,
            definition.as_deref(),
        )
        .map_err(|d| ApiError::from(skald_engine::access::GuardError::Denied(d)))?;
    let types: Option<Vec<String>> = query
        .types
        .map(|t| t.split(',').map(|s| s.trim().to_owned()).collect());
    let stream = BroadcastStream::new(state.engine.subscribe()).filter_map(move |received| {
        let item = match received {
            Ok(event) => {
                let kind = event.event.kind.name();
                let wanted = saga.is_none_or(|id| event.event.saga == id)
                    && types.as_ref().is_none_or(|t| t.iter().any(|t| t == kind));
                wanted.then(|| {
                    let data = json!({
                        "partition": event.partition,
                        "lsn": event.lsn,
                        "saga": event.event.saga,
                        "at": event.event.at,
                        "type": kind,
                    });
                    SseEvent::default().event("saga").data(data.to_string())
                })
            }
            Err(BroadcastStreamRecvError::Lagged(missed)) => Some(
                SseEvent::default()
                    .event("lagged")
                    .data(json!({ "missed": missed }).to_string()),
            ),
        };
        std::future::ready(item.map(Ok))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
