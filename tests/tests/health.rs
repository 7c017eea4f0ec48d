//! Liveness and readiness: ready once open; not ready, with the reason
//! named, when the disk is below its free-space minimum; not live after a
//! shutdown. (A fail-stopped partition is checked in `faults.rs`, where a
//! fault makes one.)

use skald_engine::{Engine, EngineOptions, HealthProblem, Saga, Step, StepError};

fn saga() -> Saga<u64> {
    Saga::<u64>::new("plain").step(Step::new("a", |_ctx| async { Ok::<_, StepError>(()) }).pivot())
}

async fn open(dir: &std::path::Path, options: EngineOptions) -> Engine {
    Engine::builder(dir)
        .options(options)
        .register(saga())
        .unwrap()
        .open()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_engine_is_live_and_ready_and_a_shut_one_is_neither() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), EngineOptions::default().disk_free_min_bytes(1)).await;
    let health = engine.health();
    assert!(health.live && health.ready, "{health:?}");
    assert!(health.problems.is_empty());
    assert!(health.disk_free_bytes.is_some_and(|free| free > 0));
    engine.shutdown().await.unwrap();
    let health = engine.health();
    assert!(!health.live && !health.ready, "{health:?}");
    assert_eq!(health.problems, [HealthProblem::ShutDown]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_below_its_free_space_minimum_is_not_ready_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions::default().disk_free_min_bytes(u64::MAX);
    let engine = open(dir.path(), options).await;
    let health = engine.health();
    assert!(health.live && !health.ready, "{health:?}");
    let free = health.disk_free_bytes.expect("a real file system answers");
    assert_eq!(
        health.problems,
        [HealthProblem::DiskNearlyFull {
            path: dir.path().to_path_buf(),
            free_bytes: free,
            min_bytes: u64::MAX,
        }]
    );
    let said = health.problems[0].to_string();
    assert!(said.contains(&dir.path().display().to_string()), "{said}");
    // Not ready is advice, not a refusal: work still runs.
    let id = engine.start("plain", &1u64).await.unwrap();
    engine.wait(id).await.unwrap();
    engine.shutdown().await.unwrap();
}
