//! Reading an engine directory without changing it: what `dump`, `verify`
//! and `stats` share. Logs are opened read-only (no lock, no repair: a torn
//! tail is reported, not cut) and snapshots are only read, so these work on
//! the directory of a running engine.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use skald_engine::inspect::{partition_count, partition_dir, snapshot_dir};
use skald_engine::{EventKind, Millis, Timer};
use skald_log::{Log, LogOptions};
use skald_snapshot::SnapshotStore;

/// An engine directory, opened for reading.
pub struct EngineDir {
    pub dir: PathBuf,
    pub partitions: usize,
}

impl EngineDir {
    /// Checks that `dir` is an engine directory; the error says what it is
    /// instead.
    pub fn open(dir: &Path) -> Result<EngineDir> {
        if !dir.exists() {
            bail!("{}: no such directory", dir.display());
        }
        if !dir.is_dir() {
            bail!("{}: not a directory", dir.display());
        }
        let partitions = partition_count(dir).map_err(|error| {
            // A bare log directory is a common mistake: say so.
            if dir.join("00000000000000000001.seg").exists() || has_segments(dir) {
                anyhow::anyhow!(
                    "{}: a log directory, not an engine directory (pass its parent, which holds the ENGINE file)",
                    dir.display()
                )
            } else {
                anyhow::anyhow!("{error}")
            }
        })?;
        Ok(EngineDir {
            dir: dir.to_path_buf(),
            partitions,
        })
    }

    pub fn partition_path(&self, partition: usize) -> PathBuf {
        partition_dir(&self.dir, partition)
    }

    /// The partition's log, read-only.
    pub fn log(&self, partition: usize) -> Result<Log> {
        let path = self.partition_path(partition);
        Log::open(&path, LogOptions::default().read_only(true))
            .with_context(|| format!("partition {partition}"))
    }

    /// The partition's state, recovered like the engine does: the newest
    /// sound snapshot and the log after it. A running engine may write a
    /// snapshot, prune older ones and delete segments while this reads:
    /// such a race is retried with a fresh look before it is reported.
    pub fn recover(&self, partition: usize) -> Result<(Log, skald_engine::inspect::Recovered)> {
        let mut attempt = 0;
        loop {
            let log = self.log(partition)?;
            let store = self.snapshots(partition);
            match skald_engine::inspect::recover(partition as u16, &log, &store, None) {
                Ok(recovered) => return Ok((log, recovered)),
                Err(error) if attempt < 4 && transient(&error) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => return Err(anyhow::Error::new(error)),
            }
        }
    }

    /// The partition's snapshots, read-only.
    pub fn snapshots(&self, partition: usize) -> SnapshotStore {
        SnapshotStore::read_only(snapshot_dir(&self.partition_path(partition)))
    }
}

/// Errors that a concurrent writer can cause for a moment.
fn transient(error: &skald_engine::EngineError) -> bool {
    matches!(
        error,
        skald_engine::EngineError::SnapshotAhead { .. }
            | skald_engine::EngineError::LogGap { .. }
            | skald_engine::EngineError::Snapshot(_)
            | skald_engine::EngineError::Log(_)
    )
}

fn has_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
    })
}

/// RFC 3339 time with milliseconds, UTC.
pub fn time(at: Millis) -> String {
    // RFC 3339 stops at the year 9999; a deadline of "never" is beyond.
    const YEAR_10000_MS: Millis = 253_402_300_800_000;
    if at >= YEAR_10000_MS {
        return format!("{at}ms");
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at)).to_string()
}

/// A user payload (input, output) for people: JSON as JSON, other UTF-8
/// as a quoted string, anything else as hex; cut to `max` characters
/// unless `full`.
pub fn payload_text(bytes: &[u8], full: bool) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value) => value.to_string(),
        Err(_) => match std::str::from_utf8(bytes) {
            Ok(text) => format!("{text:?}"),
            Err(_) => format!("0x{}", hex(bytes)),
        },
    };
    shorten(text, full)
}

/// A user payload as a JSON value: itself if it is JSON, a string if it is
/// UTF-8, else a hex string.
pub fn payload_json(bytes: &[u8]) -> serde_json::Value {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value) => value,
        Err(_) => match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::Value::String(text.to_owned()),
            Err(_) => serde_json::Value::String(format!("0x{}", hex(bytes))),
        },
    }
}

