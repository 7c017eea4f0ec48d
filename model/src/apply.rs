//! Folding one event into a saga's state.
//!
//! [`apply`] is pure and deterministic: no clock, no randomness, no I/O.
//! Folding the same events always yields the same state, and an event that
//! does not fit the state (a step that never started cannot succeed; nothing
//! happens to a finished saga) is refused with an error naming the saga,
//! the step and the event, never silently absorbed: an event log that
//! disagrees with the state machine is a bug or damage to be reported.
//!
//! Every function here checks first and changes after, so a refused event
//! leaves the state as it was (except where [`apply_mut`] says otherwise).

use crate::definition::fingerprint;
use crate::error::ApplyError;
use crate::event::{Event, EventKind, Millis, OperatorAction, StepIndex, Timer};
use crate::state::{
    DefinitionVersion, SagaState, SagaStatus, StepPhase, StepState, IN_DOUBT_ATTEMPTS_MAX,
};
use crate::trace::TraceContext;
use crate::STEPS_MAX;

/// Folds one event into a saga's state (`None` before `Started`). The
/// input state is left as it was, also when the event is refused.
pub fn apply(state: Option<&SagaState>, event: &Event) -> Result<SagaState, ApplyError> {
    match state {
        None => start(event),
        Some(state) => {
            let mut next = state.clone();
            apply_mut(&mut next, event)?;
            Ok(next)
        }
    }
}

/// [`apply`] in place, for the hot path and replays: no copy of the state
/// per event. On an error the state may be partly changed, so callers that
/// go on after a refused event use [`apply`].
pub fn apply_mut(state: &mut SagaState, event: &Event) -> Result<(), ApplyError> {
    let name = event.kind.name();
    if state.id != event.saga {
        return Err(ApplyError::WrongSaga {
            saga: state.id,
            event_saga: event.saga,
        });
    }
    let operator = matches!(event.kind, EventKind::OperatorAction { .. });
    if state.status.is_final() && !(operator && state.status == SagaStatus::Failed) {
        return Err(ApplyError::AfterFinal {
            saga: state.id,
            event: name,
            status: state.status,
        });
    }
    match &event.kind {
        EventKind::Started { .. } | EventKind::StartedV2 { .. } | EventKind::StartedV1 { .. } => {
            return Err(ApplyError::AlreadyStarted { saga: state.id })
        }
        EventKind::CancelRequested { reason } => {
            if state.cancel_reason.is_none() {
                state.cancel_reason = Some(reason.clone());
            }
        }
        EventKind::TimerFired { timer } => match *timer {
            Timer::SagaDeadline => state.deadline_passed = true,
            // What a step timer means is for `decide` to read from the
            // step's phase and deadline; the fold only checks the step.
            Timer::Retry { step } | Timer::StepDeadline { step, .. } => {
                step_state(state, step)?;
            }
        },
        EventKind::Completed => complete(state, name)?,
        EventKind::Compensated => abort(state, name)?,
        EventKind::Failed { reason } => {
            // A planned retry will not run while an operator decides (a
            // pivot in doubt fails the saga with its retry planned): the
            // step is left failed, so that it can be resumed.
            abandon_retries(state);
            state.status = SagaStatus::Failed;
            state.failure = Some(reason.clone());
        }
        EventKind::OperatorAction { action, who, why } => {
            operate(state, name, *action, event.at)?;
            state.operator_actions.push((who.clone(), why.clone()));
        }
        step_event => apply_step(state, event.at, step_event)?,
    }
    state.updated_at = event.at;
    Ok(())
}

/// What a start event of any version records.
struct Start<'a> {
    definition: &'a String,
    steps: usize,
    input: &'a Vec<u8>,
    deadline: Millis,
    key: &'a Option<String>,
    version: Option<DefinitionVersion>,
    trace: Option<TraceContext>,
}

