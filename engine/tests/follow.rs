//! A follower (`EngineBuilder::follow`): an engine opened read-only on a
//! directory another engine writes sees what that engine records (views,
//! lists, keys, waits, the event stream), refuses to write, and catches up
//! from the snapshot when the writer removed log it had not read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skald_engine::inspect::partition_dir;
use skald_engine::{
    Engine, EngineError, EngineOptions, EventKind, ListFilter, OperatorAction, SagaStatus,
    SnapshotSettings, Step, StepError,
};
use skald_engine::{Saga, SagaId};

const HOUR: Duration = Duration::from_secs(3600);

/// Two steps; `b` declines multiples of four, so those compensate `a`.
fn saga() -> Saga<u64> {
    Saga::<u64>::new("pair")
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

async fn writer(dir: &std::path::Path, options: EngineOptions) -> Engine {
    Engine::builder(dir)
        .options(options)
        .register(saga())
        .unwrap()
        .open()
        .await
        .unwrap()
}

/// A follower with the definition registered: it names the steps (it
/// never runs them).
async fn follower(dir: &std::path::Path, every: Duration) -> Engine {
    Engine::builder(dir)
        .register(saga())
        .unwrap()
        .follow(every)
        .open()
        .await
        .unwrap()
}

async fn run(engine: &Engine, range: std::ops::RangeInclusive<u64>) -> Vec<SagaId> {
    let mut ids = Vec::new();
    for n in range {
        let id = engine
            .start_with_key("pair", &n, format!("order-{n}"))
            .await
            .unwrap();
        engine.wait(id).await.unwrap();
        ids.push(id);
    }
    ids
}

/// Every saga's id, status and step phases, as `engine` sees them.
async fn everything(engine: &Engine) -> BTreeMap<SagaId, (SagaStatus, Vec<String>)> {
    let page = engine
        .list(ListFilter {
            limit: 100_000,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let mut all = BTreeMap::new();
    for summary in page.sagas {
        let view = engine.view(summary.id).await.unwrap().unwrap();
        let steps = view
            .steps
            .iter()
            .map(|s| format!("{:?}/{}/{}", s.phase, s.attempts, s.id))
            .collect();
        all.insert(summary.id, (view.status, steps));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_what_the_writer_records_and_refuses_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let live = writer(dir.path(), EngineOptions::default().partitions(2)).await;
    let before = run(&live, 1..=10).await;
    let follower = follower(dir.path(), HOUR).await;
    assert!(follower.is_follower() && !live.is_follower());
    // What was there at its open.
    assert_eq!(everything(&follower).await, everything(&live).await);
    assert_eq!(everything(&follower).await.len(), before.len());

    // More, then a catch-up (no periodic look within the test).
    let after = run(&live, 11..=30).await;
    assert_eq!(everything(&follower).await.len(), 10, "not before a look");
    follower.catch_up().await.unwrap();
    let seen = everything(&follower).await;
    assert_eq!(seen, everything(&live).await);
    assert_eq!(seen.len(), 30);
    let failed = seen
        .values()
        .filter(|(status, _)| *status == SagaStatus::Compensated)
        .count();
    assert_eq!(failed, 7, "multiples of four up to 30 compensated");
    assert_eq!(
        follower.saga_by_key("order-17").await.unwrap(),
        Some(after[6])
    );
    assert!(follower.check_consistency().await.unwrap().is_consistent());

    // Nothing that writes.
    let read_only =
        |result: Result<_, EngineError>| matches!(result, Err(EngineError::ReadOnly { .. }));
    assert!(read_only(follower.start("pair", &99u64).await.map(drop)));
    assert!(read_only(follower.cancel(after[0], "no").await.map(drop)));
    let action = OperatorAction::MarkResolved;
    assert!(read_only(
        follower.operate(before[3], action, "ops", "why").await
    ));
    live.shutdown().await.unwrap();
    follower.shutdown().await.unwrap();
}

/// One step that waits for the test to let it go.
fn gate(open: Arc<tokio::sync::Notify>) -> Saga<u64> {
    Saga::<u64>::new("gate").step(
        Step::new("hold", move |_ctx: skald_engine::StepContext<u64>| {
            let open = open.clone();
            async move {
                open.notified().await;
                Ok::<_, StepError>(1)
            }
        })
        .pivot(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_looks_by_itself_and_streams_and_answers_waits() {
    let dir = tempfile::tempdir().unwrap();
    let open = Arc::new(tokio::sync::Notify::new());
    let live = Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(2))
        .register(gate(open.clone()))
        .unwrap()
        .open()
        .await
        .unwrap();
    let follower = follower(dir.path(), Duration::from_millis(10)).await;
    let mut events = follower.subscribe();
    let id = live.start("gate", &5u64).await.unwrap();
    follower.catch_up().await.unwrap();
    let seen = follower.view(id).await.unwrap().unwrap();
    assert_eq!(seen.status, SagaStatus::Running);
    // The follower's wait ends when its own periodic look finds the end.
    let waiting = tokio::spawn({
        let follower = follower.clone();
        async move { follower.wait(id).await }
    });
    open.notify_one();
    let view = waiting.await.unwrap().unwrap();
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(view.steps[0].phase, skald_engine::StepPhase::Succeeded);
    assert_eq!(
        view.updated_at,
        live.view(id).await.unwrap().unwrap().updated_at
    );
    // Its stream carried the saga's events in log order, start to end.
    let mut kinds = Vec::new();
    loop {
        let event = events.recv().await.unwrap();
        assert_eq!(event.event.saga, id);
        let done = matches!(event.event.kind, EventKind::Completed);
        kinds.push(
            format!("{:?}", event.event.kind)
                .chars()
                .take(12)
                .collect::<String>(),
        );
        if done {
            break;
        }
    }
    assert!(kinds.len() >= 3, "{kinds:?}");
    assert!(kinds[0].starts_with("Started"), "{kinds:?}");
    live.shutdown().await.unwrap();
    follower.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_writers_retained_log_rebuilds_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions::default()
        .partitions(2)
        .segment_size_bytes(8192)
        .snapshots(SnapshotSettings {
            every_events: Some(50),
            ..SnapshotSettings::default()
        });
    let live = writer(dir.path(), options).await;
    run(&live, 1..=2).await;
    let follower = follower(dir.path(), HOUR).await;
    run(&live, 3..=400).await;
    let expected = everything(&live).await;
    // At shutdown, a last snapshot and the log it covers deleted.
    live.shutdown().await.unwrap();
    for partition in 0..2 {
        let first = std::fs::read_dir(partition_dir(dir.path(), partition))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".seg").map(|n| n.parse::<u64>().unwrap()))
            .min()
            .unwrap();
        // 8 KiB segments hold far fewer than 300 events: the follower's
        // next segment is gone.
        assert!(
            first > 300,
            "partition {partition}: first segment at {first}"
        );
    }
    follower.catch_up().await.unwrap();
    assert_eq!(everything(&follower).await, expected);
    assert!(follower.check_consistency().await.unwrap().is_consistent());
    follower.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_looking_all_the_time_while_the_writer_works_agrees_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions::default()
        .partitions(2)
        .segment_size_bytes(16 * 1024)
        .snapshots(SnapshotSettings {
            every_events: Some(200),
            ..SnapshotSettings::default()
        });
    let live = writer(dir.path(), options).await;
    let follower = follower(dir.path(), Duration::from_millis(1)).await;
    // Concurrent starts: batches of several events, segments rolled and
    // removed behind snapshots, all while the follower reads.
    let mut runs = Vec::new();
    for lane in 0..8u64 {
        let live = live.clone();
        runs.push(tokio::spawn(async move {
            run(&live, lane * 100 + 1..=lane * 100 + 60).await
        }));
    }
    let mut started = Vec::new();
    for run in runs {
        started.extend(run.await.unwrap());
    }
    // Every saga's end reaches the follower by its own looks (a wait on
    // a saga it has not seen yet is NoSuchSaga: first it must appear).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for id in &started {
        while follower.view(*id).await.unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never reached the follower"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let view = follower.wait(*id).await.unwrap();
        assert!(view.status.is_final(), "{view:?}");
    }
    follower.catch_up().await.unwrap();
    assert_eq!(everything(&follower).await, everything(&live).await);
    assert!(follower.check_consistency().await.unwrap().is_consistent());
    live.shutdown().await.unwrap();
    follower.shutdown().await.unwrap();
}

#[tokio::test]
async fn following_what_is_not_an_engine_directory_is_an_error_that_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let error = Engine::builder(&missing)
        .follow(HOUR)
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            EngineError::NotEngine { .. } | EngineError::Io { .. }
        ),
        "{error}"
    );
    assert!(!missing.exists(), "a follower creates nothing");
}
