//! Resumption at open on the real runtime (two worker threads, a real
//! disk): attempts in flight when the engine stopped are admitted by their
//! (closed) breakers before any partition starts, all of them, although
//! resumption goes on over several turns. Here the service fails at the
//! restart, so the first resumed attempts open its breaker while other
//! sagas may still be resumed, on the other thread or in the other
//! partition; those must still run again, not be recorded in doubt without
//! having run.
//!
//! The race is timing-dependent. With the partitions started one by one as
//! they were recovered, 20,000 sagas and 50 failing calls, it left 21,808
//! attempts in doubt (admission in each partition's first turn only), then
//! 10,000 (one whole partition, admitted after the other had opened the
//! breaker). With every partition admitting before any starts, this test
//! no longer reproduces it on this machine; it checks the outcome: every
//! attempt runs again once, none ends in doubt, every saga completes.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use skald_engine::{
    BreakerSettings, Engine, EngineOptions, EventKind, RetryPolicy, Saga, SagaId, SagaStatus, Step,
    StepContext, StepError,
};

/// Two turns' worth of resumption in each of two partitions (4,096 a
/// turn and partition).
const SAGAS: u64 = 12_000;
/// Calls after the reopen that fail: the breaker opens after 5.
const FAILING: u64 = 5;

type Calls = Arc<Mutex<(u64, Vec<SagaId>)>>;

fn call(calls: Calls, hang: bool) -> Saga<u64> {
    let execute = move |ctx: StepContext<u64>| {
        let calls = calls.clone();
        async move {
            let made = {
                let mut calls = calls.lock();
                calls.0 += 1;
                calls.1.push(ctx.saga_id());
                calls.0
            };
            if hang {
                std::future::pending::<()>().await;
            }
            match made <= FAILING {
                true => Err(StepError::retryable("service down")),
                false => Ok(()),
            }
        }
    };
    let policy = RetryPolicy {
        attempts_max: 50,
        delay_max: Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    Saga::<u64>::new("call")
        .step(Step::new("call", execute).pivot().service("flaky"))
        .retry(policy)
}

fn options() -> EngineOptions {
    let breaker = BreakerSettings {
        failures_to_open: 5,
        open_ms: 50,
        successes_to_close: 1,
    };
    EngineOptions::default()
        .partitions(2)
        .breaker_for("flaky", breaker)
        .event_buffer(1 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_in_flight_at_a_stop_runs_again_though_its_breaker_opens() {
    let dir = tempfile::tempdir().unwrap();
    let calls: Calls = Arc::default();
    let engine = Engine::builder(dir.path())
        .options(options())
        .register(call(calls.clone(), true))
        .unwrap()
        .open()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..SAGAS {
        ids.push(engine.start("call", &n).await.unwrap());
    }
    while calls.lock().0 < SAGAS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A shutdown abandons the running attempts: they run again at the open.
    engine.shutdown().await.unwrap();
    drop(engine);
    *calls.lock() = (0, Vec::new());
    let engine = Engine::builder(dir.path())
        .options(options())
        .register(call(calls.clone(), false))
        .unwrap()
        .open()
        .await
        .unwrap();
    let mut events = engine.subscribe();
    for &id in &ids {
        let view = engine.wait(id).await.unwrap();
        assert_eq!(view.status, SagaStatus::Completed, "{view:?}");
    }
    let mut in_doubt = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventKind::StepInDoubt { reason, .. } = &event.event.kind {
            in_doubt.push(reason.clone());
        }
    }
    let shown: Vec<_> = in_doubt.iter().take(3).collect();
    assert!(
        in_doubt.is_empty(),
        "{} left in doubt: {shown:?}",
        in_doubt.len()
    );
    let mut resumed = calls.lock().1.clone();
    resumed.sort();
    resumed.dedup();
    assert_eq!(resumed.len() as u64, SAGAS, "each attempt ran again");
    engine.shutdown().await.unwrap();
}
