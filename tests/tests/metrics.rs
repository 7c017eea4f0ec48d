//! The Prometheus metrics after a scripted run on the deterministic
//! simulation: successes, a retry, a permanent failure, attempts that time
//! out, and a circuit breaker that opens. Every count and label is checked
//! exactly, from the text exposition a scrape would get.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::registry::Registry;
use skald_engine::sim::simulate;
use skald_engine::{
    BreakerSettings, Engine, RetryPolicy, Saga, SagaStatus, Step, StepContext, StepError,
};

/// One saga definition whose behaviour the input picks: 1 goes through;
/// 2 fails its first reservation (retryable) and then goes through; 3 is
/// declined at the pivot (permanent); 4 never answers its reservation, so
/// each of its three attempts times out and the saga turns back. The third
/// timeout opens the inventory's breaker, so the saga started next (input
/// 1 again) waits for the breaker's trial before it reserves.
fn order() -> Saga<u64> {
    let reserve = |ctx: StepContext<u64>| async move {
        match (*ctx.input(), ctx.attempt()) {
            (2, 1) => Err(StepError::retryable("inventory busy")),
            (4, _) => std::future::pending().await,
            _ => Ok(()),
        }
    };
    let charge = |ctx: StepContext<u64>| async move {
        match *ctx.input() {
            3 => Err(StepError::permanent("card declined")),
            _ => Ok(()),
        }
    };
    let policy = RetryPolicy {
        attempts_max: 3,
        ..RetryPolicy::default()
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
        .retry(policy)
}

/// The exposition's samples: `name{labels}` to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("a sample line");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn a_scripted_run_counts_exactly() {
    simulate(41, |sim| async move {
        let mut registry = Registry::default();
        let inventory = BreakerSettings {
            failures_to_open: 3,
            open_ms: 10_000,
            successes_to_close: 2,
        };
        let options = sim
            .options()
            .breaker_for("inventory", inventory)
            .event_buffer(10_000);
        let engine = Engine::builder(sim.dir())
            .options(options)
            .metrics(&mut registry)
            .register(order())
            .unwrap()
            .open()
            .await
            .unwrap();
        let mut events = engine.subscribe();
        let mut statuses = Vec::new();
        for input in [1, 2, 3, 4, 1u64] {
            let id = engine.start("order", &input).await.unwrap();
            statuses.push(engine.wait(id).await.unwrap().status);
        }
        use SagaStatus::{Compensated, Completed};
        assert_eq!(
            statuses,
            [Completed, Completed, Compensated, Compensated, Completed]
        );
        let mut written = 0;
        while events.try_recv().is_ok() {
            written += 1;
        }
        let text = skald_engine::metrics::render(&registry);
        let samples = samples(&text);
        let get = |name: &str| samples.get(name).copied().unwrap_or(-1.0);
        let expected = [
            (r#"skald_sagas_started_total{definition="order"}"#, 5.0),
            (
                r#"skald_sagas_ended_total{definition="order",outcome="completed"}"#,
                3.0,
            ),
            (
                r#"skald_sagas_ended_total{definition="order",outcome="compensated"}"#,
                2.0,
            ),
            (
                r#"skald_saga_failures_total{definition="order",reason="permanent_error"}"#,
                1.0,
            ),
            (
                r#"skald_saga_failures_total{definition="order",reason="step_timeout"}"#,
                1.0,
            ),
            (
                r#"skald_saga_duration_seconds_count{definition="order",outcome="completed"}"#,
                3.0,
            ),
            (
                r#"skald_sagas_in_flight{definition="order",status="running"}"#,
                0.0,
            ),
            (
                r#"skald_sagas_in_flight{definition="order",status="waiting"}"#,
                0.0,
            ),
            (
                r#"skald_step_attempts_total{definition="order",step="reserve",outcome="ok"}"#,
                4.0,
            ),
            (
                r#"skald_step_attempts_total{definition="order",step="reserve",outcome="retryable_error"}"#,
                1.0,
            ),
            (
                r#"skald_step_attempts_total{definition="order",step="reserve",outcome="timeout"}"#,
                3.0,
            ),
            (
                r#"skald_step_attempts_total{definition="order",step="charge",outcome="ok"}"#,
                3.0,
            ),
            (
                r#"skald_step_attempts_total{definition="order",step="charge",outcome="permanent_error"}"#,
                1.0,
            ),
            (
                r#"skald_step_attempts_total{definition="order",step="ship",outcome="ok"}"#,
                3.0,
            ),
            (
                r#"skald_step_attempt_duration_seconds_count{definition="order",step="reserve"}"#,
                8.0,
            ),
            (
                r#"skald_step_retries_total{definition="order",step="reserve"}"#,
                3.0,
            ),
            (
                r#"skald_compensations_total{definition="order",step="reserve",outcome="ok"}"#,
                2.0,
            ),
            (
                r#"skald_step_breaker_delays_total{definition="order",step="reserve"}"#,
                1.0,
            ),
            (
                r#"skald_breaker_transitions_total{service="inventory",to="open"}"#,
                1.0,
            ),
            (
                r#"skald_breaker_transitions_total{service="inventory",to="half_open"}"#,
                1.0,
            ),
            (
                r#"skald_breaker_state{service="inventory",state="half_open"}"#,
                1.0,
            ),
            (
                r#"skald_breaker_state{service="inventory",state="open"}"#,
                0.0,
            ),
            (
                r#"skald_breaker_state{service="payments",state="closed"}"#,
                1.0,
            ),
            (r#"skald_partition_failed{partition="0"}"#, 0.0),
            (r#"skald_partition_failed{partition="1"}"#, 0.0),
        ];
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(name, value)| get(name) != *value)
            .map(|(name, value)| format!("{name}: expected {value}, got {}", get(name)))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}\n{text}");
        // Nothing else counted a saga or an attempt.
        let sum = |prefix: &str| -> f64 {
            let matching = samples.iter().filter(|(name, _)| name.starts_with(prefix));
            matching.map(|(_, value)| value).sum()
        };
        assert_eq!(sum("skald_sagas_ended_total{"), 5.0);
        assert_eq!(sum("skald_step_attempts_total{"), 15.0);
        assert_eq!(sum("skald_sagas_in_flight{"), 0.0);
        // Every event written is counted once, in its partition's log.
        assert_eq!(sum("skald_log_appended_events_total{"), f64::from(written));
        assert!(sum("skald_log_batch_events_count") >= 1.0);
        assert!(get(r#"skald_log_segments{partition="0"}"#) >= 1.0);
        engine.shutdown().await.unwrap();
    });
}
