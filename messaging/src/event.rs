//! A saga event as the broker carries it.
//!
//! - Subject: `<prefix>.<definition>.<event type>` (`skald.events.order.
//!   StepSucceeded`); in the definition, a character NATS gives a meaning
//!   to in subjects (`.`, `*`, `>`, white space) becomes `_`.
//! - Message id: `<partition>:<LSN>`, unique per engine and stable across
//!   re-publishes.
//! - Headers: `Skald-Saga` (`saga-42`), `Skald-Definition`, `Skald-Event`
//!   (the type), `Skald-Time` (milliseconds since the Unix epoch, when the
//!   engine recorded it), `Skald-Partition`, `Skald-Lsn`, and `traceparent`
//!   (W3C) when the saga has a trace context.
//! - Body: JSON, `{"partition", "lsn", "saga", "definition", "type", "at",
//!   "event"}`, `event` being the event's own fields (as the log holds them,
//!   by type: `{"StepSucceeded": {"step": 1, "attempt": 1, "output": ...}}`),
//!   inputs and outputs shown as JSON when they are JSON, else as text when
//!   UTF-8, else as their bytes.

use skald_model::{Event, EventKind};

use crate::broker::OutMessage;
use crate::partition::Known;

/// The subject of an event of type `kind` of a saga of `definition`.
pub fn subject(prefix: &str, definition: &str, kind: &str) -> String {
    format!("{prefix}.{}.{kind}", token(definition))
}

/// `text` as one subject token.
fn token(text: &str) -> String {
    let token: String = text
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect();
    if token.is_empty() {
        "_".into()
    } else {
        token
    }
}

/// The message id of the record at `lsn` of `partition`.
pub fn message_id(partition: u16, lsn: u64) -> String {
    format!("{partition}:{lsn}")
}

/// The definition and trace a `Started` event says.
pub(crate) fn started(event: &Event) -> Option<Known> {
    match &event.kind {
        EventKind::Started {
            definition, trace, ..
        } => Some(Known {
            definition: definition.clone(),
            traceparent: trace.map(|t| traceparent(&t)),
        }),
        EventKind::StartedV2 { definition, .. } | EventKind::StartedV1 { definition, .. } => {
            Some(Known {
                definition: definition.clone(),
                traceparent: None,
            })
        }
        _ => None,
    }
}

/// A W3C `traceparent` naming the saga's own span.
fn traceparent(trace: &skald_model::TraceContext) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!(
        "00-{}-{}-{:02x}",
        hex(&trace.trace_id),
        hex(&trace.span),
        trace.flags
    )
}

/// The message of `event`, the record at `lsn` of `partition`.
pub(crate) fn message(
    prefix: &str,
    (partition, lsn): (u16, u64),
    event: &Event,
    (definition, traceparent): (&str, Option<&str>),
) -> OutMessage {
    let kind = event.kind.name();
    let mut headers = vec![
        ("Skald-Saga".to_owned(), event.saga.to_string()),
        ("Skald-Definition".to_owned(), definition.to_owned()),
        ("Skald-Event".to_owned(), kind.to_owned()),
        ("Skald-Time".to_owned(), event.at.to_string()),
        ("Skald-Partition".to_owned(), partition.to_string()),
        ("Skald-Lsn".to_owned(), lsn.to_string()),
    ];
    if let Some(traceparent) = traceparent {
        headers.push(("traceparent".to_owned(), traceparent.to_owned()));
    }
    let mut fields = serde_json::to_value(&event.kind).unwrap_or(serde_json::Value::Null);
    readable(&mut fields);
    let body = serde_json::json!({
        "partition": partition,
        "lsn": lsn,
        "saga": event.saga.to_string(),
        "definition": definition,
        "type": kind,
        "at": event.at,
        "event": fields,
    });
    OutMessage {
        subject: subject(prefix, definition, kind),
        id: message_id(partition, lsn),
        headers,
        payload: serde_json::to_vec(&body).expect("JSON encodes").into(),
    }
}

/// Inputs and outputs (byte arrays) as JSON when they are JSON, else as
/// text when UTF-8.
fn readable(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if matches!(key.as_str(), "input" | "output" | "payload") {
                    if let Some(bytes) = as_bytes(field) {
                        *field = match serde_json::from_slice(&bytes) {
                            Ok(json) => json,
                            Err(_) => match String::from_utf8(bytes) {
                                Ok(text) => serde_json::Value::String(text),
                                Err(_) => continue,
                            },
                        };
                        continue;
                    }
                }
                readable(field);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(readable),
        _ => {}
    }
}

fn as_bytes(value: &serde_json::Value) -> Option<Vec<u8>> {
    value
        .as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skald_model::SagaId;

    #[test]
    fn subjects_ids_headers_and_bodies() {
        assert_eq!(
            subject("skald.events", "order v2.x*", "Started"),
            "skald.events.order_v2_x_.Started"
        );
        assert_eq!(subject("p", "", "Completed"), "p._.Completed");
        assert_eq!(message_id(3, 17), "3:17");
        let event = Event {
            saga: SagaId(42),
            at: 1_000,
            kind: EventKind::StepSucceeded {
                step: 1,
                attempt: 2,
                output: br#"{"ok":true}"#.to_vec(),
            },
        };
        let message = message(
            "skald.events",
            (3, 17),
            &event,
            ("order", Some("00-ab-cd-01")),
        );
        assert_eq!(message.subject, "skald.events.order.StepSucceeded");
        assert_eq!(message.id, "3:17");
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("Skald-Saga"), Some("saga-42"));
        assert_eq!(header("Skald-Event"), Some("StepSucceeded"));
        assert_eq!(header("Skald-Time"), Some("1000"));
        assert_eq!(header("traceparent"), Some("00-ab-cd-01"));
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            body["event"]["StepSucceeded"]["output"]["ok"], true,
            "{body}"
        );
        assert_eq!(body["lsn"], 17);
        assert_eq!(body["definition"], "order");
    }
}
