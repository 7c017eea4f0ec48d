//! Snapshots and recovery: a snapshot at any position plus the log after it
//! rebuilds exactly the state of the whole log, also once the segments it
//! covers are deleted; a snapshot ahead of the log, a gap, and a damaged
//! newest snapshot are reported; the engine snapshots in the background,
//! deletes covered segments, and reopens to the same sagas.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use skald_engine::inspect::{encode_snapshot, partition_dir, recover, snapshot_dir};
use skald_engine::{
    Backoff, Engine, EngineError, EngineOptions, Event, EventKind, ListFilter, RetryPolicy, Saga,
    SagaId, SagaStatus, SnapshotSettings, Step, StepError, StepKind,
};
use skald_log::{Log, LogOptions};
use skald_model::{apply, decide, Decision, SagaSpec, SagaState, StepSpec};
use skald_snapshot::{file_name, SnapshotStore};

fn spec(kinds: &[StepKind]) -> SagaSpec {
    SagaSpec {
        id: "random".into(),
        version: 1,
        name: "random".into(),
        steps: kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| StepSpec {
                id: format!("s{i}"),
                name: format!("s{i}"),
                kind,
                has_compensation: kind == StepKind::Compensatable,
                timeout: Duration::from_millis(100),
                retry: None,
                service: "svc".into(),
            })
            .collect(),
        timeout: Duration::from_secs(60),
        retry: RetryPolicy {
            backoff: Backoff::Fixed {
                delay: Duration::from_millis(5),
            },
            attempts_max: 3,
            delay_max: Duration::from_millis(5),
            jitter: 0.0,
        },
    }
}

/// One saga's events, run by `decide` with outcomes drawn from `draws`.
fn saga_events(id: u64, spec: &SagaSpec, draws: &[u8]) -> Vec<Event> {
    let mut now = 1_000;
    let mut events = vec![Event {
        saga: SagaId(id),
        at: now,
        kind: EventKind::StartedV1 {
            definition: spec.id.clone(),
            steps: spec.steps.len() as u16,
            input: format!("{{\"n\":{id}}}").into_bytes(),
            deadline: now + 60_000,
            key: id.is_multiple_of(3).then(|| format!("key-{id}")),
        },
    }];
    let mut state = apply(None, &events[0]).unwrap();
    let mut draws = draws.iter().cycle();
    for _ in 0..1_000 {
        let kind = match decide(&state, spec, now, 0.5) {
            Decision::Record(kind) => kind,
            Decision::Done => break,
            Decision::Wait { run: None, wake_at } => {
                now = wake_at.unwrap();
                continue;
            }
            Decision::Wait { run: Some(run), .. } => {
                now += 1;
                let draw = *draws.next().unwrap_or(&0);
                let (step, attempt) = (run.step, run.attempt);
                match (draw % 5, run.compensation) {
                    (0, false) => EventKind::StepFailed {
                        step,
                        attempt,
                        error: "busy".into(),
                        permanent: false,
                    },
                    (1, false) => EventKind::StepFailed {
                        step,
                        attempt,
                        error: "no".into(),
                        permanent: true,
                    },
                    (4, false) => EventKind::CancelRequested {
                        reason: "changed my mind".into(),
                    },
                    (_, false) => EventKind::StepSucceeded {
                        step,
                        attempt,
                        output: vec![b'"', b'x', b'"'],
                    },
                    (0, true) => EventKind::CompensationFailed {
                        step,
                        attempt,
                        error: "later".into(),
                        permanent: false,
                    },
                    (_, true) => EventKind::StepCompensated { step, attempt },
                }
            }
        };
        let event = Event {
            saga: SagaId(id),
            at: now,
            kind,
        };
        state = apply(Some(&state), &event).unwrap();
        events.push(event);
    }
    events
}

/// Sagas' events interleaved by `order`, each saga's in its own order.
fn history(kinds: &[Vec<StepKind>], draws: &[u8], order: &[u8]) -> Vec<Event> {
    let mut queues: Vec<std::collections::VecDeque<Event>> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| saga_events(i as u64 + 1, &spec(k), &draws[i % draws.len()..]).into())
        .collect();
    let mut events = Vec::new();
    let mut order = order.iter().cycle();
    while queues.iter().any(|q| !q.is_empty()) {
        let pick = *order.next().unwrap() as usize % queues.len();
        let index = (pick..pick + queues.len())
            .map(|i| i % queues.len())
            .find(|&i| !queues[i].is_empty())
            .unwrap();
        events.push(queues[index].pop_front().unwrap());
    }
    events
}

