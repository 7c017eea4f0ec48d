//! A saga's lifecycle as a caller sees it: what `cancel` says it did, the
//! cancellation signal a handler can watch (cancel, timeout, shutdown),
//! subscriptions that end at shutdown, lookup by deduplication key, and
//! views of ended sagas without a current step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skald_engine::{
    CancelOutcome, Engine, EngineOptions, EventKind, RetryPolicy, Saga, SagaId, SagaStatus, Step,
    StepContext, StepError,
};
use tokio::sync::{broadcast, Notify};

/// How the middle step behaves.
#[derive(Clone, Copy)]
enum Middle {
    /// Succeeds at once.
    Quick,
    /// Waits for the cancellation signal, then fails (so the saga turns
    /// back at once instead of waiting for a timeout).
    StopsOnCancel,
    /// Never answers; a spawned task notes when the signal fires.
    Hangs,
}

struct World {
    middle: Middle,
    /// The pivot waits for this before it answers.
    pivot_gate: Arc<Notify>,
    gated_pivot: bool,
    /// Set by the task that watched the signal.
    signalled: Arc<AtomicBool>,
    middle_timeout: Duration,
}

/// `reserve` (compensatable), `middle` (compensatable, see [`Middle`]),
/// `charge` (the pivot), `ship` (retriable, hangs when `hang_after_pivot`).
fn saga(world: &World, hang_after_pivot: bool) -> Saga<u64> {
    let (middle, signalled) = (world.middle, world.signalled.clone());
    let middle_step = move |ctx: StepContext<u64>| {
        let signalled = signalled.clone();
        async move {
            match middle {
                Middle::Quick => Ok::<_, StepError>(()),
                Middle::StopsOnCancel => {
                    ctx.cancelled().await;
                    signalled.store(true, Ordering::SeqCst);
                    Err(StepError::retryable("stopped: the saga was cancelled"))
                }
                Middle::Hangs => {
                    tokio::spawn(async move {
                        ctx.cancelled().await;
                        signalled.store(true, Ordering::SeqCst);
                    });
                    std::future::pending().await
                }
            }
        }
    };
    let (gate, gated) = (world.pivot_gate.clone(), world.gated_pivot);
    let pivot = move |_ctx: StepContext<u64>| {
        let gate = gate.clone();
        async move {
            if gated {
                gate.notified().await;
            }
            Ok::<_, StepError>(())
        }
    };
    let ship = move |_ctx: StepContext<u64>| async move {
        if hang_after_pivot {
            std::future::pending::<()>().await;
        }
        Ok::<_, StepError>(())
    };
    Saga::<u64>::new("order")
        .step(
            Step::new("reserve", |_ctx| async { Ok::<_, StepError>(()) })
                .compensate(|_ctx| async { Ok(()) }),
        )
        .step(
            Step::new("middle", middle_step)
                .compensate(|_ctx| async { Ok(()) })
                .timeout(world.middle_timeout),
        )
        .step(Step::new("charge", pivot).pivot())
        .step(Step::new("ship", ship).retriable())
        .retry(RetryPolicy::no_retry())
}

fn world(middle: Middle, gated_pivot: bool) -> World {
    World {
        middle,
        pivot_gate: Arc::new(Notify::new()),
        gated_pivot,
        signalled: Arc::new(AtomicBool::new(false)),
        middle_timeout: Duration::from_millis(200),
    }
}

/// Waits (at most 10 s, else fails) until `flag` is set.
async fn eventually(flag: &AtomicBool, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

async fn open(dir: &tempfile::TempDir, saga: Saga<u64>) -> Engine {
    Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(2))
        .register(saga)
        .unwrap()
        .open()
        .await
        .unwrap()
}

/// Waits for `saga`'s event that `wanted` picks.
async fn until(
    events: &mut broadcast::Receiver<Arc<skald_engine::EngineEvent>>,
    saga: SagaId,
    wanted: impl Fn(&EventKind) -> bool,
) {
    loop {
        let event = events.recv().await.expect("the stream stays open");
        if event.event.saga == saga && wanted(&event.event.kind) {
            return;
        }
    }
}

fn started(step: u16) -> impl Fn(&EventKind) -> bool {
    move |kind| matches!(kind, EventKind::StepStarted { step: s, .. } if *s == step)
}

