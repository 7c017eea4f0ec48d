//! The fold of saga events: scripted histories, refused transitions, and
//! properties over random event streams.

use proptest::prelude::*;
use skald_model::codec;
use skald_model::{
    apply, fold, ApplyError, Event, EventKind, OperatorAction, SagaId, SagaState, SagaStatus,
    StepPhase, Timer,
};

const SAGA: SagaId = SagaId(7);

fn event(at: u64, kind: EventKind) -> Event {
    Event {
        saga: SAGA,
        at,
        kind,
    }
}

fn started(steps: u16) -> Event {
    event(
        0,
        EventKind::StartedV1 {
            definition: "order".into(),
            steps,
            input: b"{}".to_vec(),
            deadline: 60_000,
            key: Some("order-1".into()),
        },
    )
}

fn step_started(step: u16, attempt: u32) -> EventKind {
    EventKind::StepStarted {
        step,
        attempt,
        deadline: 5_000,
    }
}

fn succeeded(step: u16, attempt: u32) -> EventKind {
    EventKind::StepSucceeded {
        step,
        attempt,
        output: vec![step as u8],
    }
}

fn failed(step: u16, attempt: u32, permanent: bool) -> EventKind {
    EventKind::StepFailed {
        step,
        attempt,
        error: "declined".into(),
        permanent,
    }
}

#[test]
fn a_successful_saga_completes_with_every_output() {
    let mut history = vec![started(4)];
    for step in 0..4 {
        history.push(event(10 + step as u64, step_started(step, 1)));
        history.push(event(20 + step as u64, succeeded(step, 1)));
    }
    history.push(event(99, EventKind::Completed));
    let state = fold(&history).unwrap().unwrap();
    assert_eq!(state.status, SagaStatus::Completed);
    let outputs: Vec<_> = state
        .steps
        .iter()
        .map(|s| s.output.clone().unwrap())
        .collect();
    assert_eq!(outputs, vec![vec![0], vec![1], vec![2], vec![3]]);
    assert_eq!(state.updated_at, 99);
}

#[test]
fn a_payment_failure_is_retried_then_compensated_in_reverse() {
    let history = vec![
        started(4),
        event(1, step_started(0, 1)),
        event(2, succeeded(0, 1)),
        event(3, step_started(1, 1)),
        event(4, succeeded(1, 1)),
        event(5, step_started(2, 1)),
        event(6, failed(2, 1, false)),
        event(
            7,
            EventKind::RetryScheduled {
                step: 2,
                attempt: 2,
                fire_at: 107,
                compensation: false,
            },
        ),
        event(
            107,
            EventKind::TimerFired {
                timer: Timer::Retry { step: 2 },
            },
        ),
        event(108, step_started(2, 2)),
        event(109, failed(2, 2, true)),
        event(
            110,
            EventKind::CompensationStarted {
                step: 1,
                attempt: 1,
                deadline: 5_110,
            },
        ),
        event(
            111,
            EventKind::StepCompensated {
                step: 1,
                attempt: 1,
            },
        ),
        event(
            112,
            EventKind::CompensationStarted {
                step: 0,
                attempt: 1,
                deadline: 5_112,
            },
        ),
        event(
            113,
            EventKind::StepCompensated {
                step: 0,
                attempt: 1,
            },
        ),
        event(114, EventKind::Compensated),
    ];
    let state = fold(&history).unwrap().unwrap();
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.steps[2].attempts, 2);
    assert_eq!(
        state.steps[2].phase,
        StepPhase::Failed {
            attempt: 2,
            permanent: true
        }
    );
    assert_eq!(state.steps[1].phase, StepPhase::Compensated);
    assert_eq!(state.steps[3].phase, StepPhase::Pending);
}

