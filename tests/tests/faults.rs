//! I/O faults injected under a running engine (through the simulated disk
//! of the log's storage seam): EIO on a flush, ENOSPC when a segment is
//! created, a short write of a snapshot or of the engine file, and a power
//! cut after each (the crash between a write and its flush).
//!
//! The engine must stop with a clear error (fail-stop), acknowledge nothing
//! that was not flushed, and after the fault clears, a restart must recover
//! every acknowledged saga.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use skald_engine::{
    Engine, EngineError, EngineOptions, Saga, SagaId, SagaStatus, SnapshotSettings, Step, StepError,
};
use skald_log::{EarlierFlushFailed, LogError, PowerCut, SimFault, SimStorage};

fn saga() -> Saga<u64> {
    let step = |_ctx| async { Ok::<_, StepError>(()) };
    Saga::<u64>::new("plain")
        .step(Step::new("a", step).compensate(|_ctx| async { Ok(()) }))
        .step(Step::new("b", step).compensate(|_ctx| async { Ok(()) }))
        .step(Step::new("c", step).pivot())
}

fn options(storage: &SimStorage) -> EngineOptions {
    EngineOptions::default()
        .partitions(2)
        .segment_size_bytes(16 * 1024)
        .snapshots(SnapshotSettings {
            every_events: Some(50),
            ..SnapshotSettings::default()
        })
        .storage(Arc::new(storage.clone()))
}

async fn open(storage: &SimStorage) -> Result<Engine, EngineError> {
    Engine::builder(Path::new("/engine"))
        .options(options(storage))
        .register(saga())?
        .open()
        .await
}

