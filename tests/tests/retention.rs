//! Retention on the deterministic simulation: finished sagas stay findable
//! (by id and key) for the retention window, then leave memory, the next
//! snapshot and the key index, also across a restart; a Failed saga never
//! expires; a count limit keeps the newest.

use std::time::Duration;

use skald_engine::sim::{simulate, Simulation};
use skald_engine::{
    Engine, ListFilter, OperatorAction, Retention, RetryPolicy, Saga, SagaStatus, SnapshotSettings,
    Step, StepError,
};

const WINDOW: Duration = Duration::from_secs(3_600);

/// One step; input 0 fails its compensation for good (the saga ends
/// Failed, waiting for an operator), anything else completes.
fn saga() -> Saga<u64> {
    Saga::<u64>::new("job")
        .step(
            Step::new("work", |_ctx| async { Ok::<_, StepError>(()) })
                .compensate(|_ctx| async { Err(StepError::permanent("ledger refuses")) }),
        )
        .step(
            Step::new("finish", |ctx: skald_engine::StepContext<u64>| async move {
                match *ctx.input() {
                    0 => Err(StepError::permanent("declined")),
                    _ => Ok(()),
                }
            })
            .pivot(),
        )
        .retry(RetryPolicy::no_retry())
}

async fn open(sim: &Simulation, retention: Retention) -> Engine {
    let options = sim
        .options()
        .retention(retention)
        .snapshots(SnapshotSettings {
            every_events: Some(20),
            ..SnapshotSettings::default()
        });
    Engine::builder(sim.dir())
        .options(options)
        .register(saga())
        .unwrap()
        .open()
        .await
        .unwrap()
}

fn by_age() -> Retention {
    Retention {
        finished_for: Some(WINDOW),
        finished_max: None,
    }
}

async fn all(engine: &Engine) -> usize {
    let filter = ListFilter {
        limit: 10_000,
        ..ListFilter::default()
    };
    engine.list(filter).await.unwrap().sagas.len()
}

#[test]
fn finished_sagas_expire_after_the_window_and_stay_gone_after_a_restart() {
    simulate(31, |sim| async move {
        let engine = open(&sim, by_age()).await;
        let done = engine.start_with_key("job", &1u64, "job-1").await.unwrap();
        let failed = engine.start("job", &0u64).await.unwrap();
        assert_eq!(
            engine.wait(done).await.unwrap().status,
            SagaStatus::Completed
        );
        assert_eq!(
            engine.wait(failed).await.unwrap().status,
            SagaStatus::Failed
        );
        // Within the window: findable by id and key.
        tokio::time::sleep(WINDOW / 2).await;
        assert!(engine.view(done).await.unwrap().is_some());
        assert_eq!(engine.saga_by_key("job-1").await.unwrap(), Some(done));
        // Past it: gone, key and all; the Failed saga stays.
        tokio::time::sleep(WINDOW).await;
        assert!(engine.view(done).await.unwrap().is_none());
        assert_eq!(engine.saga_by_key("job-1").await.unwrap(), None);
        assert_eq!(
            engine.view(failed).await.unwrap().unwrap().status,
            SagaStatus::Failed
        );
        assert!(engine.check_consistency().await.unwrap().is_consistent());
        // The key starts a new saga now.
        let again = engine.start_with_key("job", &1u64, "job-1").await.unwrap();
        assert_ne!(again, done);
        engine.wait(again).await.unwrap();
        engine.shutdown().await.unwrap();
        // The shutdown's snapshot left it out: it does not come back.
        let engine = open(&sim, by_age()).await;
        assert!(engine.view(done).await.unwrap().is_none());
        assert!(engine.view(failed).await.unwrap().is_some());
        // Resolved by an operator, the Failed saga expires too.
        engine
            .operate(failed, OperatorAction::MarkResolved, "ops", "refunded")
            .await
            .unwrap();
        tokio::time::sleep(WINDOW * 2).await;
        assert!(engine.view(failed).await.unwrap().is_none());
        assert!(engine.view(again).await.unwrap().is_none());
        assert_eq!(
            all(&engine).await,
            0,
            "nothing finished is held past the window"
        );
        engine.shutdown().await.unwrap();
        // Every saga expired: the snapshot holds none, yet after a restart
        // no id is given out twice (the snapshot keeps the next sequence).
        let engine = open(&sim, by_age()).await;
        let given = [done, failed, again];
        for n in 0..4u64 {
            let id = engine.start("job", &(n + 10)).await.unwrap();
            assert!(!given.contains(&id), "{id} was given out before");
        }
        engine.shutdown().await.unwrap();
    });
}

