//! The engine end to end on real logs in temporary directories: the API,
//! retries, timeouts, panics, breakers, cancels, operators, keys, pages,
//! subscriptions, shutdown and the resume of unfinished sagas at open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use skald_engine::{
    Backoff, BreakerSettings, BreakerState, CancelOutcome, Engine, EngineError, EngineOptions,
    EventKind, ListFilter, OperatorAction, RetryPolicy, Saga, SagaStatus, Step, StepError,
    StepPhase,
};
use tempfile::TempDir;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Job {
    name: String,
}

fn job(name: &str) -> Job {
    Job { name: name.into() }
}

/// What the steps did, in order, keyed by idempotency key.
#[derive(Default)]
struct Journal {
    entries: Mutex<Vec<String>>,
    keys: Mutex<HashMap<String, u32>>,
}

impl Journal {
    fn note(&self, entry: String, key: String) {
        self.entries.lock().push(entry);
        *self.keys.lock().entry(key).or_default() += 1;
    }

    fn entries(&self) -> Vec<String> {
        self.entries.lock().clone()
    }
}

fn fast_retry(attempts_max: u32) -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff::Fixed {
            delay: Duration::from_millis(5),
        },
        attempts_max,
        delay_max: Duration::from_millis(5),
        jitter: 0.0,
    }
}

/// A three-step saga: `a` and `b` compensatable, `c` the pivot. `plan`
/// says how `b` behaves on each attempt: 's' succeed, 'r' retryable
/// failure, 'p' permanent failure, '!' panic, 'h' hang.
fn saga(journal: Arc<Journal>, plan: &'static str) -> Saga<Job> {
    let attempts = Arc::new(AtomicU32::new(0));
    let note = |journal: &Arc<Journal>, what: &'static str| {
        let journal = journal.clone();
        move |ctx: skald_engine::StepContext<Job>| {
            let journal = journal.clone();
            async move {
                journal.note(
                    format!("{what} {}", ctx.input().name),
                    ctx.idempotency_key(),
                );
                Ok::<_, StepError>(what.len())
            }
        }
    };
    let b_journal = journal.clone();
    let b = move |ctx: skald_engine::StepContext<Job>| {
        let journal = b_journal.clone();
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) as usize;
        async move {
            let code = plan.as_bytes().get(attempt).copied().unwrap_or(b's');
            match code {
                b'r' => Err(StepError::retryable("busy")),
                b'p' => Err(StepError::permanent("declined")),
                b'!' => panic!("step b exploded"),
                b'h' => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                _ => {
                    journal.note(format!("b {}", ctx.input().name), ctx.idempotency_key());
                    Ok(format!("b-output-{}", ctx.attempt()))
                }
            }
        }
    };
    Saga::new("three")
        .step(
            Step::new("a", note(&journal, "a"))
                .compensate({
                    let journal = journal.clone();
                    move |ctx| {
                        let journal = journal.clone();
                        async move {
                            journal.note(
                                format!("undo-a {}", ctx.input().name),
                                ctx.idempotency_key(),
                            );
                            Ok(())
                        }
                    }
                })
                .service("svc-a"),
        )
        .step(
            Step::new("b", b)
                .compensate({
                    let journal = journal.clone();
                    move |ctx| {
                        let journal = journal.clone();
                        async move {
                            journal.note(
                                format!("undo-b {}", ctx.input().name),
                                ctx.idempotency_key(),
                            );
                            Ok(())
                        }
                    }
                })
                .timeout(Duration::from_millis(200))
                .service("svc-b"),
        )
        .step(Step::new("c", note(&journal, "c")).pivot())
        .retry(fast_retry(3))
}

async fn open(dir: &TempDir, saga: Saga<Job>) -> Engine {
    open_with(dir, saga, EngineOptions::default().partitions(2)).await
}

