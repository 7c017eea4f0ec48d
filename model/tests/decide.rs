//! `decide` driven by a pure simulator: random definitions, random outcome
//! scripts, and the saga invariants checked on the recorded history.

use std::time::Duration;

use proptest::prelude::*;
use skald_model::{
    apply, decide, fold, Backoff, Decision, Event, EventKind, RetryPolicy, SagaId, SagaSpec,
    SagaState, SagaStatus, StepKind, StepSpec, Timer,
};

/// What the world does when the saga waits.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Retryable,
    Permanent,
    /// The handler panicked: no answer, so the attempt is in doubt (a
    /// compensation that panics is a retryable failure).
    Panic,
    /// The attempt hangs past its deadline.
    Timeout,
    /// A caller cancels (the running attempt, if any, carries on).
    Cancel,
    /// Time jumps past the saga's deadline.
    SagaTimeout,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        8 => Just(Outcome::Success),
        3 => Just(Outcome::Retryable),
        1 => Just(Outcome::Permanent),
        1 => Just(Outcome::Panic),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::Cancel),
        1 => Just(Outcome::SagaTimeout),
    ]
}

fn policy(attempts_max: u32) -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff::Exponential {
            initial: Duration::from_millis(10),
            multiplier: 2.0,
        },
        attempts_max,
        delay_max: Duration::from_secs(1),
        jitter: 0.5,
    }
}

/// A valid definition: compensatable steps, then optionally a pivot and
/// retriable steps after it.
fn definition() -> impl Strategy<Value = SagaSpec> {
    (0usize..=8, any::<bool>(), 0usize..=8, 1u32..4).prop_filter_map(
        "1 to 8 steps",
        |(compensatable, pivot, retriable, attempts)| {
            let retriable = if pivot { retriable } else { 0 };
            let total = compensatable + usize::from(pivot) + retriable;
            if !(1..=8).contains(&total) {
                return None;
            }
            let mut steps = Vec::new();
            let mut push = |kind: StepKind| {
                let index = steps.len();
                steps.push(StepSpec {
                    id: format!("s{index}"),
                    name: format!("step {index}"),
                    kind,
                    has_compensation: kind == StepKind::Compensatable,
                    timeout: Duration::from_millis(500),
                    retry: None,
                    service: format!("svc{}", index % 2),
                });
            };
            (0..compensatable).for_each(|_| push(StepKind::Compensatable));
            if pivot {
                push(StepKind::Pivot);
            }
            (0..retriable).for_each(|_| push(StepKind::Retriable));
            let spec = SagaSpec {
                id: "random".into(),
                version: 1,
                name: "random".into(),
                steps,
                timeout: Duration::from_secs(60),
                retry: policy(attempts),
            };
            spec.validate().expect("generated definitions are valid");
            Some(spec)
        },
    )
}

/// Runs a saga to the end under `script` (then successes), recording every
/// event `decide` asks for; every one must be accepted by the fold.
fn simulate(spec: &SagaSpec, script: &[Outcome], jitters: &[u8]) -> (Vec<Event>, SagaState) {
    let saga = SagaId(7);
    let mut now = 1_000u64;
    let started = Event {
        saga,
        at: now,
        kind: EventKind::StartedV1 {
            definition: spec.id.clone(),
            steps: spec.steps.len() as u16,
            input: vec![],
            deadline: now + spec.timeout.as_millis() as u64,
            key: None,
        },
    };
    let mut state = apply(None, &started).unwrap();
    let mut history = vec![started];
    let mut script = script.iter().copied().peekable();
    let mut draws = jitters.iter().cycle();
    let mut record = |state: &mut SagaState, now: u64, kind: EventKind| {
        let event = Event {
            saga,
            at: now,
            kind,
        };
        *state = apply(Some(state), &event)
            .unwrap_or_else(|error| panic!("decide asked for an illegal event: {error}"));
        history.push(event);
    };
    for _ in 0..100_000 {
        let jitter = f64::from(*draws.next().unwrap_or(&0)) / 256.0;
        match decide(&state, spec, now, jitter) {
            Decision::Record(kind) => record(&mut state, now, kind),
            Decision::Done => return (history, state),
            Decision::Wait { run, wake_at } => {
                // Outcomes of attempts wait for an attempt to run; a cancel
                // or a saga timeout can strike at any moment.
                let next = match (script.peek(), run) {
                    (Some(Outcome::Cancel | Outcome::SagaTimeout), _) | (_, Some(_)) => {
                        script.next().unwrap_or(Outcome::Success)
                    }
                    _ => Outcome::Success,
                };
                match (next, run) {
                    (Outcome::Cancel, _) => record(
                        &mut state,
                        now,
                        EventKind::CancelRequested {
                            reason: "caller".into(),
                        },
                    ),
                    (Outcome::SagaTimeout, _) => now = now.max(state.deadline),
                    (Outcome::Timeout, Some(run)) => now = now.max(run.deadline),
                    (outcome, Some(run)) => {
                        now += 3;
                        let (step, attempt) = (run.step, run.attempt);
                        let failure = |permanent: bool, error: &str| {
                            if run.compensation {
                                EventKind::CompensationFailed {
                                    step,
                                    attempt,
                                    error: error.into(),
                                    permanent,
                                }
                            } else {
                                EventKind::StepFailed {
                                    step,
                                    attempt,
                                    error: error.into(),
                                    permanent,
                                }
                            }
                        };
                        let kind = match outcome {
                            Outcome::Success if run.compensation => {
                                EventKind::StepCompensated { step, attempt }
                            }
                            Outcome::Success => EventKind::StepSucceeded {
                                step,
                                attempt,
                                output: vec![step as u8],
                            },
                            Outcome::Permanent => failure(true, "declined"),
                            Outcome::Panic if !run.compensation => EventKind::StepInDoubt {
                                step,
                                attempt,
                                reason: "step panicked".into(),
                            },
                            Outcome::Panic => failure(false, "compensation panicked"),
                            _ => failure(false, "unavailable"),
                        };
                        record(&mut state, now, kind);
                    }
                    (_, None) => {
                        let wake = wake_at.expect("a saga that waits for nothing is stuck");
                        assert!(wake > now, "woken for the past: {wake} <= {now}");
                        now = wake;
                    }
                }
            }
        }
    }
    panic!("the saga did not end: {:?}", state.status);
}

