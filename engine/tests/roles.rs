//! A hosted engine's partition roles: every partition starts as a
//! follower; `lead` makes one the writer (recovered, resuming its
//! unfinished sagas, in a new epoch), `follow_leader` makes it a follower
//! again (abandoning what it ran). Calls for a partition led elsewhere get
//! `NotLeader` (or `NoLeader`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skald_engine::inspect::partition_dir;
use skald_engine::{Engine, EngineError, EngineOptions, Saga, SagaStatus, StartOptions, Step};

/// One step that runs only while `open` is up; it counts its runs.
fn saga(open: Arc<tokio::sync::watch::Sender<bool>>, runs: Arc<AtomicU64>) -> Saga<u64> {
    Saga::<u64>::new("gated").step(
        Step::new("wait", move |ctx: skald_engine::StepContext<u64>| {
            let mut open = open.subscribe();
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = open.wait_for(|open| *open).await;
                Ok::<_, skald_engine::StepError>(*ctx.input())
            }
        })
        .pivot(),
    )
}

async fn hosted(dir: &std::path::Path, saga: Saga<u64>) -> Engine {
    Engine::builder(dir)
        .options(EngineOptions::default().partitions(2))
        .register(saga)
        .unwrap()
        .hosted(Duration::from_millis(10))
        .open()
        .await
        .unwrap()
}

/// A key that lands in `partition` (of 2).
fn key_in(partition: usize) -> String {
    (0..)
        .map(|n| format!("key-{n}"))
        .find(|key| skald_engine::inspect::partition_of_key(key, 2) == partition)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_partition_leads_follows_and_leads_again_resuming_its_sagas() {
    let dir = tempfile::tempdir().unwrap();
    let (open, runs) = (
        Arc::new(tokio::sync::watch::channel(false).0),
        Arc::new(AtomicU64::new(0)),
    );
    let engine = hosted(dir.path(), saga(open.clone(), runs.clone())).await;
    assert!(engine.is_hosted());
    assert!(engine.led_partitions().is_empty());
    // Nobody leads yet: no leader to name.
    let refused = engine.start("gated", &1u64).await;
    assert!(
        matches!(refused, Err(EngineError::NoLeader { .. })),
        "{refused:?}"
    );
    engine.set_leader(0, Some("http://other:8080".into()));
    let keyed = StartOptions::default().key(key_in(0));
    let refused = engine.start_with("gated", &1u64, keyed.clone()).await;
    match refused {
        Err(EngineError::NotLeader { partition, leader }) => {
            assert_eq!((partition, leader.as_str()), (0, "http://other:8080"));
        }
        other => panic!("expected NotLeader: {other:?}"),
    }

    // Leading partition 0 only: every start without a key goes there.
    engine.lead(0, 3).await.unwrap();
    assert_eq!(engine.led_partitions(), [0]);
    let mut ids = Vec::new();
    for n in 0..6u64 {
        ids.push(engine.start("gated", &n).await.unwrap());
    }
    assert!(ids.iter().all(|id| id.0 % 2 == 0), "{ids:?}");
    assert_eq!(engine.partition_log(0).unwrap().epoch(), 3);
    // Every step is running (gated) when the partition is deposed.
    while runs.load(Ordering::SeqCst) < 6 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.follow_leader(0).await.unwrap();
    assert!(engine.led_partitions().is_empty());
    // A follower reads what the leader wrote; it writes nothing.
    let view = engine.view(ids[0]).await.unwrap().unwrap();
    assert_eq!(view.status, SagaStatus::Running);
    assert!(matches!(
        engine.cancel(ids[0], "no").await,
        Err(EngineError::NotLeader { .. })
    ));

    // Leading again, in a later epoch: the unfinished sagas resume (their
    // step runs again) and finish.
    open.send_replace(true);
    engine.lead(0, 4).await.unwrap();
    for id in &ids {
        let view = tokio::time::timeout(Duration::from_secs(30), engine.wait(*id))
            .await
            .expect("resumed and finished")
            .unwrap();
        assert_eq!(view.status, SagaStatus::Completed);
    }
    assert!(runs.load(Ordering::SeqCst) >= 12, "each step ran again");
    let log = engine.partition_log(0).unwrap();
    assert_eq!(log.epoch(), 4);
    let epochs: Vec<u64> = log.epochs().iter().map(|(epoch, _)| *epoch).collect();
    assert!(epochs.ends_with(&[3, 4]), "{epochs:?}");
    drop(log);
    // The other partition never led: its log is empty and its own.
    assert!(!engine.leads(1));
    let report = engine.check_consistency().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    engine.shutdown().await.unwrap();

    // Reopened, still hosted: it follows everything it wrote.
    let (open, runs) = (
        Arc::new(tokio::sync::watch::channel(true).0),
        Arc::new(AtomicU64::new(0)),
    );
    let engine = hosted(dir.path(), saga(open, runs)).await;
    let view = engine.view(ids[5]).await.unwrap().unwrap();
    assert_eq!(view.status, SagaStatus::Completed);
    assert!(partition_dir(dir.path(), 1).is_dir());
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_change_only_on_a_hosted_engine_and_only_for_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let (open, runs) = (
        Arc::new(tokio::sync::watch::channel(true).0),
        Arc::new(AtomicU64::new(0)),
    );
    let plain = Engine::builder(dir.path().join("plain"))
        .options(EngineOptions::default().partitions(1))
        .register(saga(open.clone(), runs.clone()))
        .unwrap()
        .open()
        .await
        .unwrap();
    assert!(plain.leads(0));
    assert!(matches!(
        plain.lead(0, 1).await,
        Err(EngineError::NotHosted)
    ));
    plain.shutdown().await.unwrap();
    let engine = hosted(&dir.path().join("hosted"), saga(open, runs)).await;
    assert!(matches!(
        engine.lead(2, 1).await,
        Err(EngineError::NoSuchPartition { partition: 2, .. })
    ));
    engine.shutdown().await.unwrap();
    assert!(matches!(
        engine.lead(0, 1).await,
        Err(EngineError::ShutDown)
    ));
}