#[tokio::test]
async fn a_cancel_before_the_pivot_turns_back_and_signals_the_running_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let world = world(Middle::StopsOnCancel, false);
    let engine = open(&dir, saga(&world, false)).await;
    let mut events = engine.subscribe();
    let id = engine.start("order", &1u64).await.unwrap();
    until(&mut events, id, started(1)).await;
    let outcome = engine.cancel(id, "customer asked").await.unwrap();
    assert_eq!(outcome, CancelOutcome::TurningBack);
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Compensated);
    assert!(
        world.signalled.load(Ordering::SeqCst),
        "the handler saw the signal"
    );
    // Well before the step's 200 ms timeout: the handler stopped on the
    // signal. An ended saga has no current step and no failure.
    assert_eq!(view.current_step, None);
    assert_eq!(view.failure, None);
    assert_eq!(view.cancel_reason.as_deref(), Some("customer asked"));
    let again = engine.cancel(id, "again").await.unwrap();
    assert_eq!(again, CancelOutcome::AlreadyEnded(SagaStatus::Compensated));
    let missing = engine.cancel(SagaId(999_999), "nobody").await.unwrap();
    assert_eq!(missing, CancelOutcome::NotFound);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_while_the_pivot_runs_says_so_and_the_saga_completes_if_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let world = world(Middle::Quick, true);
    let engine = open(&dir, saga(&world, false)).await;
    let mut events = engine.subscribe();
    let id = engine.start("order", &2u64).await.unwrap();
    until(&mut events, id, started(2)).await;
    let outcome = engine.cancel(id, "late").await.unwrap();
    assert_eq!(outcome, CancelOutcome::PivotInFlight);
    world.pivot_gate.notify_one();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(view.current_step, None, "an ended saga has no current step");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_after_the_pivot_is_too_late_and_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let world = world(Middle::Quick, false);
    let engine = open(&dir, saga(&world, true)).await;
    let mut events = engine.subscribe();
    let id = engine.start("order", &3u64).await.unwrap();
    until(&mut events, id, started(3)).await;
    let outcome = engine.cancel(id, "too late").await.unwrap();
    assert_eq!(outcome, CancelOutcome::TooLate);
    let view = engine.view(id).await.unwrap().unwrap();
    assert_eq!(view.status, SagaStatus::Running);
    assert_eq!(view.cancel_reason, None, "nothing was recorded");
    assert_eq!(view.current_step.as_deref(), Some("ship"));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_signal_fires_when_an_attempt_times_out_and_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let world = world(Middle::Hangs, false);
    let engine = open(&dir, saga(&world, false)).await;
    let id = engine.start("order", &4u64).await.unwrap();
    // The 200 ms timeout: the attempt fails (no retries), the saga turns
    // back, and the task the handler left behind saw the signal.
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Compensated);
    eventually(&world.signalled, "the timeout fired the signal").await;
    engine.shutdown().await.unwrap();

    // At shutdown: the attempt in flight (an hour from its timeout) is
    // abandoned, its signal fired.
    let world = World {
        signalled: Arc::new(AtomicBool::new(false)),
        middle_timeout: Duration::from_secs(3_600),
        ..world
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir, saga(&world, false)).await;
    let mut events = engine.subscribe();
    let id = engine.start("order", &5u64).await.unwrap();
    until(&mut events, id, started(1)).await;
    engine.shutdown().await.unwrap();
    eventually(&world.signalled, "the shutdown fired the signal").await;
}

#[tokio::test]
async fn subscriptions_end_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let world = world(Middle::Quick, false);
    let engine = open(&dir, saga(&world, false)).await;
    let mut events = engine.subscribe();
    let id = engine.start("order", &6u64).await.unwrap();
    engine.wait(id).await.unwrap();
    engine.shutdown().await.unwrap();
    // The buffered events, then the end: no hang while `engine` lives.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = 0;
        loop {
            match events.recv().await {
                Ok(_) => seen += 1,
                Err(broadcast::error::RecvError::Closed) => return seen,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
    })
    .await
    .expect("the stream ends at shutdown");
    assert!(drained > 0, "the saga's events came first");
    let late = engine.subscribe();
    assert!(matches!(
        late.resubscribe().try_recv(),
        Err(broadcast::error::TryRecvError::Closed)
    ));
}

#[tokio::test]
async fn a_saga_is_found_by_its_deduplication_key() {
    let dir = tempfile::tempdir().unwrap();
    let world = world(Middle::Quick, false);
    let engine = open(&dir, saga(&world, false)).await;
    let id = engine
        .start_with_key("order", &7u64, "order-7")
        .await
        .unwrap();
    assert_eq!(engine.saga_by_key("order-7").await.unwrap(), Some(id));
    assert_eq!(engine.saga_by_key("order-8").await.unwrap(), None);
    engine.shutdown().await.unwrap();
    // Across a restart too: the key is in the log.
    let engine = open(&dir, saga(&world, false)).await;
    assert_eq!(engine.saga_by_key("order-7").await.unwrap(), Some(id));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_operator_cannot_turn_back_a_saga_past_its_pivot() {
    let dir = tempfile::tempdir().unwrap();
    let saga = Saga::<u64>::new("shipped")
        .step(
            Step::new("reserve", |_ctx| async { Ok::<_, StepError>(()) })
                .compensate(|_ctx| async { Ok(()) }),
        )
        .step(Step::new("charge", |_ctx| async { Ok::<_, StepError>(()) }).pivot())
        .step(
            Step::new("ship", |_ctx| async {
                Err::<(), _>(StepError::permanent("address unknown"))
            })
            .retriable(),
        );
    let engine = open(&dir, saga).await;
    let id = engine.start("shipped", &1u64).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Failed);
    let refused = engine
        .operate(
            id,
            skald_engine::OperatorAction::TurnBack { step: 2 },
            "ops",
            "undo it all",
        )
        .await;
    assert!(
        matches!(refused, Err(skald_engine::EngineError::Refused(_))),
        "{refused:?}"
    );
    engine.shutdown().await.unwrap();
}
