//! Downtime on the deterministic simulation: virtual time passes while no
//! engine runs, as it does for a host that is down.
//!
//! - An attempt in flight at a crash or a shutdown runs again at the
//!   reopen, with the same idempotency key and a fresh timeout, however
//!   long the engine was down (before, a downtime past the step's timeout
//!   recorded the attempt as timed out without it having run).
//! - The saga's own deadline is business time: downtime counts against it.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use skald_engine::sim::{simulate, Simulation};
use skald_engine::{
    Engine, EngineError, RetryPolicy, Saga, SagaId, SagaStatus, Step, StepContext, StepError,
};

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const DOWNTIME: Duration = Duration::from_secs(3_600);

/// What the service saw: each call's idempotency key.
#[derive(Default)]
struct Calls(Mutex<Vec<String>>);

impl Calls {
    fn keys(&self) -> Vec<String> {
        self.0.lock().clone()
    }
}

/// One compensatable step, then a pivot that records its key and, while
/// `hang` is set, never answers. No retries: a timeout would end the saga.
fn saga(calls: Arc<Calls>, hang: bool, saga_timeout: Duration) -> Saga<u64> {
    let pivot = move |ctx: StepContext<u64>| {
        let calls = calls.clone();
        async move {
            calls.0.lock().push(ctx.idempotency_key());
            if hang {
                std::future::pending::<()>().await;
            }
            Ok::<_, StepError>(())
        }
    };
    Saga::<u64>::new("transfer")
        .step(
            Step::new("debit", |_ctx| async { Ok::<_, StepError>(()) })
                .compensate(|_ctx| async { Ok(()) }),
        )
        .step(Step::new("credit", pivot).pivot().timeout(STEP_TIMEOUT))
        .retry(RetryPolicy::no_retry())
        .timeout(saga_timeout)
}

async fn open(sim: &Simulation, saga: Saga<u64>) -> Result<Engine, EngineError> {
    Engine::builder(sim.dir())
        .options(sim.options())
        .register(saga)?
        .open()
        .await
}

/// Starts one saga on a hanging engine and waits until its pivot is in
/// flight.
async fn start_and_hang(
    sim: &Simulation,
    calls: &Arc<Calls>,
    timeout: Duration,
) -> (Engine, SagaId) {
    let engine = open(sim, saga(calls.clone(), true, timeout)).await.unwrap();
    let id = engine.start("transfer", &7u64).await.unwrap();
    while calls.keys().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (engine, id)
}

/// After an hour down (its step's timeout is 10 s), the reopened engine
/// runs the attempt that was in flight again: the same attempt, the same
/// key, and the saga completes.
async fn runs_again_after_downtime(sim: &Simulation, calls: &Arc<Calls>, id: SagaId) {
    tokio::time::sleep(DOWNTIME).await;
    let day = Duration::from_secs(86_400);
    let engine = open(sim, saga(calls.clone(), false, day)).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed, "{view:?}");
    let keys = calls.keys();
    assert_eq!(keys.len(), 2, "the attempt ran again: {keys:?}");
    assert_eq!(keys[0], keys[1], "with the same idempotency key");
    assert_eq!(view.steps[1].attempts, 1, "the same attempt, not a retry");
    engine.shutdown().await.unwrap();
}

#[test]
fn an_attempt_in_flight_at_a_crash_runs_again_after_downtime_past_its_timeout() {
    simulate(11, |mut sim| async move {
        let calls = Arc::new(Calls::default());
        let (engine, id) = start_and_hang(&sim, &calls, Duration::from_secs(86_400)).await;
        sim.crash();
        // The crashed engine is gone: its handles fail.
        assert!(matches!(engine.view(id).await, Err(EngineError::ShutDown)));
        assert!(matches!(
            engine.start("transfer", &8u64).await,
            Err(EngineError::ShutDown)
        ));
        let _ = engine.shutdown().await; // its disk is gone: it only stops
        drop(engine);
        runs_again_after_downtime(&sim, &calls, id).await;
    });
}

#[test]
fn an_attempt_abandoned_at_shutdown_runs_again_after_downtime_past_its_timeout() {
    simulate(12, |sim| async move {
        let calls = Arc::new(Calls::default());
        let (engine, id) = start_and_hang(&sim, &calls, Duration::from_secs(86_400)).await;
        engine.shutdown().await.unwrap();
        drop(engine);
        runs_again_after_downtime(&sim, &calls, id).await;
    });
}

#[test]
fn downtime_counts_against_the_saga_deadline() {
    simulate(13, |sim| async move {
        let calls = Arc::new(Calls::default());
        // The saga has 30 minutes; the engine is down for an hour with the
        // pivot in flight. The attempt is let finish (it may have been
        // applied), then the deadline, passed during the downtime, applies:
        // the pivot succeeded, so the saga can only go forward.
        let saga_timeout = Duration::from_secs(1_800);
        let (engine, id) = start_and_hang(&sim, &calls, saga_timeout).await;
        engine.shutdown().await.unwrap();
        drop(engine);
        tokio::time::sleep(DOWNTIME).await;
        let engine = open(&sim, saga(calls.clone(), false, saga_timeout))
            .await
            .unwrap();
        let view = engine.wait(id).await.unwrap();
        assert_eq!(view.status, SagaStatus::Completed, "{view:?}");
        assert!(
            view.updated_at >= view.deadline,
            "the deadline passed while down"
        );
        engine.shutdown().await.unwrap();
    });
}