/// Starts sagas from 8 tasks until starts fail; returns the acknowledged
/// ids and the first error.
async fn start_until_failure(
    engine: &Engine,
    storage: &SimStorage,
    fault: SimFault,
) -> (BTreeSet<SagaId>, EngineError) {
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let first_error = Arc::new(Mutex::new(None::<EngineError>));
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let (engine, acknowledged, first_error) =
                (engine.clone(), acknowledged.clone(), first_error.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    match engine.start("plain", &(task * 1_000_000 + i)).await {
                        Ok(id) => {
                            acknowledged.lock().insert(id);
                        }
                        Err(error) => {
                            first_error.lock().get_or_insert(error);
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    // Let work build up, then the fault strikes.
    tokio::time::sleep(Duration::from_millis(30)).await;
    storage.inject(fault);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a start hung after the fault instead of failing")
            .unwrap();
    }
    let acknowledged = acknowledged.lock().clone();
    let error = first_error.lock().clone().expect("starts failed");
    (acknowledged, error)
}

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// The operation and OS error a fail-stopped partition reports.
fn fail_stop(error: &EngineError) -> Option<(&'static str, &std::io::Error)> {
    match error {
        EngineError::Log(log) => match log.as_ref() {
            LogError::FailStopped {
                operation, source, ..
            } => Some((*operation, source.as_ref())),
            _ => None,
        },
        _ => None,
    }
}

/// After the fault: clear it, cut the power (unflushed writes are gone),
/// reopen, and check every acknowledged saga is there and finishes.
async fn recover_after(storage: SimStorage, fault: SimFault, acknowledged: &BTreeSet<SagaId>) {
    storage.clear(fault);
    let (rebooted, _) = storage.power_cut(PowerCut::DropUnflushed);
    let engine = open(&rebooted)
        .await
        .expect("the engine reopens after the fault");
    for id in acknowledged {
        let view = engine
            .wait(*id)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(view.status, SagaStatus::Completed, "{id}");
    }
    assert!(engine.check_consistency().await.unwrap().is_consistent());
    // And it takes new work.
    let id = engine.start("plain", &7u64).await.unwrap();
    assert_eq!(engine.wait(id).await.unwrap().status, SagaStatus::Completed);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_a_flush_fail_stops_and_a_restart_recovers_every_acknowledged_saga() {
    let storage = SimStorage::new();
    storage.set_flush_delay(Duration::from_micros(100));
    let engine = open(&storage).await.unwrap();
    let (acknowledged, error) = start_until_failure(&engine, &storage, SimFault::FlushEio).await;
    assert!(!acknowledged.is_empty());
    // The failed flush is named: the EIO itself, or (in a partition whose
    // log saw another msync fail first) the flush failure it stopped on;
    // a segment created under the fault fails in its own flush.
    let named = |error: &EngineError| {
        let Some((operation, source)) = fail_stop(error) else {
            return false;
        };
        let earlier = source
            .get_ref()
            .is_some_and(|inner| inner.is::<EarlierFlushFailed>());
        // A roll under the fault fails in the new segment's own flush.
        let flushing = matches!(operation, "flush" | "create segment");
        flushing && (source.raw_os_error() == Some(EIO) || earlier)
    };
    assert!(named(&error), "{error}");
    // Fail-stop: later calls fail at once, with the same cause.
    let later = engine.start("plain", &1u64).await.unwrap_err();
    assert!(named(&later), "{later}");
    // Health: still live (the tasks run), not ready, the partition named.
    let health = engine.health();
    assert!(health.live && !health.ready, "{health:?}");
    let failed: Vec<_> = health
        .problems
        .iter()
        .filter_map(|problem| match problem {
            skald_engine::HealthProblem::PartitionFailed { partition, error } => {
                Some((*partition, error.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(!failed.is_empty(), "{health:?}");
    // Named as above: a failed flush, or a segment created under the
    // fault (a roll), which fails in its own flush.
    assert!(
        failed
            .iter()
            .all(|(p, e)| *p < 2 && (e.contains("flush") || e.contains("create segment"))),
        "{failed:?}"
    );
    assert!(
        engine.shutdown().await.is_err(),
        "shutdown reports the failure"
    );
    recover_after(storage, SimFault::FlushEio, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_when_a_segment_grows_fail_stops_and_a_restart_recovers() {
    let storage = SimStorage::new();
    let engine = open(&storage).await.unwrap();
    let (acknowledged, error) =
        start_until_failure(&engine, &storage, SimFault::CreateEnospc).await;
    assert!(!acknowledged.is_empty());
    let enospc = fail_stop(&error).is_some_and(|(operation, source)| {
        operation == "create segment" && source.raw_os_error() == Some(ENOSPC)
    });
    assert!(enospc, "ENOSPC named: {error}");
    let _ = engine.shutdown().await;
    recover_after(storage, SimFault::CreateEnospc, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_snapshot_write_costs_a_snapshot_not_data() {
    let storage = SimStorage::new();
    let engine = open(&storage).await.unwrap();
    storage.inject(SimFault::ShortWrite);
    // Snapshots fail (every 50 events) while sagas go on.
    let mut ids = Vec::new();
    for n in 0..100u64 {
        ids.push(engine.start("plain", &n).await.unwrap());
    }
    for id in &ids {
        assert_eq!(
            engine.wait(*id).await.unwrap().status,
            SagaStatus::Completed
        );
    }
    // The clean-close marker is a small file too: it is cut short, and the
    // close says so.
    let closed = engine.shutdown().await.unwrap_err();
    let names_the_marker = match &closed {
        EngineError::Log(log) => match log.as_ref() {
            LogError::Io { path, .. } => path.ends_with("CLEAN"),
            _ => false,
        },
        _ => false,
    };
    assert!(names_the_marker, "{closed}");
    storage.clear(SimFault::ShortWrite);
    let (rebooted, _) = storage.power_cut(PowerCut::DropUnflushed);
    // Half-written snapshots and a half-written marker are never trusted.
    let engine = open(&rebooted).await.expect("the engine reopens");
    for id in &ids {
        assert_eq!(
            engine.view(*id).await.unwrap().unwrap().status,
            SagaStatus::Completed
        );
    }
    assert!(engine.check_consistency().await.unwrap().is_consistent());
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_write_of_the_engine_file_is_an_error_and_a_retry_creates_it() {
    let storage = SimStorage::new();
    storage.inject(SimFault::ShortWrite);
    let error = open(&storage).await.unwrap_err();
    assert!(
        matches!(&error, EngineError::Io { path, .. } if path.ends_with("ENGINE.tmp")),
        "names the file: {error}"
    );
    storage.clear(SimFault::ShortWrite);
    let engine = open(&storage)
        .await
        .expect("the next open creates the engine file");
    let id = engine.start("plain", &1u64).await.unwrap();
    assert_eq!(engine.wait(id).await.unwrap().status, SagaStatus::Completed);
    engine.shutdown().await.unwrap();
}