#[test]
fn a_failed_saga_takes_only_operator_actions() {
    let history = vec![
        started(1),
        event(1, step_started(0, 1)),
        event(2, succeeded(0, 1)),
        event(
            3,
            EventKind::CompensationStarted {
                step: 0,
                attempt: 1,
                deadline: 9,
            },
        ),
        event(
            4,
            EventKind::CompensationFailed {
                step: 0,
                attempt: 1,
                error: "refund service down".into(),
                permanent: true,
            },
        ),
        event(
            5,
            EventKind::Failed {
                reason: "compensation of step 0 failed".into(),
            },
        ),
    ];
    let state = fold(&history).unwrap().unwrap();
    assert_eq!(state.status, SagaStatus::Failed);
    let refused = apply(Some(&state), &event(6, EventKind::Completed));
    assert!(matches!(
        refused,
        Err(ApplyError::AfterFinal {
            status: SagaStatus::Failed,
            ..
        })
    ));
    let retry = event(
        6,
        EventKind::OperatorAction {
            action: OperatorAction::RetryCompensation,
            who: "alice".into(),
            why: "refund service is back".into(),
        },
    );
    let state = apply(Some(&state), &retry).unwrap();
    assert_eq!(state.status, SagaStatus::Compensating);
    let again = event(
        7,
        EventKind::CompensationStarted {
            step: 0,
            attempt: 2,
            deadline: 99,
        },
    );
    let state = apply(Some(&state), &again).unwrap();
    let state = apply(
        Some(&state),
        &event(
            8,
            EventKind::StepCompensated {
                step: 0,
                attempt: 2,
            },
        ),
    )
    .unwrap();
    let state = apply(Some(&state), &event(9, EventKind::Compensated)).unwrap();
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(
        state.operator_actions,
        vec![("alice".to_string(), "refund service is back".to_string())]
    );
}

#[test]
fn events_that_do_not_fit_are_refused_with_the_step_named() {
    let state = fold(&[started(2)]).unwrap().unwrap();
    let early = apply(Some(&state), &event(1, succeeded(0, 1)));
    assert!(matches!(
        early,
        Err(ApplyError::StepTransition {
            step: 0,
            event: "StepSucceeded",
            ..
        })
    ));
    let skipped = apply(Some(&state), &event(1, step_started(1, 2)));
    assert!(matches!(
        skipped,
        Err(ApplyError::StepTransition {
            step: 1,
            attempt: 2,
            ..
        })
    ));
    let missing = apply(Some(&state), &event(1, step_started(5, 1)));
    assert!(matches!(
        missing,
        Err(ApplyError::NoSuchStep { step: 5, .. })
    ));
    let premature = apply(Some(&state), &event(1, EventKind::Completed));
    assert!(matches!(
        premature,
        Err(ApplyError::SagaTransition {
            event: "Completed",
            ..
        })
    ));
    assert!(matches!(
        apply(Some(&state), &started(2)),
        Err(ApplyError::AlreadyStarted { .. })
    ));
    assert!(matches!(
        apply(None, &event(1, EventKind::Compensated)),
        Err(ApplyError::NotStarted { .. })
    ));
    let other = Event {
        saga: SagaId(8),
        at: 1,
        kind: EventKind::Compensated,
    };
    assert!(matches!(
        apply(Some(&state), &other),
        Err(ApplyError::WrongSaga { .. })
    ));
}

fn any_kind() -> impl Strategy<Value = EventKind> {
    let step = 0u16..4;
    let attempt = 1u32..3;
    let retry =
        (step.clone(), attempt.clone(), any::<bool>()).prop_map(|(step, attempt, compensation)| {
            EventKind::RetryScheduled {
                step,
                attempt,
                fire_at: 50,
                compensation,
            }
        });
    let compensate = (step.clone(), attempt.clone()).prop_map(|(step, attempt)| {
        EventKind::CompensationStarted {
            step,
            attempt,
            deadline: 9,
        }
    });
    let compensated = (step.clone(), attempt.clone())
        .prop_map(|(step, attempt)| EventKind::StepCompensated { step, attempt });
    let compensation_failed =
        (step.clone(), attempt.clone(), any::<bool>()).prop_map(|(step, attempt, permanent)| {
            EventKind::CompensationFailed {
                step,
                attempt,
                error: "e".into(),
                permanent,
            }
        });
    let operator = EventKind::OperatorAction {
        action: OperatorAction::RetryCompensation,
        who: "op".into(),
        why: "w".into(),
    };
    // Step events dominate, so that histories run deep before a final event.
    prop_oneof![
        12 => (step.clone(), attempt.clone()).prop_map(|(s, a)| step_started(s, a)),
        10 => (step.clone(), attempt.clone()).prop_map(|(s, a)| succeeded(s, a)),
        4 => (step, attempt, any::<bool>()).prop_map(|(s, a, p)| failed(s, a, p)),
        4 => retry,
        4 => compensate,
        4 => compensated,
        2 => compensation_failed,
        3 => Just(EventKind::Completed),
        1 => Just(EventKind::Compensated),
        1 => Just(EventKind::Failed { reason: "r".into() }),
        1 => Just(EventKind::CancelRequested { reason: "c".into() }),
        1 => Just(EventKind::TimerFired { timer: Timer::SagaDeadline }),
        2 => Just(operator),
    ]
}

