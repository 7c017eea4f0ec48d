//! Golden format tests: checked-in bytes (tests/golden/) of every event
//! kind, a snapshot file and an ENGINE file, decoded to the values written
//! out here and re-encoded byte for byte. Reordering a field, changing a
//! type or renaming a variant changes the bytes or what they decode to, and
//! fails here: a change to what is on disk needs a new version byte (see
//! FORMAT.md), never a silent reinterpretation of existing directories.
//!
//! `SKALD_BLESS_GOLDEN=1 cargo test -p skald-tests --test golden` writes
//! missing files; an existing file is never rewritten.

use std::path::PathBuf;

use skald_engine::inspect::{
    decode_snapshot, encode_partition, partition_count, SNAPSHOT_PAYLOAD_VERSION,
    SNAPSHOT_PAYLOAD_VERSION_1, SNAPSHOT_PAYLOAD_VERSION_2,
};
use skald_engine::{
    Engine, EngineOptions, Event, EventKind, OperatorAction, SagaId, Timer, TraceContext,
};
use skald_model::{
    DefinitionVersion, SagaState, SagaStatus, StepKind, StepPhase, StepSignature, StepState,
};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

/// The checked-in bytes of `name`; with `SKALD_BLESS_GOLDEN=1`, a missing
/// file is written from `current` first.
fn checked_in(name: &str, current: &[u8]) -> Vec<u8> {
    let path = golden(name);
    if !path.exists() && std::env::var_os("SKALD_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, current).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error} (a new format value needs its golden file: SKALD_BLESS_GOLDEN=1)",
            path.display()
        )
    })
}

const AT: u64 = 1_700_000_000_000;

