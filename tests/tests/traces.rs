//! The spans of scripted runs on the deterministic simulation, caught by a
//! span processor in this test: per saga a root span and, as its
//! children, one span per attempt, compensation and operator action, with
//! their attributes, outcomes and span events (retries, breaker delays, a
//! cancel). And what is recorded in the log: the trace context with the
//! start, with tracing on, off, sampled out, or given by the caller.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::Status;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use parking_lot::Mutex;
use skald_engine::sim::simulate;
use skald_engine::{
    BreakerSettings, Engine, EventKind, OperatorAction, RetryPolicy, Saga, SagaId, SagaStatus,
    StartOptions, Step, StepContext, StepError, TraceContext, TraceParent, Tracing,
};

/// Keeps every span it is given.
#[derive(Debug, Clone, Default)]
struct Caught(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Caught {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().push(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// No two spans share an id (a backend would merge or flag them).
fn assert_unique_ids(spans: &[SpanData]) {
    let mut ids = std::collections::HashSet::new();
    for span in spans {
        let id = (span.span_context.trace_id(), span.span_context.span_id());
        assert!(ids.insert(id), "two spans with id {id:?}: {spans:#?}");
    }
}

fn attribute(span: &SpanData, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
        .unwrap_or_default()
}

/// (name, outcome attribute, event names) of a saga's spans, in the order
/// they were exported.
fn summary(spans: &[&SpanData]) -> Vec<(String, String, Vec<String>)> {
    spans
        .iter()
        .map(|s| {
            let outcome = match attribute(s, "skald.outcome") {
                none if none.is_empty() => attribute(s, "skald.saga.outcome"),
                outcome => outcome,
            };
            let events = s.events.iter().map(|e| e.name.to_string()).collect();
            (s.name.to_string(), outcome, events)
        })
        .collect()
}

fn row(name: &str, outcome: &str, events: &[&str]) -> (String, String, Vec<String>) {
    let events = events.iter().map(|e| e.to_string()).collect();
    (name.to_owned(), outcome.to_owned(), events)
}

/// The metrics test's script: 1 goes through; 2 retries its reservation;
/// 3 is declined at the pivot; 4's reservation never answers (three
/// timeouts, which open the inventory's breaker); the next 1 waits for
/// the breaker.
fn order(seen: Arc<Mutex<Vec<String>>>) -> Saga<u64> {
    let reserve = move |ctx: StepContext<u64>| {
        seen.lock().push(ctx.traceparent().unwrap_or_default());
        async move {
            match (*ctx.input(), ctx.attempt()) {
                (2, 1) => Err(StepError::retryable("inventory busy")),
                (4, _) => std::future::pending().await,
                _ => Ok(()),
            }
        }
    };
    let charge = |ctx: StepContext<u64>| async move {
        match *ctx.input() {
            3 => Err(StepError::permanent("card declined")),
            _ => Ok(()),
        }
    };
    Saga::<u64>::new("order")
        .step(
            Step::new("reserve", reserve)
                .compensate(|_ctx| async { Ok(()) })
                .service("inventory")
                .timeout(Duration::from_secs(1)),
        )
        .step(Step::new("charge", charge).pivot().service("payments"))
        .step(
            Step::new("ship", |_ctx| async { Ok::<_, StepError>(()) })
                .retriable()
                .service("shipping"),
        )
        .retry(RetryPolicy {
            attempts_max: 3,
            ..RetryPolicy::default()
        })
}

#[test]
fn every_saga_is_one_trace_of_its_attempts_compensations_and_events() {
    simulate(43, |sim| async move {
        let caught = Caught::default();
        let inventory = BreakerSettings {
            failures_to_open: 3,
            open_ms: 10_000,
            successes_to_close: 2,
        };
        let options = sim.options().breaker_for("inventory", inventory);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let engine = Engine::builder(sim.dir())
            .options(options)
            .tracing(Tracing::new(caught.clone()))
            .register(order(seen.clone()))
            .unwrap()
            .open()
            .await
            .unwrap();
        let mut ids = Vec::new();
        for input in [1, 2, 3, 4, 1u64] {
            let id = engine.start("order", &input).await.unwrap();
            engine.wait(id).await.unwrap();
            ids.push(id);
        }
        engine.shutdown().await.unwrap();
        let spans = caught.0.lock().clone();
        let of = |id: SagaId| -> Vec<&SpanData> {
            spans
                .iter()
                .filter(|s| attribute(s, "skald.saga.id") == id.to_string())
                .collect()
        };
        let expected = [
            vec![
                row("step reserve", "ok", &[]),
                row("step charge", "ok", &[]),
                row("step ship", "ok", &[]),
                row("saga order", "completed", &[]),
            ],
            vec![
                row("step reserve", "retryable_error", &[]),
                row("step reserve", "ok", &[]),
                row("step charge", "ok", &[]),
                row("step ship", "ok", &[]),
                row("saga order", "completed", &["retry scheduled"]),
            ],
            vec![
                row("step reserve", "ok", &[]),
                row("step charge", "permanent_error", &[]),
                row("compensate reserve", "ok", &[]),
                row("saga order", "compensated", &[]),
            ],
            vec![
                row("step reserve", "timeout", &["timed out"]),
                row("step reserve", "timeout", &["timed out"]),
                row("step reserve", "timeout", &["timed out"]),
                row("compensate reserve", "ok", &[]),
                row(
                    "saga order",
                    "compensated",
                    &["retry scheduled", "retry scheduled"],
                ),
            ],
            vec![
                row("step reserve", "ok", &[]),
                row("step charge", "ok", &[]),
                row("step ship", "ok", &[]),
                row(
                    "saga order",
                    "completed",
                    &["attempt delayed: circuit breaker open"],
                ),
            ],
        ];
        let mut handed_on = seen.lock().clone().into_iter();
        for (id, expected) in ids.iter().zip(expected) {
            let saga = of(*id);
            assert_eq!(summary(&saga), expected, "{id}");
            let root = saga.last().unwrap();
            assert_eq!(root.parent_span_id, opentelemetry::trace::SpanId::INVALID);
            assert_eq!(attribute(root, "skald.saga.definition"), "order");
            assert_eq!(attribute(root, "skald.saga.version"), "1");
            let trace = root.span_context.trace_id();
            for child in &saga[..saga.len() - 1] {
                assert_eq!(child.span_context.trace_id(), trace, "{id}");
                assert_eq!(child.parent_span_id, root.span_context.span_id(), "{id}");
                assert!(child.start_time <= child.end_time);
                assert!(root.start_time <= child.start_time && child.end_time <= root.end_time);
                if child.name == "step reserve" {
                    // What the step handed on is its attempt's span.
                    let parent: TraceParent = handed_on.next().unwrap().parse().unwrap();
                    assert_eq!(parent.span_id, child.span_context.span_id().to_bytes());
                    assert_eq!(parent.trace_id, trace.to_bytes());
                    let attempt = attribute(child, "skald.attempt");
                    let key = format!("{id}/reserve/execute/{attempt}");
                    assert_eq!(attribute(child, "skald.idempotency_key"), key);
                }
            }
            let status = match attribute(root, "skald.saga.outcome").as_str() {
                "completed" => Status::Ok,
                _ => Status::Unset,
            };
            assert_eq!(root.status, status, "{id}");
        }
        assert_eq!(spans.len(), 4 + 5 + 4 + 5 + 4, "no other spans");
        assert_unique_ids(&spans);
        let traces: std::collections::HashSet<_> =
            spans.iter().map(|s| s.span_context.trace_id()).collect();
        assert_eq!(traces.len(), 5, "a trace per saga");
    });
}

/// A saga whose compensation fails for good, so it waits for an operator;
/// one that is cancelled while its step hangs.
fn fragile() -> Saga<u64> {
    Saga::<u64>::new("fragile")
        .step(
            Step::new("hold", |_ctx: StepContext<u64>| async { Ok(()) })
                .compensate(|_ctx| async { Err(StepError::permanent("ledger closed")) }),
        )
        .step(
            Step::new("wait", |ctx: StepContext<u64>| async move {
                match *ctx.input() {
                    0 => Err::<(), _>(StepError::permanent("refused")),
                    _ => {
                        ctx.cancelled().await;
                        Err(StepError::permanent("cancelled"))
                    }
                }
            })
            .compensate(|_ctx| async { Ok(()) }),
        )
}

#[test]
fn an_operator_action_and_a_cancel_join_the_saga_trace() {
    simulate(44, |sim| async move {
        let caught = Caught::default();
        let engine = Engine::builder(sim.dir())
            .options(sim.options())
            .tracing(Tracing::new(caught.clone()))
            .register(fragile())
            .unwrap()
            .open()
            .await
            .unwrap();
        let failed = engine.start("fragile", &0u64).await.unwrap();
        assert_eq!(
            engine.wait(failed).await.unwrap().status,
            SagaStatus::Failed
        );
        let at_failure = caught.0.lock().len();
        engine
            .operate(
                failed,
                OperatorAction::MarkResolved,
                "ops",
                "refunded by hand",
            )
            .await
            .unwrap();
        assert_eq!(
            engine.wait(failed).await.unwrap().status,
            SagaStatus::Resolved
        );

        let cancelled = engine.start("fragile", &1u64).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        engine.cancel(cancelled, "customer asked").await.unwrap();
        engine.wait(cancelled).await.unwrap();
        engine.shutdown().await.unwrap();

        let spans = caught.0.lock().clone();
        let names = |id: SagaId| -> Vec<(String, String, Vec<String>)> {
            let of: Vec<&SpanData> = spans
                .iter()
                .filter(|s| attribute(s, "skald.saga.id") == id.to_string())
                .collect();
            summary(&of)
        };
        assert_eq!(
            names(failed),
            [
                row("step hold", "ok", &[]),
                row("step wait", "permanent_error", &[]),
                row("compensate hold", "permanent_error", &[]),
                row("saga fragile", "failed", &[]),
                row("operator MarkResolved", "", &[]),
                row("saga fragile ended", "resolved", &[]),
            ]
        );
        assert_eq!(at_failure, 4, "the saga's span ends when it fails");
        let failed_root = &spans[3];
        assert_eq!(
            failed_root.status,
            Status::error(
                "compensation of step \"hold\" failed (attempt 1, permanent): ledger closed"
            )
        );
        let operator = &spans[4];
        assert_eq!(attribute(operator, "skald.operator.who"), "ops");
        assert_eq!(
            attribute(operator, "skald.operator.why"),
            "refunded by hand"
        );
        for span in &spans[4..6] {
            assert_eq!(span.parent_span_id, failed_root.span_context.span_id());
            assert_eq!(
                span.span_context.trace_id(),
                failed_root.span_context.trace_id()
            );
        }
        assert_eq!(
            names(cancelled),
            [
                row("step hold", "ok", &[]),
                row("step wait", "permanent_error", &[]),
                row("compensate hold", "permanent_error", &[]),
                row("saga fragile", "failed", &["cancel requested"]),
            ]
        );
        assert_unique_ids(&spans);
    });
}

/// A pivot that panics until `fixed`: in doubt, the saga fails and waits
/// for an operator.
fn doubtful(fixed: Arc<std::sync::atomic::AtomicBool>) -> Saga<u64> {
    use std::sync::atomic::Ordering;
    Saga::<u64>::new("doubtful")
        .step(
            Step::new("reserve", |_ctx: StepContext<u64>| async { Ok(()) })
                .compensate(|_ctx| async { Ok(()) }),
        )
        .step(
            Step::new("pay", move |_ctx: StepContext<u64>| {
                let fixed = fixed.load(Ordering::SeqCst);
                async move {
                    assert!(fixed, "the gateway crashed");
                    Ok(())
                }
            })
            .pivot()
            .retry(RetryPolicy {
                attempts_max: 1,
                ..RetryPolicy::default()
            }),
        )
}

#[test]
fn a_saga_resumed_by_an_operator_has_one_root_and_the_rest_under_it() {
    simulate(46, |sim| async move {
        let caught = Caught::default();
        let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let engine = Engine::builder(sim.dir())
            .options(sim.options())
            .tracing(Tracing::new(caught.clone()))
            .register(doubtful(fixed.clone()))
            .unwrap()
            .open()
            .await
            .unwrap();
        let id = engine.start("doubtful", &0u64).await.unwrap();
        assert_eq!(engine.wait(id).await.unwrap().status, SagaStatus::Failed);
        fixed.store(true, std::sync::atomic::Ordering::SeqCst);
        let resume = OperatorAction::ResumeStep { step: 1 };
        engine
            .operate(id, resume, "ops", "gateway fixed")
            .await
            .unwrap();
        assert_eq!(engine.wait(id).await.unwrap().status, SagaStatus::Completed);
        engine.shutdown().await.unwrap();
        let spans = caught.0.lock().clone();
        let all: Vec<&SpanData> = spans.iter().collect();
        assert_eq!(
            summary(&all),
            [
                row("step reserve", "ok", &[]),
                row("step pay", "panic", &[]),
                row("saga doubtful", "failed", &[]),
                row("operator ResumeStep { step: 1 }", "", &[]),
                row("step pay", "ok", &[]),
                row("saga doubtful ended", "completed", &[]),
            ]
        );
        assert_unique_ids(&spans);
        let root = &spans[2];
        for span in spans.iter().filter(|s| s.name != "saga doubtful") {
            assert_eq!(
                span.parent_span_id,
                root.span_context.span_id(),
                "{}",
                span.name
            );
        }
    });
}

/// Spans describe durable history: the span of a result whose batch
/// failed to flush (the partition fail-stops) is never exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_of_a_result_that_never_became_durable_is_not_exported() {
    use skald_log::{SimFault, SimStorage};
    let storage = SimStorage::new();
    let caught = Caught::default();
    let (running_tx, running_rx) = std::sync::mpsc::channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let saga = {
        let release = release.clone();
        let running_tx = Mutex::new(running_tx);
        Saga::<u64>::new("held").step(
            Step::new("a", move |_ctx: StepContext<u64>| {
                let _ = running_tx.lock().send(());
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok(())
                }
            })
            .pivot(),
        )
    };
    let options = skald_engine::EngineOptions::default()
        .partitions(1)
        .storage(Arc::new(storage.clone()));
    let engine = Engine::builder("/engine")
        .options(options)
        .tracing(Tracing::new(caught.clone()))
        .register(saga)
        .unwrap()
        .open()
        .await
        .unwrap();
    let id = engine.start("held", &1u64).await.unwrap();
    tokio::task::spawn_blocking(move || running_rx.recv().unwrap())
        .await
        .unwrap();
    storage.inject(SimFault::FlushEio);
    release.notify_one();
    let outcome = engine.wait(id).await;
    assert!(outcome.is_err(), "the partition fail-stopped: {outcome:?}");
    let _ = engine.shutdown().await;
    let names: Vec<String> = caught.0.lock().iter().map(|s| s.name.to_string()).collect();
    assert!(
        names.is_empty(),
        "spans of events that are not durable: {names:?}"
    );
}

/// The trace context of each saga's `Started` event, from the event
/// stream.
async fn started_contexts(
    events: &mut tokio::sync::broadcast::Receiver<Arc<skald_engine::EngineEvent>>,
) -> Vec<Option<TraceContext>> {
    let mut contexts = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventKind::Started { trace, .. } = &event.event.kind {
            contexts.push(*trace);
        }
    }
    contexts
}