pub fn shorten(text: String, full: bool) -> String {
    const MAX: usize = 80;
    if full || text.chars().count() <= MAX {
        return text;
    }
    let cut: String = text.chars().take(MAX).collect();
    format!("{cut}… ({} chars)", text.chars().count())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An event's fields, for text and JSON alike.
pub enum Field {
    Num(u64),
    Bool(bool),
    Text(String),
    Time(Millis),
    Payload(Vec<u8>),
}

/// A versioned start's fields: its steps, and its trace context if any.
fn started_fields(
    version: u32,
    steps: &[skald_engine::StepSignature],
    (input, deadline, key): (&[u8], Millis, &Option<String>),
    trace: Option<&skald_engine::TraceContext>,
) -> Vec<(&'static str, Field)> {
    let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let mut fields = vec![
        ("version", Field::Num(u64::from(version))),
        ("steps", Field::Text(ids.join(","))),
        ("deadline", Field::Time(deadline)),
    ];
    if let Some(key) = key {
        fields.push(("key", Field::Text(key.clone())));
    }
    if let Some(trace) = trace {
        fields.push(("trace", Field::Text(hex(&trace.trace_id))));
        fields.push(("span", Field::Text(hex(&trace.span))));
        if let Some(parent) = &trace.parent_span {
            fields.push(("parent_span", Field::Text(hex(parent))));
        }
        fields.push(("sampled", Field::Bool(trace.sampled())));
    }
    fields.push(("input", Field::Payload(input.to_vec())));
    fields
}

pub fn fields(kind: &EventKind) -> Vec<(&'static str, Field)> {
    use Field::*;
    match kind {
        EventKind::StartedV1 {
            steps,
            input,
            deadline,
            key,
            ..
        } => {
            let mut fields = vec![
                ("steps", Num(u64::from(*steps))),
                ("deadline", Time(*deadline)),
            ];
            if let Some(key) = key {
                fields.push(("key", Text(key.clone())));
            }
            fields.push(("input", Payload(input.clone())));
            fields
        }
        EventKind::StartedV2 {
            version,
            steps,
            input,
            deadline,
            key,
            ..
        } => started_fields(*version, steps, (input, *deadline, key), None),
        EventKind::Started {
            version,
            steps,
            input,
            deadline,
            key,
            trace,
            ..
        } => started_fields(*version, steps, (input, *deadline, key), trace.as_ref()),
        EventKind::StepStarted {
            step,
            attempt,
            deadline,
        }
        | EventKind::CompensationStarted {
            step,
            attempt,
            deadline,
        } => vec![
            ("step", Num(u64::from(*step))),
            ("attempt", Num(u64::from(*attempt))),
            ("deadline", Time(*deadline)),
        ],
        EventKind::StepSucceeded {
            step,
            attempt,
            output,
        } => vec![
            ("step", Num(u64::from(*step))),
            ("attempt", Num(u64::from(*attempt))),
            ("output", Payload(output.clone())),
        ],
        EventKind::StepFailed {
            step,
            attempt,
            error,
            permanent,
        }
        | EventKind::CompensationFailed {
            step,
            attempt,
            error,
            permanent,
        } => vec![
            ("step", Num(u64::from(*step))),
            ("attempt", Num(u64::from(*attempt))),
            ("permanent", Bool(*permanent)),
            ("error", Text(error.clone())),
        ],
        EventKind::RetryScheduled {
            step,
            attempt,
            fire_at,
            compensation,
        } => vec![
            ("step", Num(u64::from(*step))),
            ("attempt", Num(u64::from(*attempt))),
            ("fire_at", Time(*fire_at)),
            ("compensation", Bool(*compensation)),
        ],
        EventKind::StepCompensated { step, attempt } => vec![
            ("step", Num(u64::from(*step))),
            ("attempt", Num(u64::from(*attempt))),
        ],
        EventKind::Completed | EventKind::Compensated => vec![],
        EventKind::Failed { reason } | EventKind::CancelRequested { reason } => {
            vec![("reason", Text(reason.clone()))]
        }
        EventKind::TimerFired { timer } => match timer {
            Timer::SagaDeadline => vec![("timer", Text("saga-deadline".into()))],
            Timer::Retry { step } => vec![
                ("timer", Text("retry".into())),
                ("step", Num(u64::from(*step))),
            ],
            Timer::StepDeadline { step, attempt } => vec![
                ("timer", Text("step-deadline".into())),
                ("step", Num(u64::from(*step))),
                ("attempt", Num(u64::from(*attempt))),
            ],
        },
        EventKind::AttemptDelayed {
            step,
            attempt,
            compensation,
            until,
        } => vec![
            ("step", Num(u64::from(*step))),
            ("attempt", Num(u64::from(*attempt))),
            ("compensation", Bool(*compensation)),
            ("until", Time(*until)),
        ],
        EventKind::StepInDoubt {
            step,
            attempt,
            reason,
        } => vec![
            ("step", Num(u64::from(*step))),
            ("attempt", Num(u64::from(*attempt))),
            ("reason", Text(reason.clone())),
        ],
        EventKind::AttemptResumed {
            step,
            attempt,
            compensation,
            deadline,
        } => vec![
            ("step", Num(u64::from(*step))),
            ("attempt", Num(u64::from(*attempt))),
            ("compensation", Bool(*compensation)),
            ("deadline", Time(*deadline)),
        ],
        EventKind::OperatorAction { action, who, why } => vec![
            ("action", Text(format!("{action:?}"))),
            ("who", Text(who.clone())),
            ("why", Text(why.clone())),
        ],
    }
}

pub fn fields_text(fields: &[(&'static str, Field)], full: bool) -> String {
    fields
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Field::Num(n) => n.to_string(),
                Field::Bool(b) => b.to_string(),
                Field::Text(t) => shorten(format!("{t:?}"), full),
                Field::Time(at) => time(*at),
                Field::Payload(bytes) => payload_text(bytes, full),
            };
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn fields_json(
    fields: Vec<(&'static str, Field)>,
    object: &mut serde_json::Map<String, serde_json::Value>,
) {
    for (name, value) in fields {
        let value = match value {
            Field::Num(n) => serde_json::Value::from(n),
            Field::Bool(b) => serde_json::Value::from(b),
            Field::Text(t) => serde_json::Value::from(t),
            Field::Time(at) => serde_json::Value::from(time(at)),
            Field::Payload(bytes) => payload_json(&bytes),
        };
        object.insert(name.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_the_year_9999_print_as_milliseconds() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(u64::MAX), format!("{}ms", u64::MAX));
    }

    #[test]
    fn payloads_print_as_json_text_or_hex() {
        assert_eq!(payload_text(br#"{"a":1}"#, false), r#"{"a":1}"#);
        assert_eq!(payload_text(b"plain", false), r#""plain""#);
        assert_eq!(payload_text(&[0xff, 0x00], false), "0xff00");
        let long = "x".repeat(200);
        assert!(payload_text(long.as_bytes(), false).ends_with("(202 chars)"));
        assert_eq!(payload_text(long.as_bytes(), true).len(), 202);
    }
}