async fn open_with(dir: &TempDir, saga: Saga<Job>, options: EngineOptions) -> Engine {
    Engine::builder(dir.path())
        .options(options)
        .register(saga)
        .unwrap()
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_saga_runs_its_steps_in_order_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    let engine = open(&dir, saga(journal.clone(), "s")).await;
    let id = engine.start("three", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(journal.entries(), ["a x", "b x", "c x"]);
    assert_eq!(view.output::<String>("b").unwrap().unwrap(), "b-output-1");
    assert_eq!(view.output::<usize>("a").unwrap().unwrap(), 1);
    assert_eq!(view.input::<Job>().unwrap(), job("x"));
    assert!(view
        .steps
        .iter()
        .all(|s| s.phase == StepPhase::Succeeded && s.attempts == 1));
    assert_eq!(view.current_step, None);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn retries_panics_and_timeouts_are_failed_attempts_that_retry() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    let engine = open(&dir, saga(journal.clone(), "r!h").retry(fast_retry(5))).await;
    let id = engine.start("three", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed, "{view:#?}");
    let b = &view.steps[1];
    assert_eq!(b.attempts, 4);
    // The 4th attempt's key differs from every earlier one.
    assert_eq!(view.output::<String>("b").unwrap().unwrap(), "b-output-4");
    let keys = journal.keys.lock().clone();
    assert!(keys.keys().any(|k| k.ends_with("/b/execute/4")), "{keys:?}");
    assert!(keys.values().all(|&n| n == 1));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_permanent_failure_compensates_the_completed_steps_in_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    // b fails for good at once; only a is compensated.
    let engine = open(&dir, saga(journal.clone(), "p")).await;
    let id = engine.start("three", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(journal.entries(), ["a x", "undo-a x"]);
    assert_eq!(view.steps[1].last_error.as_deref(), Some("declined"));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn retries_run_out_then_the_saga_turns_back() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    let engine = open(&dir, saga(journal.clone(), "rrrr")).await;
    let id = engine.start("three", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(view.steps[1].attempts, 3, "attempts_max is 3");
    assert_eq!(journal.entries(), ["a x", "undo-a x"]);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_while_a_step_hangs_waits_for_its_timeout_then_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    let engine = open(&dir, saga(journal.clone(), "h")).await;
    let mut events = engine.subscribe();
    let id = engine.start("three", &job("x")).await.unwrap();
    // Wait until b is running.
    loop {
        let event = events.recv().await.unwrap();
        if event.event.saga == id
            && matches!(event.event.kind, EventKind::StepStarted { step: 1, .. })
        {
            break;
        }
    }
    let outcome = engine
        .cancel(id, "customer changed their mind")
        .await
        .unwrap();
    assert_eq!(outcome, CancelOutcome::TurningBack);
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(
        view.cancel_reason.as_deref(),
        Some("customer changed their mind")
    );
    // b timed out: in doubt, so it is compensated too, before a.
    assert_eq!(journal.entries(), ["a x", "undo-b x", "undo-a x"]);
    assert!(view.steps[1]
        .last_error
        .as_deref()
        .unwrap()
        .contains("timed out"));
    assert_eq!(view.steps[1].in_doubt, [1]);
    let again = engine.cancel(id, "again").await.unwrap();
    assert_eq!(again, CancelOutcome::AlreadyEnded(SagaStatus::Compensated));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_key_deduplicates_starts() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    let engine = open(&dir, saga(journal.clone(), "s")).await;
    let first = engine
        .start_with_key("three", &job("x"), "order-1")
        .await
        .unwrap();
    let second = engine
        .start_with_key("three", &job("y"), "order-1")
        .await
        .unwrap();
    assert_eq!(first, second);
    engine.wait(first).await.unwrap();
    assert_eq!(journal.entries(), ["a x", "b x", "c x"]);
    engine.shutdown().await.unwrap();
    // The key survives a restart.
    let engine = open(&dir, saga(journal.clone(), "s")).await;
    let third = engine
        .start_with_key("three", &job("z"), "order-1")
        .await
        .unwrap();
    assert_eq!(first, third);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_starts_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir, saga(Arc::default(), "s")).await;
    let unknown = engine.start("nope", &job("x")).await;
    assert!(
        matches!(unknown, Err(EngineError::UnknownDefinition { ref definition }) if definition == "nope")
    );
    let wrong = engine.start("three", &42u32).await;
    assert!(
        matches!(wrong, Err(EngineError::InvalidInput { ref definition, .. }) if definition == "three"),
        "{wrong:?}"
    );
    let missing = engine.view(skald_engine::SagaId(999_999)).await.unwrap();
    assert!(missing.is_none());
    engine.shutdown().await.unwrap();
    let after = engine.start("three", &job("x")).await;
    assert!(matches!(after, Err(EngineError::ShutDown)), "{after:?}");
}

#[tokio::test]
async fn list_filters_and_pages_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    let engine = open(&dir, saga(journal, "")).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let id = engine.start("three", &job(&i.to_string())).await.unwrap();
        engine.wait(id).await.unwrap();
        ids.push(id);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut filter = ListFilter {
        limit: 3,
        ..ListFilter::default()
    };
    loop {
        let page = engine.list(filter.clone()).await.unwrap();
        assert!(page.sagas.len() <= 3);
        seen.extend(page.sagas.iter().map(|s| s.id));
        match page.next_after {
            Some(after) => filter.after = Some(after),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let none = engine
        .list(ListFilter {
            status: Some(SagaStatus::Compensated),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(none.sagas.is_empty());
    let other = engine
        .list(ListFilter {
            definition: Some("other".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(other.sagas.is_empty());
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_compensation_fails_the_saga_and_an_operator_retries_it() {
    let dir = tempfile::tempdir().unwrap();
    let undo_failures = Arc::new(AtomicU32::new(5));
    let failures = undo_failures.clone();
    let saga = Saga::<Job>::new("fragile")
        .step(
            Step::new("a", |_ctx| async { Ok::<_, StepError>(()) }).compensate(move |_ctx| {
                let failures = failures.clone();
                async move {
                    if failures.load(Ordering::SeqCst) > 0 {
                        failures.fetch_sub(1, Ordering::SeqCst);
                        return Err(StepError::retryable("ledger down"));
                    }
                    Ok(())
                }
            }),
        )
        .step(
            Step::new("b", |_ctx| async {
                Err::<(), _>(StepError::permanent("no"))
            })
            .pivot(),
        )
        .retry(fast_retry(2));
    let engine = Engine::builder(dir.path())
        .options(
            EngineOptions::default()
                .partitions(1)
                .breaker(BreakerSettings {
                    // This is about operators: keep the ledger's breaker out of it.
                    failures_to_open: 100,
                    ..BreakerSettings::default()
                }),
        )
        .register(saga)
        .unwrap()
        .open()
        .await
        .unwrap();
    let id = engine.start("fragile", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Failed);
    assert!(
        view.failure
            .as_deref()
            .unwrap()
            .contains("compensation of step \"a\""),
        "{view:?}"
    );
    // Resolving needs a Failed saga; resuming needs a failed forward step
    // with nothing compensated: refused here, with the reason.
    let refused = engine
        .operate(id, OperatorAction::ResumeStep { step: 1 }, "ops", "try")
        .await;
    assert!(
        matches!(refused, Err(EngineError::Refused(_))),
        "{refused:?}"
    );
    engine
        .operate(
            id,
            OperatorAction::RetryCompensation,
            "ops",
            "ledger is back",
        )
        .await
        .unwrap();
    let view = engine.wait(id).await.unwrap();
    // The operator grants a fresh budget (attempts_max 2: two more
    // attempts, not one); both fail: Failed again, the real error kept.
    assert_eq!(view.status, SagaStatus::Failed);
    assert_eq!(view.steps[0].compensation_attempts, 4);
    assert_eq!(view.steps[0].last_error.as_deref(), Some("ledger down"));
    engine
        .operate(id, OperatorAction::RetryCompensation, "ops", "really back")
        .await
        .unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(view.steps[0].compensation_attempts, 6);
    assert_eq!(view.operator_actions.len(), 2);
    assert_eq!(view.operator_actions[0].0, "ops");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_open_breaker_puts_attempts_off_without_using_them_up() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    // The service fails twice, then is back.
    let saga = Saga::<Job>::new("flaky")
        .step(
            Step::new("call", move |_ctx| {
                let calls = counted.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err(StepError::retryable("503"));
                    }
                    Ok(())
                }
            })
            .compensate(|_ctx| async { Ok(()) })
            .service("shaky"),
        )
        .retry(fast_retry(3));
    let options = EngineOptions::default().partitions(1).breaker_for(
        "shaky",
        BreakerSettings {
            failures_to_open: 2,
            open_ms: 300,
            successes_to_close: 1,
        },
    );
    let engine = Engine::builder(dir.path())
        .options(options)
        .register(saga)
        .unwrap()
        .open()
        .await
        .unwrap();
    let mut events = engine.subscribe();
    let id = engine.start("flaky", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    // Two real calls opened the breaker; the third attempt waited for it
    // (durably: an AttemptDelayed) instead of failing, and went through.
    assert_eq!(view.status, SagaStatus::Completed, "{view:#?}");
    assert_eq!(view.steps[0].attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let mut delayed = 0;
    while let Ok(event) = events.try_recv() {
        delayed += usize::from(matches!(
            event.event.kind,
            EventKind::AttemptDelayed { attempt: 3, .. }
        ));
    }
    assert!(delayed >= 1, "the third attempt was put off");
    let breakers = engine.breakers();
    assert_eq!(breakers.len(), 1);
    assert_eq!(breakers[0].service, "shaky");
    assert_eq!(breakers[0].settings.failures_to_open, 2);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_operator_resets_a_breaker_and_the_default_settings_apply_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let saga = Saga::<Job>::new("down")
        .step(
            Step::new("call", |_ctx| async {
                Err::<(), _>(StepError::retryable("503"))
            })
            .compensate(|_ctx| async { Ok(()) })
            .service("down-service"),
        )
        .retry(fast_retry(1));
    let settings = BreakerSettings {
        failures_to_open: 1,
        open_ms: 3_600_000,
        successes_to_close: 1,
    };
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(1).breaker(settings))
        .register(saga)
        .unwrap()
        .open()
        .await
        .unwrap();
    let id = engine.start("down", &job("x")).await.unwrap();
    assert_eq!(
        engine.wait(id).await.unwrap().status,
        SagaStatus::Compensated
    );
    let breakers = engine.breakers();
    assert!(
        matches!(breakers[0].state, BreakerState::Open { .. }),
        "{breakers:?}"
    );
    assert!(engine.reset_breaker("down-service"));
    assert_eq!(
        engine.breakers()[0].state,
        BreakerState::Closed { failures: 0 }
    );
    assert!(!engine.reset_breaker("no-such-service"));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_step_running_at_shutdown_runs_again_at_open_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    let engine = open(&dir, saga(journal.clone(), "h")).await;
    let mut events = engine.subscribe();
    let id = engine.start("three", &job("x")).await.unwrap();
    let started_key = loop {
        let event = events.recv().await.unwrap();
        if let EventKind::StepStarted {
            step: 1, attempt, ..
        } = event.event.kind
        {
            break format!("{id}/b/execute/{attempt}");
        }
    };
    engine.shutdown().await.unwrap();
    assert_eq!(journal.entries(), ["a x"]);

    // b's plan now succeeds at once (a fresh counter).
    let engine = open(&dir, saga(journal.clone(), "s")).await;
    assert_eq!(engine.recovered(), 1);
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(journal.entries(), ["a x", "b x", "c x"]);
    assert!(
        journal.keys.lock().contains_key(&started_key),
        "{started_key}"
    );
    assert_eq!(view.steps[1].attempts, 1);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn reopening_with_another_partition_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir, saga(Arc::default(), "s")).await;
    engine.shutdown().await.unwrap();
    let result = Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(3))
        .register(saga(Arc::default(), "s"))
        .unwrap()
        .open()
        .await;
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            EngineError::PartitionCount {
                found: 2,
                asked: 3,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn subscribers_see_every_event_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with(
        &dir,
        saga(Arc::default(), "r"),
        EngineOptions::default().partitions(1),
    )
    .await;
    let mut events = engine.subscribe();
    let id = engine.start("three", &job("x")).await.unwrap();
    engine.wait(id).await.unwrap();
    let mut kinds = Vec::new();
    let mut last_lsn = 0;
    while let Ok(event) = events.try_recv() {
        assert!(event.lsn > last_lsn);
        last_lsn = event.lsn;
        kinds.push(event.event.kind.name());
    }
    assert_eq!(
        kinds,
        [
            "Started",
            "StepStarted",
            "StepSucceeded",
            "StepStarted",
            "StepFailed",
            "RetryScheduled",
            "StepStarted",
            "StepSucceeded",
            "StepStarted",
            "StepSucceeded",
            "Completed"
        ]
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_saga_deadline_turns_the_saga_back_on_virtual_time() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::default());
    // b retries every 5 ms for up to 1000 attempts; the saga has 1 s.
    let saga = saga(journal.clone(), "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr")
        .retry(RetryPolicy {
            attempts_max: 1000,
            ..fast_retry(1)
        })
        .timeout(Duration::from_secs(1));
    // No flush waits: on paused time, tokio jumps the clock whenever the
    // runtime is idle, and a wait for a real msync would look idle.
    let options = EngineOptions::default()
        .partitions(1)
        .durability(skald_engine::Durability::OsOnly);
    let engine = open_with(&dir, saga, options).await;
    let id = engine.start("three", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Compensated, "{view:#?}");
    assert_eq!(journal.entries(), ["a x", "undo-a x"]);
    // Five consecutive failures open b's breaker (the default settings);
    // the next attempts are put off, not used up, until the deadline.
    assert_eq!(view.steps[1].attempts, 5, "{view:#?}");
    assert!(view.updated_at - view.started_at >= 1000);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panic_before_the_first_await_is_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let saga = Saga::<Job>::new("sync-panic")
        .step(
            Step::new("boom", move |ctx: skald_engine::StepContext<Job>| {
                // Panics in the closure itself, not in its future.
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("no future for {}", ctx.input().name);
                }
                async { Ok::<_, StepError>(()) }
            })
            .compensate(|_ctx| async { Ok(()) }),
        )
        .retry(fast_retry(3));
    let engine = open_with(&dir, saga, EngineOptions::default().partitions(1)).await;
    let id = engine.start("sync-panic", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(view.steps[0].attempts, 2);
    assert!(view.steps[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("no future for x"));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_half_open_trial_that_hangs_counts_as_a_failure_and_frees_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    // Call 1 fails (the breaker opens), call 2 (the half-open trial) hangs
    // past its timeout, call 3 succeeds. Attempts in between fail fast.
    let saga = Saga::<Job>::new("trial")
        .step(
            Step::new("call", move |_ctx| {
                let call = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match call {
                        0 => Err(StepError::retryable("503")),
                        1 => std::future::pending().await,
                        _ => Ok(()),
                    }
                }
            })
            .compensate(|_ctx| async { Ok(()) })
            .timeout(Duration::from_millis(100))
            .service("shaky"),
        )
        .retry(RetryPolicy {
            attempts_max: 1000,
            ..fast_retry(1)
        });
    let options = EngineOptions::default()
        .partitions(1)
        .breaker(BreakerSettings {
            failures_to_open: 1,
            open_ms: 50,
            successes_to_close: 1,
        });
    let engine = open_with(&dir, saga, options).await;
    let id = engine.start("trial", &job("x")).await.unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed, "{view:#?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn inputs_too_large_for_a_record_are_refused_and_big_bursts_do_not_stop_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let saga = Saga::<Job>::new("big").step(
        Step::new("echo", |ctx: skald_engine::StepContext<Job>| {
            let size = ctx.input().name.len();
            async move { Ok::<_, StepError>(size) }
        })
        .compensate(|_ctx| async { Ok(()) }),
    );
    // 64 KiB segments: a few 20 KB inputs fill one.
    let options = EngineOptions::default()
        .partitions(1)
        .segment_size_bytes(64 * 1024);
    let engine = open_with(&dir, saga, options).await;
    let huge = engine.start("big", &job(&"x".repeat(100_000))).await;
    let message = huge.unwrap_err().to_string();
    assert!(
        message.contains("at most") && message.contains("log record"),
        "{message}"
    );
    let mut starts = Vec::new();
    for i in 0..20 {
        let engine = engine.clone();
        starts.push(tokio::spawn(async move {
            let id = engine
                .start("big", &job(&format!("{i}{}", "y".repeat(20_000))))
                .await?;
            engine.wait(id).await
        }));
    }
    for start in starts {
        let view = start.await.unwrap().unwrap();
        assert_eq!(view.status, SagaStatus::Completed);
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_saga_whose_definition_is_gone_is_parked_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir, saga(Arc::default(), "h")).await;
    let id = engine.start("three", &job("x")).await.unwrap();
    engine.shutdown().await.unwrap();
    let other = Saga::<Job>::new("other").step(
        Step::new("only", |_ctx| async { Ok::<_, StepError>(()) })
            .compensate(|_ctx| async { Ok(()) }),
    );
    let engine = open(&dir, other).await;
    let waited = engine.wait(id).await;
    assert!(
        matches!(waited, Err(EngineError::SagaParked { ref definition, .. }) if definition == "three"),
        "{waited:?}"
    );
    let view = engine.view(id).await.unwrap().unwrap();
    assert_eq!(view.status, SagaStatus::Running);
    assert_eq!(view.steps[0].id, "#0");
    let all = engine
        .list(ListFilter {
            limit: usize::MAX,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.sagas.len(), 1);
    engine.shutdown().await.unwrap();
}