fn is_terminal(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Completed | EventKind::Compensated | EventKind::Failed { .. }
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_run_ends_once_and_compensates_exactly_the_steps_that_may_have_applied_in_reverse(
        spec in definition(),
        script in prop::collection::vec(outcome(), 0..40),
        jitters in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let (history, state) = simulate(&spec, &script, &jitters);

        // Exactly one terminal event, and it is the last one.
        let terminals: Vec<usize> = history
            .iter()
            .enumerate()
            .filter(|(_, e)| is_terminal(&e.kind))
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(terminals.len(), 1, "terminal events: {:?}", terminals);
        prop_assert_eq!(terminals[0], history.len() - 1, "events after the terminal one");
        prop_assert!(state.status.is_final());
        prop_assert_eq!(decide(&state, &spec, u64::MAX, 0.0), Decision::Done);

        let succeeded: Vec<u16> = history.iter().filter_map(|e| match e.kind {
            EventKind::StepSucceeded { step, .. } => Some(step),
            _ => None,
        }).collect();
        let compensated: Vec<u16> = history.iter().filter_map(|e| match e.kind {
            EventKind::StepCompensated { step, .. } => Some(step),
            _ => None,
        }).collect();
        let compensation_order: Vec<u16> = history.iter().filter_map(|e| match e.kind {
            EventKind::CompensationStarted { step, .. } => Some(step),
            _ => None,
        }).collect();
        // Compensations go latest first, never revisit a step once done.
        prop_assert!(compensation_order.windows(2).all(|w| w[0] >= w[1]),
            "compensations out of order: {:?}", compensation_order);
        // What may have been applied: a step that succeeded, or one with an
        // attempt in doubt (timed out, panicked).
        let in_doubt: Vec<u16> = history.iter().filter_map(|e| match e.kind {
            EventKind::StepInDoubt { step, .. } => Some(step),
            _ => None,
        }).collect();
        let mut expected: Vec<u16> = succeeded
            .iter()
            .chain(&in_doubt)
            .copied()
            .filter(|&s| spec.steps[s as usize].kind == StepKind::Compensatable)
            .collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        expected.dedup();
        match state.status {
            SagaStatus::Completed => {
                prop_assert_eq!(succeeded.len(), spec.steps.len());
                prop_assert!(compensation_order.is_empty());
            }
            SagaStatus::Compensated => prop_assert_eq!(&compensated, &expected),
            SagaStatus::Failed => {
                // Either a compensation failed for good (what was undone is
                // a prefix of the reverse order), or a step after the pivot
                // did (nothing undone).
                prop_assert!(expected.starts_with(&compensated),
                    "{:?} is not a prefix of {:?}", compensated, expected);
            }
            other => prop_assert!(false, "unexpected final status {:?}", other),
        }
        // Pivot and retriable steps are never compensated.
        for step in &compensation_order {
            prop_assert_eq!(spec.steps[*step as usize].kind, StepKind::Compensatable);
        }
        // Each step succeeded at most once, and in order.
        prop_assert!(succeeded.windows(2).all(|w| w[0] < w[1]), "{:?}", succeeded);

        // Folding the recorded events twice gives identical state.
        let once = fold(&history).unwrap().unwrap();
        let twice = fold(&history).unwrap().unwrap();
        prop_assert_eq!(&once, &state);
        prop_assert_eq!(&twice, &state);
    }
}