/// Exactly the events the fold must accept in `state`, written from the
/// rules rather than from the code: a random walk over these explores deep,
/// legal histories, and anything else must be refused.
fn legal_next(state: &SagaState, permanent: bool) -> Vec<EventKind> {
    let mut next = Vec::new();
    let active = |phase: StepPhase| {
        matches!(
            phase,
            StepPhase::Running { .. }
                | StepPhase::WaitingRetry { .. }
                | StepPhase::Compensating { .. }
                | StepPhase::WaitingCompensationRetry { .. }
        )
    };
    if state.status == SagaStatus::Failed {
        if state
            .steps
            .iter()
            .any(|s| matches!(s.phase, StepPhase::CompensationFailed { .. }))
        {
            next.push(operator(OperatorAction::RetryCompensation));
        }
        next.push(operator(OperatorAction::MarkResolved));
        for (index, step) in state.steps.iter().enumerate() {
            let earlier_done = state.steps[..index]
                .iter()
                .all(|s| s.phase == StepPhase::Succeeded);
            let undoing = state.steps.iter().any(|s| {
                matches!(
                    s.phase,
                    StepPhase::Compensating { .. }
                        | StepPhase::CompensationFailed { .. }
                        | StepPhase::WaitingCompensationRetry { .. }
                        | StepPhase::Compensated
                )
            });
            if matches!(step.phase, StepPhase::Failed { .. }) && earlier_done && !undoing {
                next.push(operator(OperatorAction::ResumeStep { step: index as u16 }));
            }
        }
        return next;
    }
    if state.status.is_final() {
        return next;
    }
    let running = state.status == SagaStatus::Running;
    // A cancel request or a passed deadline lets turning back abandon a
    // planned retry.
    let turning_back = state.cancel_reason.is_some() || state.deadline_passed;
    let forward_idle = !state.steps.iter().any(|s| {
        matches!(s.phase, StepPhase::Running { .. })
            || (matches!(s.phase, StepPhase::WaitingRetry { .. }) && !turning_back)
    });
    for (index, step) in state.steps.iter().enumerate() {
        let s = index as u16;
        let in_order = state.steps[..index]
            .iter()
            .all(|s| s.phase == StepPhase::Succeeded);
        let alone = state
            .steps
            .iter()
            .enumerate()
            .all(|(i, other)| i == index || !active(other.phase));
        match step.phase {
            StepPhase::Pending if running && in_order && alone => next.push(step_started(s, 1)),
            StepPhase::WaitingRetry { attempt, .. } if running && in_order && alone => {
                next.push(step_started(s, attempt))
            }
            StepPhase::Running { attempt } => {
                next.push(succeeded(s, attempt));
                next.push(failed(s, attempt, permanent));
            }
            StepPhase::Failed {
                attempt,
                permanent: false,
            } if running => next.push(EventKind::RetryScheduled {
                step: s,
                attempt: attempt + 1,
                fire_at: 50,
                compensation: false,
            }),
            StepPhase::Succeeded if forward_idle => next.push(EventKind::CompensationStarted {
                step: s,
                attempt: step.compensation_attempts + 1,
                deadline: 9,
            }),
            StepPhase::WaitingCompensationRetry { attempt, .. } if forward_idle => {
                next.push(EventKind::CompensationStarted {
                    step: s,
                    attempt,
                    deadline: 9,
                })
            }
            StepPhase::Compensating { attempt } => {
                next.push(EventKind::StepCompensated { step: s, attempt });
                next.push(EventKind::CompensationFailed {
                    step: s,
                    attempt,
                    error: "e".into(),
                    permanent,
                });
            }
            StepPhase::CompensationFailed {
                attempt,
                permanent: false,
            } => next.push(EventKind::RetryScheduled {
                step: s,
                attempt: attempt + 1,
                fire_at: 50,
                compensation: true,
            }),
            _ => {}
        }
    }
    if running && state.steps.iter().all(|s| s.phase == StepPhase::Succeeded) {
        next.push(EventKind::Completed);
    }
    let busy = state.steps.iter().any(|s| {
        let abandonable = turning_back && matches!(s.phase, StepPhase::WaitingRetry { .. });
        (active(s.phase) && !abandonable) || matches!(s.phase, StepPhase::CompensationFailed { .. })
    });
    if !busy {
        next.push(EventKind::Compensated);
    }
    next.push(EventKind::Failed { reason: "r".into() });
    next.push(EventKind::CancelRequested { reason: "c".into() });
    next.push(EventKind::TimerFired {
        timer: Timer::SagaDeadline,
    });
    next
}