impl<'a> Start<'a> {
    fn of(kind: &'a EventKind) -> Option<Start<'a>> {
        let versioned = |number: u32, steps: &[_]| DefinitionVersion {
            number,
            fingerprint: fingerprint(steps),
        };
        Some(match kind {
            EventKind::StartedV1 {
                definition,
                steps,
                input,
                deadline,
                key,
            } => Start {
                definition,
                steps: usize::from(*steps),
                input,
                deadline: *deadline,
                key,
                version: None,
                trace: None,
            },
            EventKind::StartedV2 {
                definition,
                version,
                steps,
                input,
                deadline,
                key,
            } => Start {
                definition,
                steps: steps.len(),
                input,
                deadline: *deadline,
                key,
                version: Some(versioned(*version, steps)),
                trace: None,
            },
            EventKind::Started {
                definition,
                version,
                steps,
                input,
                deadline,
                key,
                trace,
            } => Start {
                definition,
                steps: steps.len(),
                input,
                deadline: *deadline,
                key,
                version: Some(versioned(*version, steps)),
                trace: *trace,
            },
            _ => return None,
        })
    }
}

/// The first event of a saga.
fn start(event: &Event) -> Result<SagaState, ApplyError> {
    let Some(Start {
        definition,
        steps,
        input,
        deadline,
        key,
        version,
        trace,
    }) = Start::of(&event.kind)
    else {
        return Err(ApplyError::NotStarted {
            saga: event.saga,
            event: event.kind.name(),
        });
    };
    if steps > STEPS_MAX || steps == 0 {
        return Err(ApplyError::BadStepCount {
            saga: event.saga,
            steps,
        });
    }
    Ok(SagaState {
        id: event.saga,
        definition: definition.clone(),
        input: input.clone(),
        key: key.clone(),
        status: SagaStatus::Running,
        steps: (0..steps).map(|_| StepState::new()).collect(),
        started_at: event.at,
        deadline,
        deadline_passed: false,
        cancel_reason: None,
        failure: None,
        operator_actions: Vec::new(),
        updated_at: event.at,
        version,
        trace,
    })
}

fn complete(state: &mut SagaState, name: &'static str) -> Result<(), ApplyError> {
    let running = state.status == SagaStatus::Running;
    require(state, name, running, "it is not running")?;
    let all_done = state.steps.iter().all(|s| s.phase == StepPhase::Succeeded);
    require(state, name, all_done, "not every step succeeded")?;
    state.status = SagaStatus::Completed;
    Ok(())
}

fn abort(state: &mut SagaState, name: &'static str) -> Result<(), ApplyError> {
    // Which succeeded steps needed compensating depends on their kinds
    // (decide's job); a failed compensation never counts as done.
    let abandonable = abort_requested(state);
    let busy = state.steps.iter().any(|s| {
        matches!(
            s.phase,
            StepPhase::Running { .. }
                | StepPhase::Compensating { .. }
                | StepPhase::WaitingCompensationRetry { .. }
                | StepPhase::CompensationFailed { .. }
        ) || (matches!(s.phase, StepPhase::WaitingRetry { .. }) && !abandonable)
    });
    let detail = "a step or compensation is still under way";
    require(state, name, !busy, detail)?;
    abandon_planned_retries(state);
    state.status = SagaStatus::Compensated;
    Ok(())
}

fn operate(
    state: &mut SagaState,
    name: &'static str,
    action: OperatorAction,
    at: Millis,
) -> Result<(), ApplyError> {
    let failed = state.status == SagaStatus::Failed;
    require(
        state,
        name,
        failed,
        "only a Failed saga takes operator actions",
    )?;
    match action {
        OperatorAction::RetryCompensation => retry_compensation(state, name, at),
        OperatorAction::ResumeStep { step } => resume_step(state, name, step, at),
        OperatorAction::MarkResolved => {
            state.status = SagaStatus::Resolved;
            Ok(())
        }
        OperatorAction::TurnBack { step } => turn_back(state, name, step),
    }
}

/// Every failed compensation gets a next attempt, due now.
fn retry_compensation(
    state: &mut SagaState,
    name: &'static str,
    at: Millis,
) -> Result<(), ApplyError> {
    let failed_compensation = state
        .steps
        .iter()
        .any(|s| matches!(s.phase, StepPhase::CompensationFailed { .. }));
    let detail = "no compensation failed, so there is none to retry";
    require(state, name, failed_compensation, detail)?;
    for index in 0..state.steps.len() {
        if let StepPhase::CompensationFailed { attempt, .. } = state.steps[index].phase {
            let next = next_attempt(state, name, attempt)?;
            let step = &mut state.steps[index];
            step.phase = StepPhase::WaitingCompensationRetry {
                attempt: next,
                fire_at: at,
            };
            // A fresh retry budget from here.
            step.compensation_budget_from = attempt;
        }
    }
    state.status = SagaStatus::Compensating;
    Ok(())
}

/// The operator's turn back: `step`'s attempts in doubt were not applied;
/// the saga runs again, turning back (as a cancel would).
fn turn_back(state: &mut SagaState, name: &'static str, step: StepIndex) -> Result<(), ApplyError> {
    let phase = step_state(state, step)?.phase;
    let undoing = state.steps.iter().any(|s| is_compensation_phase(s.phase));
    let forward_failed = matches!(phase, StepPhase::Failed { .. } | StepPhase::Pending);
    let detail = "turning back needs the step failed and nothing compensated yet";
    require(state, name, forward_failed && !undoing, detail)?;
    state.steps[step as usize].in_doubt.clear();
    state
        .cancel_reason
        .get_or_insert_with(|| "turned back by an operator".to_owned());
    state.status = SagaStatus::Running;
    Ok(())
}

fn resume_step(
    state: &mut SagaState,
    name: &'static str,
    step: StepIndex,
    at: Millis,
) -> Result<(), ApplyError> {
    let StepPhase::Failed { attempt, .. } = step_state(state, step)?.phase else {
        return Err(ApplyError::SagaTransition {
            saga: state.id,
            event: name,
            status: state.status,
            detail: "only a failed step can be resumed",
        });
    };
    let before_done = state.steps[..step as usize]
        .iter()
        .all(|s| s.phase == StepPhase::Succeeded);
    let undoing = state.steps.iter().any(|s| is_compensation_phase(s.phase));
    let detail = "resuming needs every earlier step succeeded and nothing compensated";
    require(state, name, before_done && !undoing, detail)?;
    let next = next_attempt(state, name, attempt)?;
    let target = &mut state.steps[step as usize];
    target.phase = StepPhase::WaitingRetry {
        attempt: next,
        fire_at: at,
    };
    // A fresh retry budget from here.
    target.budget_from = attempt;
    // The operator chose to go forward: an earlier cancel request or
    // deadline no longer stands, and the operator takes responsibility for
    // its timing too: the saga deadline no longer applies.
    state.cancel_reason = None;
    state.deadline_passed = false;
    state.deadline = Millis::MAX;
    state.status = SagaStatus::Running;
    Ok(())
}

/// The step-level events: the phase they need, then the change.
fn apply_step(state: &mut SagaState, at: Millis, kind: &EventKind) -> Result<(), ApplyError> {
    let (step, attempt) = kind.step_and_attempt().expect("only step events get here");
    let phase = step_state(state, step)?.phase;
    let refuse = |state: &SagaState| ApplyError::StepTransition {
        saga: state.id,
        step,
        event: kind.name(),
        attempt,
        phase,
    };
    let index = step as usize;
    let fits = match kind {
        EventKind::StepStarted { .. } => step_may_start(state, index, attempt),
        EventKind::StepSucceeded { .. }
        | EventKind::StepFailed { .. }
        | EventKind::StepInDoubt { .. } => phase == (StepPhase::Running { attempt }),
        EventKind::RetryScheduled {
            compensation: false,
            ..
        } => {
            state.status == SagaStatus::Running
                && matches!(phase, StepPhase::Failed { attempt: failed, permanent: false }
                    if failed.checked_add(1) == Some(attempt))
        }
        EventKind::RetryScheduled {
            compensation: true, ..
        } => matches!(phase, StepPhase::CompensationFailed { attempt: failed, permanent: false }
            if failed.checked_add(1) == Some(attempt)),
        EventKind::CompensationStarted { .. } => compensation_may_start(state, index, attempt),
        EventKind::StepCompensated { .. } | EventKind::CompensationFailed { .. } => {
            phase == (StepPhase::Compensating { attempt })
        }
        EventKind::AttemptDelayed {
            compensation: false,
            ..
        } => step_may_start(state, index, attempt),
        EventKind::AttemptDelayed {
            compensation: true, ..
        } => compensation_may_start(state, index, attempt),
        EventKind::AttemptResumed {
            compensation: false,
            ..
        } => phase == (StepPhase::Running { attempt }),
        EventKind::AttemptResumed {
            compensation: true, ..
        } => phase == (StepPhase::Compensating { attempt }),
        _ => unreachable!("step_and_attempt matched a step event"),
    };
    if !fits {
        return Err(refuse(state));
    }
    change_step(state, index, at, kind);
    Ok(())
}

/// Steps start in order, one at a time, with attempts counted densely.
fn step_may_start(state: &SagaState, index: usize, attempt: u32) -> bool {
    let current = &state.steps[index];
    let fits = match current.phase {
        StepPhase::Pending => true,
        StepPhase::WaitingRetry {
            attempt: planned, ..
        } => planned == attempt,
        _ => false,
    };
    let in_order = state.steps[..index]
        .iter()
        .all(|s| s.phase == StepPhase::Succeeded);
    let alone = state
        .steps
        .iter()
        .enumerate()
        .all(|(other, s)| other == index || !is_active(s.phase));
    let counted = current.attempts.checked_add(1) == Some(attempt);
    fits && in_order && alone && counted && state.status == SagaStatus::Running
}

/// Compensation starts once nothing runs forward; a planned retry gives way
/// to a cancel request or a passed saga deadline (it is abandoned). A step
/// is compensated if it succeeded or has an attempt in doubt. The order
/// (reverse, compensatable steps only) depends on step kinds: that is
/// decide's to keep.
fn compensation_may_start(state: &SagaState, index: usize, attempt: u32) -> bool {
    let current = &state.steps[index];
    let abandonable = abort_requested(state);
    let in_doubt = !current.in_doubt.is_empty();
    let fits = match current.phase {
        StepPhase::Succeeded => true,
        StepPhase::WaitingCompensationRetry {
            attempt: planned, ..
        } => planned == attempt,
        StepPhase::Failed { .. } => in_doubt,
        StepPhase::WaitingRetry { .. } => in_doubt && abandonable,
        _ => false,
    };
    let status_fits = matches!(state.status, SagaStatus::Running | SagaStatus::Compensating);
    let forward_idle = !state.steps.iter().any(|s| {
        matches!(s.phase, StepPhase::Running { .. })
            || (matches!(s.phase, StepPhase::WaitingRetry { .. }) && !abandonable)
    });
    let counted = current.compensation_attempts.checked_add(1) == Some(attempt);
    fits && status_fits && forward_idle && counted
}

/// The change a step event makes, once [`apply_step`] found it fits.
fn change_step(state: &mut SagaState, index: usize, at: Millis, kind: &EventKind) {
    if matches!(
        kind,
        EventKind::CompensationStarted { .. }
            | EventKind::AttemptDelayed {
                compensation: true,
                ..
            }
    ) {
        abandon_planned_retries(state);
        state.status = SagaStatus::Compensating;
    }
    let target = &mut state.steps[index];
    if !change_forward(target, at, kind) {
        change_backward(target, kind);
    }
    // A resumed attempt is the same attempt, in the same phase since it
    // started: its start stays when it began.
    if !matches!(kind, EventKind::AttemptResumed { .. }) {
        target.updated_at = Some(at);
    }
}

/// The change of a forward (or either-way) step event; `false` if `kind`
/// is a compensation's.
fn change_forward(target: &mut StepState, at: Millis, kind: &EventKind) -> bool {
    match kind {
        &EventKind::StepStarted {
            attempt, deadline, ..
        } => {
            target.phase = StepPhase::Running { attempt };
            target.attempts = attempt;
            target.deadline = Some(deadline);
            target.started_at.get_or_insert(at);
        }
        EventKind::StepSucceeded { output, .. } => {
            target.phase = StepPhase::Succeeded;
            target.output = Some(output.clone());
            target.deadline = None;
        }
        &EventKind::StepFailed {
            attempt,
            ref error,
            permanent,
            ..
        } => failed(target, StepPhase::Failed { attempt, permanent }, error),
        EventKind::StepInDoubt {
            attempt, reason, ..
        } => {
            let phase = StepPhase::Failed {
                attempt: *attempt,
                permanent: false,
            };
            failed(target, phase, reason);
            if target.in_doubt.len() == IN_DOUBT_ATTEMPTS_MAX {
                target.in_doubt.remove(0);
            }
            target.in_doubt.push(*attempt);
        }
        &EventKind::RetryScheduled {
            attempt,
            fire_at,
            compensation,
            ..
        }
        | &EventKind::AttemptDelayed {
            attempt,
            until: fire_at,
            compensation,
            ..
        } => {
            target.phase = match compensation {
                false => StepPhase::WaitingRetry { attempt, fire_at },
                true => StepPhase::WaitingCompensationRetry { attempt, fire_at },
            };
        }
        // The phase stays (the same attempt runs again); only its
        // deadline moves.
        &EventKind::AttemptResumed { deadline, .. } => target.deadline = Some(deadline),
        _ => return false,
    }
    true
}

/// The change of a compensation's event.
fn change_backward(target: &mut StepState, kind: &EventKind) {
    match kind {
        &EventKind::CompensationStarted {
            attempt, deadline, ..
        } => {
            target.phase = StepPhase::Compensating { attempt };
            target.compensation_attempts = attempt;
            target.deadline = Some(deadline);
        }
        EventKind::StepCompensated { .. } => {
            target.phase = StepPhase::Compensated;
            target.deadline = None;
        }
        &EventKind::CompensationFailed {
            attempt,
            ref error,
            permanent,
            ..
        } => {
            let phase = StepPhase::CompensationFailed { attempt, permanent };
            failed(target, phase, error)
        }
        _ => unreachable!("apply_step passes step events only"),
    }
}

/// An attempt (forward or backward) failed: its phase, its error.
fn failed(target: &mut StepState, phase: StepPhase, error: &str) {
    target.phase = phase;
    target.last_error = Some(error.to_owned());
    target.deadline = None;
}

/// A cancel request or a passed saga deadline asks the saga to turn back.
fn abort_requested(state: &SagaState) -> bool {
    state.cancel_reason.is_some() || state.deadline_passed
}

/// Turning back abandons a planned forward retry: the step is left failed
/// at its last attempt (its error kept), never started again.
fn abandon_planned_retries(state: &mut SagaState) {
    if abort_requested(state) {
        abandon_retries(state);
    }
}

/// Every planned forward retry abandoned: the step failed at its last
/// attempt, or, if it never started (only delayed), pending.
fn abandon_retries(state: &mut SagaState) {
    for step in state.steps.iter_mut() {
        if matches!(step.phase, StepPhase::WaitingRetry { .. }) {
            // A step whose first attempt was only delayed never started.
            step.phase = match step.attempts {
                0 => StepPhase::Pending,
                attempts => StepPhase::Failed {
                    attempt: attempts,
                    permanent: false,
                },
            };
        }
    }
}

/// A step attempt or compensation attempt is running or scheduled.
fn is_active(phase: StepPhase) -> bool {
    matches!(
        phase,
        StepPhase::Running { .. }
            | StepPhase::WaitingRetry { .. }
            | StepPhase::Compensating { .. }
            | StepPhase::WaitingCompensationRetry { .. }
    )
}

fn is_compensation_phase(phase: StepPhase) -> bool {
    matches!(
        phase,
        StepPhase::Compensating { .. }
            | StepPhase::CompensationFailed { .. }
            | StepPhase::WaitingCompensationRetry { .. }
            | StepPhase::Compensated
    )
}

/// The attempt after `attempt`, refused at the (unreachable) u32 limit.
fn next_attempt(state: &SagaState, event: &'static str, attempt: u32) -> Result<u32, ApplyError> {
    attempt.checked_add(1).ok_or(ApplyError::SagaTransition {
        saga: state.id,
        event,
        status: state.status,
        detail: "attempt counter exhausted",
    })
}

fn require(
    state: &SagaState,
    event: &'static str,
    holds: bool,
    detail: &'static str,
) -> Result<(), ApplyError> {
    if holds {
        Ok(())
    } else {
        Err(ApplyError::SagaTransition {
            saga: state.id,
            event,
            status: state.status,
            detail,
        })
    }
}

fn step_state(state: &SagaState, step: StepIndex) -> Result<&StepState, ApplyError> {
    state
        .steps
        .get(step as usize)
        .ok_or(ApplyError::NoSuchStep {
            saga: state.id,
            step,
        })
}