fn spec_of(kinds: &[StepKind], attempts: u32) -> SagaSpec {
    SagaSpec {
        id: "t".into(),
        version: 1,
        name: "t".into(),
        steps: kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| StepSpec {
                id: format!("s{i}"),
                name: format!("s{i}"),
                kind,
                has_compensation: kind == StepKind::Compensatable,
                timeout: Duration::from_millis(500),
                retry: None,
                service: "svc".into(),
            })
            .collect(),
        timeout: Duration::from_secs(60),
        retry: policy(attempts),
    }
}

#[test]
fn a_timed_out_attempt_is_in_doubt_retried_with_the_timeout_named() {
    let spec = spec_of(&[StepKind::Compensatable], 3);
    let (history, state) = simulate(&spec, &[Outcome::Timeout], &[0]);
    assert_eq!(state.status, SagaStatus::Completed);
    let timed_out = history.iter().any(|e| {
        matches!(&e.kind, EventKind::StepInDoubt { reason, attempt: 1, .. }
            if reason.contains("timed out"))
    });
    assert!(timed_out, "{history:#?}");
    assert_eq!(state.steps[0].in_doubt, [1]);
}

#[test]
fn a_step_in_doubt_is_compensated_when_the_saga_turns_back() {
    // Step 0 succeeds; step 1 times out (in doubt) and has no retry left;
    // the saga turns back and compensates step 1 too, then step 0.
    let spec = spec_of(&[StepKind::Compensatable, StepKind::Compensatable], 1);
    let (history, state) = simulate(&spec, &[Outcome::Success, Outcome::Timeout], &[0]);
    assert_eq!(state.status, SagaStatus::Compensated);
    let order: Vec<u16> = history
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::CompensationStarted { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(order, [1, 0], "{history:#?}");
    // A step's own error is a definite "not applied": not compensated.
    let (history, _) = simulate(&spec, &[Outcome::Success, Outcome::Retryable], &[0]);
    let order: Vec<u16> = history
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::CompensationStarted { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(order, [0]);
}

#[test]
fn a_pivot_in_doubt_stops_the_saga_for_an_operator_instead_of_turning_back() {
    let spec = spec_of(&[StepKind::Compensatable, StepKind::Pivot], 1);
    let (history, state) = simulate(&spec, &[Outcome::Success, Outcome::Timeout], &[0]);
    assert_eq!(state.status, SagaStatus::Failed);
    assert!(
        state.failure.as_deref().unwrap().contains("in doubt"),
        "{:?}",
        state.failure
    );
    assert!(
        !history
            .iter()
            .any(|e| matches!(e.kind, EventKind::CompensationStarted { .. })),
        "nothing was undone while the pivot may stand"
    );
}

#[test]
fn a_cancel_during_a_planned_retry_abandons_it_and_compensates() {
    let spec = spec_of(&[StepKind::Compensatable, StepKind::Compensatable], 5);
    let script = [Outcome::Success, Outcome::Retryable, Outcome::Cancel];
    let (history, state) = simulate(&spec, &script, &[0]);
    assert_eq!(state.status, SagaStatus::Compensated);
    // Step 1 was waiting to retry; it never started again.
    let step1_starts = history
        .iter()
        .filter(|e| matches!(e.kind, EventKind::StepStarted { step: 1, .. }))
        .count();
    assert_eq!(step1_starts, 1);
    assert!(history
        .iter()
        .any(|e| matches!(e.kind, EventKind::StepCompensated { step: 0, .. })));
}

#[test]
fn after_the_pivot_a_cancel_or_deadline_is_ignored_and_retriable_steps_retry_past_the_limit() {
    let spec = spec_of(&[StepKind::Pivot, StepKind::Retriable], 2);
    let script = [
        Outcome::Success,
        Outcome::Cancel,
        Outcome::SagaTimeout,
        Outcome::Retryable,
        Outcome::Retryable,
        Outcome::Retryable,
        Outcome::Retryable,
    ];
    let (history, state) = simulate(&spec, &script, &[0]);
    assert_eq!(state.status, SagaStatus::Completed);
    assert!(state.steps[1].attempts >= 5, "{:?}", state.steps[1]);
    assert!(!history.iter().any(|e| matches!(
        e.kind,
        EventKind::TimerFired {
            timer: Timer::SagaDeadline
        }
    )));
}

#[test]
fn a_permanent_failure_after_the_pivot_fails_the_saga_for_an_operator() {
    let spec = spec_of(
        &[
            StepKind::Compensatable,
            StepKind::Pivot,
            StepKind::Retriable,
        ],
        3,
    );
    let script = [Outcome::Success, Outcome::Success, Outcome::Permanent];
    let (_, state) = simulate(&spec, &script, &[0]);
    assert_eq!(state.status, SagaStatus::Failed);
    let reason = state.failure.unwrap();
    assert!(reason.contains("\"s2\""), "{reason}");
}

#[test]
fn a_saga_deadline_turns_back_after_the_running_attempt_ends() {
    let compensatable = StepKind::Compensatable;
    let mut spec = spec_of(&[compensatable, compensatable, compensatable], 3);
    // Attempts may outlive the saga's deadline. (Had step 1 been the last,
    // its success would have completed the saga: the work was done.)
    for step in &mut spec.steps {
        step.timeout = Duration::from_secs(120);
    }
    let script = [Outcome::Success, Outcome::SagaTimeout, Outcome::Success];
    let (history, state) = simulate(&spec, &script, &[0]);
    assert_eq!(state.status, SagaStatus::Compensated);
    // The deadline passed while step 1 ran: it finished, and both steps
    // were compensated, latest first.
    let compensated: Vec<u16> = history
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::StepCompensated { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(compensated, vec![1, 0]);
}

#[test]
fn a_retriable_step_past_its_attempts_waits_at_least_a_second_between_retries() {
    let mut spec = spec_of(&[StepKind::Pivot, StepKind::Retriable], 2);
    spec.steps[1].retry = Some(RetryPolicy::no_retry());
    let script = [
        Outcome::Success,
        Outcome::Retryable,
        Outcome::Retryable,
        Outcome::Retryable,
    ];
    let (history, state) = simulate(&spec, &script, &[0]);
    assert_eq!(state.status, SagaStatus::Completed);
    let mut failed_at = 0;
    let mut gaps = Vec::new();
    for event in &history {
        match event.kind {
            EventKind::StepFailed { step: 1, .. } => failed_at = event.at,
            EventKind::RetryScheduled {
                step: 1, fire_at, ..
            } => gaps.push(fire_at - failed_at),
            _ => {}
        }
    }
    assert_eq!(gaps.len(), 3);
    assert!(gaps.iter().all(|&gap| gap >= 1_000), "{gaps:?}");
}

#[test]
fn a_pivot_in_doubt_with_a_retry_planned_can_still_be_resumed_by_an_operator() {
    // The pivot times out (in doubt) and a retry is planned; a cancel then
    // turns the saga back, which the pivot in doubt stops: Failed. The
    // planned retry is abandoned with it, so the operator can resume the
    // pivot (or mark the saga resolved).
    let spec = spec_of(&[StepKind::Compensatable, StepKind::Pivot], 3);
    let script = [Outcome::Success, Outcome::Timeout, Outcome::Cancel];
    let (history, state) = simulate(&spec, &script, &[0]);
    assert_eq!(state.status, SagaStatus::Failed, "{history:#?}");
    let resume = Event {
        saga: state.id,
        at: state.updated_at + 1,
        kind: EventKind::OperatorAction {
            action: skald_model::OperatorAction::ResumeStep { step: 1 },
            who: "ops".into(),
            why: "the payment provider says it never charged".into(),
        },
    };
    let resumed = apply(Some(&state), &resume).expect("the pivot can be resumed");
    assert_eq!(resumed.status, SagaStatus::Running);
}

#[test]
fn an_operator_turns_back_a_saga_whose_pivot_in_doubt_was_not_applied() {
    let spec = spec_of(&[StepKind::Compensatable, StepKind::Pivot], 1);
    let (_, mut state) = simulate(&spec, &[Outcome::Success, Outcome::Timeout], &[0]);
    assert_eq!(state.status, SagaStatus::Failed);
    let mut now = state.updated_at + 1;
    let turn_back = Event {
        saga: state.id,
        at: now,
        kind: EventKind::OperatorAction {
            action: skald_model::OperatorAction::TurnBack { step: 1 },
            who: "ops".into(),
            why: "the provider never charged".into(),
        },
    };
    state = apply(Some(&state), &turn_back).expect("a Failed saga turns back");
    // Run it to its end: every compensation succeeds.
    let mut compensated = Vec::new();
    for _ in 0..100 {
        now += 1;
        let kind = match decide(&state, &spec, now, 0.0) {
            Decision::Done => break,
            Decision::Record(kind) => kind,
            Decision::Wait { run: Some(run), .. } if run.compensation => {
                compensated.push(run.step);
                EventKind::StepCompensated {
                    step: run.step,
                    attempt: run.attempt,
                }
            }
            other => panic!("unexpected {other:?}"),
        };
        let event = Event {
            saga: state.id,
            at: now,
            kind,
        };
        state = apply(Some(&state), &event).unwrap();
    }
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(compensated, [0], "the step before the pivot was undone");
}
