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

/// More unfinished sagas than one turn resumes: the reopened engine takes
/// new work at once and resumes the rest over the following turns. A
/// cancel for a saga not resumed yet resumes it first: its attempt is
/// recorded as resumed before the cancel and runs once, then the saga is
/// compensated.
#[test]
fn a_command_for_a_saga_not_yet_resumed_resumes_it_first() {
    /// Past what one turn of one partition resumes (4,096).
    const SAGAS: u64 = 5_000;
    type Seen = Arc<Mutex<Vec<(SagaId, bool)>>>;
    fn reserve(seen: Seen, hang: bool) -> Saga<u64> {
        let compensated = seen.clone();
        let execute = move |ctx: StepContext<u64>| {
            let seen = seen.clone();
            async move {
                seen.lock().push((ctx.saga_id(), false));
                if hang {
                    std::future::pending::<()>().await;
                }
                // Still running when the rest of the sagas resume.
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, StepError>(())
            }
        };
        let compensate = move |ctx: StepContext<u64>| {
            let seen = compensated.clone();
            async move {
                seen.lock().push((ctx.saga_id(), true));
                Ok(())
            }
        };
        Saga::<u64>::new("batch")
            .step(Step::new("reserve", execute).compensate(compensate))
            .step(Step::new("confirm", |_ctx| async { Ok::<_, StepError>(()) }).pivot())
            .timeout(Duration::from_secs(86_400))
    }
    simulate(14, |mut sim| async move {
        let seen: Seen = Arc::default();
        let options = sim.options().partitions(1);
        let engine = Engine::builder(sim.dir())
            .options(options)
            .register(reserve(seen.clone(), true))
            .unwrap()
            .open()
            .await
            .unwrap();
        let mut ids = Vec::new();
        for n in 0..SAGAS {
            ids.push(engine.start("batch", &n).await.unwrap());
        }
        while (seen.lock().len() as u64) < SAGAS {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sim.crash();
        drop(engine);
        seen.lock().clear();
        let options = sim.options().partitions(1).event_buffer(100_000);
        let engine = Engine::builder(sim.dir())
            .options(options)
            .register(reserve(seen.clone(), false))
            .unwrap()
            .open()
            .await
            .unwrap();
        let mut events = engine.subscribe();
        let last = *ids.last().unwrap();
        let outcome = engine.cancel(last, "changed my mind").await.unwrap();
        assert_eq!(outcome, skald_engine::CancelOutcome::TurningBack);
        for &id in &ids {
            let view = engine.wait(id).await.unwrap();
            let status = match id == last {
                true => SagaStatus::Compensated,
                false => SagaStatus::Completed,
            };
            assert_eq!(view.status, status, "{view:?}");
            assert_eq!(view.steps[0].attempts, 1, "resumed, not retried: {view:?}");
        }
        let seen = seen.lock().clone();
        let runs = |saga, compensation| seen.iter().filter(|&&s| s == (saga, compensation)).count();
        for &id in &ids {
            assert_eq!(runs(id, false), 1, "{id}: its attempt ran again once");
        }
        assert_eq!(runs(last, true), 1, "the cancelled saga was compensated");
        assert_eq!(seen.len() as u64, SAGAS + 1);
        // Its attempt was recorded as resumed before the cancel.
        let mut kinds = Vec::new();
        while let Ok(event) = events.try_recv() {
            if event.event.saga == last {
                kinds.push(event.event.kind.name());
            }
        }
        assert_eq!(
            kinds[..2],
            ["AttemptResumed", "CancelRequested"],
            "{kinds:?}"
        );
        engine.shutdown().await.unwrap();
    });
}