fn operator(action: OperatorAction) -> EventKind {
    EventKind::OperatorAction {
        action,
        who: "op".into(),
        why: "w".into(),
    }
}

proptest! {
    /// Random streams, keeping only the events the fold accepts: folding the
    /// accepted events again gives the same state (determinism), every
    /// accepted event survives the codec, and nothing but an operator action
    /// is ever accepted once the saga is final.
    #[test]
    fn the_fold_is_deterministic_and_final_states_stay_final(
        kinds in prop::collection::vec(any_kind(), 0..80),
    ) {
        let mut accepted = vec![started(4)];
        let mut state = apply(None, &accepted[0]).unwrap();
        for (index, kind) in kinds.into_iter().enumerate() {
            let candidate = event(index as u64 + 1, kind);
            let was_final = state.status.is_final();
            if let Ok(next) = apply(Some(&state), &candidate) {
                if was_final {
                    let operator = matches!(candidate.kind, EventKind::OperatorAction { .. });
                    prop_assert!(operator, "only operator actions apply to a final saga");
                    prop_assert_eq!(state.status, SagaStatus::Failed);
                }
                state = next;
                accepted.push(candidate);
            }
        }
        let decoded: Vec<Event> = accepted
            .iter()
            .map(|e| Event::decode(&e.encode()).unwrap())
            .collect();
        prop_assert_eq!(&decoded, &accepted);
        let again = fold(&decoded).unwrap().unwrap();
        prop_assert_eq!(&again, &state);
        // A state encoded mid-way (as a snapshot would be) and decoded, then
        // folded with the rest, is the state of the whole.
        let middle = accepted.len() / 2;
        let prefix = fold(&accepted[..middle]).unwrap();
        let mut resumed: Option<SagaState> = codec::decode(&codec::encode(&prefix)).unwrap();
        for event in &accepted[middle..] {
            resumed = Some(apply(resumed.as_ref(), event).unwrap());
        }
        prop_assert_eq!(resumed.as_ref(), Some(&state));
    }

    /// A random walk over legal transitions: the fold accepts every one of
    /// them and refuses every other candidate event it is offered; the
    /// history left behind folds back to the same state.
    #[test]
    fn the_fold_accepts_exactly_the_legal_transitions(
        walk in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::bool::weighted(0.2), any_kind()),
            1..120,
        ),
    ) {
        let mut history = vec![started(4)];
        let mut state = apply(None, &history[0]).unwrap();
        for (at, (choice, permanent, stranger)) in walk.into_iter().enumerate() {
            let mut legal = legal_next(&state, true);
            legal.extend(legal_next(&state, false));
            let offered = event(at as u64 + 1, stranger);
            if !legal.contains(&offered.kind) {
                let refused = apply(Some(&state), &offered);
                prop_assert!(refused.is_err(), "accepted {:?} in {:?} / {:?}", offered.kind, state.status,
                    state.steps.iter().map(|s| s.phase).collect::<Vec<_>>());
            }
            let options = legal_next(&state, permanent);
            if options.is_empty() {
                break;
            }
            let candidate = event(at as u64 + 1, options[choice.index(options.len())].clone());
            let next = apply(Some(&state), &candidate);
            prop_assert!(next.is_ok(), "refused {:?} in {:?}: {:?}", candidate.kind, state.status, next);
            state = next.unwrap();
            history.push(candidate);
        }
        let refolded = fold(&history).unwrap();
        prop_assert_eq!(refolded.as_ref(), Some(&state));
    }
}