#[test]
fn the_log_records_the_context_with_the_start_on_or_off_sampled_or_not() {
    const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let caller: TraceParent = CALLER.parse().unwrap();
    simulate(45, |sim| async move {
        let ok = || Saga::<u64>::new("ok").step(Step::new("a", |_ctx| async { Ok(()) }).pivot());
        // Tracing off: nothing recorded unless the caller gives a context.
        let engine = Engine::builder(sim.dir())
            .options(sim.options().partitions(1))
            .register(ok())
            .unwrap()
            .open()
            .await
            .unwrap();
        let mut events = engine.subscribe();
        let plain = engine.start("ok", &1u64).await.unwrap();
        let options = StartOptions::default().trace_parent(caller);
        let given = engine.start_with("ok", &2u64, options).await.unwrap();
        engine.wait(plain).await.unwrap();
        engine.wait(given).await.unwrap();
        let contexts = started_contexts(&mut events).await;
        engine.shutdown().await.unwrap();
        assert_eq!(contexts.len(), 2);
        assert_eq!(contexts[0], None);
        let recorded = contexts[1].expect("the caller's context is recorded");
        assert_eq!(recorded.trace_id, caller.trace_id);
        assert_eq!(recorded.parent_span, Some(caller.span_id));
        assert!(recorded.sampled());

        // Tracing on, nothing sampled: a context (flags 0) and no spans.
        let caught = Caught::default();
        let engine = Engine::builder(sim.dir())
            .options(sim.options().partitions(1))
            .tracing(Tracing::new(caught.clone()).sample_ratio(0.0))
            .register(ok())
            .unwrap()
            .open()
            .await
            .unwrap();
        let mut events = engine.subscribe();
        let id = engine.start("ok", &3u64).await.unwrap();
        engine.wait(id).await.unwrap();
        let contexts = started_contexts(&mut events).await;
        engine.shutdown().await.unwrap();
        let recorded = contexts[0].expect("a context with tracing on");
        assert!(!recorded.sampled());
        assert_eq!(recorded.parent_span, None);
        assert!(
            caught.0.lock().is_empty(),
            "nothing sampled, nothing exported"
        );

        // A ratio outside 0..=1 is refused at the open.
        let refused = Engine::builder(sim.dir())
            .options(sim.options().partitions(1))
            .tracing(Tracing::new(Caught::default()).sample_ratio(1.5))
            .open()
            .await;
        let Err(error) = refused else {
            panic!("a ratio of 1.5 was accepted");
        };
        let error = error.to_string();
        assert!(
            error.contains("sample ratio must be within 0..=1, not 1.5"),
            "{error}"
        );
    });
}