/// One event of every kind, every timer and every operator action.
fn events() -> Vec<(&'static str, EventKind)> {
    vec![
        (
            "started",
            EventKind::StartedV1 {
                definition: "order".into(),
                steps: 4,
                input: br#"{"order_id":7}"#.to_vec(),
                deadline: AT + 3_600_000,
                key: Some("order-7".into()),
            },
        ),
        (
            "started-without-key",
            EventKind::StartedV1 {
                definition: "transfer".into(),
                steps: 256,
                input: Vec::new(),
                deadline: u64::MAX,
                key: None,
            },
        ),
        (
            "step-started",
            EventKind::StepStarted {
                step: 0,
                attempt: 1,
                deadline: AT + 30_000,
            },
        ),
        (
            "step-succeeded",
            EventKind::StepSucceeded {
                step: 0,
                attempt: 1,
                output: b"42".to_vec(),
            },
        ),
        (
            "step-failed",
            EventKind::StepFailed {
                step: 1,
                attempt: 3,
                error: "inventory busy".into(),
                permanent: false,
            },
        ),
        (
            "retry-scheduled",
            EventKind::RetryScheduled {
                step: 1,
                attempt: 4,
                fire_at: AT + 800,
                compensation: false,
            },
        ),
        (
            "compensation-retry-scheduled",
            EventKind::RetryScheduled {
                step: 0,
                attempt: 2,
                fire_at: AT + 200,
                compensation: true,
            },
        ),
        (
            "compensation-started",
            EventKind::CompensationStarted {
                step: 0,
                attempt: 1,
                deadline: AT + 30_000,
            },
        ),
        (
            "step-compensated",
            EventKind::StepCompensated {
                step: 0,
                attempt: 2,
            },
        ),
        (
            "compensation-failed",
            EventKind::CompensationFailed {
                step: 0,
                attempt: 1,
                error: "ledger down".into(),
                permanent: true,
            },
        ),
        ("completed", EventKind::Completed),
        ("compensated", EventKind::Compensated),
        (
            "failed",
            EventKind::Failed {
                reason: "compensation of step \"reserve\" failed".into(),
            },
        ),
        (
            "cancel-requested",
            EventKind::CancelRequested {
                reason: "customer changed their mind".into(),
            },
        ),
        (
            "timer-saga-deadline",
            EventKind::TimerFired {
                timer: Timer::SagaDeadline,
            },
        ),
        (
            "timer-retry",
            EventKind::TimerFired {
                timer: Timer::Retry { step: 2 },
            },
        ),
        (
            "timer-step-deadline",
            EventKind::TimerFired {
                timer: Timer::StepDeadline {
                    step: 2,
                    attempt: 5,
                },
            },
        ),
        (
            "operator-retry-compensation",
            EventKind::OperatorAction {
                action: OperatorAction::RetryCompensation,
                who: "ops@example.com".into(),
                why: "ledger is back".into(),
            },
        ),
        (
            "operator-resume-step",
            EventKind::OperatorAction {
                action: OperatorAction::ResumeStep { step: 1 },
                who: "ops".into(),
                why: "fixed the stock count".into(),
            },
        ),
        (
            "attempt-resumed",
            EventKind::AttemptResumed {
                step: 1,
                attempt: 2,
                compensation: false,
                deadline: AT + 60_000,
            },
        ),
        (
            "compensation-attempt-resumed",
            EventKind::AttemptResumed {
                step: 0,
                attempt: 1,
                compensation: true,
                deadline: AT + 61_000,
            },
        ),
        (
            "step-in-doubt",
            EventKind::StepInDoubt {
                step: 2,
                attempt: 3,
                reason: "attempt 3 timed out after 30s".into(),
            },
        ),
        (
            "attempt-delayed",
            EventKind::AttemptDelayed {
                step: 1,
                attempt: 1,
                compensation: false,
                until: AT + 30_000,
            },
        ),
        (
            "compensation-attempt-delayed",
            EventKind::AttemptDelayed {
                step: 0,
                attempt: 2,
                compensation: true,
                until: AT + 31_000,
            },
        ),
        (
            "started-versioned",
            EventKind::StartedV2 {
                definition: "order".into(),
                version: 3,
                steps: vec![
                    StepSignature {
                        id: "reserve".into(),
                        kind: StepKind::Compensatable,
                    },
                    StepSignature {
                        id: "charge".into(),
                        kind: StepKind::Pivot,
                    },
                    StepSignature {
                        id: "ship".into(),
                        kind: StepKind::Retriable,
                    },
                ],
                input: br#"{"order_id":7}"#.to_vec(),
                deadline: AT + 3_600_000,
                key: Some("order-7".into()),
            },
        ),
        (
            "started-traced",
            EventKind::Started {
                definition: "order".into(),
                version: 4,
                steps: vec![
                    StepSignature {
                        id: "reserve".into(),
                        kind: StepKind::Compensatable,
                    },
                    StepSignature {
                        id: "charge".into(),
                        kind: StepKind::Pivot,
                    },
                ],
                input: br#"{"order_id":8}"#.to_vec(),
                deadline: AT + 3_600_000,
                key: Some("order-8".into()),
                trace: Some(trace_context()),
            },
        ),
        (
            "started-untraced",
            EventKind::Started {
                definition: "order".into(),
                version: 4,
                steps: vec![StepSignature {
                    id: "reserve".into(),
                    kind: StepKind::Compensatable,
                }],
                input: Vec::new(),
                deadline: AT + 60_000,
                key: None,
                trace: None,
            },
        ),
        (
            "operator-turn-back",
            EventKind::OperatorAction {
                action: OperatorAction::TurnBack { step: 2 },
                who: "ops".into(),
                why: "the provider never charged".into(),
            },
        ),
        (
            "operator-mark-resolved",
            EventKind::OperatorAction {
                action: OperatorAction::MarkResolved,
                who: "ops".into(),
                why: "refunded by hand".into(),
            },
        ),
    ]
}

/// Which kind an event is, by an exhaustive match: a new kind does not
/// compile until it is numbered here, and then fails the coverage check
/// until it has a golden file.
fn kind_number(kind: &EventKind) -> usize {
    match kind {
        EventKind::StartedV1 { .. } => 0,
        EventKind::StepStarted { .. } => 1,
        EventKind::StepSucceeded { .. } => 2,
        EventKind::StepFailed { .. } => 3,
        EventKind::RetryScheduled { .. } => 4,
        EventKind::CompensationStarted { .. } => 5,
        EventKind::StepCompensated { .. } => 6,
        EventKind::CompensationFailed { .. } => 7,
        EventKind::Completed => 8,
        EventKind::Compensated => 9,
        EventKind::Failed { .. } => 10,
        EventKind::CancelRequested { .. } => 11,
        EventKind::TimerFired { .. } => 12,
        EventKind::OperatorAction { .. } => 13,
        EventKind::AttemptResumed { .. } => 14,
        EventKind::StepInDoubt { .. } => 15,
        EventKind::AttemptDelayed { .. } => 16,
        EventKind::StartedV2 { .. } => 17,
        EventKind::Started { .. } => 18,
    }
}
const KINDS: usize = 19;