#[test]
fn a_count_limit_keeps_the_newest_finished_sagas() {
    simulate(32, |sim| async move {
        let retention = Retention {
            finished_for: None,
            finished_max: Some(5),
        };
        let engine = open(&sim, retention).await;
        let mut ids = Vec::new();
        for n in 1..=30u64 {
            let id = engine.start("job", &n).await.unwrap();
            engine.wait(id).await.unwrap();
            ids.push(id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Two partitions, at most five finished sagas each.
        let held = all(&engine).await;
        assert!(held <= 10, "{held} held");
        let last = *ids.last().unwrap();
        assert!(
            engine.view(last).await.unwrap().is_some(),
            "the newest stays"
        );
        assert!(
            engine.view(ids[0]).await.unwrap().is_none(),
            "the oldest went"
        );
        engine.shutdown().await.unwrap();
    });
}

/// A finished saga in its window is kept encoded, not as a live entry: it
/// must look and answer exactly as it did when it ended, through every
/// path (view, wait, list among live sagas, key, cancel, operator action,
/// a start with its key), and across a restart.
#[test]
fn a_retained_saga_answers_as_it_did_when_it_ended() {
    simulate(33, |sim| async move {
        let engine = open(&sim, by_age()).await;
        let failed = engine.start("job", &0u64).await.unwrap();
        let done = engine.start_with_key("job", &7u64, "job-7").await.unwrap();
        let ended = engine.wait(done).await.unwrap();
        assert_eq!(ended.status, SagaStatus::Completed);
        assert_eq!(
            engine.wait(failed).await.unwrap().status,
            SagaStatus::Failed
        );
        let later = engine.start("job", &8u64).await.unwrap();
        engine.wait(later).await.unwrap();
        // Every path, with the saga retained.
        let check = |engine: Engine| {
            let ended = ended.clone();
            async move {
                assert_eq!(engine.view(done).await.unwrap(), Some(ended.clone()));
                assert_eq!(engine.wait(done).await.unwrap(), ended);
                assert_eq!(engine.saga_by_key("job-7").await.unwrap(), Some(done));
                let page = engine.list(ListFilter::default()).await.unwrap();
                let ids: Vec<_> = page.sagas.iter().map(|s| s.id).collect();
                let mut sorted = vec![failed, done, later];
                sorted.sort();
                assert_eq!(ids, sorted, "live and retained, in id order");
                let completed = ListFilter {
                    status: Some(SagaStatus::Completed),
                    ..ListFilter::default()
                };
                let page = engine.list(completed).await.unwrap();
                assert!(page.sagas.iter().all(|s| s.status == SagaStatus::Completed));
                assert_eq!(page.sagas.len(), 2);
                assert_eq!(
                    engine.cancel(done, "too late").await.unwrap(),
                    skald_engine::CancelOutcome::AlreadyEnded(SagaStatus::Completed)
                );
                let again = engine.start_with_key("job", &7u64, "job-7").await;
                assert_eq!(again.unwrap(), done, "the same saga again");
                let refused = engine
                    .operate(done, OperatorAction::RetryCompensation, "ops", "why")
                    .await;
                assert!(
                    matches!(refused, Err(skald_engine::EngineError::Refused(_))),
                    "{refused:?}"
                );
                assert_eq!(engine.view(done).await.unwrap(), Some(ended));
                assert!(engine.check_consistency().await.unwrap().is_consistent());
                engine
            }
        };
        let engine = check(engine).await;
        engine.shutdown().await.unwrap();
        // After a restart: retained again from the snapshot and the log.
        let engine = check(open(&sim, by_age()).await).await;
        engine.shutdown().await.unwrap();
    });
}