fn fold_all(events: &[Event]) -> BTreeMap<SagaId, SagaState> {
    let mut states = BTreeMap::new();
    for event in events {
        let state = apply(states.get(&event.saga), event).unwrap();
        states.insert(event.saga, state);
    }
    states
}

fn kinds() -> impl Strategy<Value = Vec<StepKind>> {
    (1usize..4, any::<bool>(), 0usize..3).prop_map(|(c, pivot, r)| {
        let mut kinds = vec![StepKind::Compensatable; c];
        if pivot {
            kinds.push(StepKind::Pivot);
            kinds.extend(std::iter::repeat_n(StepKind::Retriable, r));
        }
        kinds
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// For every k: a snapshot of the first k events, plus the log after
    /// it (its earlier segments deleted), folds to the state of all events.
    #[test]
    fn a_snapshot_at_any_position_plus_the_rest_is_the_whole(
        sagas in prop::collection::vec(kinds(), 1..6),
        draws in prop::collection::vec(any::<u8>(), 1..16),
        order in prop::collection::vec(any::<u8>(), 1..32),
    ) {
        let events = history(&sagas, &draws, &order);
        let whole = fold_all(&events);
        let dir = tempfile::tempdir().unwrap();
        // 4 KiB segments: a few dozen events each, so truncation deletes
        // segments as k grows.
        let log = Log::open(dir.path().join("log"), LogOptions::default().segment_size_bytes(4096)).unwrap();
        for event in &events {
            log.append(&event.encode()).unwrap();
        }
        let store = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap();
        let mut deleted_any = false;
        for k in 0..=events.len() {
            let lsn = k as u64 + 1;
            let prefix = fold_all(&events[..k]);
            store.write(lsn, &encode_snapshot(0, lsn, &prefix)).unwrap();
            let oldest_kept = store.list().unwrap().last().unwrap().lsn;
            log.truncate_prefix(oldest_kept).unwrap();
            deleted_any |= log.first_lsn() > 1;
            let recovered = recover(0, &log, &store, None).unwrap();
            prop_assert_eq!(recovered.snapshot.as_ref().map(|s| s.0), Some(lsn));
            prop_assert_eq!(recovered.replayed, (events.len() - k) as u64);
            prop_assert_eq!(&recovered.sagas, &whole, "k = {}", k);
        }
        if events.len() > 200 {
            prop_assert!(deleted_any, "segments were deleted along the way");
        }
    }
}

#[test]
fn a_snapshot_ahead_of_the_log_and_a_gap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path().join("log"),
        LogOptions::default().segment_size_bytes(4096),
    )
    .unwrap();
    let events = history(
        &vec![vec![StepKind::Compensatable, StepKind::Pivot]; 40],
        &[2, 3],
        &[1, 5, 9],
    );
    for event in &events {
        log.append(&event.encode()).unwrap();
    }
    let store = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap();
    // Ahead: a snapshot claiming records the log does not have.
    let ahead = log.next_lsn() + 10;
    store
        .write(ahead, &encode_snapshot(0, ahead, &BTreeMap::new()))
        .unwrap();
    let error = recover(0, &log, &store, None).unwrap_err();
    assert!(
        matches!(error, EngineError::SnapshotAhead { snapshot_lsn, .. } if snapshot_lsn == ahead),
        "{error}"
    );
    std::fs::remove_file(dir.path().join("snapshots").join(file_name(ahead))).unwrap();

    // A gap: segments deleted with no snapshot covering them.
    log.truncate_prefix(log.next_lsn()).unwrap();
    assert!(log.first_lsn() > 1, "4 KiB segments: something was deleted");
    let error = recover(0, &log, &store, None).unwrap_err();
    assert!(
        matches!(
            error,
            EngineError::LogGap {
                covered_to: 1,
                damaged_snapshot: None,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_damaged_newest_snapshot_is_reported_and_the_previous_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), LogOptions::default()).unwrap();
    let events = history(&vec![vec![StepKind::Compensatable]; 4], &[2], &[1, 2]);
    for event in &events {
        log.append(&event.encode()).unwrap();
    }
    let store = SnapshotStore::open(dir.path().join("snapshots"), 2).unwrap();
    for k in [2usize, 6] {
        let lsn = k as u64 + 1;
        store
            .write(lsn, &encode_snapshot(0, lsn, &fold_all(&events[..k])))
            .unwrap();
    }
    let newest = dir.path().join("snapshots").join(file_name(7));
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[50] ^= 0xFF;
    std::fs::write(&newest, bytes).unwrap();
    let recovered = recover(0, &log, &store, None).unwrap();
    assert_eq!(recovered.snapshot.as_ref().unwrap().0, 3);
    assert_eq!(recovered.skipped.len(), 1);
    assert_eq!(recovered.skipped[0].0, newest);
    assert_eq!(recovered.sagas, fold_all(&events));
}

fn noop_saga() -> Saga<u64> {
    Saga::<u64>::new("noop")
        .step(
            Step::new("a", |ctx: skald_engine::StepContext<u64>| {
                let n = *ctx.input();
                async move { Ok::<_, StepError>(n) }
            })
            .compensate(|_ctx| async { Ok(()) }),
        )
        .step(
            Step::new("b", |ctx: skald_engine::StepContext<u64>| {
                let n = *ctx.input();
                async move {
                    if n.is_multiple_of(4) {
                        Err(StepError::permanent("multiples of four are declined"))
                    } else {
                        Ok(n * 2)
                    }
                }
            })
            .pivot(),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_snapshots_in_the_background_deletes_covered_segments_and_reopens_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions::default()
        .partitions(2)
        .segment_size_bytes(8192)
        .snapshots(SnapshotSettings {
            every_events: Some(50),
            ..SnapshotSettings::default()
        });
    let engine = Engine::builder(dir.path())
        .options(options.clone())
        .register(noop_saga())
        .unwrap()
        .open()
        .await
        .unwrap();
    let mut waits = Vec::new();
    for n in 1..=300u64 {
        let engine = engine.clone();
        waits.push(tokio::spawn(async move {
            let id = engine.start("noop", &n).await.unwrap();
            engine.wait(id).await.unwrap()
        }));
    }
    for wait in waits {
        wait.await.unwrap();
    }
    let report = engine.check_consistency().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.partitions.iter().map(|p| p.sagas).sum::<u64>(), 300);
    let before = engine
        .list(ListFilter {
            limit: 1000,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    engine.shutdown().await.unwrap();

    for partition in 0..2 {
        let path = partition_dir(dir.path(), partition);
        let snapshots = SnapshotStore::open(snapshot_dir(&path), 2).unwrap();
        let files = snapshots.list().unwrap();
        assert!(!files.is_empty() && files.len() <= 2, "{files:?}");
        let first_segment = std::fs::read_dir(&path)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .min()
            .unwrap();
        assert_ne!(
            first_segment, "00000000000000000001.seg",
            "covered segments deleted"
        );
    }

    let engine = Engine::builder(dir.path())
        .options(options)
        .register(noop_saga())
        .unwrap()
        .open()
        .await
        .unwrap();
    let after = engine
        .list(ListFilter {
            limit: 1000,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(before.sagas.len(), 300);
    assert_eq!(
        before
            .sagas
            .iter()
            .map(|s| (s.id, s.status))
            .collect::<Vec<_>>(),
        after
            .sagas
            .iter()
            .map(|s| (s.id, s.status))
            .collect::<Vec<_>>()
    );
    let aborted = after
        .sagas
        .iter()
        .filter(|s| s.status == SagaStatus::Compensated)
        .count();
    assert_eq!(aborted, 75);
    // New sagas get new ids after a snapshot-based open too.
    let id = engine.start("noop", &1u64).await.unwrap();
    assert!(after.sagas.iter().all(|s| s.id != id));
    assert!(engine.check_consistency().await.unwrap().is_consistent());
    engine.shutdown().await.unwrap();
}

#[test]
fn big_snapshots_decode_in_chunks_and_damage_is_an_error() {
    let mut states = BTreeMap::new();
    let template = fold_all(&saga_events(1, &spec(&[StepKind::Compensatable]), &[2]))
        .remove(&SagaId(1))
        .unwrap();
    for id in 1..=70_000u64 {
        let mut state = template.clone();
        state.id = SagaId(id);
        states.insert(state.id, state);
    }
    let payload = encode_snapshot(3, 99, &states);
    let decoded = skald_engine::inspect::decode_snapshot(&payload).unwrap();
    assert_eq!((decoded.partition, decoded.lsn), (3, 99));
    assert_eq!(decoded.sagas.len(), 70_000);
    assert!(decoded
        .sagas
        .iter()
        .zip(states.values())
        .all(|(a, b)| a == b));
    for cut in [0, 5, 14, 15, 30, payload.len() / 2, payload.len() - 1] {
        assert!(
            skald_engine::inspect::decode_snapshot(&payload[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut longer = payload.clone();
    longer.push(0);
    assert!(skald_engine::inspect::decode_snapshot(&longer).is_err());
}