/// A trace context under a caller's span (the W3C specification's
/// example ids), sampled.
fn trace_context() -> TraceContext {
    TraceContext {
        trace_id: [
            0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80,
            0x31, 0x9c,
        ],
        span: [0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8],
        parent_span: Some([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]),
        flags: 1,
    }
}

#[test]
fn every_event_kind_decodes_from_its_checked_in_bytes_and_re_encodes_identically() {
    let mut covered = [false; KINDS];
    for (name, kind) in events() {
        covered[kind_number(&kind)] = true;
        let expected = Event {
            saga: SagaId(7),
            at: AT,
            kind,
        };
        let bytes = checked_in(&format!("events/{name}.bin"), &expected.encode());
        let decoded = Event::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            decoded, expected,
            "{name}: the checked-in bytes decode to another event"
        );
        assert_eq!(
            expected.encode(),
            bytes,
            "{name}: the event encodes to other bytes"
        );
    }
    let missing: Vec<usize> = (0..KINDS).filter(|&k| !covered[k]).collect();
    assert!(
        missing.is_empty(),
        "event kinds without a golden file: {missing:?}"
    );
}

/// Two sagas written out field by field: one completed, one failed while
/// compensating, so that every step phase with data appears.
/// With `in_doubt`, two steps carry in-doubt attempts and retry budgets
/// granted by an operator (payload version 2 records them; version 1 had
/// neither).
fn snapshot_sagas(in_doubt: bool) -> Vec<SagaState> {
    let step = |phase, attempts, output: Option<&[u8]>, error: Option<&str>| StepState {
        phase,
        attempts,
        compensation_attempts: 0,
        deadline: None,
        output: output.map(<[u8]>::to_vec),
        last_error: error.map(str::to_owned),
        started_at: Some(AT + 1),
        updated_at: Some(AT + 2),
        in_doubt: Vec::new(),
        budget_from: 0,
        compensation_budget_from: 0,
    };
    let completed = SagaState {
        id: SagaId(4),
        definition: "order".into(),
        input: br#"{"order_id":4}"#.to_vec(),
        key: Some("order-4".into()),
        status: SagaStatus::Completed,
        steps: vec![
            step(StepPhase::Succeeded, 1, Some(b"1"), None),
            step(StepPhase::Succeeded, 2, Some(b"2"), Some("busy")),
        ],
        started_at: AT,
        deadline: AT + 3_600_000,
        deadline_passed: false,
        cancel_reason: None,
        failure: None,
        operator_actions: Vec::new(),
        updated_at: AT + 3,
        version: None,
        trace: None,
    };
    let mut compensating = step(
        StepPhase::WaitingCompensationRetry {
            attempt: 2,
            fire_at: AT + 9,
        },
        1,
        Some(b"{}"),
        Some("ledger down"),
    );
    compensating.compensation_attempts = 1;
    let mut declined = step(
        StepPhase::Failed {
            attempt: 3,
            permanent: true,
        },
        3,
        None,
        Some("declined"),
    );
    let version = in_doubt.then_some(DefinitionVersion {
        number: 2,
        fingerprint: 0x1234_5678_9abc_def0,
    });
    if in_doubt {
        compensating.in_doubt = vec![1];
        compensating.compensation_budget_from = 1;
        declined.in_doubt = vec![1, 2];
        declined.budget_from = 2;
    }
    let failed = SagaState {
        id: SagaId(6),
        definition: "order".into(),
        input: Vec::new(),
        key: None,
        status: SagaStatus::Compensating,
        steps: vec![
            compensating,
            declined,
            StepState {
                phase: StepPhase::Pending,
                attempts: 0,
                compensation_attempts: 0,
                deadline: Some(AT + 30_000),
                output: None,
                last_error: None,
                started_at: None,
                updated_at: None,
                in_doubt: Vec::new(),
                budget_from: 0,
                compensation_budget_from: 0,
            },
        ],
        started_at: AT,
        deadline: AT + 60_000,
        deadline_passed: true,
        cancel_reason: Some("customer asked".into()),
        failure: Some("retry by hand".into()),
        operator_actions: vec![("ops".into(), "ledger is back".into())],
        updated_at: AT + 10,
        version: None,
        trace: None,
    };
    let failed = SagaState { version, ..failed };
    vec![completed, failed]
}

#[test]
fn a_version_2_snapshot_written_by_an_earlier_build_still_decodes() {
    // Written before sagas recorded trace contexts: it decodes, each saga
    // with none.
    const LSN: u64 = 12;
    let name = format!("v2/{}", skald_snapshot::file_name(LSN));
    let bytes = std::fs::read(golden(&name)).unwrap();
    let read = skald_snapshot::decode(&bytes, LSN).expect("the checked-in snapshot file is sound");
    assert_eq!(read[0], SNAPSHOT_PAYLOAD_VERSION_2);
    let decoded = decode_snapshot(read).expect("a version 2 payload decodes");
    assert_eq!((decoded.partition, decoded.lsn), (3, LSN));
    assert_eq!(decoded.next_seq, 9);
    assert_eq!(decoded.sagas, snapshot_sagas(true));
}

#[test]
fn a_snapshot_file_decodes_from_its_checked_in_bytes_and_re_encodes_identically() {
    const LSN: u64 = 13;
    let mut sagas = snapshot_sagas(true);
    sagas[1].trace = Some(trace_context());
    let map = sagas.iter().map(|s| (s.id, s.clone())).collect();
    let payload = encode_partition(3, LSN, 9, &map);
    assert_eq!(payload[0], SNAPSHOT_PAYLOAD_VERSION);
    let file = skald_snapshot::encode(LSN, &payload);
    let name = format!("v3/{}", skald_snapshot::file_name(LSN));
    let bytes = checked_in(&name, &file);
    let read = skald_snapshot::decode(&bytes, LSN).expect("the checked-in snapshot file is sound");
    let decoded = decode_snapshot(read).expect("its payload decodes");
    assert_eq!((decoded.partition, decoded.lsn), (3, LSN));
    assert_eq!(decoded.next_seq, 9);
    assert_eq!(
        decoded.sagas, sagas,
        "the checked-in snapshot decodes to other sagas"
    );
    assert_eq!(file, bytes, "the snapshot encodes to other bytes");
}

#[test]
fn a_version_1_snapshot_written_by_an_earlier_build_still_decodes() {
    // Written before steps recorded in-doubt attempts: it decodes, each
    // step with none.
    const LSN: u64 = 11;
    let bytes = std::fs::read(golden(&skald_snapshot::file_name(LSN))).unwrap();
    let read = skald_snapshot::decode(&bytes, LSN).expect("the checked-in snapshot file is sound");
    assert_eq!(read[0], SNAPSHOT_PAYLOAD_VERSION_1);
    let decoded = decode_snapshot(read).expect("a version 1 payload decodes");
    assert_eq!((decoded.partition, decoded.lsn), (3, LSN));
    assert_eq!(decoded.sagas, snapshot_sagas(false));
}

#[tokio::test]
async fn the_engine_file_reads_as_checked_in_and_a_new_engine_writes_it_identically() {
    let bytes = checked_in("ENGINE", b"skald-engine 1\npartitions = 3\n");
    let existing = tempfile::tempdir().unwrap();
    std::fs::write(existing.path().join("ENGINE"), &bytes).unwrap();
    assert_eq!(partition_count(existing.path()).unwrap(), 3);
    let fresh = tempfile::tempdir().unwrap();
    let engine = Engine::builder(fresh.path())
        .options(EngineOptions::default().partitions(3))
        .open()
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
    let written = std::fs::read(fresh.path().join("ENGINE")).unwrap();
    assert_eq!(written, bytes, "a new engine writes another ENGINE file");
}
